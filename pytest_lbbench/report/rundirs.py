"""One directory per run under ``--output-dir``, and ``latest`` pointing at the newest.

A run writes its results, telemetry, logs, figures and summary to ``<output-dir>/<run-id>/``
(run ids sort by time: ``20261206T213045Z-1a2b3c``), so a later run never mixes with an earlier
one; ``<output-dir>/latest`` is a symlink to the newest. Only the ledgers of started processes
and cloud resources stay at ``<output-dir>/.lbbench/``, shared by every run, so that
``--lbbench-cleanup`` finds what any crashed run left. No pytest here.
"""

from __future__ import annotations

import os
from pathlib import Path

LATEST = "latest"
#: What marks a directory as one run's (ours, or the original sky.lbbench layout).
_RUN_MARKERS = ("metric", "summary.json", "result")


def ensure_run_dir(output_dir: Path, run_id: str) -> Path:
    """Create ``output_dir/run_id`` and point ``output_dir/latest`` at it (atomically)."""
    run_dir = output_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    link = output_dir / LATEST
    try:
        if link.is_symlink() and os.readlink(link) == run_id:
            return run_dir
        tmp = output_dir / f".{LATEST}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_id, target_is_directory=True)  # relative: the tree can be moved
        os.replace(tmp, link)
    except OSError:  # no symlinks here (some file systems): the id is also in the file below
        (output_dir / f"{LATEST}.txt").write_text(run_id + "\n")
    return run_dir


def is_run_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in _RUN_MARKERS)


def resolve_run_dir(path: Path) -> Path:
    """``path`` itself when it holds a run; its ``latest`` run when it is an output directory."""
    if is_run_dir(path):
        return path
    link = path / LATEST
    if link.exists():
        return link.resolve()
    marker = path / f"{LATEST}.txt"
    if marker.exists():
        return path / marker.read_text().strip()
    return path
