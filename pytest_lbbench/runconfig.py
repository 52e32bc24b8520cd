"""The run's options → one frozen, validated :class:`LbbenchConfig` in the config stash.

Every mistake a user can make on the command line (or in the ini file) is caught here, with a
``pytest.UsageError`` (exit code 4) that quotes the bad value and lists what is valid. The config
is built on first use (:func:`get_config`): at start-up when an lbbench option was given, else when
the first lbbench test is collected, so a test run without lbbench tests never builds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from pytest_lbbench import cloud_plugin
from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.backends.local import LocalBackend, parse_replica_url
from pytest_lbbench.backends.registry import BackendRegistry
from pytest_lbbench.runspec import RunKnobs, knob_fields, knobs_from
from pytest_lbbench.benchstore import BaselineNotFound, load_baseline
from pytest_lbbench.custom import CustomSystemError, parse_custom_systems
from pytest_lbbench.faults import FaultError, FaultSpec, parse_faults
from pytest_lbbench.capacity import DEFAULT_RANGE as DEFAULT_SLA_RANGE
from pytest_lbbench.capacity import SlaTarget, parse_range, parse_sla
from pytest_lbbench.gate import Threshold, parse_threshold
from pytest_lbbench.loads import Load, LoadKind
from pytest_lbbench.hostlag import DEFAULT_THRESHOLD_MS as DEFAULT_HOST_LAG_THRESHOLD_MS
from pytest_lbbench.options import (
    CONFIG_KEY,
    DEFAULT_CLIENT_REGIONS,
    DEFAULT_FAULT_GRACE_S,
    DEFAULT_MAX_FAILURE_RATE,
    DEFAULT_REPLICAS,
    apply_ini,
    split_names,
)
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS, RttMatrix
from pytest_lbbench.report.__main__ import parse_slo
from pytest_lbbench.report.store import new_run_id
from pytest_lbbench.scenarios import SCENARIOS, ScenarioLayout
from pytest_lbbench.systems import SYSTEMS, BalancerKind, SystemSpec
from pytest_lbbench.workloads import WORKLOADS
from pytest_lbbench.workloads.registry import workload_catalog
from pytest_lbbench.client.planning import COMMON_OPTIONS, parse_region_args
from pytest_lbbench.workloads.base import Workload
from pytest_lbbench.workloads.sources import DATASET_SOURCES


@dataclass(frozen=True)
class LbbenchConfig:
    """The effective configuration of one pytest-lbbench run."""

    backend: str
    regions: tuple[str, ...]
    replica_regions: tuple[str, ...]
    replicas: int
    systems: tuple[str, ...]
    workloads: tuple[str, ...]
    #: What every client is told (``--duration``, ``--num-users``, timeouts, ...).
    knobs: RunKnobs
    exp_name: str | None
    output_dir: Path
    #: Client region → options set there only (``--region-to-args``, parsed once).
    region_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    host_lag_threshold_ms: float = DEFAULT_HOST_LAG_THRESHOLD_MS
    #: A test fails when more than this share of its requests failed (drilled faults excepted).
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    #: ``--fault`` drills, in time order (:mod:`pytest_lbbench.faults`).
    faults: tuple[FaultSpec, ...] = ()
    #: Seconds after a fault (and after its end) whose failures it explains.
    fault_grace_s: float = DEFAULT_FAULT_GRACE_S
    time_scale: float = 1.0
    rtt: RttMatrix = field(default_factory=RttMatrix)
    catalog: dict[str, SystemSpec] = field(default_factory=lambda: dict(SYSTEMS))
    storage: Path = Path(".benchmarks")
    save_name: str | None = None
    thresholds: tuple[Threshold, ...] = ()
    baseline_name: str | None = None
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    slo: dict[str, float] | None = None
    #: The load axis (``--num-users 10,50`` / ``--request-rate 1,2``): one experiment per level.
    #: One level (the default) is no axis: test ids and result folders do not name it.
    loads: tuple[Load, ...] = ()
    #: ``--lbbench-sla`` targets (empty: no capacity search) and the search's settings.
    sla: tuple[SlaTarget, ...] = ()
    sla_kind: LoadKind = "users"
    sla_range: tuple[float, float] = (1.0, 200.0)
    sla_probes: int = 7
    #: This run's id: its results go to ``output_dir / run_id`` (:attr:`run_dir`).
    run_id: str = "run"
    #: ``--lbbench-repeat``: runs of each experiment, and whether they share ``--seed``.
    repeat: int = 1
    repeat_same_seed: bool = False
    engine_profile: str = "l4-llama3.1-8b"
    engine_metrics: str = "sglang"
    # Values of every selected workload's own options and of the shared arrival/dataset
    # options (dest → value); :meth:`options_for` picks what one workload takes.
    workload_options: dict[str, Any] = field(default_factory=dict)
    dataset_source: str = "synthetic"
    dataset_path: str | None = None
    #: The ``--scenario`` preset this run follows (``None``: none) and its scale.
    scenario: str | None = None
    scenario_scale: float | None = None
    #: One line saying what the preset became at this scale (for the header and the summary).
    scenario_layout: str | None = None
    #: ``--replica-url``: (region, URL) of running servers used as the replicas.
    replica_urls: tuple[tuple[str, str], ...] = ()
    #: This run's workloads by name: the built-ins and those of the ``pytest_lbbench_workloads``
    #: hook (whose code exists only in this process).
    workload_catalog: dict[str, Workload] = field(default_factory=workload_catalog)
    #: This run's backends (built-in and from the ``pytest_lbbench_backends`` hook).
    backends: BackendRegistry = field(default_factory=BackendRegistry)
    #: The validated cloud options (``--endpoint``, ``--sky-*``, ``--gke-*``); set by
    #: :func:`build_config` once the rest is valid.
    cloud_options: cloud_plugin.CloudConfig | None = None

    @property
    def hook_workloads(self) -> tuple[str, ...]:
        """The names of the workloads the hook added."""
        return tuple(name for name in self.workload_catalog if name not in WORKLOADS)

    def options_for(self, workload: str) -> dict[str, Any]:
        """The values of the options ``workload`` takes (shared and its own), by dest."""
        return {o.dest: self.workload_options.get(o.dest, o.default)
                for o in (*COMMON_OPTIONS, *self.workload_catalog[workload].options)}

    @property
    def run_dir(self) -> Path:
        """Where this run's results, telemetry, logs, figures and summary go
        (``<output-dir>/<run-id>``; ``<output-dir>/latest`` points at the newest). The ledgers
        stay in ``output_dir`` for ``--lbbench-cleanup``."""
        return self.output_dir / self.run_id

    @property
    def load_axis(self) -> bool:
        """Whether the load is an axis of the matrix (more than one level)."""
        return len(self.loads) > 1

    def experiment_key(self, system: str, workload: str, load: Load | None = None) -> str:
        """``<system>-<workload>[-<load>]``: what repetitions share, and what a baseline and
        a gate compare (the load is named when it is an axis or a search probe)."""
        return f"{system}-{workload}" + (f"-{load.id}" if load is not None else "")

    def experiment_spec(self, system: str, workload: str, load: Load | None = None,
                        repeat: int = 1) -> ExperimentSpec:
        """The experiment ``system`` × ``workload`` as this run's options define it; ``load``
        replaces ``--num-users`` / ``--request-rate`` (and is named in the result folder),
        ``repeat`` (1-based) derives its seed from ``--seed`` unless the repetitions share it."""
        knobs, options = self.knobs, self.options_for(workload)
        suffix = ""
        if load is not None:
            suffix += f"-{load.id}"
            if load.users is not None:
                knobs = dataclasses.replace(knobs, num_users=load.users)
            else:
                options = {**options, "request_rate": load.rate}
        if self.repeat > 1:
            suffix += f"-rep{repeat}"
            if not self.repeat_same_seed:
                knobs = dataclasses.replace(knobs, seed=knobs.seed + repeat - 1)
        return ExperimentSpec(
            system=system,
            workload=workload,
            definition=self.workload_catalog[workload],
            exp_name=f"{self.exp_prefix(workload)}{suffix}_{system}",
            client_regions=self.regions,
            knobs=knobs,
            workload_options=options,
            region_overrides=self.region_overrides,
        )

    def system(self, name: str) -> SystemSpec:
        """The catalog entry of ``name`` (built-in or added through the hook)."""
        return self.catalog[name]

    def exp_prefix(self, workload: str) -> str:
        """``<exp>`` of the result paths: ``--exp-name`` or the workload's name."""
        return self.exp_name or workload

    def to_dict(self) -> dict[str, Any]:
        # Not asdict(self): the registry holds live backend state (sessions, locks).
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("rtt", "baseline", "backends", "cloud_options", "catalog", "workload_catalog"):
                continue
            value = getattr(self, f.name)
            data[f.name] = asdict(value) if isinstance(value, RunKnobs) else value
        data["backends"] = self.backends.names()
        data["hook_workloads"] = list(self.hook_workloads)
        data["output_dir"] = str(self.output_dir)
        data["run_dir"] = str(self.run_dir)
        data["storage"] = str(self.storage)
        data["thresholds"] = [f"{t.metric}:{t.max_worse_pct:g}%" for t in self.thresholds]
        data["faults"] = [spec.text for spec in self.faults]
        data["loads"] = [load.to_dict() for load in self.loads]
        data["sla"] = [t.text for t in self.sla]
        data["catalog"] = {name: spec.to_dict() for name, spec in self.catalog.items()}
        return data


