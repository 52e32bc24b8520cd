"""Figures across experiments: against offered load, capacity at SLO, and repetitions.

From ``summary.json`` only (its ``records`` rows, ``repetitions`` and ``capacity``), so they are
redrawn with the rest:

* ``<workload>_load.png`` (a load axis, ``--num-users 10,50``, or the probes of an SLA search):
  TTFT p50, TTFT p90 and goodput against the load per client region, one line per system; with
  repetitions, each point is their mean with its 95 % interval as an error bar;
* ``<workload>_capacity.png`` (``--lbbench-sla``): the capacity at SLO per system, as bars,
  with the lowest load that missed a target marked above each;
* ``<workload>_repeats.png`` (``--lbbench-repeat``): throughput, TTFT p90 and goodput per
  system (and load level) as the repetitions' mean with its 95 % interval, each repetition a dot.

No pytest here; matplotlib is imported when drawing.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pytest_lbbench.gate import REPEATS_KEY
from pytest_lbbench.report.plots import PALETTE, _legend_label, _new_figure, _save, safe_name
from pytest_lbbench.report.resultdir import system_sort_key
from pytest_lbbench.report.store import ALL_REGIONS

Point = tuple[float, float, float | None]  # (load, value, 95 % half-width or None)
PANELS: tuple[tuple[str, str, float], ...] = (
    ("ttft_p50_s", "TTFT p50 (ms)", 1e3),
    ("ttft_p90_s", "TTFT p90 (ms)", 1e3),
    ("goodput_requests_per_s", "goodput (req/s)", 1.0),
)


def load_series(summary: Mapping[str, Any], workload: str) -> dict[str, dict[str, list[Point]]]:
    """System → metric → points over load for ``workload`` (empty when no system ran two loads).

    Repeated experiments are one point (``repetitions``); probes of an SLA search are used when
    the run had no load axis."""
    rows = [r for r in summary.get("records") or []
            if r.get("workload") == workload and r.get("client_region") == ALL_REGIONS
            and r.get("load") is not None]
    rows = [r for r in rows if not r.get("probe")] or rows  # an SLA run's probes are its curve
    repeated = {str(a["key"]): a["overall"] for a in summary.get("repetitions") or []}
    out: dict[str, dict[str, list[Point]]] = {}
    seen: set[str] = set()
    for row in rows:
        key = str(row.get("key"))
        if key in seen:
            continue
        seen.add(key)
        overall = repeated.get(key) or row
        ci = (overall.get(REPEATS_KEY) or {}).get("ci95") or {} if key in repeated else {}
        for metric, _, _ in PANELS:
            value = overall.get(metric)
            if value is not None:
                out.setdefault(str(row["system"]), {}).setdefault(metric, []).append(
                    (float(row["load"]), float(value), ci.get(metric)))
    return {s: {m: sorted(p) for m, p in series.items()} for s, series in out.items()
            if any(len(p) > 1 for p in series.values())}


def plot_load(summary: Mapping[str, Any], workload: str, path: Path) -> None:
    series = load_series(summary, workload)
    kinds = {r.get("load_kind") for r in summary.get("records") or [] if r.get("workload") == workload}
    xlabel = "requests/s per client region" if "rate" in kinds else "users per client region"
    fig, axes = _new_figure(12.0, 3.6, 1, len(PANELS))
    for i, system in enumerate(sorted(series, key=system_sort_key)):
        color = PALETTE[i % len(PALETTE)]
        for ax, (metric, _, scale) in zip(axes, PANELS):
            points = series[system].get(metric) or []
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1] * scale for p in points]
            errs = [(p[2] or 0.0) * scale for p in points]
            ax.errorbar(xs, ys, yerr=errs if any(errs) else None, color=color, marker="o",
                        capsize=3, label=_legend_label(system))
    for ax, (_, ylabel, _) in zip(axes, PANELS):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{workload}: latency and goodput against load")
    _save(fig, path)


def plot_capacity(capacities: Sequence[Mapping[str, Any]], workload: str, path: Path) -> None:
    group = sorted((c for c in capacities if c.get("workload") == workload),
                   key=lambda c: system_sort_key(str(c["system"])))
    fig, (ax,) = _new_figure(max(6.0, 1.0 + 0.9 * len(group)), 4.0)
    xs = list(range(len(group)))
    values = [float(c.get("capacity") or 0.0) for c in group]
    ax.bar(xs, values, color=[PALETTE[i % len(PALETTE)] for i in xs])
    for x, cap in zip(xs, group):
        miss = cap.get("first_miss")
        if miss is not None:
            ax.plot([x - 0.35, x + 0.35], [miss, miss], color="#D55E00", linewidth=1.5)
        text = "-" if cap.get("capacity") is None else f"{cap['capacity']:g}"
        ax.annotate(text, (x, values[x]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [str(c["system"]) for c in group], rotation=30, ha="right", fontsize=8)
    unit = "users per client region" if (group[0].get("kind") if group else "users") == "users" \
        else "requests/s per client region"
    ax.set_ylabel(f"capacity ({unit})")
    targets = "; ".join(group[0].get("targets") or []) if group else ""
    ax.set_title(f"{workload}: capacity at SLO ({targets})\nred: the lowest load tried that missed",
                 fontsize=9)
    _save(fig, path)


REPEAT_PANELS: tuple[tuple[str, str, float], ...] = (
    ("throughput_tpt_per_s", "throughput (tok/s, in + 2·out)", 1.0),
    ("ttft_p90_s", "TTFT p90 (ms)", 1e3),
    ("goodput_requests_per_s", "goodput (req/s)", 1.0),
)


def plot_repetitions(summary: Mapping[str, Any], workload: str, path: Path) -> None:
    groups = sorted((a for a in summary.get("repetitions") or [] if a.get("workload") == workload),
                    key=lambda a: (system_sort_key(str(a["system"])), float((a.get("load") or {}).get("value") or 0)))
    rows = [r for r in summary.get("records") or []
            if r.get("workload") == workload and r.get("client_region") == ALL_REGIONS and not r.get("probe")]
    fig, axes = _new_figure(max(9.0, 1.2 * len(groups) * len(REPEAT_PANELS)), 3.6, 1, len(REPEAT_PANELS))
    names = [str(a["key"]).removeprefix(f"{a['system']}-{workload}").lstrip("-") for a in groups]
    labels = [f"{a['system']} {n}".strip() for a, n in zip(groups, names)]
    xs = list(range(len(groups)))
    for ax, (metric, ylabel, scale) in zip(axes, REPEAT_PANELS):
        for x, agg in zip(xs, groups):
            overall = agg["overall"]
            mean = overall.get(metric)
            if mean is None:
                continue
            half = ((overall.get(REPEATS_KEY) or {}).get("ci95") or {}).get(metric)
            color = PALETTE[x % len(PALETTE)]
            ax.bar(x, mean * scale, color=color, alpha=0.6,
                   yerr=None if half is None else half * scale, capsize=4)
            dots = [float(r[metric]) * scale for r in rows if r.get("key") == agg["key"] and r.get(metric) is not None]
            ax.plot([x] * len(dots), dots, "o", color="black", markersize=3)
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    n = max((int((a["overall"].get(REPEATS_KEY) or {}).get("n") or 0) for a in groups), default=0)
    fig.suptitle(f"{workload}: {n} repetitions, mean with its 95 % interval (dots: each run)")
    _save(fig, path)


def load_figures(summary: Mapping[str, Any], fig_dir: Path) -> list[tuple[Path, Callable[[], None]]]:
    """The (path, draw) pairs of this summary's load and capacity figures."""
    out: list[tuple[Path, Callable[[], None]]] = []
    workloads = sorted({str(r.get("workload")) for r in summary.get("records") or []})
    for workload in workloads:
        if load_series(summary, workload):
            path = fig_dir / f"{safe_name(workload)}_load.png"
            out.append((path, partial(plot_load, summary, workload, path)))
    for workload in sorted({str(a.get("workload")) for a in summary.get("repetitions") or []}):
        path = fig_dir / f"{safe_name(workload)}_repeats.png"
        out.append((path, partial(plot_repetitions, summary, workload, path)))
    capacities = summary.get("capacity") or []
    for workload in sorted({str(c.get("workload")) for c in capacities}):
        path = fig_dir / f"{safe_name(workload)}_capacity.png"
        out.append((path, partial(plot_capacity, capacities, workload, path)))
    return out
