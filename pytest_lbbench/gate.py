"""Regression gates: compare an experiment's metrics with a saved baseline run.

A threshold ``METRIC:PCT%`` allows METRIC to get worse by at most PCT percent, where "worse"
depends on the metric: latencies and the failure rate may not grow, throughputs and the cache
hit rate may not drop. ``ttft_p90_s:10%`` fails when TTFT p90 grows by more than 10 %;
``throughput_tpt_per_s:5%`` fails when that throughput drops by more than 5 %. No pytest import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

HIGHER_IS_BETTER = (
    "throughput_tpt_per_s", "output_tokens_per_s", "requests_per_s", "cache_hit_rate",
    "goodput_requests_per_s", "slo_attainment",
)
LOWER_IS_BETTER_PREFIXES = ("ttft_", "e2e_", "itl_", "tpot_", "failure_rate")

_THRESHOLD = re.compile(r"^(?P<metric>[a-z0-9_]+):(?P<pct>\d+(\.\d+)?)%?$")


@dataclass(frozen=True)
class Threshold:
    """How much one metric may get worse, in percent of the baseline value."""

    metric: str
    max_worse_pct: float

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER


def gateable(metric: str) -> bool:
    return metric in HIGHER_IS_BETTER or metric.startswith(LOWER_IS_BETTER_PREFIXES)


def parse_threshold(text: str) -> Threshold:
    """Parse ``METRIC:PCT%``; ``ValueError`` says what is valid."""
    match = _THRESHOLD.match(text.strip())
    if not match or not gateable(match.group("metric")):
        raise ValueError(
            f"bad threshold {text!r}: expected METRIC:PCT%, e.g. ttft_p90_s:10% or "
            f"throughput_tpt_per_s:5%, where METRIC is one of {', '.join(HIGHER_IS_BETTER)} or a "
            f"latency metric starting with {', '.join(LOWER_IS_BETTER_PREFIXES)} (see summary.csv)"
        )
    return Threshold(match.group("metric"), float(match.group("pct")))


def check(
    label: str, current: Mapping[str, Any], baseline: Mapping[str, Any],
    thresholds: list[Threshold], baseline_name: str,
) -> list[str]:
    """Messages for every threshold ``current`` breaks against ``baseline`` (empty = pass)."""
    breaches = []
    for t in thresholds:
        now, before = current.get(t.metric), baseline.get(t.metric)
        if now is None or before is None:
            continue  # nothing to compare (e.g. no successful request): not a regression
        if before == 0:
            worse = (now < 0) if t.higher_is_better else (now > 0)
            change_pct = float("inf") if worse else 0.0
        else:
            change_pct = (now - before) / abs(before) * 100.0
            worse_pct = -change_pct if t.higher_is_better else change_pct
            worse = worse_pct > t.max_worse_pct
        if worse:
            direction = "dropped" if t.higher_is_better else "grew"
            breaches.append(
                f"{label}: {t.metric} {direction} from {before:.6g} (baseline {baseline_name}) to "
                f"{now:.6g} ({change_pct:+.1f}%), more than the allowed {t.max_worse_pct:g}%"
            )
    return breaches