def _fail(message: str) -> NoReturn:
    raise pytest.UsageError(message)


def _check_names(kind: str, option: str, names: list[str], valid: list[str]) -> None:
    for name in names:
        if name not in valid:
            _fail(f"{option}: unknown {kind} {name!r}. Valid {kind}s: {', '.join(valid)}.")


def _parse_region_to_args(raw: str | None, valid_regions: list[str]) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        _fail(
            f"--region-to-args is not valid JSON ({exc.msg} at character {exc.pos}): {raw!r}. "
            'Expected an object mapping a client region to client arguments, e.g. '
            '\'{"us-east-2": "--num-users 40", "ap-northeast-1": "--num-users 4"}\'.'
        )
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        _fail(
            f"--region-to-args must be a JSON object of region → argument string, got {raw!r}. "
            'Example: \'{"us-east-2": "--num-users 40"}\'.'
        )
    _check_names("region", "--region-to-args", list(data), valid_regions)
    return dict(data)


def _region_overrides(region_to_args: dict[str, str], workloads: list[str],
                      catalog: dict[str, Workload]) -> dict[str, dict[str, Any]]:
    """Each region's argument string as typed option values (parsed once, here), checked
    against every selected workload."""
    from pytest_lbbench.client.planning import check_overrides

    overrides: dict[str, dict[str, Any]] = {}
    for region, args in region_to_args.items():
        try:
            overrides[region] = parse_region_args(args, catalog.values())
            knobs_from(overrides[region])
            for workload in workloads:
                check_overrides(overrides[region], catalog[workload])
        except ValueError as exc:
            _fail(f"--region-to-args: arguments for {region!r}: {exc}. They may set any client "
                  "option: --num-users, --duration, --max-tokens, the shared arrival options or "
                  "the workload's own (see pytest --help).")
    return overrides


