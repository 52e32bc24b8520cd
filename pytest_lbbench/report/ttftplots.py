"""The "where TTFT goes" figure: one stacked bar per system, from ``summary.json``.

``<group>_ttft_parts.png`` per experiment group (the workload, or a scenario): for every
experiment, the mean of each TTFT part (:mod:`pytest_lbbench.report.ttft_parts`) stacked, so
a bar's length is the mean TTFT (means add up; percentiles do not). The harness residual's p50
and p90 are written beside each bar. No pytest here; matplotlib is imported when drawing.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pytest_lbbench.report.plots import _new_figure, _save, safe_name
from pytest_lbbench.report.resultdir import system_sort_key
from pytest_lbbench.report.ttft_parts import PART_LABELS, PARTS

#: One colour per part, the harness residual in the alarm colour.
PART_COLORS = {
    "wan": "#56B4E9", "connect": "#CC78BC", "lb_queue": "#DE8F05",
    "engine_queue": "#029E73", "prefill": "#0173B2", "residual": "#D55E00",
}


def _bar_label(entry: Mapping[str, Any]) -> str:
    label = " ".join(str(entry.get("label") or entry.get("system")).split())
    if entry.get("load") is not None:
        label += f" @{entry['load']:g}"
    if (entry.get("repeat") or 1) > 1:
        label += f" rep{entry['repeat']}"
    return label


def parts_entries(summary: Mapping[str, Any], group: str) -> list[Mapping[str, Any]]:
    """The experiments of ``group`` that have TTFT parts, in catalog order."""
    entries = [e for e in summary.get("experiments") or []
               if e.get("exp_group") == group and (e.get("ttft_parts") or {}).get("requests")]
    return sorted(entries, key=lambda e: (system_sort_key(str(e["system"])), str(e["exp_name"])))


def plot_ttft_parts(entries: Sequence[Mapping[str, Any]], title: str, path: Path) -> None:
    fig, (ax,) = _new_figure(10.0, 1.6 + 0.45 * len(entries))
    labels = [_bar_label(e) for e in entries]
    lefts = [0.0] * len(entries)
    for part in PARTS:
        widths = [1e3 * float((e["ttft_parts"]["parts"][part] or {}).get("mean") or 0.0) for e in entries]
        ax.barh(labels, widths, left=lefts, color=PART_COLORS[part], label=PART_LABELS[part])
        lefts = [left + w for left, w in zip(lefts, widths)]
    for y, (entry, total) in enumerate(zip(entries, lefts)):
        residual = entry["ttft_parts"]["parts"]["residual"]
        ax.text(total, y, f"  {total:.0f} ms; residual p50 {1e3 * (residual.get('p50') or 0):.1f}, "
                          f"p90 {1e3 * (residual.get('p90') or 0):.1f} ms", va="center", fontsize=7)
    ax.invert_yaxis()  # catalog order from the top
    ax.set_xlabel("mean TTFT per request (ms), by part")
    ax.set_xlim(0, max(lefts, default=1.0) * 1.45 or 1.0)
    ax.set_title(title, fontsize=9)
    # Below the bars, where it covers neither a bar nor its numbers.
    ax.legend(fontsize=7, ncols=len(PARTS), loc="upper center", bbox_to_anchor=(0.5, -0.18 - 0.6 / len(entries)))
    _save(fig, path)


def ttft_parts_figures(summary: Mapping[str, Any], fig_dir: Path) -> list[tuple[Path, Callable[[], None]]]:
    """The (path, draw) pairs of this summary's "where TTFT goes" figures, one per group."""
    out: list[tuple[Path, Callable[[], None]]] = []
    for group in sorted({str(e.get("exp_group")) for e in summary.get("experiments") or []}):
        entries = parts_entries(summary, group)
        if entries:
            path = fig_dir / f"{safe_name(group)}_ttft_parts.png"
            out.append((path, partial(plot_ttft_parts, entries, f"{group}: where TTFT goes", path)))
    return out
