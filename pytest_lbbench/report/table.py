"""Plain-text tables for the end-of-run terminal summary: one table per workload.

Systems are rows (each followed by its client regions), and in every column where "better"
has a direction the best system's value is marked with ``*``. Under each table, each system's
replica share (the fraction of its requests each replica served) and its replica spread (largest
over smallest mean outstanding requests per replica, from the telemetry):
see :mod:`~pytest_lbbench.report.replicas`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pytest_lbbench.gate import REPEATS_KEY, higher_is_better
from pytest_lbbench.report.repeats import experiment_summary, group_repetitions
from pytest_lbbench.report.replicas import format_shares, format_spread, queue_log_beside, telemetry_spread

Row = dict[str, Any]
BEST_MARK = "*"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def _ms1(value: Any) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


@dataclass(frozen=True)
class Column:
    """A table column: header, summary key, formatter, and which way is better."""

    header: str
    key: str
    fmt: Callable[[Any], str]
    better: str | None  # "min", "max" or None (no best)


COLUMNS: tuple[Column, ...] = (
    Column("TTFT p50 ms", "ttft_p50_s", _ms, "min"),
    Column("p90", "ttft_p90_s", _ms, "min"),
    Column("p99", "ttft_p99_s", _ms, "min"),
    Column("E2E p50 s", "e2e_p50_s", _s, "min"),
    Column("p90", "e2e_p90_s", _s, "min"),
    Column("p99", "e2e_p99_s", _s, "min"),
    Column("TPOT p50 ms", "tpot_p50_s", _ms, "min"),
    Column("ITL p50 ms", "itl_p50_s", _ms, "min"),
    Column("goodput req/s", "goodput_requests_per_s", _rate, "max"),
    Column("TPT tok/s", "throughput_tpt_per_s", _num, "max"),
    Column("out tok/s", "output_tokens_per_s", _num, "max"),
    Column("cache hit", "cache_hit_rate", _pct, "max"),
    Column("remote", "served_remote_share", _pct, None),
    Column("fail", "failure_rate", _pct, "min"),
    Column("requests", "requests", _num, None),
)


def best_value(summaries: Sequence[Row], column: Column) -> Any:
    """The best value of ``column`` over ``summaries`` (``None`` if no direction or no data)."""
    if column.better is None:
        return None
    values: list[float] = [s[column.key] for s in summaries if s.get(column.key) is not None]
    if len(values) < 2 or len(set(values)) == 1:
        return None  # a single system, or a column where all agree, has no "best"
    return min(values) if column.better == "min" else max(values)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], label_cols: int) -> list[str]:
    """Left-align the first ``label_cols`` columns (labels), right-align the rest (numbers)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < label_cols else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows]


def _cells(summary: Row, best: dict[str, Any]) -> list[str]:
    cells = []
    ci = ((summary.get(REPEATS_KEY) or {}).get("ci95") or {})
    for col in COLUMNS:
        value = summary.get(col.key)
        text = col.fmt(value)
        if value is not None and ci.get(col.key) is not None:
            text += "±" + col.fmt(ci[col.key])  # the 95 % interval's half-width
        if value is not None and best.get(col.key) is not None and value == best[col.key]:
            text += BEST_MARK
        cells.append(text)
    return cells


def _load_order(exp: Row) -> float:
    return float((exp.get("load") or {}).get("value") or 0.0)


def _row_label(exp: Row, runs: int) -> str:
    load = (exp.get("load") or {}).get("id")
    flag = (" (client-bound!)" if exp.get("client_bound") else "") + (
        " (host-bound!)" if exp.get("host_bound") else "")
    return str(exp["system"]) + (f" {load}" if load else "") + (f" (n={runs})" if runs > 1 else "") + flag


def workload_table(experiments: Sequence[Row]) -> list[str]:
    """The table of one workload: each system's overall row (per load level, when the load is
    an axis), then its client regions. Repetitions are one row of means ± 95 % intervals."""
    groups = group_repetitions(experiments)
    rows_in: list[tuple[Row, Row, int]] = []  # (identity, overall, runs)
    for repetitions in groups.values():
        overall = experiment_summary(repetitions)
        rows_in.append((dict(repetitions[0]), overall, len(repetitions)))
    best = {col.key: best_value([o for _, o, _ in rows_in], col) for col in COLUMNS}
    rows: list[list[str]] = []
    for exp, overall, count in sorted(rows_in, key=lambda t: (t[0]["system"], _load_order(t[0]))):
        rows.append([_row_label(exp, count), "all"] + _cells(overall, best))
        if count == 1 and len(exp.get("regions") or {}) > 1:
            for region, summary in sorted(exp["regions"].items()):
                rows.append(["", region] + _cells(summary, {}))
    return render_table(["system", "clients"] + [c.header for c in COLUMNS], rows, label_cols=2)


