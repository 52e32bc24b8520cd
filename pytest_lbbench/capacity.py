"""Capacity at SLO: the highest offered load at which a system still meets every target.

``--lbbench-sla ttft_p90_s=1.0,e2e_p90_s=30`` names the targets: a latency (or the failure
rate) must stay at or under its bound, a higher-is-better metric (``slo_attainment=0.9``,
``goodput_requests_per_s=2``) at or over it. :func:`search` bisects over the load within
``--lbbench-sla-range LO,HI`` with a bounded number of probes, each a full experiment; it
assumes that a system that misses a target at some load also misses it at every higher load
(the shape of a latency-vs-load curve; near the knee, noise can break that, which repetitions
of the probes would show). No pytest import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pytest_lbbench.gate import check_metric, higher_is_better
from pytest_lbbench.loads import Load, LoadKind

DEFAULT_RANGE: dict[str, tuple[float, float]] = {"users": (1.0, 200.0), "rate": (0.25, 32.0)}
DEFAULT_MAX_PROBES = 7
#: Stop when the passing and the failing load are this close (relative to the passing one);
#: users are whole numbers, so they also stop one user apart.
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class SlaTarget:
    """One target: ``metric`` at or under (latencies) / at or over (throughputs) ``bound``."""

    metric: str
    bound: float

    @property
    def upper(self) -> bool:
        return not higher_is_better(self.metric)

    def met(self, summary: Mapping[str, Any]) -> bool:
        value = summary.get(self.metric)
        if value is None:
            return False  # nothing measured (every request failed): not met
        return float(value) <= self.bound if self.upper else float(value) >= self.bound

    @property
    def text(self) -> str:
        return f"{self.metric} {'<=' if self.upper else '>='} {self.bound:g}"


def parse_sla(text: str) -> tuple[SlaTarget, ...]:
    """``"ttft_p90_s=1.0,e2e_p90_s=30"`` → targets; ``ValueError`` names the valid metrics."""
    targets: list[SlaTarget] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        metric, sep, value = part.partition("=")
        metric = metric.strip()
        if not sep:
            raise ValueError(f"--lbbench-sla: {part!r} is not METRIC=BOUND (e.g. ttft_p90_s=1.0)")
        check_metric(metric, "--lbbench-sla")
        if metric == "capacity":
            raise ValueError("--lbbench-sla: capacity is what the search finds, not a target")
        try:
            bound = float(value)
        except ValueError:
            raise ValueError(f"--lbbench-sla: {metric}={value!r}: the bound must be a number") from None
        if not math.isfinite(bound) or bound < 0:
            raise ValueError(f"--lbbench-sla: {metric}={value!r}: the bound must be finite and >= 0")
        if any(t.metric == metric for t in targets):
            raise ValueError(f"--lbbench-sla: {metric} is given twice")
        targets.append(SlaTarget(metric, bound))
    if not targets:
        raise ValueError("--lbbench-sla: no target given (e.g. --lbbench-sla ttft_p90_s=1.0)")
    return tuple(targets)


def parse_range(text: str, kind: LoadKind) -> tuple[float, float]:
    """``"1,200"`` → ``(1.0, 200.0)`` (both valid loads of ``kind``, LO < HI)."""
    parts = [p.strip() for p in str(text).replace(":", ",").split(",") if p.strip()]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--lbbench-sla-range: expected LO,HI (e.g. 1,200), got {text!r}") from None
    Load(kind, lo), Load(kind, hi)
    if not lo < hi:
        raise ValueError(f"--lbbench-sla-range: LO must be below HI, got {text!r}")
    return lo, hi


@dataclass(frozen=True)
class Probe:
    load: float
    met: bool
    missed: tuple[str, ...] = ()  # the targets it missed


@dataclass
class Capacity:
    """What the search found for one system × workload."""

    kind: LoadKind
    low: float
    high: float
    #: The highest load that met every target (None: even ``low`` missed one).
    capacity: float | None = None
    #: The lowest load that missed a target (None: even ``high`` met them all).
    first_miss: float | None = None
    probes: list[Probe] = field(default_factory=list)
    #: The bracket is within the tolerance (or the range's edge was decisive).
    converged: bool = False

    def describe(self) -> str:
        unit = "users/region" if self.kind == "users" else "req/s/region"
        if self.capacity is None:
            return f"below {self.low:g} {unit} (the lowest load tried missed a target)"
        if self.first_miss is None:
            return f">= {self.high:g} {unit} (met every target at the top of the range)"
        return f"{self.capacity:g} {unit} (misses at {self.first_miss:g})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "range": [self.low, self.high], "capacity": self.capacity,
                "first_miss": self.first_miss, "converged": self.converged,
                "probes": [{"load": p.load, "met": p.met, "missed": list(p.missed)} for p in self.probes]}


def _midpoint(good: float, bad: float, kind: LoadKind) -> float | None:
    """A load strictly between ``good`` and ``bad`` (None when there is none: users adjacent)."""
    if kind == "users":
        mid = float(math.floor((good + bad) / 2))
        return mid if good < mid < bad else None
    return (good + bad) / 2


def search(probe: Callable[[Load], tuple[bool, tuple[str, ...]]], kind: LoadKind, low: float,
           high: float, *, max_probes: int = DEFAULT_MAX_PROBES,
           tolerance: float = DEFAULT_TOLERANCE) -> Capacity:
    """Bisect for the highest load in ``[low, high]`` that meets every target.

    ``probe(load)`` runs one experiment and says ``(met, missed targets)``. The top of the range
    is tried first (a system that meets the targets there needs no more probes), then the
    bottom, then midpoints, until the passing and the failing load are within ``tolerance``
    of the passing one (or adjacent user counts) or ``max_probes`` experiments have run.
    """
    if max_probes < 2:
        raise ValueError(f"the SLA search needs at least 2 probes, got {max_probes}")
    result = Capacity(kind, low, high)

    def run(value: float) -> bool:
        met, missed = probe(Load(kind, value))
        result.probes.append(Probe(value, met, tuple(missed)))
        return met

    if run(high):
        result.capacity, result.converged = high, True
        return result
    result.first_miss = high
    if not run(low):
        result.first_miss, result.converged = low, True
        return result
    good, bad = low, high
    while len(result.probes) < max_probes:
        if bad - good <= tolerance * good:
            break
        mid = _midpoint(good, bad, kind)
        if mid is None:
            break
        if run(mid):
            good = mid
        else:
            bad = mid
    result.capacity, result.first_miss = good, bad
    mid = _midpoint(good, bad, kind)
    result.converged = mid is None or bad - good <= tolerance * good
    return result
