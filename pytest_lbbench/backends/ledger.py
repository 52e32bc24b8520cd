"""A ledger of every process a run started, so leftovers can be found and removed.

Each start and stop is one JSON line appended to ``<output-dir>/.lbbench/processes.jsonl``
(appends of short lines are atomic, so xdist workers can share the file). A process that was
started but never stopped — a killed worker, a crash — is still listed as live, and
:func:`live_entries` / :func:`kill_leftovers` find it by pid *and* start time, so a recycled
pid is never mistaken for ours.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Mapping

import psutil


def append_jsonl(path: Path, entry: Mapping[str, Any], *, sort_keys: bool = False) -> None:
    """Append ``entry`` as one JSON line. Every ledger (processes, sky, GKE) writes this way.

    One short write per line: appends are atomic, so xdist workers can share a file. A crash
    can cut the last line short; the entry then starts on a fresh line instead of being glued
    onto the cut one (a stray empty line is harmless to :func:`read_jsonl`).
    """
    data = (json.dumps(entry, sort_keys=sort_keys) + "\n").encode()
    with open(path, "ab+") as fh:
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                data = b"\n" + data
        fh.write(data)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every whole JSON object in ``path`` (none if it does not exist); cut lines are skipped."""
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(entry, dict):
            out.append(entry)
    return out


def ledger_path(output_dir: Path) -> Path:
    return output_dir / ".lbbench" / "processes.jsonl"


class ProcessLedger:
    """Append-only record of the processes started by this run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, entry: dict[str, Any]) -> None:
        append_jsonl(self.path, entry)

    def started(self, name: str, pid: int) -> None:
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:
            create_time = None
        self._append(
            {"event": "start", "name": name, "pid": pid, "create_time": create_time,
             "owner_pid": os.getpid(), "time": time.time()}
        )

    def stopped(self, name: str, pid: int) -> None:
        self._append({"event": "stop", "name": name, "pid": pid, "time": time.time()})


def live_entries(path: Path) -> list[dict[str, Any]]:
    """Ledger entries whose process is still running (same pid and start time)."""
    started: dict[int, dict[str, Any]] = {}
    for entry in read_jsonl(path):
        if entry.get("event") == "start":
            started[entry["pid"]] = entry
    live = []
    for pid, entry in started.items():
        try:
            proc = psutil.Process(pid)
            same = entry.get("create_time") is None or abs(proc.create_time() - entry["create_time"]) < 1.0
            if same and proc.status() != psutil.STATUS_ZOMBIE:
                live.append(entry)
        except psutil.Error:
            continue
    return live


def kill_leftovers(path: Path) -> list[dict[str, Any]]:
    """SIGKILL every still-running process of the ledger; returns what was killed."""
    killed = []
    for entry in live_entries(path):
        try:
            os.kill(entry["pid"], signal.SIGKILL)
            killed.append(entry)
        except ProcessLookupError:
            pass
    return killed