def replica_lines(experiments: Sequence[Row]) -> list[str]:
    """Each system's replica share and spread, one line each (nothing if no system has either)."""
    rows: list[list[str]] = []
    for exp in sorted(experiments, key=lambda e: (e["system"], _load_order(e), e.get("repeat") or 1)):
        _, value = telemetry_spread(queue_log_beside(exp))
        shares = exp.get("replica_share") or {}
        if shares or value is not None:
            load = (exp.get("load") or {}).get("id")
            rep = f" rep{exp['repeat']}" if (exp.get("repeats") or 1) > 1 else ""
            rows.append([exp["system"] + (f" {load}" if load else "") + rep, format_shares(shares),
                         format_spread(value)])
    if not rows:
        return []
    return ["replica share of requests; spread = max/min mean running+queued per replica"] + [
        "  " + line for line in render_table(["system", "share", "spread"], rows, label_cols=2)
    ]


def summary_lines(experiments: Sequence[Row]) -> list[str]:
    """One titled table per workload, each followed by its systems' replica shares."""
    lines: list[str] = []
    for workload in sorted({e["workload"] for e in experiments}):
        if lines:
            lines.append("")
        lines.append(f"workload {workload}  ({BEST_MARK} = best system in that column)")
        group = [e for e in experiments if e["workload"] == workload]
        lines += workload_table(group)
        lines += replica_lines(group)
    return lines


def fault_lines(experiments: Sequence[Row]) -> list[str]:
    """The fault drill of each experiment that ran one: failures (hit by the drill, and not),
    throughput before and lowest after each fault, and when it was back within 20 %."""
    rows: list[list[str]] = []
    for exp in sorted(experiments, key=lambda e: (e["workload"], e["system"])):
        faults = exp.get("faults")
        if not faults:
            continue
        counts = faults.get("counts") or {}
        recoveries = faults.get("recovery") or [{}]
        for i, rec in enumerate(recoveries):
            base, low, after = rec.get("baseline_tok_s"), rec.get("lowest_tok_s"), rec.get("recovered_after_s")
            rows.append([
                f"{exp['system']}-{exp['workload']}" if i == 0 else "",
                str(rec.get("spec") or ", ".join(faults.get("drill") or [])),
                str(counts.get("failed", 0)) if i == 0 else "",
                str(counts.get("fault_hit", 0)) if i == 0 else "",
                str(counts.get("unexplained", 0)) if i == 0 else "",
                "-" if base is None else f"{base:.0f}",
                "-" if low is None else f"{low:.0f}",
                "not recovered" if after is None and base is not None else "-" if after is None else f"{after:.0f} s",
            ])
    if not rows:
        return []
    headers = ["experiment", "fault", "failed", "hit by fault", "unexplained", "tok/s before",
               "lowest after", "recovered after"]
    return ["fault drills (throughput in output tokens/s per 5 s; recovered = back within 20 %)"] + [
        "  " + line for line in render_table(headers, rows, label_cols=2)
    ]


def capacity_lines(capacities: Sequence[Row]) -> list[str]:
    """The capacity at SLO of each system × workload (``--lbbench-sla``), best marked."""
    if not capacities:
        return []
    lines: list[str] = []
    for workload in sorted({c["workload"] for c in capacities}):
        group = [c for c in capacities if c["workload"] == workload]
        values = [c["capacity"] for c in group if c.get("capacity") is not None]
        best = max(values) if len(set(values)) > 1 else None
        rows = []
        for cap in sorted(group, key=lambda c: (-(c.get("capacity") or 0.0), c["system"])):
            value = cap.get("capacity")
            text = "-" if value is None else f"{value:g}"
            rows.append([cap["system"], text + (BEST_MARK if best is not None and value == best else ""),
                         "-" if cap.get("first_miss") is None else f"{cap['first_miss']:g}",
                         str(len(cap.get("probes") or [])), "yes" if cap.get("converged") else "no",
                         cap.get("text", "")])
        unit = "users/region" if group[0].get("kind") == "users" else "req/s/region"
        lines.append(f"capacity at SLO, workload {workload} ({'; '.join(group[0].get('targets') or [])}; "
                     f"{unit}, range {group[0]['range'][0]:g}-{group[0]['range'][1]:g})")
        lines += ["  " + line for line in render_table(
            ["system", "capacity", "first miss", "probes", "converged", ""], rows, label_cols=1)]
    return lines


#: What the baseline table shows when no --lbbench-fail names a metric.
SHOWN_METRICS = ("ttft_p90_s", "e2e_p90_s", "throughput_tpt_per_s", "goodput_requests_per_s")


