"""The 1 Hz telemetry file of an experiment (``queue_size/<exp>.txt``) read back as time series.

One parser of the format, shared by the queue plot (:mod:`.plots`) and the replica-load
summary (:mod:`.replicas`). It reads ours (entries carry a ``kind``) and the original's (LBs
only). No pytest here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass
class QueueLog:
    """Time series from one telemetry file: seconds since the first tick → value, per series."""

    lbs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    replica_queue: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    replica_running: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _lb_value(entry: Mapping[str, Any]) -> tuple[str, float | None]:
    """A balancer's queue size, or its in-flight count where it has no queue (router, gateway)."""
    kind = entry.get("kind")
    if kind == "sglang_router":
        workers = entry.get("workers")
        if isinstance(workers, Mapping):
            workers = workers.get("workers")
        loads = [finite_number(w.get("load")) for w in workers or [] if isinstance(w, Mapping)]
        known = [x for x in loads if x is not None]
        return "in flight", sum(known) if known else None
    if "queue_size" in entry or "raw_queue_size" in entry:
        return "queue", finite_number(entry.get("queue_size", entry.get("raw_queue_size")))
    in_flight = entry.get("in_flight")
    if isinstance(in_flight, Mapping):
        known = [x for x in map(finite_number, in_flight.values()) if x is not None]
        return "in flight", sum(known) if known else None
    return "queue", None


def read_queue_log(path: Path) -> QueueLog:
    """Parse ``queue_size/<exp>.txt``: ours (with ``kind``) or the original (LBs only).

    Unparsable lines (a run killed mid-write) and failed polls (``{"error": …}``) are
    skipped: a gap in the line, not a zero.
    """
    log = QueueLog()
    start: float | None = None
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        stamp = finite_number(line.get("time")) if isinstance(line, dict) else None
        if stamp is None:
            continue
        start = stamp if start is None else start
        t = stamp - start
        for key, entry in line.items():
            if key == "time" or not isinstance(entry, Mapping) or "error" in entry:
                continue
            name = str(entry.get("name") or key)
            if entry.get("kind") == "replica":
                for series, gauge in ((log.replica_queue, "num_queue_reqs"),
                                      (log.replica_running, "num_running_reqs")):
                    value = finite_number(entry.get(gauge))
                    if value is not None:
                        series.setdefault(name, []).append((t, value))
                continue
            what, value = _lb_value(entry)
            if value is not None:
                log.lbs.setdefault(f"{name} ({what})" if what != "queue" else name, []).append((t, value))
    return log
