"""``python -m pytest_lbbench.report DIR``: recompute a run's summary and redraw its report.

Reads only stored files: ``DIR/metric/<exp>/<client-region>.json`` (ours, or the original
``sky.lbbench`` layout, also under ``DIR/result/metric``) and ``DIR/queue_size/*.txt``,
then writes ``summary.csv``, ``summary.json``, ``fig/*.png`` and ``index.html`` to ``DIR``
(or ``--out``), and prints the comparison with the paper's published results
(:mod:`~pytest_lbbench.report.paper`). So figures can be redrawn, and goodput re-judged
under another SLO, without rerunning anything. Exit status: 0 written (figure problems are
printed as warnings), 2 nothing usable in DIR or a bad option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from pytest_lbbench.report.build import build_report
from pytest_lbbench.report.metrics import SLO_KEYS, validate_slo
from pytest_lbbench.report.resultdir import BadResultDir, experiment_dict, load_result_dir
from pytest_lbbench.report.store import DEFAULT_SLO, SUMMARY_JSON, SummarySchemaError, load_summary

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def parse_slo(text: str) -> dict[str, float]:
    """``ttft_s=1,e2e_s=30`` → ``{"ttft_s": 1.0, "e2e_s": 30.0}`` (an argparse type)."""
    slo: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{part!r} is not KEY=SECONDS (keys: {', '.join(SLO_KEYS)})")
        try:
            slo[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a number of seconds") from None
    if not slo:
        raise argparse.ArgumentTypeError("empty SLO; give e.g. ttft_s=1,e2e_s=30")
    try:
        return validate_slo(slo)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_lbbench.report",
        description="Recompute summary.csv/summary.json and redraw fig/*.png and index.html "
                    "from a result directory (pytest-lbbench's or the original sky.lbbench's).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="the run's output directory (holding metric/<exp>/<region>.json)")
    default = ",".join(f"{k}={v:g}" for k, v in DEFAULT_SLO.items())
    parser.add_argument("--slo", type=parse_slo, default=None, metavar="KEY=S,...",
                        help=f"latency objectives for goodput, seconds; keys {', '.join(SLO_KEYS)}. "
                             f"Default: the SLO of DIR's existing summary, else {default}")
    parser.add_argument("--out", type=Path, default=None, metavar="OUT",
                        help="write the report here instead of DIR (e.g. DIR is read-only)")
    return parser


def _previous_run_meta(out_dir: Path) -> dict[str, Any]:
    """The run metadata of an existing summary (config, run id, SLO), so a redraw keeps them.

    An unreadable or foreign-schema summary is simply not reused: it is about to be replaced.
    """
    try:
        old = load_summary(out_dir / SUMMARY_JSON)
    except (OSError, ValueError, SummarySchemaError):
        return {}
    meta = dict(old.get("run") or {})
    if old.get("slo"):
        meta["slo"] = old["slo"]
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    result_dir: Path = args.dir
    out_dir: Path = args.out or result_dir
    try:
        results = load_result_dir(result_dir)
    except BadResultDir as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    experiments = [experiment_dict(r, result_dir) for r in results]
    # A redraw keeps the run's metadata (config, scenario, SLO): from the summary it replaces,
    # else (--out into a new directory) from the one beside the results.
    run_meta = _previous_run_meta(out_dir) or _previous_run_meta(result_dir)
    run_meta["regenerated_from"] = str(result_dir)
    try:
        report = build_report(out_dir, experiments, run_meta, slo=args.slo)
    except OSError as exc:
        print(f"error: cannot write the report to {out_dir}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for line in report.paper_lines:
        print(line)
    print(f"{len(experiments)} experiments: {report.summary_csv}, {report.summary_json}")
    print(f"{len(report.figures)} figures in {out_dir / 'fig'}")
    if report.index_html is not None:
        print(f"report: {report.index_html}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
