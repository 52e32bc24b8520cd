"""The process ledger: what a run started, found again after a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pytest_lbbench.backends.ledger import ProcessLedger, kill_leftovers, ledger_path, live_entries


def test_an_entry_after_a_line_cut_by_a_crash_is_still_found(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)
    ledger = ProcessLedger(path)
    with open(path, "a") as fh:
        fh.write('{"event": "start", "name": "replica-0", "pid": 12')  # the crash cut it here
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ledger.started("replica-1", proc.pid)
        assert [e["name"] for e in live_entries(path)] == ["replica-1"]
        assert [e["name"] for e in kill_leftovers(path)] == ["replica-1"]
        assert proc.wait(timeout=10) != 0
    finally:
        proc.kill()
        proc.wait()
    assert live_entries(path) == []


def test_a_stopped_or_recycled_pid_is_not_live(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)
    ledger = ProcessLedger(path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    ledger.started("gone", proc.pid)
    assert live_entries(path) == []
