"""Controller-side aggregation: every worker's experiment summaries → one terminal table.

Per-experiment summaries travel in each test's ``user_properties``, which xdist serialises
into the test reports it sends to the controller; so this works the same with and without
``-n`` and keeps the experiments of a worker that later crashes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeGuard

import pytest

from pytest_lbbench import interrupts
from pytest_lbbench.fixtures import CAPACITY_KEY, PROPERTY_KEY

if TYPE_CHECKING:
    from pytest_lbbench.report.build import ReportFiles

# The report and the stored-run code are imported when a run has results to report, not when
# the plugin loads (a test run without lbbench tests never needs them).

NOTE_KEY = "lbbench_note"  # (title, [lines]) from benchmarks that are not system × workload


def flat_properties(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """An experiment summary as flat scalar properties for JUnit XML and other reporters:
    ``lbbench.<metric>`` for every number of the overall summary (TTFT percentiles, throughput,
    cache hit, failures) and the experiment's identity and request counts."""
    flat: list[tuple[str, Any]] = [
        (f"{PROPERTY_KEY}.{key}", summary[key])
        for key in ("system", "workload", "exp_name", "sent", "recorded", "client_bound", "host_bound")
        if key in summary
    ]
    for key, value in (summary.get("overall") or {}).items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            flat.append((f"{PROPERTY_KEY}.{key}", value))
    return flat


def _is_summary(value: object, name: str) -> TypeGuard[dict[str, Any]]:
    """An experiment summary (``lbbench_run`` puts one per experiment)."""
    return name == PROPERTY_KEY and isinstance(value, dict)


def _is_capacity(value: object, name: str) -> TypeGuard[dict[str, Any]]:
    """A capacity search's result (``lbbench_capacity`` puts one per search)."""
    return name == CAPACITY_KEY and isinstance(value, dict)


def _is_note(value: object, name: str) -> TypeGuard[Sequence[Any]]:
    """A benchmark's ``(title, [lines])`` note."""
    return name == NOTE_KEY and isinstance(value, (list, tuple)) and len(value) == 2


def flatten_user_properties(report: pytest.TestReport) -> None:
    """Replace the structured lbbench entries of ``report.user_properties`` (the summary dict,
    a benchmark's note) by flat scalars, in place. Under xdist each report has its own list;
    without it the phases share the item's list, which is then flattened once."""
    flat: list[tuple[str, Any]] = []
    for name, value in report.user_properties:
        if _is_summary(value, name):
            flat.extend(flat_properties(value))
        elif _is_capacity(value, name):
            flat.append((f"{PROPERTY_KEY}.capacity", value.get("capacity")))
        elif _is_note(value, name):
            flat.append((f"{NOTE_KEY}.{value[0]}", "\n".join(str(line) for line in value[1])))
        else:
            flat.append((name, value))
    report.user_properties[:] = flat


class LiveProgress:
    """Under xdist, on the controller: prints the workers' progress events as they come
    (workers cannot write to the terminal; they append to ``<run-dir>/.progress/``)."""

    def __init__(self, config: pytest.Config, run_dir: Path, poll_s: float = 1.0) -> None:
        from pytest_lbbench.report.live import EventReader

        self.config = config
        self.reader = EventReader(run_dir)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lbbench-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._print()  # what arrived since the last poll

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._print()

    def _print(self) -> None:
        from pytest_lbbench.report.live import Snapshot, format_line

        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        for event in self.reader.read():
            snap = Snapshot(int(event["done"]), int(event["failed"]), event.get("ttft_p50_s"))
            reporter.write_line("  " + format_line(str(event["label"]), float(event["elapsed_s"]),
                                                   float(event["duration_s"]), snap))


