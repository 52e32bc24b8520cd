"""Regression gates: compare an experiment's metrics with a saved baseline run.

A threshold ``METRIC:PCT%`` allows METRIC to get worse by at most PCT percent, where "worse"
depends on the metric: latencies and the failure rate may not grow, throughputs, goodput, SLO
attainment, the cache hit rate and the capacity at SLO may not drop. ``ttft_p90_s:10%`` fails
when TTFT p90 grows by more than 10 %; ``goodput_requests_per_s:5%`` fails when goodput drops by
more than 5 %. Only the names in :data:`GATE_METRICS` are accepted: a misspelt metric would
otherwise be a gate that never fires.

With repetitions on both sides (``--lbbench-repeat``), each side is a mean over its runs with a
standard deviation, and a gate fails only when the change is both past the threshold and past
the noise (Welch's t-test at 95 %). No pytest import.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Mapping

from pytest_lbbench.stats import welch_differs

_LATENCIES = tuple(f"{m}_{s}_s" for m in ("ttft", "e2e", "tpot", "itl") for s in ("mean", "p50", "p90", "p99"))
HIGHER_IS_BETTER: tuple[str, ...] = (
    "throughput_tpt_per_s", "output_tokens_per_s", "requests_per_s", "cache_hit_rate",
    "goodput_requests_per_s", "slo_attainment",
    "capacity",  # the highest load that met every --lbbench-sla target
)
LOWER_IS_BETTER: tuple[str, ...] = ("failure_rate", "failed", *_LATENCIES)
#: Every metric a gate (or an SLA target) may name: the summary's metrics that have a direction.
GATE_METRICS: tuple[str, ...] = (*HIGHER_IS_BETTER, *LOWER_IS_BETTER)
#: Where a summary keeps the spread of repeated runs: ``{"n": N, "sd": {metric: sd}}``.
REPEATS_KEY = "repeats"

_THRESHOLD = re.compile(r"^(?P<metric>[a-z0-9_]+):(?P<pct>\d+(\.\d+)?)%?$")


def higher_is_better(metric: str) -> bool:
    return metric in HIGHER_IS_BETTER


def check_metric(metric: str, what: str) -> None:
    """``ValueError`` naming the valid metrics (and the nearest ones) unless ``metric`` is one."""
    if metric in GATE_METRICS:
        return
    near = difflib.get_close_matches(metric, GATE_METRICS, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(near)}?" if near else ""
    raise ValueError(f"{what}: unknown metric {metric!r}.{hint} Valid metrics: {', '.join(GATE_METRICS)}")


@dataclass(frozen=True)
class Threshold:
    """How much one metric may get worse, in percent of the baseline value."""

    metric: str
    max_worse_pct: float

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)


def parse_threshold(text: str) -> Threshold:
    """Parse ``METRIC:PCT%``; ``ValueError`` says what is valid."""
    match = _THRESHOLD.match(text.strip())
    if not match:
        raise ValueError(f"bad threshold {text!r}: expected METRIC:PCT%, e.g. ttft_p90_s:10% or "
                         "goodput_requests_per_s:5%")
    check_metric(match.group("metric"), f"threshold {text!r}")
    return Threshold(match.group("metric"), float(match.group("pct")))


@dataclass(frozen=True)
class Comparison:
    """One metric of one experiment, now against the baseline."""

    label: str
    metric: str
    baseline: float | None
    current: float | None
    allowed_pct: float | None  # None: shown, not gated
    #: The change is past the noise of repeated runs (None: not both sides repeated).
    beyond_noise: bool | None = None

    @property
    def change_pct(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        if self.baseline == 0:
            return 0.0 if self.current == 0 else float("inf") * (1 if self.current > 0 else -1)
        return (self.current - self.baseline) / abs(self.baseline) * 100.0

    @property
    def worse_pct(self) -> float | None:
        change = self.change_pct
        if change is None:
            return None
        return -change if higher_is_better(self.metric) else change

    @property
    def breached(self) -> bool:
        worse = self.worse_pct
        if self.allowed_pct is None or worse is None or worse <= self.allowed_pct:
            return False
        return self.beyond_noise is not False

    def message(self, baseline_name: str) -> str:
        direction = "dropped" if higher_is_better(self.metric) else "grew"
        noise = " and past the noise of the repeated runs" if self.beyond_noise else ""
        return (f"{self.label}: {self.metric} {direction} from {self.baseline:.6g} (baseline "
                f"{baseline_name}) to {self.current:.6g} ({self.change_pct:+.1f}%), more than the "
                f"allowed {self.allowed_pct:g}%{noise}")


def _spread(summary: Mapping[str, Any], metric: str) -> tuple[float, int] | None:
    repeats = summary.get(REPEATS_KEY)
    if not isinstance(repeats, Mapping):
        return None
    n, sd = repeats.get("n"), (repeats.get("sd") or {}).get(metric)
    if not isinstance(n, int) or n < 2 or sd is None:
        return None
    return float(sd), n


def compare(label: str, current: Mapping[str, Any], baseline: Mapping[str, Any],
            thresholds: list[Threshold], shown: tuple[str, ...] = ()) -> list[Comparison]:
    """A :class:`Comparison` for every threshold's metric, then for each ``shown`` metric
    without one (not gated)."""
    allowed: dict[str, float | None] = {t.metric: t.max_worse_pct for t in thresholds}
    for metric in shown:
        allowed.setdefault(metric, None)
    rows = []
    for metric, pct in allowed.items():
        now, before = current.get(metric), baseline.get(metric)
        beyond: bool | None = None
        a, b = _spread(current, metric), _spread(baseline, metric)
        if a is not None and b is not None and now is not None and before is not None:
            beyond = welch_differs(float(now), a[0], a[1], float(before), b[0], b[1])
        rows.append(Comparison(label, metric, None if before is None else float(before),
                               None if now is None else float(now), pct, beyond))
    return rows


def check(
    label: str, current: Mapping[str, Any], baseline: Mapping[str, Any],
    thresholds: list[Threshold], baseline_name: str,
) -> list[str]:
    """Messages for every threshold ``current`` breaks against ``baseline`` (empty = pass).
    A metric missing on either side (e.g. no successful request) is not a regression."""
    return [row.message(baseline_name) for row in compare(label, current, baseline, thresholds)
            if row.breached]
