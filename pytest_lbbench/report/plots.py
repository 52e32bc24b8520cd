"""Figures of a run, drawn from its stored files only, so they can be redrawn without a rerun.

Inputs: ``summary.json`` (the rows and each experiment's file paths), the per-region result
JSONs it points to, and the 1 Hz ``queue_size/<exp>.txt`` telemetry. Outputs: PNGs under
``<out>/fig/``, named by experiment group (``<exp-name>``, the workload by default):

* ``<group>_throughput.png``: bars of both throughput definitions (Σ(in + 2·out)/span as in
  the paper, and output tokens/s);
* ``<group>_ttft_box.png`` (log y) and ``<group>_e2e_box.png``: the paper's box plots, with
  whiskers at P10/P90, no fliers, a red median and a triangle for the mean;
* ``<group>_ttft_cdf.png``: TTFT CDF per system;
* ``<group>_cache_hit.png``: KV-cache hit-rate bars;
* ``<group>_region_latency.png``: TTFT and E2E boxes per system, one per client region;
* ``queue_<exp>.png``: queue size over time, per LB (top) and per replica (bottom);
* ``<group>_faults.png`` (runs with ``--fault``): throughput, TTFT p90 and failures per 5 s,
  one line per system, the drill's events marked;
* ``<workload>_load.png`` and ``<workload>_capacity.png``: across loads and capacity at SLO
  (:mod:`~pytest_lbbench.report.loadplots`).

Systems appear in catalog order under their display labels. Each figure is drawn in its
own ``try``: a failure becomes a warning string for the caller and never stops the others
(the data files were written before any figure). Matplotlib is imported only here, inside
the drawing functions, and only through its object API with the Agg canvas: no pyplot
state, no display needed. No pytest here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from pytest_lbbench.report.metrics import measured
from pytest_lbbench.report.queuelog import QueueLog, finite_number, read_queue_log
from pytest_lbbench.report.resultdir import system_sort_key
from pytest_lbbench.report.store import ALL_REGIONS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIG_DIR = "fig"

#: Seaborn's "colorblind" palette, as the paper's figures used; hard-coded to avoid seaborn.
PALETTE: tuple[str, ...] = (
    "#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC",
    "#CA9161", "#FBAFE4", "#949494", "#ECE133", "#56B4E9",
)


@dataclass
class SystemData:
    """One system's experiment within a group: summary rows and latency samples."""

    system: str
    label: str
    exp_name: str
    color: str
    overall: dict[str, Any]
    regions: dict[str, dict[str, Any]]
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    region_ttft: dict[str, list[float]] = field(default_factory=dict)
    region_e2e: dict[str, list[float]] = field(default_factory=dict)
    #: The fault drill of the experiment (``faults`` of its result files), if it ran one.
    faults: dict[str, Any] | None = None


@dataclass
class Group:
    """Experiments compared side by side (same ``<exp-name>``, different systems)."""

    name: str
    workload: str
    systems: list[SystemData]


def _ok_latencies(records: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """TTFT and E2E of successful requests (the plot script's filter, minus its 1000 s cap)."""
    ok = [r for r in measured(records) if not r.get("failed") and r.get("e2e_latency") is not None]
    ttft = [float(r["ttft"]) for r in ok if finite_number(r.get("ttft")) is not None]
    e2e = [float(r["e2e_latency"]) for r in ok if finite_number(r.get("e2e_latency")) is not None]
    return ttft, e2e


def load_groups(summary: Mapping[str, Any], root: Path, warnings: list[str]) -> list[Group]:
    """The summary's experiments grouped for plotting, with samples read from their files."""
    rows: dict[tuple[str, str], dict[str, Any]] = {
        (r["exp_name"], r["client_region"]): r for r in summary.get("records", [])
    }
    entries = sorted(summary.get("experiments", []),
                     key=lambda e: (e["exp_group"], system_sort_key(e["system"]), e["exp_name"]))
    # One colour per system over the whole run, so a system looks the same in every figure.
    systems = sorted({e["system"] for e in entries}, key=system_sort_key)
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(systems)}
    groups: dict[str, Group] = {}
    for entry in entries:
        overall = rows.get((entry["exp_name"], ALL_REGIONS), {})
        data = SystemData(
            system=entry["system"], label=entry["label"], exp_name=entry["exp_name"],
            color=colors[entry["system"]], overall=overall,
            regions={region: rows[(entry["exp_name"], region)] for region in entry["files"]
                     if (entry["exp_name"], region) in rows},
        )
        for region, rel in sorted(entry["files"].items()):
            path = root / rel
            try:
                payload = json.loads(path.read_text(encoding="utf-8"))
                ttft, e2e = _ok_latencies(payload["metrics"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                warnings.append(f"{entry['exp_name']}: cannot read {path} for the latency figures "
                                f"({type(exc).__name__}: {exc})")
                continue
            data.region_ttft[region], data.region_e2e[region] = ttft, e2e
            if data.faults is None and isinstance(payload.get("faults"), dict):
                data.faults = payload["faults"]
            data.ttft += ttft
            data.e2e += e2e
        group = groups.setdefault(entry["exp_group"], Group(entry["exp_group"], entry["workload"], []))
        group.systems.append(data)
    return list(groups.values())


# ----------------------------------------------------------------------------- drawing


def _new_figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure  # lazy: only runs that draw pay for matplotlib

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig: Figure, path: Path) -> None:
    # Write then rename, so a figure that fails half-way never leaves a truncated PNG.
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=150, format="png")
    tmp.replace(path)