def _is_replica_url(url: str) -> bool:
    try:
        parse_replica_url(url)
    except ValueError:
        return False
    return True


def _parse_replica_urls(values: list[str], valid_regions: list[str]) -> list[tuple[str, str]]:
    """``--replica-url REGION=URL`` values → (region, URL) in the order given."""
    out: list[tuple[str, str]] = []
    for value in values:
        region, sep, url = value.partition("=")
        region, url = region.strip(), url.strip().rstrip("/")
        if not sep or not _is_replica_url(url):
            _fail(f"--replica-url {value!r}: expected REGION=http://HOST:PORT, e.g. "
                  "us-east-2=http://127.0.0.1:30000.")
        _check_names("region", "--replica-url", [region], valid_regions)
        out.append((region, url))
    return out


def _check_profile(name_or_path: str) -> str:
    from pytest_lbbench.sim.profile import load_profile  # the simulator, only when configuring

    try:
        load_profile(name_or_path)
    except (ValueError, OSError) as exc:
        _fail(f"--engine-profile: {exc}")
    return str(Path(name_or_path).resolve()) if Path(name_or_path).is_file() else name_or_path


def build_catalog(config: pytest.Config) -> dict[str, SystemSpec]:
    """The built-in systems plus those returned by ``pytest_lbbench_systems`` implementations."""
    catalog = dict(SYSTEMS)
    for extra in config.hook.pytest_lbbench_systems(config=config):
        for spec in extra or []:
            if not isinstance(spec, SystemSpec):
                _fail(f"pytest_lbbench_systems returned {spec!r}; return SystemSpec objects.")
            if spec.kind is BalancerKind.CUSTOM and not spec.command:
                _fail(f"pytest_lbbench_systems: custom system {spec.name!r} has no command; give "
                      "SystemSpec(command=...) a template as --custom-system takes (see pytest_lbbench.custom).")
            if spec.name in catalog:
                _fail(
                    f"pytest_lbbench_systems: a system named {spec.name!r} already exists; "
                    f"pick another name (taken: {', '.join(catalog)})."
                )
            catalog[spec.name] = spec
    try:
        customs = parse_custom_systems(config.getoption("custom_system"), list(catalog))
    except CustomSystemError as exc:
        _fail(f"{exc}.")
    catalog.update((spec.name, spec) for spec in customs)
    return catalog


