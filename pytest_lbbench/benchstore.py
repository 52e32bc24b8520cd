"""Runs stored in pytest-benchmark's own format, so ``pytest-benchmark list/compare`` work.

Each experiment key (``<system>-<workload>[-<load>]``, its repetitions together) becomes two
pytest-benchmark entries, ``<key>[ttft]`` and ``[e2e]``, whose ``stats`` are those of the
per-request latencies (seconds; ``rounds`` is the number of successful requests) and whose
``extra_info`` holds every summary metric (the repetitions' means, and their spread under
``repeats``), which is what the regression gates read back; a capacity search adds
``<key>[capacity]``. Files go to ``<storage>/<machine id>/NNNN_<name>.json``
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
from pytest_lbbench.gate import REPEATS_KEY
from pytest_lbbench.report.repeats import experiment_summary, group_repetitions

SAMPLE_METRICS = {"ttft": "ttft_s", "e2e": "e2e_s"}
_log = logging.getLogger(__name__)


def _storage(path: Path) -> FileStorage:
    return FileStorage(path, logger=_log, default_machine_id=get_machine_id())


def _entry(key: str, system: str, workload: str, metric: str, values: list[float],
           extra_info: dict[str, Any]) -> dict[str, Any]:
    stats = Stats()
    for v in values:
        stats.update(v)
    name = f"{key}[{metric}]"
    return {
        "group": workload,
        "name": name,
        "fullname": f"lbbench::{name}",
        "params": {"system": system, "workload": workload, "metric": metric, "key": key},
        "param": f"{key}-{metric}",
        "extra_info": extra_info,
        "options": {"lbbench": True},
        "stats": {**stats.as_dict(), "iterations": 1},
    }


def benchmark_entries(experiments: list[dict[str, Any]],
                      capacities: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per experiment key (its repetitions together: samples pooled, ``extra_info`` their means
    and, under ``repeats``, their spread), and per capacity search (``[capacity]``)."""
    entries = []
    for key, runs in group_repetitions(experiments).items():
        first = runs[0]
        summary = experiment_summary(runs)
        extra = {k: v for k, v in summary.items() if isinstance(v, (int, float)) or k == REPEATS_KEY}
        for metric, sample_key in SAMPLE_METRICS.items():
            values = [v for r in runs for v in (r.get("samples") or {}).get(sample_key) or []]
            if values:
                entries.append(_entry(key, first["system"], first["workload"], metric, values, extra))
    for cap in capacities or []:
        if cap.get("capacity") is not None:
            entries.append(_entry(cap["key"], cap["system"], cap["workload"], "capacity",
                                  [float(cap["capacity"])], {"capacity": cap["capacity"]}))
    return entries


def save_run(experiments: list[dict[str, Any]], name: str, storage: Path,
             capacities: list[dict[str, Any]] | None = None) -> Path:
    """Write one stored run; returns its path."""
    payload = {
        "machine_info": pytest_benchmark_generate_machine_info(),
        "commit_info": get_commit_info(),
        "benchmarks": benchmark_entries(experiments, capacities),
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
            key = str(params.get("key") or f"{params['system']}-{params['workload']}")
            out.setdefault(key, {}).update(bench.get("extra_info") or {})
    return Path(files[0]).name, out