def _tick_label(label: str) -> str:
    """``Ours [Push+Pull]`` → two lines, as the paper's ``Sky\\nWalker``: seven fit side by side."""
    return label.replace(" ", "\n")


def _legend_label(label: str) -> str:
    """One line per legend entry: the paper's ``Sky\\nWalker`` is a bar label, not a legend's."""
    return " ".join(label.split())


def _log_axis(ax: Axes, which: Literal["x", "y"] = "y") -> None:
    """A log axis with plain tick labels (0.2 s rather than 2×10⁻¹): latencies read as seconds.

    Minor ticks are labelled only when the data spans less than a decade (otherwise the
    axis would have no label between 0.1 and 1); over several decades they would collide.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    axis.set_major_formatter(plain)
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    axis.set_minor_formatter(plain if lo > 0 and hi / lo < 10 else NullFormatter())
    ax.tick_params(axis=which, which="minor", labelsize=7)


def _width(n: int) -> float:
    return max(4.0, 1.0 + 0.9 * n)


def _bars(ax: Axes, group: Group, key: str, scale: float, fmt: str) -> None:
    xs = list(range(len(group.systems)))
    values = [s.overall.get(key) for s in group.systems]
    heights = [v / scale if isinstance(v, (int, float)) else 0.0 for v in values]
    bars = ax.bar(xs, heights, color=[s.color for s in group.systems], edgecolor="black", linewidth=0.6)
    for bar, value in zip(bars, values):
        text = "n/a" if value is None else fmt.format(value / scale)
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs, [_tick_label(s.label) for s in group.systems], fontsize=8)
    ax.margins(y=0.15)


def plot_throughput(group: Group, path: Path) -> None:
    """Both throughput definitions, side by side."""
    fig, (tpt, out) = _new_figure(2 * _width(len(group.systems)), 3.2, 1, 2)
    _bars(tpt, group, "throughput_tpt_per_s", 1e3, "{:.2f}")
    tpt.set_ylabel("Throughput (10³ token/s)")
    tpt.set_title("Σ(input + 2·output) / span", fontsize=9)
    _bars(out, group, "output_tokens_per_s", 1.0, "{:.0f}")
    out.set_ylabel("Output tokens/s")
    out.set_title("Σ output / span", fontsize=9)
    fig.suptitle(f"{group.name}: throughput")
    _save(fig, path)


def _box(ax: Axes, data: Sequence[Sequence[float]], positions: Sequence[float],
         colors: Sequence[str], width: float = 0.6) -> None:
    """The paper's box: P10–P90 whiskers, no fliers, red median, triangle at the mean."""
    keep = [i for i, d in enumerate(data) if len(d) > 0]  # an empty box cannot be drawn
    if not keep:
        return
    boxes = ax.boxplot(
        [list(data[i]) for i in keep], positions=[positions[i] for i in keep], widths=width,
        whis=(10, 90), showfliers=False, showmeans=True, patch_artist=True,
        meanprops={"marker": "^", "markerfacecolor": "white", "markeredgecolor": "black",
                   "markersize": 6},
        medianprops={"color": "red", "linewidth": 1.5},
        manage_ticks=False,
    )
    for patch, i in zip(boxes["boxes"], keep):
        patch.set_facecolor(colors[i])
        patch.set_alpha(0.85)


