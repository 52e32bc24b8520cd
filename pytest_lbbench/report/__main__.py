"""``python -m pytest_lbbench.report DIR [DIR...]``: recompute a run's summary and redraw its report.

DIR is one run's directory (``<output-dir>/<run-id>``) or an output directory, which means
its ``latest`` run; several runs go side by side into ``--out``.

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
from pytest_lbbench.report.metrics import DEFAULT_SLO, SLO_KEYS, validate_slo
from pytest_lbbench.report.resultdir import BadResultDir, experiment_dict, load_result_dir
from pytest_lbbench.report.rundirs import resolve_run_dir
from pytest_lbbench.report.store import SUMMARY_JSON, SummarySchemaError, load_summary
from pytest_lbbench.report.table import capacity_lines, noise_lines

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
    parser.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                        help="a run's directory (holding metric/<exp>/<region>.json), or an "
                             "--output-dir (its latest run); several DIRs (with --out) are "
                             "drawn side by side, each system named SYSTEM@RUN")
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


def _previous_capacities(run_dir: Path) -> list[dict[str, Any]]:
    """The capacity searches an existing summary recorded (they are not in the result files)."""
    try:
        return list(load_summary(run_dir / SUMMARY_JSON).get("capacity") or [])
    except (OSError, ValueError, SummarySchemaError):
        return []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    run_dirs = [resolve_run_dir(d) for d in args.dirs]
    if len(run_dirs) > 1 and args.out is None:
        parser.error("several DIRs are drawn side by side into one new report: give --out OUT")
    result_dir: Path = run_dirs[0]
    out_dir: Path = args.out or result_dir
    experiments: list[dict[str, Any]] = []
    capacities: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        try:
            results = load_result_dir(run_dir)
        except BadResultDir as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        found = [experiment_dict(r, run_dir) for r in results]
        caps = _previous_capacities(run_dir)
        if len(run_dirs) > 1:  # one run's systems beside another's: name them apart
            for exp in (*found, *caps):
                exp["system"] = f"{exp['system']}@{run_dir.name}"
                if "key" in exp:
                    exp["key"] = f"{exp['key']}@{run_dir.name}"
            for exp in found:
                exp["label"] = f"{exp['label']} ({run_dir.name})"
        experiments += found
        capacities += caps
    # A redraw keeps the run's metadata (config, scenario, SLO): from the summary it replaces,
    # else (--out into a new directory) from the one beside the results.
    run_meta = _previous_run_meta(out_dir) or _previous_run_meta(result_dir)
    run_meta["regenerated_from"] = ", ".join(str(d) for d in run_dirs)
    try:
        report = build_report(out_dir, experiments, run_meta, slo=args.slo, capacities=capacities)
    except OSError as exc:
        print(f"error: cannot write the report to {out_dir}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for block in (capacity_lines(capacities), noise_lines(experiments), report.paper_lines):
        for line in block:
            print(line)
    print(f"{len(experiments)} experiments: {report.summary_csv}, {report.summary_json}")
    print(f"{len(report.figures)} figures in {out_dir / 'fig'}")
    if report.index_html is not None:
        print(f"report: {report.index_html}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
