"""The simulated radio network's physics: pure functions, no storage, no clock.

A KPI sample is a function of (seed, site, 5-minute bucket, config, incident) and nothing else,
so two processes (or a replay next year) compute the same series. Config parameters and
incidents move the KPIs the way they would on a real cell: a handover offset set too high drops
calls, a demand surge fills the PRBs and starves throughput, a degraded backhaul adds latency, a
transmit power above the 43 dBm envelope interferes with the neighbours and drops calls.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from statistics import fmean
from typing import Any

BUCKET_SECONDS = 300
REGIONS = ("north", "south", "east", "west")
SITES_PER_REGION = 6
FIRST_SITE = 101
KPIS = ("drop_rate_pct", "throughput_mbps", "prb_util_pct", "handover_success_pct", "latency_ms")
SCENARIOS = ("mis_set_handover", "congestion", "backhaul_fault", "mis_set_tx_power")
SEVERITIES = ("critical", "major", "minor", "warning", "info")

# name -> (kind, low, high) for numbers; (kind, choices) otherwise. Validated on stage and apply.
PARAMS: dict[str, tuple[Any, ...]] = {
    "hoA3Offset": ("number", 0.0, 15.0),  # dB: how much better a neighbour must be to hand over
    "hoHysteresis": ("number", 0.0, 10.0),  # dB
    "txPower": ("number", 30.0, 46.0),  # dBm
    "prbCap": ("number", 10.0, 100.0),  # % of physical resource blocks the scheduler may use
    "loadBalancing": ("bool",),
    "backhaul_link": ("choice", "primary", "secondary"),
}

# Thresholds on a window's mean; throughput is judged against the site's own nominal level.
THRESHOLDS: dict[str, tuple[str, float]] = {
    "drop_rate_pct": ("above", 1.5),
    "handover_success_pct": ("below", 95.0),
    "prb_util_pct": ("above", 85.0),
    "latency_ms": ("above", 40.0),
    "throughput_mbps": ("below", 0.7),  # fraction of nominal
}


def all_sites() -> list[str]:
    return [f"CS-{FIRST_SITE + i}" for i in range(len(REGIONS) * SITES_PER_REGION)]


def region_of(site: Any) -> str | None:
    """The region of a site id (CS-101..CS-106 north, then south, east, west); None if unknown."""
    if not isinstance(site, str) or not site.upper().startswith("CS-"):
        return None
    try:
        index = int(site[3:]) - FIRST_SITE
    except ValueError:
        return None
    if not 0 <= index < len(REGIONS) * SITES_PER_REGION:
        return None
    return REGIONS[index // SITES_PER_REGION]


@dataclass(frozen=True, slots=True)
class Nominal:
    """A healthy site's levels, drawn once per (seed, site)."""

    drop: float
    throughput: float
    demand: float  # traffic as % of all PRBs
    handover: float
    latency: float


def nominal(seed: int, site: str) -> Nominal:
    rng = random.Random(f"{seed}:{site}")
    return Nominal(
        drop=rng.uniform(0.3, 0.7),
        throughput=rng.uniform(350.0, 650.0),
        demand=rng.uniform(30.0, 34.0),
        handover=rng.uniform(98.0, 99.5),
        latency=rng.uniform(8.0, 14.0),
    )


def default_config(seed: int, site: str) -> dict[str, Any]:
    rng = random.Random(f"{seed}:{site}:config")
    return {
        "hoA3Offset": rng.choice([2, 3]),
        "hoHysteresis": rng.choice([1, 2]),
        "txPower": rng.choice([40, 43]),
        "prbCap": 60,
        "loadBalancing": False,
        "backhaul_link": "primary",
    }


def normalize(param: str, value: Any) -> Any:
    """The canonical value of `param` (3.0 -> 3, "true" -> True); ValueError says what is allowed."""
    spec = PARAMS.get(param)
    if spec is None:
        raise ValueError(f"unknown parameter {param!r}; known: {sorted(PARAMS)}")
    kind = spec[0]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off"):
            return value.lower() in ("true", "on")
        raise ValueError(f"{param} takes true or false, not {value!r}")
    if kind == "choice":
        if value not in spec[1:]:
            raise ValueError(f"{param} takes one of {list(spec[1:])}, not {value!r}")
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{param} takes a number in [{spec[1]:g}, {spec[2]:g}], not {value!r}") from None
    if isinstance(value, bool) or not spec[1] <= number <= spec[2]:
        raise ValueError(f"{param} takes a number in [{spec[1]:g}, {spec[2]:g}], not {value!r}")
    return int(number) if number.is_integer() else number