def _latency_box(group: Group, path: Path, attr: str, ylabel: str, log: bool) -> None:
    fig, (ax,) = _new_figure(_width(len(group.systems)), 3.2)
    data = [[v for v in getattr(s, attr) if v > 0 or not log] for s in group.systems]
    xs = [float(i) for i in range(len(group.systems))]
    _box(ax, data, xs, [s.color for s in group.systems])
    for x, d in zip(xs, data):
        if not d:
            ax.annotate("no data", (x, 0.5), xycoords=("data", "axes fraction"), ha="center", fontsize=8)
    ax.set_xticks(xs, [_tick_label(s.label) for s in group.systems], fontsize=8)
    ax.set_xlim(-0.6, len(xs) - 0.4)
    if log and any(data):
        _log_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{group.name} (whiskers P10–P90, ▲ mean, red median)", fontsize=9)
    ax.grid(axis="y", alpha=0.3, which="both" if log else "major")
    _save(fig, path)


def plot_ttft_box(group: Group, path: Path) -> None:
    """TTFT per system, log y (the paper's fig. 8 e–h)."""
    _latency_box(group, path, "ttft", "TTFT (s)", log=True)


def plot_e2e_box(group: Group, path: Path) -> None:
    """E2E latency per system, linear y (the paper's fig. 8 i–l)."""
    _latency_box(group, path, "e2e", "E2E Latency (s)", log=False)


def plot_ttft_cdf(group: Group, path: Path) -> None:
    """Empirical TTFT CDF per system, log x."""
    fig, (ax,) = _new_figure(5.5, 3.6)
    drawn = False
    for s in group.systems:
        values = sorted(v for v in s.ttft if v > 0)
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.step(values, ys, where="post", color=s.color, label=_legend_label(s.label), linewidth=1.4)
        drawn = True
    if drawn:
        _log_axis(ax, "x")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("Fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"{group.name}: TTFT CDF (successful requests)", fontsize=9)
    _save(fig, path)


def plot_cache_hit(group: Group, path: Path) -> None:
    """KV-cache hit rate Σ min(cached, input) / Σ input per system."""
    fig, (ax,) = _new_figure(_width(len(group.systems)), 3.2)
    _bars(ax, group, "cache_hit_rate", 0.01, "{:.1f}%")
    ax.set_ylabel("KV cache hit rate (%)")
    ax.set_title(f"{group.name}: cache hit rate", fontsize=9)
    _save(fig, path)


def plot_region_latency(group: Group, path: Path) -> None:
    """TTFT (log) and E2E boxes per system, one box per client region, side by side."""
    regions = sorted({r for s in group.systems for r in s.region_ttft})
    n = max(1, len(regions))
    width = 0.8 / n
    fig, (top, bottom) = _new_figure(_width(len(group.systems)) * (1 + 0.3 * (n - 1)), 5.6, 2, 1)
    region_colors = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(regions)}
    for ax, attr, ylabel, log in ((top, "region_ttft", "TTFT (s)", True),
                                  (bottom, "region_e2e", "E2E Latency (s)", False)):
        data: list[list[float]] = []
        positions: list[float] = []
        colors: list[str] = []
        for i, s in enumerate(group.systems):
            for j, region in enumerate(regions):
                values = getattr(s, attr).get(region, [])
                data.append([v for v in values if v > 0 or not log])
                positions.append(i - 0.4 + width * (j + 0.5))
                colors.append(region_colors[region])
        _box(ax, data, positions, colors, width=width * 0.85)
        for i in range(len(group.systems)):
            if not any(data[i * len(regions):(i + 1) * len(regions)]):
                ax.annotate("no data", (i, 0.5), xycoords=("data", "axes fraction"), ha="center",
                            fontsize=8)
        ax.set_xticks(range(len(group.systems)), [_tick_label(s.label) for s in group.systems], fontsize=8)
        ax.set_xlim(-0.6, len(group.systems) - 0.4)
        if log and any(data):
            _log_axis(ax)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    top.legend(handles=[Patch(facecolor=region_colors[r], label=f"clients in {r}") for r in regions],
               fontsize=7, loc="upper right")
    top.set_title(f"{group.name}: latency per client region", fontsize=9)
    _save(fig, path)


