"""A RAN simulator exporter: the simulated cells' KPIs as Prometheus gauges, for a real Prometheus.

    python -m agentflow_noc.ransim --port 9105 --network-db noc.db
    python -m agentflow_noc.ransim --port 9105 --incident CS-104:congestion

Every scrape of `/metrics` reads each cell's configuration from a config source (a callable
returning `{site: {param: value}}`: the simulated network's SQLite file, or anything else that
knows the cells, such as a NETCONF device) and its incident, and computes its KPIs with
`model.sample` for the wall clock's 5-minute bucket. Nothing is cached: a configuration change
shows in the very next scrape, and a config source that fails makes the scrape fail (Prometheus
then marks the target down) rather than serving stale numbers.

Metrics (labels `site`, `region`):

- `ran_cell_<kpi>` for each KPI of `model.KPIS` (`ran_cell_drop_rate_pct`, ...): a gauge.
- `ran_cell_config_info` (labels `param`, `value` too): 1 for each parameter's current value.
- `ran_cell_config_changed_timestamp_seconds`: when this exporter first served the cell's current
  configuration (its start, for a configuration it found on start): `promql.monitor_kpis`
  splits its before/after windows there.

The time base is the wall clock, because Prometheus stamps samples with its own time; the
simulated network's clock (which a workflow may move) is not used here.
"""

from __future__ import annotations

import argparse
import functools
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from agentflow.errors import AgentflowError
from agentflow_noc import model
from agentflow_noc.network import DEFAULT_SEED, Network

PREFIX = "ran_cell_"
#: The gauge of each KPI.
METRICS = {kpi: f"{PREFIX}{kpi}" for kpi in model.KPIS}
CONFIG_INFO = f"{PREFIX}config_info"
CONFIG_CHANGED = f"{PREFIX}config_changed_timestamp_seconds"
LABELS = ("site", "region")

#: `{site: {param: value}}` for every cell to export; values may be text (as NETCONF gives them).
ConfigSource = Callable[[], Mapping[str, Mapping[str, Any]]]
#: `{site: incident kind}` for the cells in trouble.
IncidentSource = Callable[[], Mapping[str, str]]

_HELP = {
    "drop_rate_pct": "Share of calls dropped, in percent.",
    "throughput_mbps": "Cell throughput in Mbit/s.",
    "prb_util_pct": "Physical resource block utilisation, in percent.",
    "handover_success_pct": "Share of handovers that succeed, in percent.",
    "latency_ms": "User-plane latency in milliseconds.",
}


def network_configs(net: Network) -> ConfigSource:
    """The config source of a simulated network file: every site's current configuration."""
    return lambda: {site: net.config(site) for site in net.sites()}


def network_incidents(net: Network) -> IncidentSource:
    """The incidents injected into a simulated network file (`Network.inject`)."""

    def read() -> dict[str, str]:
        found = {site: net.incident(site) for site in net.sites()}
        return {site: kind for site, kind in found.items() if kind is not None}

    return read


def fixed_incidents(incidents: Mapping[str, str]) -> IncidentSource:
    """Incidents given once (e.g. beside a device's configs), checked now rather than at a scrape.
    Only `congestion` and `backhaul_fault` move KPIs by themselves; the other kinds are config
    pushes, which a config source shows."""
    checked = {}
    for site, kind in incidents.items():
        name = str(site).strip().upper()
        if model.region_of(name) is None:
            raise ValueError(f"unknown site {site!r}: sites are {model.all_sites()[0]}..{model.all_sites()[-1]}")
        if kind not in model.SCENARIOS:
            raise ValueError(f"unknown incident kind {kind!r}; known: {list(model.SCENARIOS)}")
        checked[name] = kind
    return lambda: checked


class RanCollector:
    """A prometheus-client collector computing the cells' KPIs on each scrape.

    Args:
        configs: the config source, read on every scrape.
        incidents: the incident source, read on every scrape.
        seed: the KPI seed (a simulated network file's `seed`, so both agree).
        clock: seconds since the epoch (the wall clock; tests may pass another).
    """

    def __init__(
        self,
        *,
        configs: ConfigSource,
        incidents: IncidentSource = dict,
        seed: int = DEFAULT_SEED,
        # An exporter, never workflow code: Prometheus stamps its samples with the wall clock.
        clock: Callable[[], float] = time.time,  # noqa: TID251
    ) -> None:
        self._configs, self._incidents, self.seed, self._clock = configs, incidents, seed, clock
        # site -> (config, when first served): scrapes may run on several server threads.
        self._seen: dict[str, tuple[dict[str, Any], float]] = {}
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading any source (registering must not scrape)."""
        return [GaugeMetricFamily(name, _HELP[kpi], labels=LABELS) for kpi, name in METRICS.items()]

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        bucket = int(now // model.BUCKET_SECONDS)
        configs, incidents = self._configs(), self._incidents()
        gauges = {kpi: GaugeMetricFamily(name, _HELP[kpi], labels=LABELS) for kpi, name in METRICS.items()}
        info = GaugeMetricFamily(CONFIG_INFO, "The cell's configuration: 1 per parameter and value.",
                                 labels=[*LABELS, "param", "value"])  # fmt: skip
        changed = GaugeMetricFamily(CONFIG_CHANGED, "When this exporter first served the cell's current configuration.",
                                    labels=LABELS)  # fmt: skip
        for site in sorted(configs):
            region = model.region_of(site)
            if region is None:
                continue  # a cell the model does not know has no KPIs to compute
            config = self.config_of(site, configs[site])
            for kpi, value in model.sample(self.seed, site, bucket, config, incidents.get(site)).items():
                gauges[kpi].add_metric([site, region], value)
            for param, value in config.items():
                info.add_metric([site, region, param, _text(value)], 1.0)
            changed.add_metric([site, region], self._changed_at(site, config, now))
        return [*gauges.values(), info, changed]

    def config_of(self, site: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """The full, normalized config of `site`: a source's text values ("3", "true") become the
        model's; parameters the source does not carry keep their defaults."""
        config = model.default_config(self.seed, site)
        config.update({p: model.normalize(p, v) for p, v in given.items() if p in model.PARAMS})
        return config

    def _changed_at(self, site: str, config: dict[str, Any], now: float) -> float:
        with self._lock:
            seen = self._seen.get(site)
            if seen is None or seen[0] != config:
                seen = self._seen[site] = (config, now)
            return seen[1]


