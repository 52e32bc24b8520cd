"""Live progress of a running experiment, from the client's partial JSONL files.

The clients flush one record per finished request to ``<region>.json.partial.jsonl``;
:class:`ProgressTracker` tails those files (reading only what is new) and keeps the numbers a
progress line shows: requests done, failures, and a rolling TTFT p50 of the most recent
successful requests. :func:`progress_event` / :func:`read_events` carry those snapshots from an
xdist worker to the controller through ``<run-dir>/.progress/<worker>.jsonl`` (workers cannot
write to the terminal). No pytest here.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pytest_lbbench.stats import percentile

ROLLING = 200  # requests in the rolling TTFT p50
PROGRESS_DIR = ".progress"


@dataclass(frozen=True)
class Snapshot:
    done: int
    failed: int
    ttft_p50_s: float | None


class ProgressTracker:
    """Tails the partial JSONL files of ``result_files`` (``<region>.json``)."""

    def __init__(self, result_files: Iterable[Path]) -> None:
        self.paths = [p.with_name(p.name + ".partial.jsonl") for p in result_files]
        self.offsets = {p: 0 for p in self.paths}
        self.rest = {p: b"" for p in self.paths}
        self.done = 0
        self.failed = 0
        self.recent: deque[float] = deque(maxlen=ROLLING)

    def poll(self) -> Snapshot:
        for path in self.paths:
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets[path])
                    chunk = fh.read()
            except OSError:
                continue  # not created yet, or renamed at the end of the run
            self.offsets[path] += len(chunk)
            lines = (self.rest[path] + chunk).split(b"\n")
            self.rest[path] = lines.pop()  # a line still being written
            for line in lines:
                self._count(line)
        return Snapshot(self.done, self.failed, percentile(list(self.recent), 50))

    def _count(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if record.get("warmup"):
            return
        self.done += 1
        if record.get("failed"):
            self.failed += 1
        elif record.get("ttft") is not None:
            self.recent.append(float(record["ttft"]))


def format_line(label: str, elapsed_s: float, duration_s: float, snap: Snapshot) -> str:
    phase = "traffic" if elapsed_s < duration_s else "draining"
    p50 = "-" if snap.ttft_p50_s is None else f"{snap.ttft_p50_s * 1e3:.0f} ms"
    return (f"{label}: {elapsed_s:4.0f}/{duration_s:.0f} s {phase}, {snap.done} requests done, "
            f"{snap.failed} failed, TTFT p50 (last {ROLLING}) {p50}")


def progress_file(run_dir: Path, worker: str) -> Path:
    return run_dir / PROGRESS_DIR / f"{worker}.jsonl"


def progress_event(path: Path, label: str, elapsed_s: float, duration_s: float, snap: Snapshot,
                   finished: bool = False) -> None:
    """Append one snapshot of ``label`` to a worker's progress file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    event = {"label": label, "elapsed_s": elapsed_s, "duration_s": duration_s, "done": snap.done,
             "failed": snap.failed, "ttft_p50_s": snap.ttft_p50_s, "finished": finished,
             "time": time.time(), "pid": os.getpid()}
    with open(path, "a") as fh:
        fh.write(json.dumps(event) + "\n")


class EventReader:
    """The controller's side: new events from every worker's progress file."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / PROGRESS_DIR
        self.offsets: dict[Path, int] = {}

    def read(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for path in sorted(self.dir.glob("*.jsonl")) if self.dir.is_dir() else []:
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets.get(path, 0))
                    chunk = fh.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events