def build_backends(config: pytest.Config) -> BackendRegistry:
    """The built-in backends (local, sky, gke) plus those returned by
    ``pytest_lbbench_backends`` implementations; one instance each for this run."""
    registry = BackendRegistry([LocalBackend(), cloud_plugin.SkyBackend(), cloud_plugin.GkeBackend()])
    for extra in config.hook.pytest_lbbench_backends(config=config):
        for backend in extra or []:
            try:
                registry.add(backend)
            except ValueError as exc:
                _fail(f"pytest_lbbench_backends: {exc}.")
    return registry


def build_workload_catalog(config: pytest.Config) -> dict[str, Workload]:
    """The built-in workloads plus those returned by ``pytest_lbbench_workloads``."""
    extra = [w for returned in config.hook.pytest_lbbench_workloads(config=config) for w in returned or []]
    try:
        return workload_catalog(extra)
    except ValueError as exc:
        _fail(f"pytest_lbbench_workloads: {exc}.")


def _workload_values(config: pytest.Config, workloads: list[str],
                     catalog: dict[str, Workload]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in workloads:
        for option in catalog[name].options:
            try:
                value = config.getoption(option.dest)
            except ValueError:  # a hook workload's option that pytest does not know
                value = option.default
            values[option.dest] = value
    return values


def _common_option_values(opt: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option in COMMON_OPTIONS:
        value = opt(option.dest)
        if option.dest == "dataset_path" and value:
            value = str(Path(value).resolve())  # the client may run in another directory
        if option.dest == "request_rate" and value is not None:
            value = float(value[0])  # one level or a list (the load axis): the first
        values[option.dest] = value
    return values


def _load_levels(users: tuple[float, ...] | None, rates: tuple[float, ...] | None) -> tuple[Load, ...]:
    """The load axis: a list of ``--num-users`` or of ``--request-rate`` levels (not both)."""
    if users and rates and len(users) > 1 and len(rates) > 1:
        _fail("--num-users and --request-rate both list several levels; sweep one of them "
              "(the other takes one value).")
    if rates and len(rates) > 1:
        return tuple(Load("rate", r) for r in rates)
    if users and len(users) > 1:
        return tuple(Load("users", u) for u in users)
    return ()


def _sla_options(opt: Any, loads: tuple[Load, ...]) -> tuple[tuple[SlaTarget, ...], LoadKind, tuple[float, float]]:
    kind: LoadKind = opt("lbbench_sla_load")
    if not opt("lbbench_sla"):
        for flag, dest in (("--lbbench-sla-range", "lbbench_sla_range"),):
            if opt(dest):
                _fail(f"{flag} needs --lbbench-sla METRIC=BOUND (e.g. ttft_p90_s=1.0).")
        return (), kind, DEFAULT_SLA_RANGE[kind]
    try:
        sla = parse_sla(opt("lbbench_sla"))
        sla_range = parse_range(opt("lbbench_sla_range"), kind) if opt("lbbench_sla_range") else DEFAULT_SLA_RANGE[kind]
    except ValueError as exc:
        _fail(f"{exc}.")
    if loads:
        _fail(f"--lbbench-sla searches the load itself; drop the list of {loads[0].kind} levels "
              f"({', '.join(l.id for l in loads)}), or drop --lbbench-sla to sweep them.")
    if opt("lbbench_sla_probes") < 2:
        _fail(f"--lbbench-sla-probes must be at least 2, got {opt('lbbench_sla_probes')!r}.")
    return sla, kind, sla_range


def check_workloads(cfg: LbbenchConfig) -> None:
    """Build every selected workload's plan once per client region, so a bad workload option
    or a missing dataset fails at start-up, before any system is started."""
    from pytest_lbbench.workloads.sources.hub import DatasetUnavailable, preflight

    if cfg.dataset_source not in DATASET_SOURCES:
        _fail(f"--dataset-source: unknown source {cfg.dataset_source!r}. Valid sources: "
              f"{', '.join(DATASET_SOURCES)}.")
    for name in cfg.workloads:
        workload = cfg.workload_catalog[name]
        if cfg.dataset_source == "hf":
            if workload.hf_dataset is None:
                _fail(f"--dataset-source hf: workload {name!r} has no real dataset (it is "
                      "synthetic only); run it with --dataset-source synthetic.")
            try:
                preflight(workload.hf_dataset, cfg.dataset_path, os.environ)
            except DatasetUnavailable as exc:
                _fail(f"--dataset-source hf ({name}): {exc}")
            continue  # building the plan here would load the whole dataset at start-up
        spec = cfg.experiment_spec("check", name)
        for region in cfg.regions:
            # The same shard index the launchers use, so the plan checked is the plan run.
            try:
                spec.client_job(region, cfg.rtt.shard_index(region), "http://127.0.0.1:1",
                                Path("unused.json"))
            except (ValueError, OSError) as exc:
                _fail(f"--workloads {name}: {exc}")


def _scenario_layout(name: str | None, scale: float | None) -> ScenarioLayout | None:
    """The ``--scenario`` preset at ``--scenario-scale`` (``None`` without a scenario)."""
    if name is None:
        if scale is not None:
            _fail("--scenario-scale needs --scenario NAME (one of: " + ", ".join(SCENARIOS) + ").")
        return None
    if name not in SCENARIOS:
        _fail(f"--scenario: unknown scenario {name!r}. Valid scenarios: {', '.join(SCENARIOS)}.")
    try:
        return SCENARIOS[name].layout(scale)
    except ValueError as exc:
        _fail(str(exc) + ".")


def build_config(config: pytest.Config, *, run_preflight: bool | None = None) -> LbbenchConfig:
    """Validate the options and freeze them (raises ``pytest.UsageError`` on bad input).

    ``run_preflight``: passed to :func:`~pytest_lbbench.cloud_plugin.cloud_config` (``None``:
    the sky preflight runs when ``--backend sky`` will provision)."""
    apply_ini(config)
    opt = config.getoption
    catalog = build_catalog(config)
    workloads_known = build_workload_catalog(config)
    backends = build_backends(config)
    rtt = RttMatrix()
    valid_regions = list(rtt.regions)
    backend = opt("backend")
    try:
        backends.get(backend)
    except ValueError as exc:
        _fail(f"--backend: {exc}.")
    layout = _scenario_layout(opt("scenario"), opt("scenario_scale"))
    regions = split_names(opt("regions")) or list(
        layout.client_regions if layout else DEFAULT_CLIENT_REGIONS)
    _check_names("region", "--regions", regions, valid_regions)
    replica_regions = split_names(opt("replica_regions")) or list(
        layout.replica_regions if layout else DEFAULT_REPLICA_REGIONS)
    _check_names("region", "--replica-regions", replica_regions, valid_regions)
    systems = split_names(opt("systems")) or list(
        layout.scenario.systems if layout else catalog)
    _check_names("system", "--systems", systems, list(catalog))
    workloads = split_names(opt("workloads")) or list(
        layout.scenario.workloads if layout else ["arena_syn"])
    _check_names("workload", "--workloads", workloads, sorted(workloads_known))
    replicas = opt("replicas")
    if replicas is None:
        replicas = layout.total_replicas if layout else DEFAULT_REPLICAS
    replica_urls = _parse_replica_urls(opt("replica_url"), valid_regions)
    if replica_urls:
        if backend != "local":
            _fail(f"--replica-url runs on the local backend only (this run uses --backend {backend}).")
        if opt("replicas") is not None and opt("replicas") != len(replica_urls):
            _fail(f"--replicas {opt('replicas')} but {len(replica_urls)} --replica-url given; drop "
                  "--replicas (the URLs are the replicas).")
        replicas = len(replica_urls)
        replica_regions = list(dict.fromkeys(region for region, _ in replica_urls))
    knob_values = {f.name: opt(f.name) for f, _ in knob_fields()}
    loads = _load_levels(opt("num_users"), opt("request_rate"))
    if knob_values["num_users"] is not None:  # one level or a list: the knob is the first
        knob_values["num_users"] = int(knob_values["num_users"][0])
    if knob_values["num_users"] is None and layout is not None:
        knob_values["num_users"] = max(layout.clients.values())
    try:
        knobs = knobs_from(knob_values)
    except ValueError as exc:
        _fail(f"{exc}.")
    region_to_args = _parse_region_to_args(opt("region_to_args"), valid_regions)
    if layout is not None and opt("num_users") is None:
        # The preset's users per region first; a user's own --region-to-args comes after it, so
        # it wins (the client's parser keeps the last value of an option).
        preset = layout.region_to_args()
        region_to_args = {
            region: " ".join(a for a in (preset.get(region, ""), region_to_args.get(region, "")) if a)
            for region in dict.fromkeys([*preset, *region_to_args])
        }
    region_overrides = _region_overrides(region_to_args, workloads, workloads_known)
    positive = {
        "--replicas": replicas, "--time-scale": opt("time_scale"),
        "--host-lag-threshold-ms": opt("host_lag_threshold_ms"),
    }
    for name, value in positive.items():
        if value <= 0:
            _fail(f"{name} must be positive, got {value!r}.")
    max_failure_rate = opt("lbbench_max_failure_rate")
    if not 0 <= max_failure_rate <= 1:
        _fail(f"--lbbench-max-failure-rate must be within 0..1 (0.01 = 1 %), got {max_failure_rate!r}.")
    if opt("fault_grace") < 0:
        _fail(f"--fault-grace must be >= 0 seconds, got {opt('fault_grace')!r}.")
    try:
        faults = parse_faults(opt("fault"))
    except FaultError as exc:
        _fail(f"{exc}.")
    if faults and backend != "local":
        _fail(f"--fault drills run on the local backend only (this run uses --backend {backend}).")
    slo = None
    if opt("slo"):
        try:
            slo = parse_slo(opt("slo"))
        except argparse.ArgumentTypeError as exc:
            _fail(f"--slo: {exc}.")
    thresholds = []
    for raw in opt("lbbench_fail"):
        try:
            thresholds.append(parse_threshold(raw))
        except ValueError as exc:
            _fail(f"--lbbench-fail: {exc}.")
    storage = Path(opt("lbbench_storage")).resolve()
    baseline_name: str | None = None
    baseline: dict[str, dict[str, Any]] = {}
    if opt("lbbench_compare"):
        try:
            baseline_name, baseline = load_baseline(opt("lbbench_compare"), storage)
        except BaselineNotFound as exc:
            _fail(f"--lbbench-compare: {exc}")
    elif thresholds:
        _fail("--lbbench-fail needs a baseline: add --lbbench-compare REF (e.g. 'last').")
    sla, sla_kind, sla_range = _sla_options(opt, loads)
    repeat = opt("lbbench_repeat")
    if repeat < 1:
        _fail(f"--lbbench-repeat must be at least 1, got {repeat!r}.")
    if opt("lbbench_repeat_same_seed") and repeat == 1:
        _fail("--lbbench-repeat-same-seed needs --lbbench-repeat N with N >= 2.")
    cfg = LbbenchConfig(
        backend=backend,
        regions=tuple(dict.fromkeys(regions)),
        replica_regions=tuple(dict.fromkeys(replica_regions)),
        replicas=replicas,
        systems=tuple(dict.fromkeys(systems)),
        workloads=tuple(dict.fromkeys(workloads)),
        knobs=knobs,
        exp_name=opt("exp_name"),
        output_dir=Path(opt("output_dir")).resolve(),
        region_overrides=region_overrides,
        host_lag_threshold_ms=opt("host_lag_threshold_ms"),
        max_failure_rate=max_failure_rate,
        faults=faults,
        fault_grace_s=opt("fault_grace"),
        time_scale=opt("time_scale"),
        rtt=rtt,
        catalog=catalog,
        storage=storage,
        save_name=opt("lbbench_save"),
        thresholds=tuple(thresholds),
        baseline_name=baseline_name,
        baseline=baseline,
        slo=slo,
        loads=loads,
        sla=sla,
        sla_kind=sla_kind,
        sla_range=sla_range,
        sla_probes=opt("lbbench_sla_probes"),
        repeat=repeat,
        repeat_same_seed=opt("lbbench_repeat_same_seed"),
        run_id=current_run_id(config),
        engine_profile=_check_profile(opt("engine_profile")),
        engine_metrics=opt("engine_metrics"),
        workload_options={**_workload_values(config, workloads, workloads_known), **_common_option_values(opt)},
        dataset_source=opt("dataset_source"),
        dataset_path=str(Path(opt("dataset_path")).resolve()) if opt("dataset_path") else None,
        scenario=layout.scenario.name if layout else None,
        scenario_scale=layout.scale if layout else None,
        scenario_layout=layout.describe() if layout else None,
        replica_urls=tuple(replica_urls),
        workload_catalog=workloads_known,
        backends=backends,
    )
    check_workloads(cfg)
    _check_time_scale(cfg, gke_contexts_given=bool(opt("gke_contexts")))
    cloud_cfg = cloud_plugin.cloud_config(config, cfg, run_preflight=run_preflight)
    return dataclasses.replace(cfg, cloud_options=cloud_cfg)


def _check_time_scale(cfg: LbbenchConfig, *, gke_contexts_given: bool) -> None:
    """``--time-scale`` means one thing: every component scales its own clocks by it. A
    backend whose engines run on real clocks cannot, so the run is refused, not silently run
    at another speed than the one asked for."""
    if cfg.time_scale == 1.0:
        return
    serving = [cfg.backend]
    if gke_contexts_given and any(cfg.system(s).kind is BalancerKind.GATEWAY for s in cfg.systems):
        serving.append("gke")
    for name in dict.fromkeys(serving):
        if not cfg.backends.get(name).scales_time:
            _fail(f"--time-scale {cfg.time_scale:g}: the {name} backend runs real engines on real "
                  "clocks and cannot scale time. Drop --time-scale (or give 1), or run the local backend.")


_RUN_ID = pytest.StashKey[str]()
RUN_ID_INPUT = "lbbench_run_id"  # the key in an xdist worker's workerinput


def current_run_id(config: pytest.Config) -> str:
    """This session's run id: the controller's under xdist (it hands it to every worker in
    ``workerinput``), else made here once."""
    if _RUN_ID not in config.stash:
        given = getattr(config, "workerinput", {}).get(RUN_ID_INPUT)
        config.stash[_RUN_ID] = str(given) if given else new_run_id(
            _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0))
    return config.stash[_RUN_ID]


def get_config(config: pytest.Config) -> LbbenchConfig:
    """The run's :class:`LbbenchConfig`, built (and validated) on the first call."""
    if CONFIG_KEY not in config.stash:
        config.stash[CONFIG_KEY] = build_config(config)
    return config.stash[CONFIG_KEY]

