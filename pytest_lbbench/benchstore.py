"""Runs stored in pytest-benchmark's own format, so ``pytest-benchmark list/compare`` work.

Each experiment becomes two pytest-benchmark entries, ``<system>-<workload>[ttft]`` and
``[e2e]``, whose ``stats`` are those of the per-request latencies (seconds; ``rounds`` is the
number of successful requests) and whose ``extra_info`` holds every summary metric, which is
what the regression gates read back. Files go to ``<storage>/<machine id>/NNNN_<name>.json``
exactly where ``--benchmark-save`` would put them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
from pytest_benchmark.stats import Stats
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import get_commit_info, get_machine_id

from pytest_lbbench import __version__

SAMPLE_METRICS = {"ttft": "ttft_s", "e2e": "e2e_s"}
_log = logging.getLogger(__name__)


def _storage(path: Path) -> FileStorage:
    return FileStorage(path, logger=_log, default_machine_id=get_machine_id())


def benchmark_entries(experiments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for exp in experiments:
        label = f"{exp['system']}-{exp['workload']}"
        for metric, key in SAMPLE_METRICS.items():
            values = (exp.get("samples") or {}).get(key) or []
            if not values:
                continue
            stats = Stats()
            for v in values:
                stats.update(v)
            name = f"{label}[{metric}]"
            entries.append({
                "group": exp["workload"],
                "name": name,
                "fullname": f"lbbench::{name}",
                "params": {"system": exp["system"], "workload": exp["workload"], "metric": metric},
                "param": f"{label}-{metric}",
                "extra_info": {k: v for k, v in exp["overall"].items() if isinstance(v, (int, float))},
                "options": {"lbbench": True},
                "stats": {**stats.as_dict(), "iterations": 1},
            })
    return entries


def save_run(experiments: list[dict[str, Any]], name: str, storage: Path) -> Path:
    """Write one stored run; returns its path."""
    payload = {
        "machine_info": pytest_benchmark_generate_machine_info(),
        "commit_info": get_commit_info(),
        "benchmarks": benchmark_entries(experiments),
        "datetime": datetime.now(timezone.utc).isoformat(),
        "version": f"pytest-lbbench {__version__}",
    }
    store = _storage(storage)
    before = set(store.query("*"))
    store.save(payload, name)
    (saved,) = set(store.query("*")) - before
    return Path(saved)


class BaselineNotFound(LookupError):
    """The requested baseline run is not in the storage."""


def load_baseline(ref: str, storage: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """Baseline ``ref`` (a run number such as ``0001``, a name, or a path; ``last`` = newest)
    → (its file name, ``{"<system>-<workload>": extra_info}``)."""
    store = _storage(storage)
    if Path(ref).is_file():
        files = [Path(ref)]
    elif ref == "last":
        files = sorted(store.query("[0-9][0-9][0-9][0-9]_*"))[-1:]
    else:
        # FileStorage.query appends "*.json" to a glob, so match loosely and filter exactly.
        suffix = "_" if ref.isdigit() else f"_{ref}.json"
        candidates = store.query(f"{ref}_" if ref.isdigit() else f"*_{ref}")
        files = sorted(
            p for p in candidates
            if (Path(p).name.startswith(ref + suffix) if ref.isdigit() else Path(p).name.endswith(suffix))
        )[-1:]
    if not files:
        available = ", ".join(p.name for p in sorted(store.query("*"))) or "none"
        raise BaselineNotFound(
            f"no saved run matches {ref!r} in {storage}; saved runs: {available}. "
            "Save one with --lbbench-save NAME."
        )
    data = json.loads(Path(files[0]).read_text())
    out: dict[str, dict[str, Any]] = {}
    for bench in data.get("benchmarks", []):
        params = bench.get("params") or {}
        if "system" in params and "workload" in params:
            out[f"{params['system']}-{params['workload']}"] = bench.get("extra_info") or {}
    return Path(files[0]).name, out
