"""Our results beside the SkyWalker paper's: the published ranges as data, and our matching ratios.

Source of every number in :data:`PUBLISHED`: SkyWalker (Xia et al., EuroSys '26, arXiv
2505.24095) section 5, as collected in ``reference/fidelity.md`` §1 (figure, what, published
result). Nothing here is tuned: our values are computed from the run's files with the
definitions below, and the table says whether each falls inside the published range.

Our side of each row, per experiment group (the experiments of one ``<exp-name>``, run side by
side) whose workload the row is about:

* ``throughput``: Σ(input + 2·output) / span (the authors' plotting), system / baseline;
* ``ttft_p50``, ``ttft_mean``, ``ttft_p90``: the system's TTFT as a fraction of the baseline's
  (the paper: "SkyWalker's TTFT is 15.87-57.63 % of the baselines'");
* ``e2e_p50``: baseline / system ("1.05-2.14x better");
* ``cache_hit``: Σ min(cached, input) / Σ input of one system;
* ``replica_spread``: max/min over replicas of each replica's mean running + queued requests
  from the 1 Hz telemetry (:mod:`~pytest_lbbench.report.replicas`). The paper's exact formula
  for its "outstanding requests" imbalance was not available to us (the stored copy of the
  paper gave us section 5's numbers through fidelity.md, not the definition); this is our
  reading of it.

Systems: SkyWalker = ``sky_walker``; RR / LL / CH = ``sky_round_robin`` / ``sky_least_load``
/ ``sky_consistent_hashing`` (one LB in us-east-2, as the paper's); SGL = ``sgl``; GKE =
``gke_gateway``. Fig. 9 (section 5.2): SP-P, selective pushing on pending requests =
``sky_sgl_enhanced``; BP, blind pushing = ``sky_sgl_blind_push``; SP-O, a fixed outstanding
cap (``ReplicaMode.CAP``) = ``sky_sgl_outstanding_cap``. Fig. 10's Region-Local =
``region_local_round_robin`` / ``_least_load`` / ``_consistent_hashing`` (each compared).

Which rows: with a ``--scenario`` preset (``run["config"]["scenario"]`` in ``summary.json``)
every row of that figure, matched against the experiments of the preset's workloads; without
one, the rows about a workload that ran and at least one of the row's systems that ran in it.
A row whose systems did not all run is listed as ``not run`` (or, when some pairs could be
formed, names the systems that did not run). No pytest here; matplotlib only inside
:func:`plot_comparison`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_lbbench.report.replicas import telemetry_spread
from pytest_lbbench.report.table import render_table
from pytest_lbbench.scenarios import SCENARIOS

PAPER = "SkyWalker (EuroSys '26, arXiv 2505.24095)"
FIGURE_NAME = "paper_comparison.png"

# Workload families of the paper's figures, by our workload names.
ARENA = ("arena", "arena_syn", "arena_1m")
WILDCHAT = ("wildchat",)
TOT = ("tot", "tot_single")
MIXED = ("mixed_tree",)
FIG8_ALL = ARENA + WILDCHAT + TOT + MIXED

FIG8_CHAT_SCENARIOS = ("paper-fig8-arena", "paper-fig8-wildchat")
FIG8_SCENARIOS = (*FIG8_CHAT_SCENARIOS, "paper-fig8-tot", "paper-fig8-mixed-tree")

SKYWALKER = "sky_walker"
RR, LL, CH = "sky_round_robin", "sky_least_load", "sky_consistent_hashing"
SGL, GKE = "sgl", "gke_gateway"
SP_P, BP, SP_O = "sky_sgl_enhanced", "sky_sgl_blind_push", "sky_sgl_outstanding_cap"
REGION_LOCAL = ("region_local_round_robin", "region_local_least_load", "region_local_consistent_hashing")
SINGLE_LB = (RR, LL, CH, SGL)

#: The paper's names for our systems, for the table and the figure.
SHORT: dict[str, str] = {
    SKYWALKER: "SkyWalker", RR: "RR", LL: "LL", CH: "CH", SGL: "SGL", GKE: "GKE",
    SP_P: "SP-P", BP: "BP", SP_O: "SP-O",
    "region_local_round_robin": "RL-RR", "region_local_least_load": "RL-LL",
    "region_local_consistent_hashing": "RL-CH",
}

#: Our metric name → (summary key, how a ratio is formed, unit shown).
#: ``"system/baseline"`` or ``"baseline/system"``; ``None``: a value of one system.
METRICS: dict[str, tuple[str, str | None, str]] = {
    "throughput": ("throughput_tpt_per_s", "system/baseline", "x"),
    "ttft_p50": ("ttft_p50_s", "system/baseline", "%"),
    "ttft_mean": ("ttft_mean_s", "system/baseline", "%"),
    "ttft_p90": ("ttft_p90_s", "system/baseline", "%"),
    "ttft_p90_lower": ("ttft_p90_s", "baseline/system", "x"),
    "e2e_p50": ("e2e_p50_s", "baseline/system", "x"),
    "cache_hit": ("cache_hit_rate", None, "%"),
    "replica_spread": ("replica_spread", None, "x"),
}


@dataclass(frozen=True)
class PublishedResult:
    """One published result: the systems, the metric, the range and where the paper says it."""

    figure: str
    metric: str  # a key of METRICS, or "" for a claim one run cannot check
    what: str
    systems: tuple[str, ...]
    baselines: tuple[str, ...]
    low: float
    high: float
    workloads: tuple[str, ...]
    scenarios: tuple[str, ...]
    source: str
    note: str = ""

    @property
    def unit(self) -> str:
        return METRICS[self.metric][2] if self.metric in METRICS else "x"


def _r(figure: str, metric: str, what: str, systems: tuple[str, ...], baselines: tuple[str, ...],
       low: float, high: float, workloads: tuple[str, ...], scenarios: tuple[str, ...],
       source: str, note: str = "") -> PublishedResult:
    return PublishedResult(figure, metric, what, systems, baselines, low, high, workloads,
                           scenarios, f"{PAPER} {source}", note)


_S51 = "section 5.1, Fig. 8"
_S52_9 = "section 5.2, Fig. 9"
_S52_10 = "section 5.2, Fig. 10"

#: fidelity.md §1, row by row.
PUBLISHED: tuple[PublishedResult, ...] = (
    _r("8 Arena/WildChat", "throughput", "throughput SkyWalker / single-LB baselines",
       (SKYWALKER,), SINGLE_LB, 1.12, 1.20, ARENA + WILDCHAT, FIG8_CHAT_SCENARIOS, _S51),
    _r("8 Arena/WildChat", "throughput", "throughput SkyWalker / GKE gateway",
       (SKYWALKER,), (GKE,), 1.43, 1.62, ARENA + WILDCHAT, FIG8_CHAT_SCENARIOS, _S51),
    _r("8 all", "throughput", "throughput SkyWalker / GKE gateway, all workloads",
       (SKYWALKER,), (GKE,), 1.43, 2.06, FIG8_ALL, FIG8_SCENARIOS, _S51),
    _r("8", "throughput", "throughput LL / SkyWalker (LL at 97.38 % of SkyWalker's)",
       (LL,), (SKYWALKER,), 0.9738, 0.9738, ARENA + WILDCHAT, FIG8_CHAT_SCENARIOS, _S51,
       "the workload of this figure is not stated in our notes; matched to Arena/WildChat"),
    _r("8", "cache_hit", "cache hit RR", (RR,), (), 0.1078, 0.1657, ARENA + WILDCHAT,
       FIG8_CHAT_SCENARIOS, _S51),
    _r("8", "cache_hit", "cache hit LL", (LL,), (), 0.2829, 0.3113, ARENA + WILDCHAT,
       FIG8_CHAT_SCENARIOS, _S51),
    _r("8", "cache_hit", "cache hit GKE", (GKE,), (), 0.1808, 0.2430, ARENA + WILDCHAT,
       FIG8_CHAT_SCENARIOS, _S51),
    _r("8", "cache_hit", "cache hit SkyWalker", (SKYWALKER,), (), 0.3696, 0.4655, ARENA + WILDCHAT,
       FIG8_CHAT_SCENARIOS, _S51),
    _r("8", "replica_spread", "outstanding-request spread SGL", (SGL,), (), 2.33, 5.08,
       ARENA + WILDCHAT, FIG8_CHAT_SCENARIOS, _S51),
    _r("8", "replica_spread", "outstanding-request spread CH", (CH,), (), 2.54, 4.92,
       ARENA + WILDCHAT, FIG8_CHAT_SCENARIOS, _S51),
    _r("8 ToT", "throughput", "throughput CH / SkyWalker (CH 2 % ahead)", (CH,), (SKYWALKER,),
       1.02, 1.02, TOT, ("paper-fig8-tot",), _S51),
    _r("8 ToT", "throughput", "throughput CH / LL", (CH,), (LL,), 1.4, 1.4, TOT,
       ("paper-fig8-tot",), _S51),
    _r("8 mixed tree", "cache_hit", "cache hit LL and RR", (LL, RR), (), 0.5866, 0.5932, MIXED,
       ("paper-fig8-mixed-tree",), _S51),
    _r("8 mixed tree", "cache_hit", "cache hit SkyWalker", (SKYWALKER,), (), 0.8956, 0.9001, MIXED,
       ("paper-fig8-mixed-tree",), _S51),
    _r("8 mixed tree", "replica_spread", "outstanding-request spread CH", (CH,), (), 3.36, 3.36,
       MIXED, ("paper-fig8-mixed-tree",), _S51),
    _r("8 mixed tree", "replica_spread", "outstanding-request spread SGL", (SGL,), (), 2.22, 2.22,
       MIXED, ("paper-fig8-mixed-tree",), _S51),
    _r("8 all", "ttft_p50", "TTFT p50 SkyWalker / baselines", (SKYWALKER,), (*SINGLE_LB, GKE),
       0.1587, 0.5763, FIG8_ALL, FIG8_SCENARIOS, _S51),
    _r("8 all", "ttft_mean", "TTFT mean SkyWalker / baselines", (SKYWALKER,), (*SINGLE_LB, GKE),
       0.1587, 0.5763, FIG8_ALL, FIG8_SCENARIOS, _S51),
    _r("8 all", "ttft_p90", "TTFT p90 SkyWalker / baselines", (SKYWALKER,), (*SINGLE_LB, GKE),
       0.1008, 0.2338, FIG8_ALL, FIG8_SCENARIOS, _S51),
    _r("8 all", "e2e_p50", "E2E p50 baselines / SkyWalker", (SKYWALKER,), (*SINGLE_LB, GKE),
       1.05, 2.14, FIG8_ALL, FIG8_SCENARIOS, _S51),
    _r("9", "throughput", "throughput SP-P / BP", (SP_P,), (BP,), 1.27, 1.27, TOT, ("paper-fig9",),
       _S52_9),
    _r("9", "ttft_p90_lower", "TTFT p90 BP / SP-P (18.47x lower)", (SP_P,), (BP,), 18.47, 18.47,
       TOT, ("paper-fig9",), _S52_9),
    _r("9", "cache_hit", "cache hit SP-P", (SP_P,), (), 0.8986, 0.8986, TOT, ("paper-fig9",), _S52_9),
    _r("9", "cache_hit", "cache hit BP", (BP,), (), 0.6889, 0.6889, TOT, ("paper-fig9",), _S52_9),
    _r("9", "throughput", "throughput SP-P / SP-O", (SP_P,), (SP_O,), 1.4, 1.4, TOT, ("paper-fig9",),
       _S52_9, "the paper: at similar TTFT"),
    _r("10", "throughput", "throughput SkyWalker / Region-Local", (SKYWALKER,), REGION_LOCAL,
       1.07, 1.18, (), ("paper-fig10",), _S52_10,
       "the paper does not name Fig. 10's workload; any workload is compared"),
    _r("10", "", "9 SkyWalker replicas match 12 Region-Local ones (25 % cost)", (SKYWALKER,),
       REGION_LOCAL, 9 / 12, 9 / 12, (), ("paper-fig10",), _S52_10,
       "needs runs at several replica counts; one run cannot check it"),
)

NOT_RUN = "not run"
NO_DATA = "no data"
NOT_COMPARABLE = "not comparable"
COMPARED = "compared"


# ----------------------------------------------------------------------------- computing


def scenario_of(summary: Mapping[str, Any]) -> str | None:
    """The ``--scenario`` preset the run used: ``run.config.scenario`` (``None`` without one)."""
    run = summary.get("run") or {}
    config = run.get("config") if isinstance(run, Mapping) else None
    value = config.get("scenario") if isinstance(config, Mapping) else None
    if not value and isinstance(run, Mapping):
        value = run.get("scenario")  # a run meta that carries it at the top level
    return str(value) if value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if not math.isnan(value) else None


def experiment_values(summary: Mapping[str, Any], root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """exp group → system → ``{"workload", metric key: value}`` from the summary's overall rows,
    with the replica spread recomputed from the telemetry (JSON cannot hold its ``inf``)."""
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for row in summary.get("records") or []:
        if row.get("client_region") != "all":
            continue
        values = {key: row.get(key) for key, _, _ in METRICS.values()}
        values["workload"] = row.get("workload")
        groups.setdefault(str(row.get("exp_group")), {})[str(row.get("system"))] = values
    for entry in summary.get("experiments") or []:
        rel = entry.get("queue_size")
        system = groups.get(str(entry.get("exp_group")), {}).get(str(entry.get("system")))
        if system is None:
            continue
        _, value = telemetry_spread(root / rel if rel else None)
        system["replica_spread"] = value
    return groups


def _verdict(value: float, row: PublishedResult) -> str:
    if value < row.low:
        return "below"
    if value > row.high:
        return "above"
    return "within"


def _ratio(system: float | None, baseline: float | None, how: str) -> float | None:
    if system is None or baseline is None:
        return None
    num, den = (system, baseline) if how == "system/baseline" else (baseline, system)
    if den == 0:
        return math.inf if num > 0 else None
    return num / den


def compare_row(
    row: PublishedResult, groups: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    """One published row against the run: our values, a verdict each, and the row's status."""
    out: dict[str, Any] = {
        "figure": row.figure, "metric": row.metric, "what": row.what,
        "systems": list(row.systems), "baselines": list(row.baselines),
        "published": {"low": row.low, "high": row.high, "unit": row.unit},
        "source": row.source, "note": row.note, "ours": [],
    }
    matching = {g: s for g, s in groups.items()
                if not row.workloads or any(v.get("workload") in row.workloads for v in s.values())}
    needed = set(row.systems) | set(row.baselines)
    missing = sorted(needed - {name for s in matching.values() for name in s},
                     key=lambda n: SHORT.get(n, n))
    if not row.metric:
        out.update(status=NOT_COMPARABLE, reason=row.note)
        return out
    key, how, _ = METRICS[row.metric]
    for group, systems in sorted(matching.items()):
        for name in row.systems:
            if name not in systems:
                continue
            mine = _number(systems[name].get(key))
            if how is None:
                pairs: list[tuple[str | None, float | None]] = [(None, mine)]
            else:
                pairs = [(b, _ratio(mine, _number(systems[b].get(key)), how))
                         for b in row.baselines if b in systems]
            for baseline, value in pairs:
                out["ours"].append({
                    "exp_group": group, "workload": systems[name].get("workload"),
                    "system": name, "baseline": baseline, "value": value,
                    "verdict": None if value is None else _verdict(value, row),
                    # As shown; JSON turns an infinite value (an idle replica) into null.
                    "text": format_value(value, row.unit),
                })
    known = [o for o in out["ours"] if o["verdict"] is not None]
    if not out["ours"]:
        where = "/".join(sorted({w for w in row.workloads})) or "any"
        reason = (f"no experiment of workload {where}" if not matching
                  else f"missing: {', '.join(SHORT.get(n, n) for n in missing)}")
        out.update(status=NOT_RUN, reason=reason)
    elif not known:
        out.update(status=NO_DATA, reason=f"{key} not measured (e.g. no telemetry or no successes)")
    else:
        within = sum(1 for o in known if o["verdict"] == "within")
        out.update(status=COMPARED, reason=f"{within} of {len(known)} within",
                   within=within, count=len(known))
        if missing:
            out["reason"] += f"; not run: {', '.join(SHORT.get(n, n) for n in missing)}"
    return out


