"""Reading a result directory back: ours, or one written by the original ``sky.lbbench``.

Both layouts keep one JSON per client region under ``metric/<exp>/``:

* ours: ``metric/<exp>_<system>/<client-region>.json`` with ``region``, ``deployment``
  (system name and label, replicas, versions), ``client`` (event-loop lag) and per-request
  ``client_region`` / ``itl`` fields;
* the original: ``metric/<exp>/llmc-<region>.json`` holding only ``{workload, latency,
  metrics, backend_url, workload_args}`` with the original ``Metric`` fields, and ``<exp>``
  = ``<exp-name>_<describe>``. Its ``gen_cmd`` copied them to ``<out>/result/metric``, so a
  directory with ``result/metric`` is accepted too.

System names come from the file when it says (``deployment.system``); otherwise from the
longest known system id that ends the experiment name, else the whole name. No pytest here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pytest_lbbench.report.results import ExperimentResult
from pytest_lbbench.systems import SYSTEMS

#: The original client VMs are named ``llmc-<region>``; their result files keep that name.
CLIENT_CLUSTER_PREFIX = "llmc-"


class BadResultDir(Exception):
    """The directory holds no readable results; the message says what was expected."""


def known_system_ids() -> list[str]:
    """Every system id a result directory may name: our catalog (which holds every system of
    the original comparison)."""
    return list(SYSTEMS)


def system_label(system: str) -> str:
    """The display label of ``system`` (catalog first), or the id itself for unknown systems."""
    return SYSTEMS[system].label if system in SYSTEMS else system


def system_sort_key(system: str) -> tuple[int, str]:
    """Catalog order (the paper's order) first, then unknown systems by name."""
    ids = known_system_ids()
    return (ids.index(system), "") if system in ids else (len(ids), system)


def system_from_exp_name(exp_name: str, known: Iterable[str] | None = None) -> str:
    """The system whose id ends ``exp_name`` after an underscore (longest wins), else the name.

    Longest wins because one id can end another: with both ``push_push`` and
    ``sky_push_push`` known, ``arena_sky_push_push`` belongs to the latter.
    """
    matches = [s for s in (known if known is not None else known_system_ids())
               if exp_name == s or exp_name.endswith("_" + s)]
    return max(matches, key=len) if matches else exp_name


def exp_group(exp_name: str, system: str, workload: str) -> str:
    """The ``<exp-name>`` part of ``<exp-name>_<system>``: experiments compared side by side."""
    if exp_name.endswith("_" + system) and len(exp_name) > len(system) + 1:
        return exp_name[: -len(system) - 1]
    return workload


def client_region_from_stem(stem: str) -> str:
    """``llmc-us-east-2`` (the original client cluster) → ``us-east-2``; ours are bare regions."""
    return stem[len(CLIENT_CLUSTER_PREFIX):] if stem.startswith(CLIENT_CLUSTER_PREFIX) else stem


def metric_root(result_dir: Path) -> Path:
    """``DIR/metric``, or ``DIR/result/metric`` (where the original ``gen_cmd`` copied files)."""
    if not result_dir.exists():
        raise BadResultDir(f"{result_dir} does not exist")
    if not result_dir.is_dir():
        raise BadResultDir(f"{result_dir} is not a directory; pass the run's output directory")
    for candidate in (result_dir / "metric", result_dir / "result" / "metric"):
        if candidate.is_dir():
            return candidate
    raise BadResultDir(
        f"{result_dir} has no metric/ directory; pass the directory that holds "
        "metric/<exp>/<client-region>.json (the run's --lbbench-output-dir, or the original "
        "tooling's output directory)"
    )


def _read_payload(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadResultDir(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), list):
        raise BadResultDir(f"{path}: not a result file (expected a JSON object with a 'metrics' list)")
    return payload


def _deployment_system(payloads: Iterable[dict[str, Any]]) -> dict[str, Any]:
    for payload in payloads:
        system = (payload.get("deployment") or {}).get("system")
        if isinstance(system, dict) and system.get("name"):
            return system
    return {}


def load_experiment(exp_dir: Path) -> ExperimentResult:
    """One ``metric/<exp>/`` directory: every client region's file, in either layout."""
    files: dict[str, Path] = {}
    payloads: dict[str, dict[str, Any]] = {}
    for path in sorted(exp_dir.glob("*.json")):
        payload = _read_payload(path)
        region = payload.get("region") or client_region_from_stem(path.stem)
        if region in files:
            raise BadResultDir(f"{exp_dir}: two files for client region {region!r} "
                               f"({files[region].name}, {path.name})")
        files[str(region)] = path
        payloads[str(region)] = payload
    if not files:
        raise BadResultDir(f"{exp_dir}: no <client-region>.json files")
    spec = _deployment_system(payloads.values())
    system = str(spec.get("name") or system_from_exp_name(exp_dir.name))
    workloads = sorted({str(p.get("workload")) for p in payloads.values() if p.get("workload")})
    workload = workloads[0] if len(workloads) == 1 else ("+".join(workloads) or exp_dir.name)
    return ExperimentResult(system, workload, exp_dir.name, files, payloads)


def load_result_dir(result_dir: Path) -> list[ExperimentResult]:
    """Every experiment under ``result_dir``'s metric directory, sorted by group and system."""
    root = metric_root(result_dir)
    exp_dirs = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.json")))
    if not exp_dirs:
        raise BadResultDir(
            f"{root} holds no experiments; expected {root}/<exp>/<client-region>.json files"
        )
    return [load_experiment(d) for d in exp_dirs]


def queue_log_path(result_dir: Path, exp_name: str) -> Path | None:
    """The experiment's 1 Hz telemetry file next to its metric directory, if there is one."""
    root = metric_root(result_dir).parent
    path = root / "queue_size" / f"{exp_name}.txt"
    return path if path.is_file() else None


def experiment_dict(result: ExperimentResult, result_dir: Path) -> dict[str, Any]:
    """What the plugin collects per experiment (``properties()``), plus label and telemetry path."""
    props = result.properties()
    # Which experiment of the run this was (its key, load level, repetition, probe): written
    # into the files by lbbench_run, so a redraw keeps load curves and repetitions apart.
    first = next(iter(result.payloads.values()), {})
    props.update(first.get("experiment") or {})
    spec = _deployment_system(result.payloads.values())
    props["label"] = str(spec.get("label") or system_label(result.system))
    queue = queue_log_path(result_dir, result.exp_name)
    props["queue_size"] = str(queue) if queue is not None else None
    return props
