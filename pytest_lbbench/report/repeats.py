"""Repetitions of one experiment → means, spreads and 95 % confidence intervals.

``--lbbench-repeat N`` runs every experiment N times; the repetitions share an experiment key
(``<system>-<workload>[-<load>]``). :func:`repeated_summary` turns their overall summaries into
one: each numeric metric's mean, and under ``repeats`` the number of runs, each metric's sample
standard deviation and the half-width of its 95 % confidence interval (Student's t). That is
what the gates compare (:mod:`pytest_lbbench.gate`) and what a saved run keeps. No pytest import.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pytest_lbbench.gate import REPEATS_KEY, higher_is_better
from pytest_lbbench.stats import mean_ci95, stdev, welch_differs


def _numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def repeated_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary of the repetitions ``runs`` (a single run is returned as it is)."""
    if len(runs) == 1:
        return dict(runs[0])
    numbers = [_numbers(run) for run in runs]
    metrics = sorted({k for run in numbers for k in run})
    out: dict[str, Any] = {}
    sd: dict[str, float] = {}
    ci: dict[str, float] = {}
    for metric in metrics:
        values = [run[metric] for run in numbers if metric in run]
        m, half = mean_ci95(values)
        out[metric] = m
        spread = stdev(values)
        if spread is not None and half is not None and len(values) == len(runs):
            sd[metric], ci[metric] = spread, half
    out[REPEATS_KEY] = {"n": len(runs), "sd": sd, "ci95": ci}
    return out


def experiment_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The overall summary of one experiment key's repetitions (``runs`` as collected)."""
    return repeated_summary([r["overall"] for r in runs])


def group_repetitions(experiments: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Experiment key → its repetitions, in run order (probes of an SLA search left out)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for exp in experiments:
        if exp.get("probe"):
            continue
        key = str(exp.get("key") or f"{exp['system']}-{exp['workload']}")
        groups.setdefault(key, []).append(exp)
    return groups


def aggregates(experiments: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per experiment key that ran more than once: identity and the repeated summary."""
    out = []
    for key, runs in group_repetitions(experiments).items():
        if len(runs) < 2:
            continue
        first = runs[0]
        out.append({"key": key, "system": first["system"], "workload": first["workload"],
                    "load": first.get("load"), "overall": experiment_summary(runs)})
    return out


def difference(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> dict[str, Any] | None:
    """How two repeated summaries differ on ``metric``: ``a``'s change against ``b`` in percent,
    whether that is better for ``a``, and whether it exceeds the noise (Welch, 95 %)."""
    ma, mb = a.get(metric), b.get(metric)
    ra, rb = a.get(REPEATS_KEY) or {}, b.get(REPEATS_KEY) or {}
    sa, sb = (ra.get("sd") or {}).get(metric), (rb.get("sd") or {}).get(metric)
    if ma is None or mb is None or sa is None or sb is None or not mb:
        return None
    change = (ma - mb) / abs(mb) * 100.0
    return {"metric": metric, "change_pct": change,
            "better": (change > 0) == higher_is_better(metric) and change != 0,
            "beyond_noise": welch_differs(ma, sa, int(ra["n"]), mb, sb, int(rb["n"]))}
