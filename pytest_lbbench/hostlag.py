"""Did the host keep up? How far the local backend's processes fell behind model time.

On one machine every emulated component shares the same cores. When they cannot keep up, model
time stretches: the simulated engine's iterations end after their deadlines, the balancers'
10 ms tick runs late, and the delay links release bytes after they were due. Each component
counts that itself (since the last reset, i.e. for one experiment):

* replica (``python -m pytest_lbbench.sim``): lateness of engine iteration deadlines, and clock
  resyncs (the engine fell so far behind that it restarted its clock from "now");
* Sky LB and gateway (``/conf`` ``"lag"``): lateness of their tick/probe loops;
* delay links (the netem control port, ``/stats``): lateness of each release of due bytes.

This module reads those counters over HTTP, puts them in one shape,
``{"events", "late_events", "lateness_total_s", "lateness_max_s", "resyncs"}`` per component, and
judges the run: **host-bound** when some component was late on average by more than
``threshold_ms`` of model time per event (the quantity that stretches model time), or an
engine had to resync its clock. How *often* an event was a little late is reported
(``late_events``) but not judged: an LB's tick that wakes 2 ms late now and then while the loop
streams answers is ordinary event-loop contention, not model time falling behind. A host-bound run's latencies include the host's own delay, so
it is flagged in the table and the summary like a client-bound one. No pytest import here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from pytest_lbbench.prometheus import parse_samples

#: Default ``--host-lag-threshold-ms``: mean lateness per event above which a run is host-bound.
#: 5 ms is half an LB tick and about 7 % of one decode step at batch 1 (calibration.md §4.3).
DEFAULT_THRESHOLD_MS = 5.0

_EMPTY = {"events": 0, "late_events": 0, "lateness_total_s": 0.0, "lateness_max_s": 0.0, "resyncs": 0}


def _get(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        data: bytes = resp.read()
        return data


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def replica_lag(metrics_text: str) -> dict[str, float]:
    """The engine's lag counters from its Prometheus ``/metrics`` (``lbbench:`` names)."""
    samples = parse_samples(metrics_text)
    return {
        "events": samples.get("lbbench:engine_iterations_total", 0.0),
        "late_events": samples.get("lbbench:engine_late_iterations_total", 0.0),
        "lateness_total_s": samples.get("lbbench:engine_lag_seconds_total", 0.0),
        "lateness_max_s": samples.get("lbbench:engine_lag_max_seconds", 0.0),
        "resyncs": samples.get("lbbench:engine_clock_resyncs_total", 0.0),
    }


def balancer_lag(conf: Mapping[str, Any]) -> dict[str, float]:
    """A Sky LB's or gateway's loop lag from its ``/conf`` ``"lag"`` object."""
    lag = conf.get("lag") or {}
    return {
        "events": _number(lag.get("ticks")),
        "late_events": _number(lag.get("late_ticks")),
        "lateness_total_s": _number(lag.get("tick_late_s_total")),
        "lateness_max_s": _number(lag.get("tick_late_max_s")),
        "resyncs": 0.0,
    }


def link_lag(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """All delay links of one netem process, summed (max of the maxima)."""
    out = dict(_EMPTY)
    for link in stats.values():
        out["events"] += _number(link.get("releases"))
        out["late_events"] += _number(link.get("late_releases"))
        out["lateness_total_s"] += _number(link.get("lateness_total_s"))
        out["lateness_max_s"] = max(out["lateness_max_s"], _number(link.get("lateness_max_s")))
    return out


def read_component(kind: str, url: str, timeout_s: float = 5.0) -> dict[str, float] | dict[str, str]:
    """One component's counters in the common shape, or ``{"error": ...}`` if unreadable."""
    try:
        if kind == "replica":
            return replica_lag(_get(f"{url}/metrics", timeout_s).decode())
        if kind in ("sky_lb", "gateway"):
            return balancer_lag(json.loads(_get(f"{url}/conf", timeout_s)))
        if kind == "netem":
            return link_lag(json.loads(_get(f"{url}/stats", timeout_s)))
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    raise ValueError(f"unknown component kind {kind!r}; valid: replica, sky_lb, gateway, netem")


def judge(
    components: Mapping[str, Mapping[str, Any]], threshold_ms: float = DEFAULT_THRESHOLD_MS,
    time_scale: float = 1.0,
) -> dict[str, Any]:
    """The run's verdict from every component's counters (see the module docstring).

    Lateness is judged in model time: with ``--time-scale`` F every wall-clock delay stands for
    1/F as much model time, so 1 ms late at F = 0.05 is 20 ms of model time.
    """
    reasons: list[str] = []
    worst_mean_ms = 0.0
    for name, lag in sorted(components.items()):
        if "error" in lag:
            continue
        events = float(lag.get("events", 0.0))
        wall_mean_s = float(lag.get("lateness_total_s", 0.0)) / events if events else 0.0
        mean_ms = 1000.0 * wall_mean_s / time_scale
        worst_mean_ms = max(worst_mean_ms, mean_ms)
        if mean_ms > threshold_ms:
            reasons.append(f"{name} ran {mean_ms:.1f} ms (model time) late per event on average "
                           f"(> {threshold_ms:g} ms)")
        if float(lag.get("resyncs", 0.0)) > 0:
            reasons.append(f"{name} fell over 0.25 s behind model time {int(lag['resyncs'])} times")
    return {
        "host_bound": bool(reasons),
        "reasons": reasons,
        "threshold_ms": threshold_ms,
        "time_scale": time_scale,
        "worst_mean_lateness_ms": round(worst_mean_ms, 3),
        "components": {name: dict(lag) for name, lag in components.items()},
    }
