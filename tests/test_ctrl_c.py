"""Stop means stop: Ctrl-C ends a run within 5 s at any moment, and everything it started is gone.

A real ``pytest`` run of the matrix test in a subprocess gets SIGINT at one of four moments,
each found from the process ledger (what the run has started) rather than guessed from time:

* ``start-up``: replicas are being started, no client yet;
* ``mid-traffic``: the clients are sending;
* ``drain``: the traffic phase is over, long answers are still streaming;
* ``report``: every process is stopped and the run is writing its report.

Each moment runs ten times (``attempt``), since a stop that works nine times in ten is a stop
that fails in CI. On a hang the test sends SIGABRT, so the run's faulthandler prints where it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.backends.ledger import ledger_path, live_entries

STOP_WITHIN_S = 5.0
ATTEMPTS = 10
FAST = ("--time-scale", "0.05", "--num-users", "3", "--replicas", "3", "--regions", "us-east-2",
        "--drain-timeout", "60", "-p", "no:cacheprovider", "-k", "push_push")
MOMENT_ARGS = {
    "start-up": ("--duration", "30", "--max-tokens", "12"),
    "mid-traffic": ("--duration", "30", "--max-tokens", "12"),
    # Real-time engine and uncapped answers: turns started before 2 s are still streaming at 2.5 s.
    "drain": ("--duration", "2", "--max-tokens", "4000", "--time-scale", "1"),
    "report": ("--duration", "2", "--max-tokens", "12"),
}


def _entries(ledger: Path) -> list[dict[str, Any]]:
    try:
        return live_entries(ledger)
    except (OSError, ValueError):
        return []  # the ledger is being written


def _ever_started(ledger: Path) -> bool:
    return ledger.exists() and ledger.stat().st_size > 0


def _moment_reached(moment: str, ledger: Path, state: dict[str, Any]) -> bool:
    live = _entries(ledger)
    clients = [e for e in live if str(e.get("name", "")).startswith("client-")]
    now = time.monotonic()
    if moment == "start-up":
        return bool(live) and not clients
    if moment == "mid-traffic":
        if clients and "clients_at" not in state:
            state["clients_at"] = now
        return "clients_at" in state and now - state["clients_at"] > 1.0
    if moment == "drain":
        if clients and "clients_at" not in state:
            state["clients_at"] = now
        return "clients_at" in state and now - state["clients_at"] > 2.5 and bool(clients)
    # report: everything it started is stopped again, and the run is still going.
    if live:
        state["seen_live"] = True
    return bool(state.get("seen_live")) and _ever_started(ledger) and not live


@pytest.mark.parametrize("attempt", range(ATTEMPTS))
@pytest.mark.parametrize("moment", list(MOMENT_ARGS))
def test_ctrl_c_ends_the_run_within_5_s_and_leaves_nothing(bench: pytest.Pytester, moment: str,
                                                           attempt: int) -> None:
    out = bench.path / "results"
    cmd = [sys.executable, "-m", "pytest", "--output-dir", str(out), *FAST, *MOMENT_ARGS[moment], "-s"]
    proc = subprocess.Popen(cmd, cwd=bench.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    ledger = ledger_path(out)
    state: dict[str, Any] = {}
    started: list[dict[str, Any]] = []
    deadline = time.monotonic() + 180
    try:
        while not _moment_reached(moment, ledger, state):
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the {moment} moment:\n{proc.communicate()[0][-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run never reached the {moment} moment")
            started = _entries(ledger) or started
            time.sleep(0.02)
        started = _entries(ledger) or started
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            output, _ = proc.communicate(timeout=30)
            pytest.fail(f"the run did not exit within 60 s of Ctrl-C ({moment}); output and stacks:\n"
                        f"{output[-12000:]}")
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"Ctrl-C at {moment}: the run ended {took:.2f} s later")
    assert took <= STOP_WITHIN_S, f"Ctrl-C at {moment} took {took:.1f} s to end the run:\n{output[-3000:]}"
    assert proc.returncode != 0  # interrupted, not a clean pass
    leftovers = _entries(ledger)
    assert not leftovers, f"still running after Ctrl-C at {moment}: {leftovers}"
    for entry in started:  # really gone, not only marked stopped
        assert not Path(f"/proc/{entry['pid']}").exists() or _is_zombie(int(entry["pid"])), entry


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_stop_all_kills_processes_that_ignore_sigterm_within_one_shared_timeout(tmp_path: Path) -> None:
    from pytest_lbbench.procutil import launch, stop_all

    stubborn = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('LBBENCH_READY {\"port\": 0}', flush=True); time.sleep(120)")
    procs = [launch(f"stubborn-{i}", [sys.executable, "-c", stubborn], log_path=tmp_path / f"{i}.log")
             for i in range(4)]
    for proc in procs:
        proc.wait_ready(30)
    started = time.monotonic()
    stop_all(procs, timeout_s=2.0)
    took = time.monotonic() - started
    assert all(proc.popen.returncode == -signal.SIGKILL for proc in procs)
    # One shared 2 s grace, then SIGKILL; granting each survivor its own grace took 2 + 4 x 2 s.
    assert took < 6.0, took
