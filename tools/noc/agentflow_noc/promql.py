"""The copilot's KPI reads over Prometheus: `get_kpis`, `detect_anomalies`, `rank_root_causes` and
`monitor_kpis` run PromQL over Prometheus' HTTP API (`/api/v1/query`, `/api/v1/query_range`).

    import agentflow_noc.promql as promql
    promql.configure("http://127.0.0.1:9090")            # or AGENTFLOW_NOC_PROMETHEUS_URL
    tools = promql.with_prometheus(noc.NOC_TOOLS)         # the same tools, KPIs from Prometheus

The tools have the simulated pack's names, declarations and answer shapes (`agentflow_noc.tools`),
so policies, runbooks and approval cards treat them the same; the anomaly thresholds and the
diagnosis stay `agentflow_noc.model`'s. The series are those of the exporter
`agentflow_noc.ransim` (`ran_cell_<kpi>{site, region}`); for another exporter, change the
metric names in `ransim.METRICS` and the label in `_selector`.

Failures are typed (`agentflow.errors.ToolError` subclasses): Prometheus down, unreachable, slow or answering 5xx is
`PrometheusUnavailable` (retryable: the engine's activity retry tries again, `retry_after`
seconds later); a query Prometheus refuses (4xx) is `PrometheusQueryError` (not retryable,
with Prometheus' message); no samples yet is `PrometheusNoData` (retryable). A site argument
is checked against the site id pattern before it goes into PromQL, and label values are
escaped as well, so a hostile argument cannot change a query.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from langchain_core.tools import BaseTool

from agentflow.errors import ConfigurationError, ToolError
from agentflow.llm import tool
from agentflow_noc import model
from agentflow_noc.network import DEFAULT_SEED
from agentflow_noc.ransim import CONFIG_CHANGED, CONFIG_INFO, METRICS, PREFIX
from agentflow_noc.tools import _region, _site

ENV_URL = "AGENTFLOW_NOC_PROMETHEUS_URL"
ENV_TIMEOUT = "AGENTFLOW_NOC_PROMETHEUS_TIMEOUT"
ENV_RETRY_AFTER = "AGENTFLOW_NOC_PROMETHEUS_RETRY_AFTER"
ENV_SEED = "AGENTFLOW_NOC_SEED"
SITE_ID = re.compile(r"CS-[0-9]{3}")
# Prometheus stamps a scrape with its start, a few milliseconds before the exporter reads the
# config and notes a change: the before/after windows split this much earlier than the note.
SPLIT_MARGIN = 0.5


class PrometheusError(ToolError):
    """Reading KPIs from Prometheus failed (`system` is "prometheus <url>", `detail` its status).

    Attributes:
        url: the Prometheus base URL.
        query: the PromQL sent (None when nothing was sent).
        status: the HTTP status, when there was an answer.
        retry_after: seconds to wait before trying again (the engine's retry honours it).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        query: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, system=f"prometheus {url}".strip(), detail="" if status is None else f"HTTP {status}")
        self.url, self.query, self.status, self.retry_after = url, query, status, retry_after

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "system": self.system, "url": self.url, "query": self.query,
                "status": self.status}  # fmt: skip


class PrometheusUnavailable(PrometheusError):
    """Prometheus did not answer (down, unreachable, timed out) or answered 5xx/429: retryable."""

    retryable = True


class PrometheusNoData(PrometheusError):
    """Prometheus answered, without the samples asked for (not scraped yet): retryable."""

    retryable = True


class PrometheusQueryError(PrometheusError):
    """A query Prometheus refused (4xx, with its message) or an argument refused before any query
    was sent: not retryable, the call itself must change."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Where and how the tools reach Prometheus (`settings()` reads them from the environment).

    Attributes:
        url: the base URL (`http://127.0.0.1:9090`), without `/api/v1`.
        timeout: seconds per HTTP request.
        retry_after: seconds the engine waits before retrying when Prometheus is unavailable.
        seed: the KPI seed of the simulated cells (their nominal throughput, for the thresholds).
    """

    url: str
    timeout: float = 10.0
    retry_after: float = 5.0
    seed: int = DEFAULT_SEED