def _text(value: Any) -> str:
    """A config value as a label: booleans as YANG writes them."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def registry(collector: RanCollector) -> CollectorRegistry:
    """A registry of `collector` alone (no process or platform metrics)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(collector)
    return found


def serve(collector: RanCollector, *, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve `/metrics` of `collector` on `host:port` in a daemon thread; returns its stop."""
    server, thread = start_http_server(port, addr=host, registry=registry(collector))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def _incident_flag(text: str) -> tuple[str, str]:
    site, sep, kind = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--incident takes SITE:KIND (e.g. CS-104:congestion), not {text!r}")
    return site, kind


def network_collector(net: Network) -> RanCollector:
    """The collector of a simulated network file: its configs and incidents, its seed."""
    return RanCollector(configs=network_configs(net), incidents=network_incidents(net), seed=net.seed)


def _scenario_incidents(ref: str) -> list[tuple[str, str]]:
    """The incidents of a scenario: a file, or the name of one of the pack's own."""
    from agentflow_noc.scenario import load_scenario, load_scenarios

    found = load_scenario(ref) if ref.endswith((".yaml", ".yml")) else load_scenarios(only=[ref])[0]
    return [(i.site, i.kind) for i in found.incidents]


#: Incident kinds that are configuration pushes (`Network.inject` sets a parameter): on a device,
#: make them by changing its configuration, not with a flag.
CONFIG_PUSHES = ("mis_set_handover", "mis_set_tx_power")


def netconf_collector(incidents: Mapping[str, str] | None = None, *, seed: int = DEFAULT_SEED) -> RanCollector:
    """The collector of a NETCONF device's cells (`agentflow_noc.netconf`, the `netconf` extra),
    reached with the `NOC_NETCONF_*` settings: every scrape reads the running configuration."""
    from agentflow_noc import netconf  # ncclient is an optional dependency

    pushes = sorted({k for k in (incidents or {}).values() if k in CONFIG_PUSHES})
    if pushes:
        raise ValueError(f"{', '.join(pushes)} is a configuration push: change the device's configuration instead")
    settings = netconf.DeviceSettings.from_env()
    return RanCollector(configs=functools.partial(netconf.cell_configs, settings),
                        incidents=fixed_incidents(incidents or {}), seed=seed)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(prog="python -m agentflow_noc.ransim", description=__doc__.split("\n\n")[0])
    found.add_argument("--port", type=int, required=True, help="port of /metrics (on --host)")
    found.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    source = found.add_mutually_exclusive_group()
    source.add_argument("--network-db", help="the simulated network's SQLite file (default: a fresh one, "
                        "removed at exit): the cells' configs and incidents are read from it on every scrape")  # fmt: skip
    source.add_argument("--netconf", action="store_true", help="read the cells' configs from the NETCONF device "
                        "of the NOC_NETCONF_* settings (HOST, PORT, USER, KEY, HOSTKEY) on every scrape")  # fmt: skip
    found.add_argument("--seed", type=int, default=DEFAULT_SEED, help="KPI seed of a new network file")
    found.add_argument("--incident", type=_incident_flag, action="append", default=[], metavar="SITE:KIND",
                       help=f"inject an incident into the network first; KIND: {', '.join(model.SCENARIOS)} "
                            "(with --netconf: congestion or backhaul_fault)")  # fmt: skip
    found.add_argument("--scenario", help="inject a scenario's incidents first (a file, or a name of the pack's own)")
    return found


def _collector(args: argparse.Namespace, scratch: Path) -> tuple[RanCollector, str]:
    """The collector the command line asks for, and what it reads."""
    incidents = [*(_scenario_incidents(args.scenario) if args.scenario else []), *args.incident]
    if args.netconf:
        return netconf_collector(dict(incidents), seed=args.seed), "the NETCONF device of NOC_NETCONF_HOST"
    net = Network(args.network_db or scratch / "noc.db", seed=args.seed)
    for site, kind in incidents:
        net.inject(site, kind)
    return network_collector(net), net.path


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())  # a clean stop: the scratch network is removed
    with tempfile.TemporaryDirectory(prefix="ransim-") as scratch:
        try:
            collector, source = _collector(args, Path(scratch))
        except (ValueError, AgentflowError) as exc:
            parser().error(str(exc))
        stop = serve(collector, port=args.port, host=args.host)
        print(f"ransim: serving http://{args.host}:{args.port}/metrics from {source}", flush=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop()


if __name__ == "__main__":
    main()
