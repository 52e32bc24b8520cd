"""The run's summary on disk: ``summary.csv`` and ``summary.json``, one flat record per row.

Rows: one per experiment over all client regions (``client_region == "all"``), then one per
(experiment, client region). Every row carries the identity columns, the knobs the
experiment ran with, every metric under a unit-suffixed name (``_s``, ``_per_s``, ``_ms``;
counts say what they count, rates are fractions in [0, 1]) and the run's metadata columns,
so either file alone is self-describing and ``pandas.read_csv`` / ``DataFrame(records)``
give the same table. Knobs come from the run configuration and each region's
``workload_args``; an overall row whose regions ran with different values of a knob (the
``region_to_args`` option) holds ``"<region>=<value>;…"`` for it rather than picking one. ``summary.json`` additionally holds the run configuration, the
experiments' file paths (which the figures are redrawn from) and notes.

Non-finite numbers are written as JSON ``null`` / an empty CSV cell, never ``NaN``. A
reader refuses a ``schema_version`` it does not know (:func:`load_summary`). No pytest here.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import re
import subprocess
import uuid
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pytest_lbbench import __version__
from pytest_lbbench.report.metrics import DEFAULT_SLO, SLO_KEYS, goodput, measured, validate_slo
from pytest_lbbench.report.replicas import queue_log_beside, replica_counts, replica_shares, telemetry_spread
from pytest_lbbench.report.repeats import aggregates
from pytest_lbbench.report.resultdir import exp_group, system_label, system_sort_key
from pytest_lbbench.report.ttft_parts import summarize_parts

SCHEMA_VERSION = 1
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
ALL_REGIONS = "all"


IDENTITY_COLUMNS: tuple[str, ...] = (
    "schema_version", "run_id", "system", "label", "workload", "exp_group", "exp_name",
    "client_region",
    # The experiment key (what repetitions share), its load level when the load is an axis or
    # an SLA probe, the repetition, and whether it was a probe of a capacity search.
    "key", "load_kind", "load", "repeat", "probe",
)

#: ``summarize()`` key → column name, where the key alone does not say what it counts.
RENAMED: dict[str, str] = {
    "succeeded": "requests_succeeded",
    "failed": "requests_failed",
}

METRIC_COLUMNS: tuple[str, ...] = (
    "requests", "requests_succeeded", "requests_failed", "requests_sent", "requests_recorded",
    "failure_rate", "input_tokens", "output_tokens", "span_s",
    "throughput_tpt_per_s", "output_tokens_per_s", "requests_per_s",
    "goodput_requests_per_s", "slo_attainment", "slo_met_requests",
    "cache_hit_rate", "served_remote_share", "replica_spread", "replica_share",
    *(f"{m}_{s}_s" for m in ("ttft", "e2e", "tpot", "itl") for s in ("mean", "p50", "p90", "p99")),
    "client_lag_p99_ms", "client_bound", "host_lag_ms", "host_bound",
)

META_COLUMNS: tuple[str, ...] = (
    *(f"slo_{k}" for k in SLO_KEYS), "created", "git_commit", "pytest_lbbench", "versions",
)

#: Columns a CSV reader must keep as text even when they look numeric (a commit hash can).
TEXT_COLUMNS = frozenset(
    ("run_id", "system", "label", "workload", "exp_group", "exp_name", "client_region",
     "created", "git_commit", "pytest_lbbench", "versions", "replica_share")
)

#: ``workload_args`` entries that are identity, per-region plumbing or paths, not knobs.
NOT_KNOBS = frozenset(
    ("workload", "region", "region_index", "backend_url", "output_dir", "exp_name", "y", "uid")
)

#: Run-configuration keys (``LbbenchConfig.to_dict()``) that are knobs of every experiment,
#: with the ``workload_args`` name they are stored under when the files are unreadable.
CONFIG_KNOBS: dict[str, str] = {
    "backend": "backend",
    "replicas": "replicas",
    "replica_regions": "replica_regions",
    "time_scale": "time_scale",
    "num_users": "num_users",
    "duration_s": "duration",
    "warmup_s": "warmup",
    "seed": "seed",
    "max_tokens": "max_tokens",
}


class SummarySchemaError(ValueError):
    """A summary file written under a schema this version cannot read."""


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types, with every non-finite float turned into ``None``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:  # numpy scalars and the like
        return jsonable(value.item())
    except AttributeError:
        return str(value)


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit checked out in ``cwd`` (default: the current directory), or ``None``.

    Never raises: no git, no checkout, or a slow file system all just mean "unknown".
    """
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", commit) else None