def configure(url: str, *, timeout: float = 10.0, retry_after: float = 5.0, seed: int = DEFAULT_SEED) -> Settings:
    """Point the Prometheus KPI tools of this process (and of subprocesses it starts) at `url`."""
    os.environ.update({ENV_URL: url, ENV_TIMEOUT: str(timeout), ENV_RETRY_AFTER: str(retry_after),
                       ENV_SEED: str(seed)})  # fmt: skip
    return settings()


def settings() -> Settings:
    """The settings from the environment; `ConfigurationError` when no URL is set."""
    url = os.environ.get(ENV_URL, "").strip().rstrip("/")
    if not url:
        raise ConfigurationError(f"the Prometheus KPI tools have no URL: set {ENV_URL} or call promql.configure(url)")
    try:
        return Settings(url=url, timeout=float(os.environ.get(ENV_TIMEOUT) or 10.0),
                        retry_after=float(os.environ.get(ENV_RETRY_AFTER) or 5.0),
                        seed=int(os.environ.get(ENV_SEED) or DEFAULT_SEED))  # fmt: skip
    except ValueError as exc:
        raise ConfigurationError(
            f"bad Prometheus setting ({ENV_TIMEOUT}, {ENV_RETRY_AFTER}, {ENV_SEED}): {exc}"
        ) from None


# -- PromQL text ----------------------------------------------------------------------------
def label_value(text: str) -> str:
    """`text` as a PromQL string literal: quotes, backslashes and line breaks escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def checked_site(value: Any) -> str:
    """The canonical site id ("cs-101 " is CS-101), or `PrometheusQueryError`: only a known site
    id (`CS-` and three digits) ever goes into a query."""
    site = _site(value)
    if not SITE_ID.fullmatch(site) or model.region_of(site) is None:
        sites = model.all_sites()
        raise PrometheusQueryError(f"unknown site {value!r}: sites are {sites[0]}..{sites[-1]}; nothing was queried")
    return site


def _selector(metric: str, site: str) -> str:
    return f"{metric}{{site={label_value(checked_site(site))}}}"


def _kpi_selector(site: str) -> str:
    """Every KPI series of `site`, in one selector (the names keep the series apart)."""
    names = "|".join(re.escape(name) for name in METRICS.values())
    return f"{{__name__=~{label_value(names)},site={label_value(checked_site(site))}}}"


# -- the HTTP API ---------------------------------------------------------------------------
def _now() -> float:
    # A tool runs as an activity, never in workflow code: the query's end is the wall clock's now.
    return time.time()  # noqa: TID251


def _api(path: str, params: Mapping[str, Any], conf: Settings) -> Any:
    """The `data` of a Prometheus API answer; the typed errors of the module docstring."""
    query = str(params.get("query"))
    try:
        answer = httpx.get(f"{conf.url}/api/v1/{path}", params=dict(params), timeout=conf.timeout)
    except httpx.TransportError as exc:
        raise PrometheusUnavailable(f"Prometheus at {conf.url} did not answer ({type(exc).__name__}: {exc}); "
                                    f"retryable in {conf.retry_after:g} s", retry_after=conf.retry_after,
                                    url=conf.url, query=query) from None  # fmt: skip
    if answer.status_code >= 500 or answer.status_code == 429:
        hint = _retry_after(answer.headers.get("Retry-After"), conf.retry_after)
        raise PrometheusUnavailable(f"Prometheus at {conf.url} answered {answer.status_code}: {_said(answer)}; "
                                    f"retryable in {hint:g} s", status=answer.status_code, retry_after=hint,
                                    url=conf.url, query=query)  # fmt: skip
    if answer.status_code >= 400:
        raise PrometheusQueryError(f"Prometheus refused the query {query!r} ({answer.status_code}): {_said(answer)}",
                                   status=answer.status_code, url=conf.url, query=query)  # fmt: skip
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusQueryError(f"{conf.url} did not answer as a Prometheus API ({_said(answer)}): check {ENV_URL}",
                                   status=answer.status_code, url=conf.url, query=query)  # fmt: skip
    return body["data"]


def _said(answer: httpx.Response) -> str:
    """Prometheus' own error message, else the start of the body."""
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:200] or "(empty body)"
    return str(body.get("error") or body)[:300] if isinstance(body, dict) else str(body)[:200]