def plot_queue(log: QueueLog, title: str, path: Path) -> None:
    """Queue size over time: each LB (top); each replica's queue and running requests (bottom)."""
    fig, (top, bottom) = _new_figure(7.0, 5.0, 2, 1)
    for i, (name, points) in enumerate(sorted(log.lbs.items())):
        top.plot([t for t, _ in points], [v for _, v in points], label=name,
                 color=PALETTE[i % len(PALETTE)], linewidth=1.2)
    top.set_ylabel("LB queue / in flight\n(requests)")
    for i, name in enumerate(sorted(set(log.replica_queue) | set(log.replica_running))):
        color = PALETTE[i % len(PALETTE)]
        queue, running = log.replica_queue.get(name, []), log.replica_running.get(name, [])
        bottom.plot([t for t, _ in queue], [v for _, v in queue], color=color, linewidth=1.2,
                    label=f"{name} queued")
        bottom.plot([t for t, _ in running], [v for _, v in running], color=color, linewidth=1.0,
                    linestyle="--", label=f"{name} running")
    bottom.set_ylabel("replica (requests)")
    bottom.set_xlabel("time since first sample (s)")
    for ax, empty in ((top, not log.lbs), (bottom, not (log.replica_queue or log.replica_running))):
        if empty:
            ax.annotate("no samples", (0.5, 0.5), xycoords="axes fraction", ha="center")
        else:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_ylim(bottom=0)  # counts: an idle system sits on the axis, not mid-figure
        ax.grid(alpha=0.3)
    top.set_title(title, fontsize=9)
    _save(fig, path)


_EVENT_STYLE = {"crash": ("#D55E00", "-"), "partition": ("#CC78BC", "-"), "slow": ("#DE8F05", "-"),
                "restart": ("#029E73", "--"), "heal": ("#029E73", "--"), "unslow": ("#029E73", "--")}


def fault_marks(faults: Mapping[str, Any]) -> list[tuple[float, str, str]]:
    """The events a fault timeline marks: ``(seconds since traffic start, action, target)``.

    Events undone after the traffic ended (a crashed replica restarted so that the next
    experiment starts whole) are not part of the drill, and would stretch the time axis over
    the drain, so they are left out, as is anything after the timeline's last bin."""
    t0, timeline = faults.get("t0"), faults.get("timeline") or {}
    if not isinstance(t0, (int, float)):
        return []
    end_s = timeline["t_s"][-1] + timeline["bin_s"] if timeline.get("t_s") else float("inf")
    marks = []
    for event in faults.get("events") or []:
        at_s = float(event["at"]) - t0
        if not event.get("undo_at_end") and at_s <= end_s:
            marks.append((at_s, str(event["action"]), str(event["target"])))
    return marks


def plot_fault_timeline(group: Group, path: Path) -> None:
    """Per 5 s: throughput, TTFT p90 and failures of every system that ran the drill, with
    its events as vertical lines (solid: the fault, dashed: its end)."""
    drilled = [s for s in group.systems if s.faults and s.faults.get("timeline")]
    if not drilled:
        raise ValueError("no system of this group ran a fault drill")
    fig, (tput, ttft, fails) = _new_figure(7.5, 6.5, 3, 1)
    for system in drilled:
        assert system.faults is not None
        line = system.faults["timeline"]
        mid = [t + line["bin_s"] / 2 for t in line["t_s"]]
        look: dict[str, Any] = {"marker": "o", "markersize": 3, "color": system.color,
                                "label": _legend_label(system.label)}
        tput.plot(mid, line["throughput_tok_s"], **look)
        ttft.plot(mid, [v if v is not None else float("nan") for v in line["ttft_p90_s"]], **look)
        fails.plot(mid, line["failures"], **look)
    for at_s, action, target in fault_marks(drilled[0].faults or {}):
        color, style = _EVENT_STYLE.get(action, ("#949494", ":"))
        for ax in (tput, ttft, fails):
            ax.axvline(at_s, color=color, linestyle=style, linewidth=1.0, alpha=0.8)
        tput.annotate(f"{action} {target}", (at_s, 1.0), xycoords=("data", "axes fraction"),
                      fontsize=6, rotation=90, va="top", ha="right")
    tput.set_ylabel("output tokens/s")
    ttft.set_ylabel("TTFT p90 (s)")
    fails.set_ylabel("failed requests")
    fails.set_xlabel("seconds since traffic started (5 s bins)")
    for ax in (tput, ttft, fails):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    tput.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    drill = ", ".join((drilled[0].faults or {}).get("drill") or [])
    tput.set_title(f"{group.name}: fault drill {drill}", fontsize=9)
    _save(fig, path)