def baseline_lines(experiments: Sequence[Row], capacities: Sequence[Row],
                   baseline: dict[str, dict[str, Any]], baseline_name: str,
                   thresholds: Sequence[Any]) -> list[str]:
    """Each gated metric (or a few key ones), baseline vs now, per experiment key."""
    from pytest_lbbench.gate import compare

    gated = [t for t in thresholds if t.metric != "capacity"]
    shown = () if gated else SHOWN_METRICS
    rows: list[list[str]] = []
    missing: list[str] = []
    for key, runs in group_repetitions(experiments).items():
        base = baseline.get(key)
        if base is None:
            missing.append(key)
            continue
        now = experiment_summary(runs)
        for row in compare(key, now, base, list(gated), shown):
            rows.append(_compare_row(row))
    cap_gates = [t for t in thresholds if t.metric == "capacity"]
    for cap in capacities:
        base = baseline.get(cap["key"])
        if base is not None and "capacity" in base:
            for row in compare(cap["key"], {"capacity": cap.get("capacity")}, base, cap_gates,
                               () if cap_gates else ("capacity",)):
                rows.append(_compare_row(row))
    lines = [f"against baseline {baseline_name} (change: + is more; verdict from --lbbench-fail)"]
    if rows:
        lines += ["  " + line for line in render_table(
            ["experiment", "metric", "baseline", "now", "change", "allowed", "verdict"], rows, label_cols=2)]
    if missing:
        lines.append(f"  not in the baseline (nothing compared): {', '.join(missing)}")
    return lines


def _compare_row(row: Any) -> list[str]:
    change = row.change_pct
    if row.allowed_pct is None:
        verdict = "(not gated)"
    elif row.breached:
        verdict = "FAIL"
    elif row.worse_pct is not None and row.worse_pct > row.allowed_pct:
        verdict = "ok (within noise)"
    else:
        verdict = "ok"
    return [row.label, row.metric, "-" if row.baseline is None else f"{row.baseline:.4g}",
            "-" if row.current is None else f"{row.current:.4g}",
            "-" if change is None else f"{change:+.1f}%",
            "-" if row.allowed_pct is None else f"{row.allowed_pct:g}% worse", verdict]


NOISE_METRICS = ("throughput_tpt_per_s", "ttft_p90_s", "goodput_requests_per_s")


def noise_lines(experiments: Sequence[Row]) -> list[str]:
    """With repetitions: does the best system's lead on each key metric exceed the noise?"""
    from pytest_lbbench.report.repeats import difference

    groups = group_repetitions(experiments)
    by_cell: dict[tuple[str, str], list[tuple[str, Row]]] = {}
    for runs in groups.values():
        if len(runs) < 2:
            continue
        first = runs[0]
        cell = (first["workload"], str((first.get("load") or {}).get("id") or ""))
        by_cell.setdefault(cell, []).append((first["system"], experiment_summary(runs)))
    lines: list[str] = []
    for (workload, load), systems in sorted(by_cell.items()):
        if len(systems) < 2:
            continue
        for metric in NOISE_METRICS:
            known = [(name, s) for name, s in systems if s.get(metric) is not None]
            if len(known) < 2:
                continue
            pick = max if higher_is_better(metric) else min
            best_name, best = pick(known, key=lambda t: float(t[1][metric]))
            parts = []
            for name, other in known:
                if name == best_name:
                    continue
                diff = difference(best, other, metric)
                if diff is not None:
                    parts.append(f"vs {name} {diff['change_pct']:+.1f}% "
                                 f"({'beyond' if diff['beyond_noise'] else 'within'} the noise)")
            if parts:
                where = f"{workload}{' ' + load if load else ''}"
                lines.append(f"{where}: best {metric} {best_name}: " + ", ".join(parts))
    if lines:
        lines.insert(0, "differences between systems (repetitions' means; noise = Welch's t-test, 95 %)")
    return lines


def ttft_parts_lines(experiments: Sequence[Row]) -> list[str]:
    """Where TTFT went per experiment (:mod:`~pytest_lbbench.report.ttft_parts`): each part's
    mean (the means add up to the mean TTFT), the harness residual's p50 and p90, and the new
    connections per hop among the measured requests."""
    from pytest_lbbench.report.ttft_parts import PART_LABELS, PARTS

    rows: list[list[str]] = []
    for exp in sorted(experiments, key=lambda e: (e["workload"], _load_order(e), e["system"])):
        parts = exp.get("ttft_parts") or {}
        if not parts.get("requests"):
            continue
        means = [(parts["parts"][name] or {}).get("mean") for name in PARTS]
        residual = parts["parts"]["residual"]
        new = parts.get("new_connections") or {}
        rows.append([f"{exp['system']}-{exp['workload']}", *(_ms1(m) for m in means),
                     _ms1(residual.get("p50")), _ms1(residual.get("p90")),
                     " ".join(f"{hop} {n}" for hop, n in sorted(new.items()) if n) or "0",
                     str(parts["requests"])])
    if not rows:
        return []
    headers = ["experiment", *(PART_LABELS[name] for name in PARTS), "residual p50", "p90",
               "new connections", "requests"]
    return ["where TTFT goes (mean ms per request; residual = the harness's own time)"] + [
        "  " + line for line in render_table(headers, rows, label_cols=1)
    ]
