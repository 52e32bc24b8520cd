"""Controller-side aggregation: every worker's experiment summaries → one terminal table.

Per-experiment summaries travel in each test's ``user_properties``, which xdist serialises
into the test reports it sends to the controller; so this works the same with and without
``-n`` and keeps the experiments of a worker that later crashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.benchstore import save_run
from pytest_lbbench.fixtures import PROPERTY_KEY
from pytest_lbbench.options import get_config
from pytest_lbbench.report.table import summary_lines

NOTE_KEY = "lbbench_note"  # (title, [lines]) from benchmarks that are not system × workload


class LbbenchCollector:
    """Collects experiment summaries from test reports and prints them at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.experiments: list[dict[str, Any]] = []
        self.notes: list[tuple[str, list[str]]] = []
        self.saved: Path | None = None

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == PROPERTY_KEY and isinstance(value, dict):
                self.experiments.append(value)
            elif name == NOTE_KEY and isinstance(value, (list, tuple)) and len(value) == 2:
                self.notes.append((str(value[0]), [str(line) for line in value[1]]))

    @pytest.hookimpl
    def pytest_sessionfinish(self) -> None:
        cfg = get_config(self.config)
        self.saved = None
        if cfg.save_name and self.experiments:
            self.saved = save_run(self.experiments, cfg.save_name, cfg.storage)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if not self.experiments and not self.notes:
            return
        if self.experiments:
            tr.write_sep("=", "lbbench results (TTFT in ms, E2E in s)")
            for line in summary_lines(self.experiments):
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
                for reason, count in (exp.get("failure_reasons") or {}).items():
                    tr.write_line(f"  {count} failed: {reason}")
            out = get_config(self.config).output_dir
            tr.write_line(f"results: {out / 'metric'}  telemetry: {out / 'queue_size'}  logs: {out / 'logs'}")
            if self.saved is not None:
                tr.write_line(f"saved run: {self.saved} (compare with: pytest-benchmark "
                              f"--storage {get_config(self.config).storage} compare)")
        for title, lines in self.notes:
            tr.write_sep("=", title)
            for line in lines:
                tr.write_line(line)