def plot_process_resources(samples: Mapping[str, Sequence[Sequence[float]]], title: str, path: Path) -> None:
    """Resident memory (top) and open file descriptors (bottom) of every process over time.

    ``samples`` maps a process name to ``[elapsed s, RSS MiB, open fds]`` points, as the soak
    benchmark writes them to ``soak.json``; processes of one kind (replica, lb, link, client:
    the name's first word) share a colour, so a growing kind stands out."""
    if not samples:
        raise ValueError("no process was sampled")
    fig, (rss, fds) = _new_figure(7.5, 5.5, 2, 1)
    kinds = sorted({name.split("-")[0] for name in samples})
    colors = {kind: PALETTE[i % len(PALETTE)] for i, kind in enumerate(kinds)}
    labelled: set[str] = set()
    for name, points in sorted(samples.items()):
        kind = name.split("-")[0]
        minutes = [p[0] / 60.0 for p in points]
        label = None if kind in labelled else kind
        labelled.add(kind)
        rss.plot(minutes, [p[1] for p in points], color=colors[kind], linewidth=1.0, label=label)
        fds.plot(minutes, [p[2] for p in points], color=colors[kind], linewidth=1.0)
    rss.set_ylabel("RSS (MiB)")
    fds.set_ylabel("open file descriptors")
    fds.set_xlabel("minutes since traffic started")
    for ax in (rss, fds):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    rss.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    rss.set_title(title, fontsize=9)
    _save(fig, path)


# ----------------------------------------------------------------------------- driver

def _draw_queue(source: Path, title: str, path: Path) -> None:
    plot_queue(read_queue_log(source), title, path)


#: Per-group figures: file-name suffix → drawing function. A dict so that one can be
#: replaced (tests make one raise) or added without touching the driver.
GROUP_FIGURES: dict[str, Callable[[Group, Path], None]] = {
    "throughput": plot_throughput,
    "ttft_box": plot_ttft_box,
    "e2e_box": plot_e2e_box,
    "ttft_cdf": plot_ttft_cdf,
    "cache_hit": plot_cache_hit,
    "region_latency": plot_region_latency,
}


def safe_name(text: str) -> str:
    """``text`` usable as a file name on every OS."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "unnamed"


def draw_figures(summary: Mapping[str, Any], root: Path, fig_dir: Path) -> tuple[list[Path], list[str]]:
    """Draw every figure of ``summary`` into ``fig_dir``; return (written PNGs, warnings).

    ``root`` is the directory the summary's relative file paths start from (the one holding
    ``summary.json``). Never raises for a figure: its failure is one warning string.
    """
    warnings: list[str] = []
    written: list[Path] = []
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
        groups = load_groups(summary, root, warnings)
    except Exception as exc:  # noqa: BLE001 - any failure here only costs the figures
        return written, [f"figures skipped: {type(exc).__name__}: {exc}"]

    def attempt(path: Path, draw: Callable[[], None]) -> None:
        try:
            draw()
        except Exception as exc:  # noqa: BLE001 - one figure's failure must not stop the rest
            warnings.append(f"figure {path.name} not drawn: {type(exc).__name__}: {exc}")
            return
        written.append(path)

    for group in groups:
        for suffix, draw in GROUP_FIGURES.items():
            path = fig_dir / f"{safe_name(group.name)}_{suffix}.png"
            attempt(path, partial(draw, group, path))
        if any(s.faults for s in group.systems):
            path = fig_dir / f"{safe_name(group.name)}_faults.png"
            attempt(path, partial(plot_fault_timeline, group, path))
    for entry in sorted(summary.get("experiments", []), key=lambda e: e["exp_name"]):
        if not entry.get("queue_size"):
            continue  # the original tooling did not log every system (e.g. the GKE gateway)
        path = fig_dir / f"queue_{safe_name(entry['exp_name'])}.png"
        source = root / entry["queue_size"]
        title = f"{entry['label']} ({entry['exp_name']}): queues, 1 Hz"
        attempt(path, partial(_draw_queue, source, title, path))
    return written, warnings