class LbbenchCollector:
    """Collects experiment summaries from test reports and prints them at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.experiments: list[dict[str, Any]] = []
        self.capacities: list[dict[str, Any]] = []
        self.notes: list[tuple[str, list[str]]] = []
        self.saved: Path | None = None
        self.report: ReportFiles | None = None
        self.lost: list[tuple[str, str]] = []  # (test id, why) of experiments with no result
        self.crashed_workers: list[str] = []
        self.live: LiveProgress | None = None
        #: Ctrl-C ended the run: the report was written without figures (or not at all when
        #: the press came while writing it); the summary says so.
        self.interrupted = False

    @pytest.hookimpl
    def pytest_sessionstart(self) -> None:
        """Under xdist, show the workers' progress here (on a controller that runs tests)."""
        if not self.config.getoption("numprocesses", None) or self.config.getoption("collectonly"):
            return
        if self.config.get_verbosity() < 0:
            return
        from pytest_lbbench.runconfig import current_run_id

        run_dir = Path(self.config.getoption("output_dir")).resolve() / current_run_id(self.config)
        self.live = LiveProgress(self.config, run_dir)
        self.live.start()

    @pytest.hookimpl(tryfirst=True)  # before JUnit XML writes the properties
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        text = str(report.longrepr) if report.failed else ""
        if "crashed while running" in text:
            # xdist's report for the test a worker was running when it died (when == "???").
            self.lost.append((report.nodeid, text.strip().splitlines()[0]))
            return
        if report.when == "call":
            for name, value in report.user_properties:
                if _is_summary(value, name):
                    self.experiments.append(value)
                elif _is_capacity(value, name):
                    self.capacities.append(value)
                elif _is_note(value, name):
                    self.notes.append((str(value[0]), [str(line) for line in value[1]]))
        flatten_user_properties(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: a worker finished; ``error`` is set when it crashed."""
        if error is not None:
            self.crashed_workers.append(str(node.gateway.id))

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        self.saved = None
        try:
            self._write_report(session)
        finally:
            # A press whose KeyboardInterrupt a finalizer swallowed, or that came while the
            # summary was written (held until it was whole), still ends the run as interrupted
            # (exit code 2), never as a pass.
            self.interrupted = self.interrupted or interrupts.pressed()
            if self.interrupted:
                session.exitstatus = pytest.ExitCode.INTERRUPTED

    def _write_report(self, session: pytest.Session) -> None:
        self.interrupted = interrupts.pressed() or session.exitstatus == pytest.ExitCode.INTERRUPTED
        if not self.experiments:
            return
        from pytest_lbbench.benchstore import save_run
        from pytest_lbbench.report.rundirs import ensure_run_dir
        from pytest_lbbench.report.build import build_report
        from pytest_lbbench.runconfig import get_config

        cfg = get_config(self.config)
        # Data first (summary files), then pictures; a failing plot is a warning, never a loss.
        # After Ctrl-C only the data: drawing took 1-4 s on two busy cores, and a stop must
        # end the run within seconds.
        try:
            self.report = build_report(
                ensure_run_dir(cfg.output_dir, cfg.run_id), self.experiments,
                {"config": cfg.to_dict(), "lost": [nodeid for nodeid, _ in self.lost]}, slo=cfg.slo,
                capacities=self.capacities, draw=not self.interrupted,
            )
        except KeyboardInterrupt:  # pressed while drawing: the summary files were written first
            self.report = None
            self.interrupted = True
        if cfg.save_name:
            self.saved = save_run(self.experiments, cfg.save_name, cfg.storage, self.capacities)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if not self.experiments and not self.notes and not self.lost:
            return
        if self.experiments:
            from pytest_lbbench.report.table import (
                baseline_lines,
                capacity_lines,
                fault_lines,
                noise_lines,
                summary_lines,
                ttft_parts_lines,
            )
            from pytest_lbbench.runconfig import get_config

            cfg = get_config(self.config)
            tr.write_sep("=", "lbbench results (TTFT in ms, E2E in s)")
            for line in summary_lines(self.experiments):
                tr.write_line(line)
            for block in (capacity_lines(self.capacities), noise_lines(self.experiments),
                          baseline_lines(self.experiments, self.capacities, cfg.baseline,
                                         cfg.baseline_name or "?", cfg.thresholds)
                          if cfg.baseline_name else []):
                if block:
                    tr.write_line("")
                    for line in block:
                        tr.write_line(line)
            for block in (fault_lines(self.experiments), ttft_parts_lines(self.experiments)):
                if block:
                    tr.write_line("")
                    for line in block:
                        tr.write_line(line)
            tr.write_line("")
            for exp in sorted(self.experiments, key=lambda e: (e["workload"], e["system"])):
                lost = exp["sent"] - exp["recorded"]
                versions = ", ".join(f"{k} {v}" for k, v in sorted(exp.get("versions", {}).items()) if v)
                tr.write_line(
                    f"{exp['system']}-{exp['workload']}: {exp['recorded']} of {exp['sent']} requests "
                    f"recorded{' (' + str(lost) + ' LOST)' if lost else ''}; {versions}"
                )
                for region, lag in sorted((exp.get("loop_lag") or {}).items()):
                    if lag and lag.get("client_bound"):
                        tr.write_line(
                            f"  WARNING client {region} was client-bound: event-loop lag p99 "
                            f"{lag['lag_p99_ms']:.1f} ms > {lag['threshold_ms']:.0f} ms; its latencies "
                            "include client delay. Use fewer users per region or a faster machine."
                        )
                if exp.get("host_bound"):
                    reasons = "; ".join((exp.get("host_lag") or {}).get("reasons") or [])
                    tr.write_line(
                        f"  WARNING host-bound: this machine could not keep up with model time "
                        f"({reasons}); its latencies include the host's own delay. Use a smaller "
                        "--scenario-scale, fewer users or replicas, or run fewer systems at once."
                    )
                for reason, count in (exp.get("failure_reasons") or {}).items():
                    tr.write_line(f"  {count} failed: {reason}")
            out = cfg.run_dir
            tr.write_line(f"run {cfg.run_id}: {out} (and {cfg.output_dir / 'latest'})")
            tr.write_line(f"results: {out / 'metric'}  telemetry: {out / 'queue_size'}  logs: {out / 'logs'}")
            if self.report is None and self.interrupted:
                tr.write_line(f"report: interrupted (Ctrl-C) while it was being written; the summary "
                              f"files come first ({out / 'summary.csv'}); write the rest with: "
                              f"python -m pytest_lbbench.report {out}", yellow=True)
            if self.report is not None:
                page = self.report.index_html or "(not written)"
                tr.write_line(f"summary: {self.report.summary_csv}  report: {page}  "
                              f"figures: {len(self.report.figures)} in {out / 'fig'}")
                for warning in self.report.warnings:
                    tr.write_line(f"  report warning: {warning}", yellow=True)
                if self.report.paper_lines:
                    tr.write_line("")
                    for line in self.report.paper_lines:
                        tr.write_line(line)
            if self.saved is not None:
                tr.write_line(f"saved run: {self.saved} (compare with: pytest-benchmark "
                              f"--storage {get_config(self.config).storage} compare)")
        if self.lost or self.crashed_workers:
            tr.write_sep("=", "lbbench: experiments lost to crashed workers", red=True)
            for nodeid, why in self.lost:
                tr.write_line(f"LOST {nodeid}: {why}")
            if self.crashed_workers:
                tr.write_line(f"crashed workers: {', '.join(self.crashed_workers)}; the results above "
                              "are the experiments that finished. Partial records of a lost experiment "
                              "may remain in its *.partial.jsonl files.")
        for title, lines in self.notes:
            tr.write_sep("=", title)
            for line in lines:
                tr.write_line(line)
