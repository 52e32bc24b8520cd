"""The whole report of a run in one call: summary files, then figures, then ``index.html``.

The order matters: the summary (the data) is written first and is the only step allowed to
raise; figures and the page are drawn from the files just written, so what a session end
produces and what ``python -m pytest_lbbench.report DIR`` redraws later are the same. No
pytest here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_lbbench import interrupts
from pytest_lbbench.report.html import write_index
from pytest_lbbench.report.loadplots import load_figures
from pytest_lbbench.report.paper import FIGURE_NAME, comparison_lines, paper_comparison, plot_comparison
from pytest_lbbench.report.plots import FIG_DIR, draw_figures
from pytest_lbbench.report.store import add_to_summary, load_summary, write_summary
from pytest_lbbench.report.ttftplots import ttft_parts_figures

#: The key of ``summary.json`` that holds :func:`~pytest_lbbench.report.paper.paper_comparison`.
PAPER_KEY = "paper_comparison"


@dataclass
class ReportFiles:
    """What :func:`build_report` wrote, and what went wrong without losing data."""

    summary_csv: Path
    summary_json: Path
    index_html: Path | None
    figures: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The paper comparison as terminal lines (empty if it could not be computed).
    paper_lines: list[str] = field(default_factory=list)


def build_report(
    out_dir: Path,
    experiments: list[dict[str, Any]],
    run_meta: dict[str, Any],
    slo: Mapping[str, float] | None = None,
    capacities: Sequence[Mapping[str, Any]] = (),
    draw: bool = True,
) -> ReportFiles:
    """Write ``summary.csv``/``summary.json``, ``fig/*.png`` and ``index.html`` under ``out_dir``.

    Arguments as for :func:`~pytest_lbbench.report.store.write_summary`. Raises only if the
    summary cannot be written (or ``slo`` is invalid); every figure or page failure is
    returned in ``warnings`` for the caller to show. ``draw=False``, or a Ctrl-C counted by
    :mod:`~pytest_lbbench.interrupts` (a stopped run must end within seconds), writes the
    summary and a page without figures or the paper comparison, and says how to draw them
    later; a Ctrl-C while the summary is written lets it finish first.
    """
    out_dir = Path(out_dir)
    with interrupts.held():  # a Ctrl-C now leaves whole summary files, then skips the drawing
        csv_path, json_path = write_summary(out_dir, experiments, run_meta, slo=slo, capacities=capacities)
        summary = load_summary(json_path)
    if not draw or interrupts.pressed():
        skipped = [f"figures and the paper comparison not drawn: the run was interrupted; draw "
                   f"them with: python -m pytest_lbbench.report {out_dir}"]
        warnings = list(summary.get("notes") or []) + skipped
        return ReportFiles(csv_path, json_path, _page(out_dir, summary, [], warnings), [], warnings)
    paper_warnings: list[str] = []
    try:
        summary = add_to_summary(json_path, PAPER_KEY, paper_comparison(summary, out_dir))
    except Exception as exc:  # noqa: BLE001 - the comparison is derived; the summary is on disk
        paper_warnings.append(f"paper comparison not computed: {type(exc).__name__}: {exc}")
    figures, warnings = draw_figures(summary, out_dir, out_dir / FIG_DIR)
    for path, draw_figure in [*load_figures(summary, out_dir / FIG_DIR),
                              *ttft_parts_figures(summary, out_dir / FIG_DIR)]:
        try:
            draw_figure()
            figures.append(path)
        except Exception as exc:  # noqa: BLE001 - one figure's failure must not stop the rest
            warnings.append(f"figure {path.name} not drawn: {type(exc).__name__}: {exc}")
    comparison = summary.get(PAPER_KEY)
    if comparison and any(r.get("status") == "compared" for r in comparison.get("rows") or []):
        path = out_dir / FIG_DIR / FIGURE_NAME
        try:
            plot_comparison(comparison, path)
            figures.append(path)
        except Exception as exc:  # noqa: BLE001 - one figure's failure must not stop the rest
            paper_warnings.append(f"figure {FIGURE_NAME} not drawn: {type(exc).__name__}: {exc}")
    warnings = list(summary.get("notes") or []) + warnings + paper_warnings
    index = _page(out_dir, summary, figures, warnings)
    lines = comparison_lines(comparison) if comparison else []
    return ReportFiles(csv_path, json_path, index, figures, warnings, lines)


def _page(out_dir: Path, summary: dict[str, Any], figures: list[Path], warnings: list[str]) -> Path | None:
    """``index.html``, or ``None`` with a warning added: the page is a view, the data is on disk."""
    try:
        return write_index(out_dir, summary, figures, warnings)
    except Exception as exc:  # noqa: BLE001 - the page is a view; the data is already on disk
        warnings.append(f"index.html not written: {type(exc).__name__}: {exc}")
        return None
