"""What a fault drill did to a system: a 5 s timeline and the time to recover.

From one experiment's records (all client regions) and its drill log
(:mod:`pytest_lbbench.faults`): per bin of ``bin_s`` seconds from the start of traffic,
throughput (output tokens of requests that finished in the bin, per second), TTFT p90 of the
requests that started in it and failures in it; then, per fault event, the throughput before
it (the bins that ended before it, the first one left out as ramp-up when there are more) and
the time until a bin is back within ``tolerance`` (20 %) of that. Only the bins of the traffic
phase count (``--duration``): the drain after it loses throughput by design. No pytest here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["BIN_S", "RECOVERY_TOLERANCE", "fault_timeline", "recovery"]

BIN_S = 5.0
RECOVERY_TOLERANCE = 0.2
"""Recovered = throughput back within 20 % of what it was before the fault (issue 14)."""


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def fault_timeline(records: Iterable[Mapping[str, Any]], t0: float, traffic_s: float,
                   bin_s: float = BIN_S) -> dict[str, Any]:
    """Bins of ``bin_s`` over ``[t0, t0 + traffic_s]`` (wall seconds; the last may be short)."""
    n = max(1, math.ceil(traffic_s / bin_s))
    tokens = [0.0] * n
    ttfts: list[list[float]] = [[] for _ in range(n)]
    failures = [0] * n
    started = [0] * n

    def index(t: Any) -> int | None:
        if not isinstance(t, (int, float)):
            return None
        i = int((t - t0) // bin_s)
        return i if 0 <= i < n else None

    for r in records:
        i = index(r.get("start"))
        if i is not None:
            started[i] += 1
        if r.get("failed"):
            j = index(r.get("failed_at") or r.get("start"))
            if j is not None:
                failures[j] += 1
            continue
        j = index(r.get("end"))
        if j is not None:
            tokens[j] += float(r.get("output_tokens") or 0)
        if i is not None and isinstance(r.get("ttft"), (int, float)):
            ttfts[i].append(float(r["ttft"]))
    widths = [min(bin_s, traffic_s - k * bin_s) for k in range(n)]
    return {
        "bin_s": bin_s,
        "t_s": [round(k * bin_s, 3) for k in range(n)],
        "throughput_tok_s": [round(tok / w, 3) if w > 0 else 0.0 for tok, w in zip(tokens, widths)],
        "ttft_p90_s": [_p90(v) for v in ttfts],
        "failures": failures,
        "requests": started,
    }


def recovery(timeline: Mapping[str, Any], fault_s: float,
             tolerance: float = RECOVERY_TOLERANCE, fault_end_s: float | None = None) -> dict[str, Any]:
    """Throughput before a fault at ``fault_s`` (seconds from the start), the lowest bin after
    it, and ``recovered_after_s``: from the fault to the end of the first bin back within
    ``tolerance`` of before after the throughput fell below it (0 when it never fell below;
    None when it did not recover before the traffic ended, or there was no throughput before
    the fault). Only a fall that starts while the fault lasts (until ``fault_end_s`` plus one
    bin; to the end of traffic without an end) is the fault's: 5 s bins swing by tens of
    percent on their own, and a swing long after a healed partition is not its doing."""
    bin_s = float(timeline["bin_s"])
    starts: Sequence[float] = timeline["t_s"]
    tput: Sequence[float] = timeline["throughput_tok_s"]
    before = [tput[k] for k, t in enumerate(starts) if t + bin_s <= fault_s]
    if len(before) > 1:
        before = before[1:]  # the first bin is the users' ramp-up
    out: dict[str, Any] = {"fault_s": fault_s, "baseline_tok_s": None, "lowest_tok_s": None,
                           "recovered_after_s": None}
    if not before:
        return out
    baseline = sum(before) / len(before)
    after = [(t, tput[k]) for k, t in enumerate(starts) if t + bin_s > fault_s]
    out["baseline_tok_s"] = round(baseline, 3)
    if not after or baseline <= 0:
        return out  # nothing to recover to
    out["lowest_tok_s"] = min(v for _, v in after)
    floor = (1 - tolerance) * baseline
    window_end = math.inf if fault_end_s is None else fault_end_s + bin_s
    first_dip = next((i for i, (t, value) in enumerate(after) if value < floor and t < window_end), None)
    if first_dip is None:
        out["recovered_after_s"] = 0.0
        return out
    for t, value in after[first_dip + 1:]:
        if value >= floor:
            out["recovered_after_s"] = round(t + bin_s - fault_s, 3)
            return out
    return out
