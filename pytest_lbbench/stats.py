"""Small statistics helpers shared by the client and the report (no numpy needed)."""

from __future__ import annotations

from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated ``q``-th percentile (numpy's default method); ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; ``None`` if empty."""
    return float(sum(values) / len(values)) if values else None