def paper_comparison(summary: Mapping[str, Any], root: Path,
                     rows: Sequence[PublishedResult] = PUBLISHED) -> dict[str, Any]:
    """The whole comparison of one run (what ``summary.json`` holds under ``paper_comparison``).

    ``root`` is the directory the summary's relative paths start from (its own directory).
    """
    scenario = scenario_of(summary)
    groups = experiment_values(summary, root)
    preset = SCENARIOS.get(scenario) if scenario else None
    if preset is not None:
        # A preset's figure is about its own workloads; other experiments in the directory
        # (an earlier run's, say) must not stand in for them.
        groups = {g: s for g, s in groups.items()
                  if any(v.get("workload") in preset.workloads for v in s.values())}
    chosen = [r for r in rows if scenario is not None and scenario in r.scenarios]
    if chosen:
        note = f"the published rows of scenario {scenario}"
    else:
        # No preset (or one without rows): the rows about a workload that ran and at least one
        # system that ran in it; the rest would only say "not run".
        chosen = [r for r in rows if _touches(r, groups)]
        omitted = len(rows) - len(chosen)
        note = ((f"scenario {scenario!r} has no published rows; " if scenario else "no --scenario; ")
                + f"rows about the workloads and systems that ran ({omitted} others left out)")
    return {
        "paper": PAPER,
        "scenario": scenario,
        "note": note,
        "rows": [compare_row(r, groups) for r in chosen],
    }


