"""``<out>/index.html``: the run's summary table and every figure on one page.

Self-contained apart from the PNGs (inline CSS, no scripts, no external fonts), with
relative links only, so the output directory can be moved, zipped or served as CI
artifacts. One table per experiment group (the workload by default), one row per system
over all client regions, the best value of each column marked as in the terminal table;
the per-region rows are folded underneath; each system's replica share and spread; and, at
the top, the comparison with the paper's published results. No pytest here.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from pytest_lbbench.report.paper import COMPARED, FIGURE_NAME, format_ours, format_published
from pytest_lbbench.report.plots import safe_name as _safe  # the names the files were given
from pytest_lbbench.report.replicas import format_shares, format_spread
from pytest_lbbench.report.resultdir import system_sort_key
from pytest_lbbench.report.store import ALL_REGIONS, SUMMARY_CSV, SUMMARY_JSON
from pytest_lbbench.report.table import COLUMNS, Column, best_value

INDEX_HTML = "index.html"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


#: The terminal table's columns plus the SLO ones, which only this report has room for.
HTML_COLUMNS: tuple[Column, ...] = (
    *COLUMNS[:-2],
    Column("req/s", "requests_per_s", _rate, "max"),
    Column("goodput req/s", "goodput_requests_per_s", _rate, "max"),
    Column("SLO met", "slo_attainment", _pct, "max"),
    *COLUMNS[-2:],
)

#: Figure file-name suffix → caption.
CAPTIONS: dict[str, str] = {
    "throughput": "Throughput: Σ(input + 2·output) / span (the paper's) and output tokens/s",
    "ttft_box": "TTFT (log scale); box P25–P75, whiskers P10–P90, red median, ▲ mean",
    "e2e_box": "E2E latency; box P25–P75, whiskers P10–P90, red median, ▲ mean",
    "ttft_cdf": "TTFT CDF of successful requests",
    "cache_hit": "KV-cache hit rate Σ min(cached, input) / Σ input",
    "region_latency": "TTFT and E2E latency per client region",
    "ttft_parts": "Where TTFT goes: each part's mean per request, stacked (emulated WAN delay, "
                  "connection setup, LB queue, engine queue, prefill, and the harness's own residual)",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #e6f4e6; }
tr.region td { color: #555; font-size: 0.95em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; max-width: 60em; }
.warn { color: #a33; }
tr.notrun td { color: #888; }
td.within { background: #e6f4e6; }
td.outside { background: #fbe4e4; }
dl.meta dt { font-weight: bold; float: left; clear: left; width: 11em; }
dl.meta dd { margin-left: 12em; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _href(path: Path, base: Path) -> str:
    rel = os.path.relpath(path, base).replace(os.sep, "/")
    return quote(rel)


def _cells(row: Mapping[str, Any], best: Mapping[str, Any]) -> str:
    out = []
    for col in HTML_COLUMNS:
        value = row.get(col.key)
        is_best = value is not None and best.get(col.key) is not None and value == best[col.key]
        cls = "num best" if is_best else "num"
        title = ' title="best in this column"' if is_best else ""
        out.append(f'<td class="{cls}"{title}>{_esc(col.fmt(value))}</td>')
    return "".join(out)


def group_table(rows: Sequence[dict[str, Any]]) -> str:
    """One group's table: a row per system (all regions), its client regions folded under it."""
    overall = sorted((r for r in rows if r.get("client_region") == ALL_REGIONS),
                     key=lambda r: system_sort_key(str(r.get("system"))))
    best = {col.key: best_value(overall, col) for col in HTML_COLUMNS}
    head = "".join(f"<th>{_esc(c.header)}</th>" for c in HTML_COLUMNS)
    lines = [f"<table><tr><th>system</th><th>clients</th>{head}</tr>"]
    for row in overall:
        flag = (" ⚠ client-bound" if row.get("client_bound") else "") + (
            " ⚠ host-bound" if row.get("host_bound") else "")
        lines.append(
            f'<tr><td title="{_esc(row.get("system"))}">{_esc(row.get("label"))}{_esc(flag)}</td>'
            f"<td>all</td>{_cells(row, best)}</tr>"
        )
        regions = sorted((r for r in rows if r.get("exp_name") == row.get("exp_name")
                          and r.get("client_region") != ALL_REGIONS),
                         key=lambda r: str(r.get("client_region")))
        if len(regions) > 1:
            for region in regions:
                lines.append(f'<tr class="region"><td></td><td>{_esc(region.get("client_region"))}</td>'
                             f"{_cells(region, {})}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def replica_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """Each system's replica share of requests and its spread (nothing if none is known)."""
    rows = []
    for entry in sorted(entries, key=lambda e: system_sort_key(str(e.get("system")))):
        replicas = entry.get("replicas") or {}
        share = replicas.get("share") or {}
        if not share and replicas.get("spread") is None:
            continue
        rows.append(f'<tr><td title="{_esc(entry.get("system"))}">{_esc(entry.get("label"))}</td>'
                    f"<td>{_esc(format_shares(share))}</td>"
                    f'<td class="num">{_esc(format_spread(replicas.get("spread")))}</td></tr>')
    if not rows:
        return ""
    return ("<table><tr><th>system</th><th>replica share of requests</th>"
            "<th>spread (max/min mean running+queued)</th></tr>" + "".join(rows) + "</table>")


def paper_section(comparison: Mapping[str, Any] | None, figure: Path | None, base: Path) -> str:
    """The comparison with the paper: one row per published result, ours beside it."""
    rows = (comparison or {}).get("rows") or []
    if not rows:
        return ""
    scenario = (comparison or {}).get("scenario")
    parts = [f"<h2>Compared with the paper ({_esc((comparison or {}).get('paper'))})</h2>",
             f"<p>{_esc('scenario ' + scenario if scenario else (comparison or {}).get('note'))}. "
             "Ratios are ours, computed from this run; the published range is the paper's.</p>",
             "<table><tr><th>figure</th><th>what</th><th>published</th><th>ours</th>"
             "<th>status</th><th>source</th></tr>"]
    for row in rows:
        compared = row.get("status") == COMPARED
        known = [o for o in row.get("ours") or [] if o.get("verdict") is not None]
        all_within = compared and all(o.get("verdict") == "within" for o in known)
        cls = "within" if all_within else ("outside" if compared else "")
        status = row.get("reason") if compared else f"{row.get('status')}: {row.get('reason')}"
        row_class = "" if compared else ' class="notrun"'
        note = f" ({row['note']})" if row.get("note") else ""
        parts.append(
            f"<tr{row_class}>"
            f"<td>{_esc(row.get('figure'))}</td><td>{_esc(row.get('what'))}</td>"
            f'<td class="num">{_esc(format_published(row))}</td>'
            f'<td class="{cls}">{_esc(format_ours(row))}</td><td>{_esc(status)}</td>'
            f"<td>{_esc(row.get('source'))}{_esc(note)}</td></tr>")
    parts.append("</table>")
    if figure is not None:
        parts.append(_figure(figure, base, "Published range (bar) and ours (dot: green inside, "
                                           "red outside), log scale"))
    return "\n".join(parts)


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def capacity_section(capacities: Sequence[Mapping[str, Any]]) -> str:
    """The capacity at SLO of every system × workload (``--lbbench-sla``), or ``""``."""
    if not capacities:
        return ""
    rows = []
    for cap in capacities:
        probes = ", ".join(f"{p['load']:g} {'✓' if p['met'] else '✗'}" for p in cap.get("probes") or [])
        rows.append(f"<tr><td>{_esc(cap.get('system'))}</td><td>{_esc(cap.get('workload'))}</td>"
                    f'<td class="num">{_esc(_g(cap.get("capacity")))}</td>'
                    f'<td class="num">{_esc(_g(cap.get("first_miss")))}</td>'
                    f"<td>{_esc(probes)}</td><td>{_esc('; '.join(cap.get('targets') or []))}</td></tr>")
    return ("<h2>Capacity at SLO</h2><table><tr><th>system</th><th>workload</th><th>capacity</th>"
            f"<th>lowest miss</th><th>probes</th><th>targets</th></tr>{''.join(rows)}</table>")


REPEAT_COLUMNS = (("ttft_p50_s", "TTFT p50 ms", 1e3, "{:.0f}"), ("ttft_p90_s", "TTFT p90 ms", 1e3, "{:.0f}"),
                  ("goodput_requests_per_s", "goodput req/s", 1.0, "{:.2f}"),
                  ("throughput_tpt_per_s", "TPT tok/s", 1.0, "{:,.0f}"))


def repetitions_section(repetitions: Sequence[Mapping[str, Any]]) -> str:
    """Each repeated experiment's means ± 95 % interval (``--lbbench-repeat``), or ``""``."""
    if not repetitions:
        return ""
    head = "".join(f"<th>{_esc(h)}</th>" for _, h, _, _ in REPEAT_COLUMNS)
    body = []
    for agg in repetitions:
        overall = agg.get("overall") or {}
        ci = ((overall.get("repeats") or {}).get("ci95") or {})
        n = (overall.get("repeats") or {}).get("n")
        cells = []
        for key, _, scale, fmt in REPEAT_COLUMNS:
            value = overall.get(key)
            text = "-" if value is None else fmt.format(value * scale)
            if value is not None and ci.get(key) is not None:
                text += " ± " + fmt.format(ci[key] * scale)
            cells.append(f'<td class="num">{_esc(text)}</td>')
        body.append(f"<tr><td>{_esc(agg.get('key'))}</td><td class=\"num\">{_esc(n)}</td>{''.join(cells)}</tr>")
    return ("<h2>Repetitions (mean ± 95 % interval)</h2><table><tr><th>experiment</th><th>runs</th>"
            f"{head}</tr>{''.join(body)}</table>")


def _figure(path: Path, base: Path, caption: str) -> str:
    return (f'<figure><a href="{_href(path, base)}"><img src="{_href(path, base)}" '
            f'alt="{_esc(caption)}"></a><figcaption>{_esc(caption)}</figcaption></figure>')


def _meta(summary: Mapping[str, Any]) -> str:
    versions = summary.get("versions") or {}
    slo = summary.get("slo") or {}
    items: list[tuple[str, str]] = [
        ("run id", _esc(summary.get("run_id"))),
        ("written", _esc(summary.get("created"))),
        ("git commit", _esc(summary.get("git_commit") or "unknown")),
        ("pytest-lbbench", _esc(summary.get("pytest_lbbench"))),
        ("software that ran", _esc(", ".join(f"{k} {v}" for k, v in versions.items()) or "-")),
        ("SLO for goodput", _esc(", ".join(f"{k} ≤ {v:g}" for k, v in slo.items()) or "-")),
    ]
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="meta">{body}</dl>'


def render_index(
    summary: Mapping[str, Any], figures: Sequence[Path], warnings: Sequence[str], out_dir: Path
) -> str:
    """The page's HTML text (see the module docstring)."""
    records: list[dict[str, Any]] = summary.get("records") or []
    entries = summary.get("experiments") or []
    groups = sorted({str(e["exp_group"]) for e in entries} | {str(r["exp_group"]) for r in records})
    by_name = {p.name: p for p in figures}
    used: set[str] = set()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pytest-lbbench {_esc(summary.get('run_id'))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>pytest-lbbench results</h1>",
        _meta(summary),
        f'<p>Data: <a href="{SUMMARY_CSV}">{SUMMARY_CSV}</a>, <a href="{SUMMARY_JSON}">{SUMMARY_JSON}</a>. '
        "TTFT in ms, E2E in s; bold = best system in that column.</p>",
    ]
    if warnings:  # the caller's list already holds the summary's notes
        parts.append('<ul class="warn">' + "".join(f"<li>{_esc(w)}</li>" for w in warnings) + "</ul>")
    paper_figure = by_name.get(FIGURE_NAME)
    section = paper_section(summary.get("paper_comparison"), paper_figure, out_dir)
    if section:
        parts.append(section)
        if paper_figure is not None:
            used.add(paper_figure.name)
    for extra in (capacity_section(summary.get("capacity") or []),
                  repetitions_section(summary.get("repetitions") or [])):
        if extra:
            parts.append(extra)
    for group in groups:
        rows = [r for r in records if r.get("exp_group") == group]
        workloads = sorted({str(r.get("workload")) for r in rows})
        title = group if workloads == [group] else f"{group} (workload {', '.join(workloads)})"
        parts.append(f"<h2>{_esc(title)}</h2>")
        parts.append(group_table(rows))
        parts.append(replica_table([e for e in entries if e["exp_group"] == group]))
        for suffix, caption in CAPTIONS.items():
            name = _safe_figure_name(group, suffix)
            if name in by_name:
                parts.append(_figure(by_name[name], out_dir, caption))
                used.add(name)
        queue_figs = [
            (e, by_name[f"queue_{_safe(e['exp_name'])}.png"]) for e in
            sorted((e for e in entries if e["exp_group"] == group),
                   key=lambda e: system_sort_key(str(e["system"])))
            if f"queue_{_safe(e['exp_name'])}.png" in by_name
        ]
        if queue_figs:
            parts.append("<h3>Queues over time (1 Hz)</h3>")
            for entry, path in queue_figs:
                parts.append(_figure(path, out_dir, f"{entry['label']}: LB queues (top), replica "
                                                    "queued / running requests (bottom)"))
                used.add(path.name)
    rest = [p for p in figures if p.name not in used]
    if rest:
        parts.append("<h2>Other figures</h2>")
        parts.extend(_figure(p, out_dir, p.stem) for p in rest)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _safe_figure_name(group: str, suffix: str) -> str:
    return f"{_safe(group)}_{suffix}.png"


def write_index(
    out_dir: Path,
    summary: Mapping[str, Any],
    figures: Sequence[Path],
    warnings: Sequence[str] = (),
) -> Path:
    """Write ``<out_dir>/index.html`` and return its path."""
    path = Path(out_dir) / INDEX_HTML
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_index(summary, figures, warnings, Path(out_dir)), encoding="utf-8")
    os.replace(tmp, path)
    return path