def new_run_id(now: _dt.datetime) -> str:
    """A sortable, collision-resistant id: UTC time plus a random suffix."""
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def merge_versions(experiments: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Software versions over all experiments; a package seen at two versions lists both."""
    seen: dict[str, set[str]] = {}
    for exp in experiments:
        for name, ver in (exp.get("versions") or {}).items():
            if ver:
                seen.setdefault(str(name), set()).add(str(ver))
    return {name: ", ".join(sorted(vers)) for name, vers in sorted(seen.items())}


def _read_payloads(exp: Mapping[str, Any], notes: list[str]) -> dict[str, dict[str, Any]]:
    """The experiment's per-region result files (for goodput, knobs and per-region counts)."""
    out: dict[str, dict[str, Any]] = {}
    for region, path in (exp.get("files") or {}).items():
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            notes.append(f"{exp.get('exp_name')}: {path} unreadable ({exc}); goodput and knobs "
                         "of that region are missing")
            continue
        if isinstance(payload, dict) and isinstance(payload.get("metrics"), list):
            out[str(region)] = payload
    return out


def _scalar(value: Any) -> Any:
    """Knob values as CSV-able scalars: lists joined by commas, mappings as compact JSON."""
    value = jsonable(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


_RESERVED = frozenset(IDENTITY_COLUMNS) | frozenset(METRIC_COLUMNS) | frozenset(META_COLUMNS)


def _knobs(workload_args: Mapping[str, Any] | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings an experiment ran with: the run config's, then its own ``workload_args``."""
    knobs = {name: _scalar(config[key]) for key, name in CONFIG_KNOBS.items() if key in config}
    for key, value in (workload_args or {}).items():
        # A workload argument named like a column must not overwrite the column.
        if key not in NOT_KNOBS and key not in _RESERVED:
            knobs[str(key)] = _scalar(value)
    return knobs


def _overall_knobs(per_region: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Knobs shared by every region; one that differs (``region_to_args``) lists each region's."""
    keys = sorted({k for knobs in per_region.values() for k in knobs})
    out: dict[str, Any] = {}
    for key in keys:
        values = {region: knobs.get(key) for region, knobs in sorted(per_region.items())}
        distinct = {json.dumps(v) for v in values.values()}
        out[key] = next(iter(values.values())) if len(distinct) == 1 else ";".join(
            f"{region}={value}" for region, value in values.items())
    return out


def _metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {RENAMED.get(k, k): v for k, v in summary.items()}


def _relpath(path: str | os.PathLike[str], base: Path) -> str:
    """``path`` relative to ``base`` where possible, so a moved output directory still works."""
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    except ValueError:  # another drive on Windows
        return os.path.abspath(path)


def summary_rows(
    experiments: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    slo: Mapping[str, float],
    meta: Mapping[str, Any],
    notes: list[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """The flat rows, the per-experiment file index and the knob names (module docstring)."""
    rows: list[dict[str, Any]] = []
    knob_names: set[str] = set()
    index: list[dict[str, Any]] = []
    slo_cols = {f"slo_{k}": slo.get(k) for k in SLO_KEYS}
    # Rows in reading order: group by group, systems in catalog (the paper's) order.
    ordered = sorted(experiments, key=lambda e: (
        exp_group(str(e["exp_name"]), str(e["system"]), str(e["workload"])),
        system_sort_key(str(e["system"])), str(e["exp_name"])))
    for exp in ordered:
        system, workload, exp_name = str(exp["system"]), str(exp["workload"]), str(exp["exp_name"])
        payloads = _read_payloads(exp, notes)
        label = str(exp.get("label") or _payload_label(payloads) or system_label(system))
        group = exp_group(exp_name, system, workload)
        load = exp.get("load") or {}
        ident = {"system": system, "label": label, "workload": workload, "exp_group": group,
                 "exp_name": exp_name, "key": exp.get("key") or f"{system}-{workload}",
                 "load_kind": load.get("kind"), "load": load.get("value"),
                 "repeat": exp.get("repeat") or 1, "probe": bool(exp.get("probe"))}
        region_knobs = {r: _knobs(p.get("workload_args"), config) for r, p in payloads.items()}
        knob_names.update(k for knobs in region_knobs.values() for k in knobs)
        knob_names.update(_knobs(None, config))
        lag = exp.get("loop_lag") or {}
        regions: Mapping[str, Mapping[str, Any]] = exp.get("regions") or {}

        all_records = [rec for p in payloads.values() for rec in p["metrics"]]
        means, replica_spread = telemetry_spread(queue_log_beside(exp))
        parts = summarize_parts(measured(all_records))
        residual = parts["parts"]["residual"] if parts["requests"] else {}
        overall: dict[str, Any] = {
            **ident, "client_region": ALL_REGIONS,
            **(_overall_knobs(region_knobs) if region_knobs else _knobs(None, config)),
            **_metrics(exp.get("overall") or {}),
            "requests_sent": exp.get("sent"), "requests_recorded": exp.get("recorded"),
            "client_lag_p99_ms": max(
                (v["lag_p99_ms"] for v in lag.values() if v and v.get("lag_p99_ms") is not None),
                default=None),
            "client_bound": bool(exp.get("client_bound")),
            "host_lag_ms": (exp.get("host_lag") or {}).get("worst_mean_lateness_ms"),
            "host_bound": bool(exp.get("host_bound")),
            "replica_share": share_text(replica_shares(all_records)),
            "replica_spread": replica_spread,
            # The harness's own share of TTFT (pytest_lbbench.report.ttft_parts).
            **{f"ttft_residual_{q}_s": residual.get(q) for q in ("p50", "p90", "p99")},
        }
        if payloads and len(payloads) == len(exp.get("files") or {}):
            overall.update(goodput(all_records, slo))
        rows.append(overall)

        for region in sorted(regions):
            payload = payloads.get(region)
            region_lag = lag.get(region) or {}
            row: dict[str, Any] = {
                **ident, "client_region": region,
                **region_knobs.get(region, _knobs(None, config)),
                **_metrics(regions[region]),
                "requests_sent": int(payload.get("sent", len(payload["metrics"]))) if payload else None,
                "requests_recorded": len(payload["metrics"]) if payload else None,
                "client_lag_p99_ms": region_lag.get("lag_p99_ms"),
                "client_bound": bool(region_lag.get("client_bound")),
                "replica_share": share_text(replica_shares(payload["metrics"])) if payload else None,
            }
            if payload is not None:
                row.update(goodput(payload["metrics"], slo))
            rows.append(row)

        index.append({
            **ident,
            "files": {r: p for r, p in sorted((exp.get("files") or {}).items())},
            "queue_size": exp["queue_size"] if "queue_size" in exp else _queue_log_beside(exp),
            "failure_reasons": exp.get("failure_reasons") or {},
            # Where the load fell (pytest_lbbench.report.replicas): requests per replica from
            # the records, mean running + queued per replica from the telemetry.
            "replicas": {
                "requests": replica_counts(all_records),
                "share": replica_shares(all_records),
                "mean_outstanding": means,
                "spread": replica_spread,
            },
            # Where TTFT went, and the connections each delay link accepted (warm-up included).
            "ttft_parts": parts,
            "link_connections": next((p["connections"] for p in payloads.values() if p.get("connections")), None),
        })
    for row in rows:
        row.update(slo_cols)
        row.update(meta)
    return rows, index, knob_names


def share_text(shares: Mapping[str, float]) -> str | None:
    """Replica shares as one CSV-able cell: ``"replica-0-us-east-2=0.412;…"`` (``None``: none known)."""
    return ";".join(f"{name}={share:.3f}" for name, share in sorted(shares.items())) or None


def _queue_log_beside(exp: Mapping[str, Any]) -> str | None:
    """``queue_size/<exp>.txt`` next to ``metric/<exp>/<region>.json``, where the plugin writes it
    (``properties()`` does not name it)."""
    for path in (exp.get("files") or {}).values():
        candidate = Path(path).parent.parent.parent / "queue_size" / f"{exp.get('exp_name')}.txt"
        if candidate.is_file():
            return str(candidate)
    return None


def _payload_label(payloads: Mapping[str, Mapping[str, Any]]) -> str | None:
    for payload in payloads.values():
        label = ((payload.get("deployment") or {}).get("system") or {}).get("label")
        if label:
            return str(label)
    return None


def columns(rows: Sequence[Mapping[str, Any]], knobs: Iterable[str]) -> list[str]:
    """Column order: identity, knobs (sorted), known metrics, other metrics (sorted), metadata.

    "Other metrics" are keys a newer ``summarize()`` adds: they get a column rather than
    being dropped, and the fixed columns keep their places.
    """
    knob_cols = sorted(set(knobs))
    fixed = set(IDENTITY_COLUMNS) | set(METRIC_COLUMNS) | set(META_COLUMNS) | set(knob_cols)
    extra = sorted({k for row in rows for k in row} - fixed)
    return [*IDENTITY_COLUMNS, *knob_cols, *METRIC_COLUMNS, *extra, *META_COLUMNS]


def _atomic_write(path: Path, text: str) -> None:
    # Readers (a browser, a CI upload) never see a half-written summary.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _csv_text(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in cols])
    return buf.getvalue()


def write_summary(
    out_dir: Path,
    experiments: list[dict[str, Any]],
    run_meta: dict[str, Any],
    slo: Mapping[str, float] | None = None,
    capacities: Sequence[Mapping[str, Any]] = (),
) -> tuple[Path, Path]:
    """Write ``<out_dir>/summary.csv`` and ``summary.json``; return their paths.

    ``experiments`` are the dicts the plugin collects (``ExperimentResult.properties()``,
    optionally with ``label`` and ``queue_size``); their ``files`` are re-read for goodput
    and the workload knobs. ``run_meta`` may hold ``run_id``, ``config`` (the run's
    ``LbbenchConfig.to_dict()``) and ``slo``; all of it is stored under ``"run"``. ``slo``
    (seconds, keys of ``SLO_KEYS``) overrides ``run_meta["slo"]``, else :data:`DEFAULT_SLO`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    objective = validate_slo(slo if slo is not None else run_meta.get("slo") or DEFAULT_SLO)
    run_id = str(run_meta.get("run_id") or new_run_id(now))
    versions = merge_versions(experiments)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": now.isoformat(),
        "git_commit": run_meta.get("git_commit") or git_commit(),
        "pytest_lbbench": __version__,
        "versions": ";".join(f"{k}={v}" for k, v in versions.items()),
    }
    notes: list[str] = []
    config = run_meta.get("config") or {}
    rows, index, knobs = summary_rows(experiments, config, objective, meta, notes)
    for entry in index:
        entry["files"] = {r: _relpath(p, out_dir) for r, p in entry["files"].items()}
        if entry["queue_size"]:
            entry["queue_size"] = _relpath(entry["queue_size"], out_dir)
    rows = [jsonable(r) for r in rows]
    cols = columns(rows, knobs)
    document = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": meta["created"],
        "git_commit": meta["git_commit"],
        "pytest_lbbench": __version__,
        "python": platform.python_version(),
        "versions": versions,
        "slo": objective,
        "run": jsonable({**run_meta, "run_id": run_id}),
        "columns": cols,
        "experiments": jsonable(index),
        "records": [{c: r.get(c) for c in cols} for r in rows],
        # --lbbench-repeat: each experiment key's mean, spread and 95 % interval per metric.
        "repetitions": jsonable(aggregates(experiments)),
        # --lbbench-sla: each system × workload's capacity at the targets.
        "capacity": jsonable(list(capacities)),
        "notes": notes,
    }
    csv_path, json_path = out_dir / SUMMARY_CSV, out_dir / SUMMARY_JSON
    _atomic_write(json_path, json.dumps(document, indent=1, allow_nan=False) + "\n")
    _atomic_write(csv_path, _csv_text(rows, cols))
    return csv_path, json_path


def add_to_summary(json_path: Path, key: str, value: Any) -> dict[str, Any]:
    """Store ``value`` under ``key`` in an existing ``summary.json`` (atomically); return the document.

    For results computed from the written summary itself (the paper comparison)."""
    document = load_summary(json_path)
    document[key] = jsonable(value)
    _atomic_write(Path(json_path), json.dumps(document, indent=1, allow_nan=False) + "\n")
    return document


def _refuse(path: Path, found: Any) -> SummarySchemaError:
    return SummarySchemaError(
        f"{path}: schema_version {found!r} is not one this pytest-lbbench ({__version__}) can "
        f"read (it reads {SCHEMA_VERSION}). Read it with the pytest-lbbench version that wrote "
        f"it, or regenerate the summary from the raw results with: "
        f"python -m pytest_lbbench.report {path.parent}"
    )


def _csv_value(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in TEXT_COLUMNS:
        return text
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_summary(path: Path) -> dict[str, Any]:
    """Read ``summary.json`` (or ``summary.csv``, or a directory holding them).

    Returns the JSON document; for a CSV, ``{"schema_version", "columns", "records"}`` with
    typed values. Raises :class:`SummarySchemaError` for an unknown or missing schema version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_JSON
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = list(reader.fieldnames or [])
            records = [{c: _csv_value(c, row.get(c) or "") for c in cols} for row in reader]
        versions = sorted({r.get("schema_version") for r in records}, key=str)
        if "schema_version" not in cols or versions != [SCHEMA_VERSION]:
            raise _refuse(path, versions[0] if len(versions) == 1 else (versions or None))
        return {"schema_version": SCHEMA_VERSION, "columns": cols, "records": records}
    document = json.loads(path.read_text(encoding="utf-8"))
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise _refuse(path, version)
    return dict(document)