def change_id(site: str, param: str, value: Any) -> str:
    """The id of "set `param` of `site` to `value`": proposals, dry runs and applies agree on it."""
    text = f"{site}|{param}|{value!r}"
    return "chg-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def sample(seed: int, site: str, bucket: int, config: dict[str, Any], incident: str | None) -> dict[str, float]:
    """The KPIs of `site` in 5-minute `bucket`, under `config` and `incident`."""
    nom = nominal(seed, site)
    rng = random.Random(f"{seed}:{site}:{bucket}")
    noise = [1.0 + 0.03 * rng.gauss(0.0, 1.0) for _ in KPIS]
    diurnal = 1.0 + 0.04 * math.sin(2 * math.pi * (bucket % 288) / 288)

    demand = nom.demand * diurnal * noise[2] * (2.2 if incident == "congestion" else 1.0)
    if config["loadBalancing"]:
        demand *= 0.6  # neighbours take a share of the traffic
    util = min(99.0, 100.0 * demand / float(config["prbCap"]))

    offset, hysteresis = float(config["hoA3Offset"]), float(config["hoHysteresis"])
    late_handover = max(0.0, offset + 0.5 * hysteresis - 4.0)  # UEs hang on to a fading cell
    ping_pong = max(0.0, 1.5 - offset)
    overshoot = max(0.0, float(config["txPower"]) - 43.0)  # interference into neighbours

    degraded = incident == "backhaul_fault" and config["backhaul_link"] == "primary"
    secondary = config["backhaul_link"] == "secondary"
    transport = 0.55 if degraded else (0.95 if secondary else 1.0)

    drop = nom.drop + 0.55 * late_handover + 0.3 * ping_pong + 0.5 * overshoot + 0.03 * max(0.0, util - 90.0)
    handover = nom.handover - 2.2 * late_handover - 1.5 * ping_pong - 0.3 * overshoot
    throughput = nom.throughput * (1.0 - 0.6 * max(0.0, util - 75.0) / 25.0) * transport
    latency = nom.latency + 0.8 * max(0.0, util - 80.0) + (70.0 if degraded else 0.0) + (3.0 if secondary else 0.0)
    return {
        "drop_rate_pct": round(drop * noise[0], 3),
        "throughput_mbps": round(throughput * noise[1], 1),
        "prb_util_pct": round(util, 1),
        "handover_success_pct": round(min(99.9, handover * (1.0 + (noise[3] - 1.0) / 10)), 2),
        "latency_ms": round(latency * noise[4], 1),
    }


def summarize(series: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(fmean(point[k] for point in series), 3) for k in KPIS}


def anomalies(seed: int, site: str, mean: dict[str, float]) -> list[dict[str, Any]]:
    """The KPIs of a window's mean that cross their thresholds."""
    found = []
    for kpi, (direction, limit) in THRESHOLDS.items():
        threshold = limit * nominal(seed, site).throughput if kpi == "throughput_mbps" else limit
        value = mean[kpi]
        if (value > threshold) if direction == "above" else (value < threshold):
            found.append({"kpi": kpi, "value": value, "threshold": round(threshold, 1), "direction": direction})
    return found


def severity(found: list[dict[str, Any]]) -> str:
    return {0: "info", 1: "minor", 2: "major"}.get(len(found), "critical")