def _touches(row: PublishedResult, groups: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> bool:
    """Whether some experiment group ran the row's workload and one of the row's systems."""
    names = set(row.systems) | set(row.baselines)
    return any(name in names and (not row.workloads or values.get("workload") in row.workloads)
               for systems in groups.values() for name, values in systems.items())


# ----------------------------------------------------------------------------- text


def format_value(value: float | None, unit: str) -> str:
    """``1.15x``, ``37.2%``, ``inf`` or ``-``."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{100 * value:.1f}%" if unit == "%" else f"{value:.2f}x"


def format_published(row: Mapping[str, Any]) -> str:
    pub = row["published"]
    low, high = format_value(pub["low"], pub["unit"]), format_value(pub["high"], pub["unit"])
    return low if low == high else f"{low.rstrip('x%')}-{high}"


def format_ours(row: Mapping[str, Any]) -> str:
    """Our values, each named by the system (values) or the baseline (ratios)."""
    ours = row.get("ours") or []
    groups = {o["exp_group"] for o in ours}
    parts = []
    for o in ours:
        who = SHORT.get(o["baseline"] or o["system"], o["baseline"] or o["system"])
        prefix = f"{o['exp_group']}:" if len(groups) > 1 else ""
        text = o.get("text") or format_value(o.get("value"), row["published"]["unit"])
        parts.append(f"{prefix}{who} {text}")
    return ", ".join(parts) or "-"


def comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    """The comparison as a terminal table (empty when there are no rows)."""
    rows = comparison.get("rows") or []
    if not rows:
        return []
    body = [[str(r["figure"]), str(r["what"]), format_published(r), format_ours(r),
             r["reason"] if r["status"] == COMPARED else f"{r['status']}: {r['reason']}"]
            for r in rows]
    scenario = comparison.get("scenario")
    title = (f"paper comparison ({comparison.get('paper')}, scenario {scenario})" if scenario
             else f"paper comparison ({comparison.get('paper')}; {comparison.get('note')})")
    return [title] + render_table(["fig", "what", "published", "ours", "status"], body, label_cols=5)


# ----------------------------------------------------------------------------- figure


def plot_comparison(comparison: Mapping[str, Any], path: Path) -> None:
    """``fig/paper_comparison.png``: per row, the published range as a bar and ours as markers.

    One log-scaled axis holds every row (fractions, ratios and spreads alike); a marker is
    green inside the range and red outside; rows not run are labelled so and left empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(comparison.get("rows") or [])
    if not rows:
        raise ValueError("no published rows to draw")
    fig = Figure(figsize=(10.0, 0.9 + 0.38 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log")
    labels = []
    finite: list[float] = []
    off_scale: list[int] = []  # rows with an infinite value of ours: drawn at the right edge
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        low, high = float(row["published"]["low"]), float(row["published"]["high"])
        # A published point gets a bar ±1 % wide so that it stays visible on the log axis.
        left, right = (low / 1.01, high * 1.01) if low == high else (low, high)
        ax.barh(y, right - left, left=left, height=0.5, color="#9ecae1", edgecolor="#3182bd")
        finite += [left, right]
        status = row.get("status")
        labels.append(f"Fig. {row['figure']}: {row['what']}" + ("" if status == COMPARED else f" ({status})"))
        for o in row.get("ours") or []:
            value = o.get("value")
            if o.get("text") == "inf" or (value is not None and math.isinf(value)):
                off_scale.append(y)
                continue
            if value is None or value <= 0:
                continue
            finite.append(value)
            color = "#2ca02c" if o.get("verdict") == "within" else "#d62728"
            ax.plot([value], [y], marker="o", color=color, markersize=5, linestyle="none")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(labels)), fontsize=7)
    ax.set_xlim(min(finite) / 1.5, max(finite) * 1.5)
    if off_scale:
        ax.plot([max(finite) * 1.4] * len(off_scale), off_scale, marker=">", color="#d62728",
                markersize=6, linestyle="none")
    ax.set_xlabel("value (fractions for % rows, ratios for x rows); bar = published, dot = ours")
    scenario = comparison.get("scenario")
    ax.set_title(f"Ours vs {PAPER}" + (f", scenario {scenario}" if scenario else ""), fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
