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


# Two-sided 95 % critical values of Student's t by degrees of freedom (the standard table, e.g.
# NIST/SEMATECH e-Handbook of Statistical Methods, §1.3.6.7.2); beyond 30 the normal's 1.96 is
# within 2 % of the exact value, and between table rows the next smaller df is used (a slightly
# wider, never narrower, interval).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
        17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
        25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000,
        120: 1.980}


def t_critical_95(df: float) -> float:
    """Two-sided 95 % critical value of Student's t with ``df`` degrees of freedom (> 0)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    rows = [k for k in _T95 if k <= df]
    return _T95[max(rows)] if rows else _T95[1]


def stdev(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n − 1); ``None`` with fewer than two values."""
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return float((sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5)


def mean_ci95(values: Sequence[float]) -> tuple[float | None, float | None]:
    """``(mean, half-width of its 95 % confidence interval)`` by Student's t; the half-width is
    ``None`` with fewer than two values (one run says nothing about its noise)."""
    if not values:
        return None, None
    m = float(sum(values) / len(values))
    s = stdev(values)
    if s is None:
        return m, None
    return m, t_critical_95(len(values) - 1) * s / len(values) ** 0.5


def welch_differs(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int) -> bool:
    """Whether two means differ at the 95 % level (Welch's t-test, unequal variances).

    Needs two or more values on each side; two identical noiseless sides differ iff their
    means do."""
    if n_a < 2 or n_b < 2:
        raise ValueError("Welch's test needs at least two values on each side")
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    if va + vb == 0:
        return bool(mean_a != mean_b)
    t = abs(mean_a - mean_b) / (va + vb) ** 0.5
    df = (va + vb) ** 2 / ((va ** 2 / (n_a - 1) if va else 0.0) + (vb ** 2 / (n_b - 1) if vb else 0.0))
    return bool(t > t_critical_95(df))