def _retry_after(header: str | None, default: float) -> float:
    try:
        return max(float(header), 0.0) if header else default
    except ValueError:
        return default


def query(promql: str, *, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query (`/api/v1/query`): its result (a vector, or a matrix for a range selector)."""
    params: dict[str, Any] = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    result: list[dict[str, Any]] = _api("query", params, settings())["result"]
    return result


def query_range(promql: str, *, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """A range query (`/api/v1/query_range`): one `{metric, values: [[t, "v"], ...]}` per series."""
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    result: list[dict[str, Any]] = _api("query_range", params, settings())["result"]
    return result


# -- KPIs -----------------------------------------------------------------------------------
def _points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Samples of the KPI series grouped by time: `{"t", kpi: value, ...}`, complete ones only.
    A NaN or infinite sample is no sample: compared with a threshold it is never anomalous, so
    an exporter serving NaN would read as a healthy cell (and a change be confirmed on it)."""
    by_time: dict[float, dict[str, float]] = {}
    for row in rows:
        kpi = str(row["metric"].get("__name__", "")).removeprefix(PREFIX)
        for t, value in row.get("values") or [row["value"]]:
            number = float(value)
            if math.isfinite(number):
                by_time.setdefault(float(t), {})[kpi] = number
    return [{"t": t, **values} for t, values in sorted(by_time.items()) if set(values) >= set(model.KPIS)]


def kpis(site: str, *, window_minutes: int = 60) -> dict[str, Any]:
    """The 5-minute KPI series of the window ending now (the latest sample at each step) and its
    mean: the shape of `Network.kpis`."""
    site = checked_site(site)
    end = float(int(_now()))
    count = max(1, int(window_minutes) * 60 // model.BUCKET_SECONDS)
    promql = _kpi_selector(site)
    rows = query_range(promql, start=end - (count - 1) * model.BUCKET_SECONDS, end=end, step=model.BUCKET_SECONDS)
    series = [{**p, "t": int(p["t"])} for p in _points(rows)]
    if not series:
        raise _no_data(f"no KPI samples of {site} in the last {int(window_minutes)} minutes", promql)
    return {"site": site, "region": model.region_of(site), "window_minutes": int(window_minutes), "at": end,
            "series": series, "mean": model.summarize(series)}  # fmt: skip


def _no_data(what: str, promql: str) -> PrometheusNoData:
    conf = settings()
    return PrometheusNoData(f"{what}: is the exporter scraped (up == 1)? retryable in {conf.retry_after:g} s",
                            url=conf.url, query=promql, retry_after=conf.retry_after)  # fmt: skip


def _window_mean(site: str, start: float, end: float) -> dict[str, float] | None:
    """The mean of every raw sample in (start, end], or None when there is none."""
    span_ms = max(1, round((end - start) * 1000))
    points = _points(query(f"{_kpi_selector(site)}[{span_ms}ms]", at=end))
    return model.summarize(points) if points else None


def window_kpis(site: str, seconds: float, at: float) -> dict[str, float]:
    """The KPI means of every sample Prometheus scraped from `site` in the `seconds` before `at`:
    a `KpiReader` for `closed_loop_netconf.register(app, kpis=promql.window_kpis)`. Samples carry
    wall-clock times, so the run's clock must be the real one (a TestClock's `at` finds none)."""
    site = checked_site(site)
    mean = _window_mean(site, at - seconds, at)
    if mean is None:
        raise _no_data(f"no KPI sample of {site} in the {seconds:g} s before {at:.0f}", _kpi_selector(site))
    return mean


def window_reader(offset: float = 0.0) -> Callable[[str, float, float], dict[str, float]]:
    """`window_kpis` for a run whose clock is the wall clock shifted by `offset` seconds (a
    `SystemClock(offset=...)`, e.g. a demo moved into the maintenance window): Prometheus'
    samples carry wall-clock times, so the run's `at` is moved back by `offset` first."""

    def read(site: str, seconds: float, at: float) -> dict[str, float]:
        return window_kpis(site, seconds, at - offset)

    return read


def config_at(site: str, at: float | None = None) -> dict[str, Any]:
    """The cell's configuration as the exporter served it at `at` (default: now); {} if unknown."""
    rows = query(_selector(CONFIG_INFO, site), at=at)
    found = {str(r["metric"]["param"]): str(r["metric"]["value"]) for r in rows}
    return {p: model.normalize(p, v) for p, v in found.items() if p in model.PARAMS}


def changed_at(site: str) -> float:
    """When the exporter first served the cell's current configuration (seconds since the epoch)."""
    promql = _selector(CONFIG_CHANGED, site)
    rows = query(promql)
    if not rows:
        raise _no_data(f"no {CONFIG_CHANGED} sample of {checked_site(site)}", promql)
    return max(float(r["value"][1]) for r in rows)  # several exporters of the cell: the latest change


# -- the tools: names, declarations and answers of agentflow_noc.tools ------------------------
@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def get_kpis(site: str, window_minutes: int = 60) -> dict[str, Any]:
    """Read a cell site's KPIs: drop_rate_pct, throughput_mbps, prb_util_pct,
    handover_success_pct and latency_ms, as a 5-minute series over the last `window_minutes`
    and their mean. Use it first, to see how a site (e.g. "CS-104") is doing."""
    return kpis(site, window_minutes=window_minutes)


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def detect_anomalies(site: str) -> dict[str, Any]:
    """List the KPIs of a cell site whose last-hour mean crosses its threshold (high drop rate,
    low handover success, PRB utilisation above 85%, high latency, throughput far below the
    site's nominal level), with a severity for the incident: critical, major, minor or info."""
    site = checked_site(site)
    return model.anomaly_report(settings().seed, site, kpis(site)["mean"])


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def rank_root_causes(site: str) -> dict[str, Any]:
    """Rank the likely root causes of a cell site's anomalies (mis_set_handover, congestion,
    backhaul_fault, mis_set_tx_power) from its KPIs and configuration, each with a confidence and its evidence.
    `top_cause` is the best candidate, or "none" when the site is healthy."""
    site, seed = checked_site(site), settings().seed
    mean = kpis(site)["mean"]
    # The config as the exporter served it with these KPIs (a parameter it lacks: the default).
    config = {**model.default_config(seed, site), **config_at(site)} if model.anomalies(seed, site, mean) else {}
    return model.diagnosis(seed, site, mean, config)


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def monitor_kpis(site: str, minutes: int = 30) -> dict[str, Any]:
    """Watch a cell site's KPIs for `minutes` after its latest configuration change and compare
    them with what the previous configuration gives over the same window. `improved` is true
    when the anomalies are gone; `summary` is a one-line account for a ticket."""
    site, seed = checked_site(site), settings().seed
    split = changed_at(site) - SPLIT_MARGIN
    end = min(_now(), split + 60 * int(minutes))
    after = _window_mean(site, split, end)
    if after is None:
        raise _no_data(f"no KPI sample of {site} since its configuration changed", _kpi_selector(site))
    before = _window_mean(site, split - 60 * int(minutes), split) or after  # nothing before: no change seen
    current = config_at(site)
    previous = config_at(site, split) or current
    report = model.monitor_report(seed, site, minutes, (previous, current), (before, after))
    observed = max(0.0, end - split) / 60  # a window still open is reported as what it is so far
    return {**report, "summary": f"{report['summary']} ({observed:.1f} of {int(minutes)} min observed)"}


PROMETHEUS_TOOLS: list[BaseTool] = [get_kpis, detect_anomalies, rank_root_causes, monitor_kpis]


def with_prometheus(tools: Sequence[BaseTool]) -> list[BaseTool]:
    """`tools` with the KPI reads replaced by their Prometheus versions (same names, same order)."""
    by_name = {t.name: t for t in PROMETHEUS_TOOLS}
    return [by_name.get(t.name, t) for t in tools]
