"""Plain-text tables for the end-of-run terminal summary."""

from __future__ import annotations

from typing import Any, Callable, Sequence

Row = dict[str, Any]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


# (header, key in the experiment summary, formatter)
COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("TTFT p50 ms", "ttft_p50_s", _ms),
    ("p90", "ttft_p90_s", _ms),
    ("p99", "ttft_p99_s", _ms),
    ("E2E p50 s", "e2e_p50_s", _s),
    ("p90", "e2e_p90_s", _s),
    ("p99", "e2e_p99_s", _s),
    ("TPT tok/s", "throughput_tpt_per_s", _num),
    ("out tok/s", "output_tokens_per_s", _num),
    ("cache hit", "cache_hit_rate", _pct),
    ("remote", "served_remote_share", _pct),
    ("fail", "failure_rate", _pct),
    ("requests", "requests", _num),
)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-align the first columns (labels), right-align the rest (numbers)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    label_cols = sum(1 for h in headers if h in ("system", "workload", "clients"))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < label_cols else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        )

    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    return lines


def experiment_rows(experiments: Sequence[Row]) -> list[list[str]]:
    """One row per experiment (all client regions), then one per client region."""
    rows: list[list[str]] = []
    for exp in sorted(experiments, key=lambda e: (e["workload"], e["system"])):
        flag = " (client-bound!)" if exp.get("client_bound") else ""
        rows.append(
            [exp["system"] + flag, exp["workload"], "all"]
            + [f(exp["overall"].get(key)) for _, key, f in COLUMNS]
        )
        if len(exp["regions"]) > 1:
            for region, summary in sorted(exp["regions"].items()):
                rows.append(["", "", region] + [f(summary.get(key)) for _, key, f in COLUMNS])
    return rows


def summary_lines(experiments: Sequence[Row]) -> list[str]:
    headers = ["system", "workload", "clients"] + [h for h, _, _ in COLUMNS]
    return render_table(headers, experiment_rows(experiments))