def root_causes(seed: int, site: str, mean: dict[str, float], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidate causes, best first, each with a confidence in [0, 1] and its evidence."""
    nom = nominal(seed, site)
    offset = float(config["hoA3Offset"])
    scores = {
        "mis_set_handover": _clamp((mean["drop_rate_pct"] - 1.0) / 2.0)
        + _clamp((97.0 - mean["handover_success_pct"]) / 8.0)
        + (0.5 if not 1.5 <= offset <= 4.0 else 0.0),
        "congestion": _clamp((mean["prb_util_pct"] - 75.0) / 20.0)
        + _clamp(1.0 - mean["throughput_mbps"] / nom.throughput) * (1.0 if mean["prb_util_pct"] > 80 else 0.2),
        "backhaul_fault": _clamp((mean["latency_ms"] - 25.0) / 40.0)
        + (0.3 if mean["latency_ms"] > 40.0 and config["backhaul_link"] == "primary" else 0.0),
        # Only a power above the envelope scores: the default configs (40 or 43 dBm) never do.
        "mis_set_tx_power": (0.8 + _clamp((mean["drop_rate_pct"] - 1.0) / 2.0))
        if float(config["txPower"]) > 43
        else 0.0,
    }
    total = sum(scores.values())
    evidence = {
        "mis_set_handover": f"drop {mean['drop_rate_pct']}%, HO success {mean['handover_success_pct']}%, "
        f"hoA3Offset {config['hoA3Offset']} dB",
        "congestion": f"PRB util {mean['prb_util_pct']}%, throughput {mean['throughput_mbps']} Mbps "
        f"(nominal {nom.throughput:.0f}), prbCap {config['prbCap']}%",
        "backhaul_fault": f"latency {mean['latency_ms']} ms on the {config['backhaul_link']} backhaul link",
        "mis_set_tx_power": f"txPower {config['txPower']} dBm (envelope 43), drop {mean['drop_rate_pct']}%",
    }
    ranked = sorted(scores, key=lambda c: (-scores[c], c))
    return [
        {"cause": c, "confidence": round(scores[c] / total, 3) if total else 0.0, "evidence": evidence[c]}
        for c in ranked
        if scores[c] > 0.0
    ]


def anomaly_report(seed: int, site: str, mean: dict[str, float]) -> dict[str, Any]:
    """detect_anomalies's answer for a window's `mean` (whatever read it: the network file, Prometheus)."""
    found = anomalies(seed, site, mean)
    return {"site": site, "anomalies": found, "count": len(found), "severity": severity(found), "healthy": not found}


def diagnosis(seed: int, site: str, mean: dict[str, float], config: dict[str, Any]) -> dict[str, Any]:
    """rank_root_causes's answer: `top_cause` "none" for a healthy site."""
    if not anomalies(seed, site, mean):
        return {"site": site, "top_cause": "none", "confidence": 1.0, "causes": []}
    causes = root_causes(seed, site, mean, config)
    return {"site": site, "top_cause": causes[0]["cause"], "confidence": causes[0]["confidence"], "causes": causes}


def monitor_report(
    seed: int, site: str, minutes: int, configs: tuple[dict[str, Any], dict[str, Any]],
    means: tuple[dict[str, float], dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    """monitor_kpis's answer from the (previous, current) configs and the (before, after) means."""
    (previous, current), (before, after) = configs, means
    was, now = anomalies(seed, site, before), anomalies(seed, site, after)
    improved = bool(was) and not now
    changed = {p: (v, current[p]) for p, v in previous.items() if p in current and v != current[p]}
    what = ", ".join(f"{p} {a} -> {b}" for p, (a, b) in changed.items()) or "no change"
    names = ", ".join(a["kpi"] for a in now) or "none"
    summary = (f"{site}: {what}; anomalies {len(was)} -> {len(now)} (open: {names}); "
               f"{'resolved' if improved else 'not resolved'}")  # fmt: skip
    return {"site": site, "minutes": int(minutes), "before": before, "after": after, "anomalies": now,
            "healthy": not now, "improved": improved, "summary": summary}  # fmt: skip


def proposal(cause: str, config: dict[str, Any]) -> tuple[str, Any, str]:
    """(param, new value, rationale) of the change that fixes `cause`."""
    if cause == "mis_set_handover":
        return "hoA3Offset", 3, "restore the A3 offset to the 2-3 dB design range so handovers happen in time"
    if cause == "congestion":
        if float(config["prbCap"]) < 100:
            return "prbCap", 100, "let the scheduler use all PRBs to absorb the demand surge"
        return "loadBalancing", True, "offload traffic to neighbouring cells"
    if cause == "backhaul_fault":
        return "backhaul_link", "secondary", "move traffic off the degraded primary backhaul link"
    if cause == "mis_set_tx_power":
        return "txPower", 40, "bring the transmit power back inside the 43 dBm envelope to stop the interference"
    raise ValueError(f"unknown cause {cause!r}; known: {list(SCENARIOS)}")


def _clamp(x: float) -> float:
    return max(0.0, min(1.0, x))
