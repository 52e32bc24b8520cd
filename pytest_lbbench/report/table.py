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

from pytest_lbbench.report.replicas import format_shares, format_spread, queue_log_beside, telemetry_spread

Row = dict[str, Any]
BEST_MARK = "*"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


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
    for col in COLUMNS:
        value = summary.get(col.key)
        text = col.fmt(value)
        if value is not None and best.get(col.key) is not None and value == best[col.key]:
            text += BEST_MARK
        cells.append(text)
    return cells


def workload_table(experiments: Sequence[Row]) -> list[str]:
    """The table of one workload: each system's overall row, then its client regions."""
    overall = [e["overall"] for e in experiments]
    best = {col.key: best_value(overall, col) for col in COLUMNS}
    rows: list[list[str]] = []
    for exp in sorted(experiments, key=lambda e: e["system"]):
        flag = (" (client-bound!)" if exp.get("client_bound") else "") + (
            " (host-bound!)" if exp.get("host_bound") else "")
        rows.append([exp["system"] + flag, "all"] + _cells(exp["overall"], best))
        if len(exp["regions"]) > 1:
            for region, summary in sorted(exp["regions"].items()):
                rows.append(["", region] + _cells(summary, {}))
    return render_table(["system", "clients"] + [c.header for c in COLUMNS], rows, label_cols=2)


def replica_lines(experiments: Sequence[Row]) -> list[str]:
    """Each system's replica share and spread, one line each (nothing if no system has either)."""
    rows: list[list[str]] = []
    for exp in sorted(experiments, key=lambda e: e["system"]):
        _, value = telemetry_spread(queue_log_beside(exp))
        shares = exp.get("replica_share") or {}
        if shares or value is not None:
            rows.append([exp["system"], format_shares(shares), format_spread(value)])
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
