"""Command-line options → one frozen, validated :class:`LbbenchConfig` in the config stash.

Every mistake a user can make on the command line is caught here, at start-up, with a
``pytest.UsageError`` (exit code 4) that quotes the bad value and lists what is valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from pytest_lbbench import cloud_plugin
from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.backends.local import LocalBackend
from pytest_lbbench.backends.registry import BackendRegistry
from pytest_lbbench.runspec import RunKnobs, add_knob_options, knob_fields, knobs_from
from pytest_lbbench.benchstore import BaselineNotFound, load_baseline
from pytest_lbbench.faults import FaultError, FaultSpec, parse_faults
from pytest_lbbench.gate import Threshold, parse_threshold
from pytest_lbbench.hostlag import DEFAULT_THRESHOLD_MS as DEFAULT_HOST_LAG_THRESHOLD_MS
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS, RttMatrix
from pytest_lbbench.report.__main__ import parse_slo
from pytest_lbbench.scenarios import SCENARIOS, ScenarioLayout
from pytest_lbbench.systems import SYSTEMS, BalancerKind, SystemSpec
from pytest_lbbench.workloads import WORKLOADS
from pytest_lbbench.workloads.registry import workload_catalog
from pytest_lbbench.client.planning import COMMON_OPTIONS, parse_region_args
from pytest_lbbench.workloads.base import Workload, WorkloadOption
from pytest_lbbench.workloads.sources import DATASET_SOURCES

DEFAULT_CLIENT_REGIONS = ("us-east-2", "ap-northeast-1")
DEFAULT_OUTPUT_DIR = "lbbench-results"
DEFAULT_REPLICAS = 4
#: ``python -m pytest_lbbench.sim --engine-metrics`` choices (``sim.engine.ENGINE_METRICS``), stated
#: here because importing the simulator package at plugin start-up would load aiohttp's server.
ENGINE_METRICS_MODES = ("sglang", "live")

CONFIG_KEY = pytest.StashKey["LbbenchConfig"]()
DEFAULT_MAX_FAILURE_RATE = 0.01
DEFAULT_FAULT_GRACE_S = 5.0


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

    def experiment_spec(self, system: str, workload: str) -> ExperimentSpec:
        """The experiment ``system`` × ``workload`` as this run's options define it."""
        return ExperimentSpec(
            system=system,
            workload=workload,
            definition=self.workload_catalog[workload],
            exp_name=f"{self.exp_prefix(workload)}_{system}",
            client_regions=self.regions,
            knobs=self.knobs,
            workload_options=self.options_for(workload),
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
        data["storage"] = str(self.storage)
        data["thresholds"] = [f"{t.metric}:{t.max_worse_pct:g}%" for t in self.thresholds]
        data["faults"] = [spec.text for spec in self.faults]
        data["catalog"] = {name: spec.to_dict() for name, spec in self.catalog.items()}
        return data


def _split_names(values: list[str] | None) -> list[str]:
    """Accept both ``--regions a b`` (the original gen_cmd) and ``--regions a,b``."""
    out: list[str] = []
    for value in values or []:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lbbench", "pytest-lbbench: multi-region LLM load-balancer benchmarks")
    add = group.addoption
    add("--regions", nargs="+", default=None, metavar="REGION",
        help="client regions, space- or comma-separated. Default: "
        + " ".join(DEFAULT_CLIENT_REGIONS))
    add("--replica-regions", nargs="+", default=None, metavar="REGION",
        help="ordered regions that replicas are placed on round-robin. Default: "
        + " ".join(DEFAULT_REPLICA_REGIONS))
    add("--replicas", type=int, default=None, metavar="N",
        help=f"replicas per system. Default: {DEFAULT_REPLICAS} (or the --scenario's)")
    add("--systems", nargs="+", default=None, metavar="NAME",
        help=f"systems to run (default: all): {', '.join(SYSTEMS)}, and any added by the "
        "pytest_lbbench_systems hook")
    add("--workloads", nargs="+", default=None, metavar="NAME",
        help=f"workloads to run (default: arena_syn): {', '.join(WORKLOADS)}")
    # --duration, --num-users, --seed, --max-tokens, --request-timeout, --drain-timeout,
    # --lag-threshold-ms, --warmup: declared once, with their defaults, in runspec.RunKnobs.
    add_knob_options(add)
    add("--scenario", default=None, metavar="NAME",
        help="run one of the paper's experiments: sets client regions and users per region, the "
        "replica layout, workloads and systems (options you give explicitly win). One of: "
        + ", ".join(SCENARIOS))
    add("--scenario-scale", type=float, default=None, metavar="F",
        help="multiply the --scenario's clients and replicas per region by F (rounded half up, at "
        "least 1). Default: the preset's own, chosen to fit a 2-core machine in real time")
    add("--exp-name", default=None, metavar="NAME",
        help="experiment name in result paths (<exp>_<system>). Default: the workload name")
    add("--output-dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
        help=f"where results go. Default: {DEFAULT_OUTPUT_DIR}")
    add("--region-to-args", default=None, metavar="JSON",
        help='per-client-region client arguments, e.g. \'{"us-east-2": "--num-users 40"}\'')
    add("--host-lag-threshold-ms", type=float, default=DEFAULT_HOST_LAG_THRESHOLD_MS, metavar="MS",
        help="flag an experiment host-bound when a replica, LB or delay link fell behind model "
        "time by more than MS per event on average (model time), or an engine resynced its clock. "
        f"Default: {DEFAULT_HOST_LAG_THRESHOLD_MS:g}")
    add("--lbbench-max-failure-rate", type=float, default=DEFAULT_MAX_FAILURE_RATE, metavar="RATE",
        help="fail a test when more than RATE (0..1) of its measured requests failed; requests "
        f"hit by a drilled --fault are reported apart and do not count. Default: {DEFAULT_MAX_FAILURE_RATE:g}")
    add("--fault", action="append", default=[], metavar="ACTION:TARGET@Ts[+Ds][*F]",
        help="a fault drill during every experiment (local backend; repeatable, or comma-separated): "
        "crash:replica-0-us-east-2@15s, crash:lb-us-east-2@30s+10s (restarts after 10 s), "
        "restart:replica-0-us-east-2@25s, partition:ap-northeast-1@20s+30s, "
        "slow:replica-1-ap-northeast-1@10s*3. Times are seconds from the start of traffic, as --duration")
    add("--fault-grace", type=float, default=DEFAULT_FAULT_GRACE_S, metavar="S",
        help="seconds after a fault (and after it ends) whose failed requests the fault "
        f"explains; later failures count against --lbbench-max-failure-rate. Default: {DEFAULT_FAULT_GRACE_S:g}")
    add("--lbbench-selfcheck", action="store_true", default=False,
        help="also run the benchmarks of pytest-lbbench itself (marked lbbench_selfcheck), "
        "such as the client-capacity check; off by default because they load the machine")
    add("--slo", default=None, metavar="KEY=S,...",
        help="thresholds for goodput and SLO attainment in summary.csv, e.g. ttft_s=1,e2e_s=30,"
        "tpot_s=0.1 (seconds). Default: ttft_s=1,e2e_s=30,tpot_s=0.1")
    add("--lbbench-storage", default=".benchmarks", metavar="DIR",
        help="where runs are saved, in pytest-benchmark's format. Default: .benchmarks")
    add("--lbbench-save", default=None, metavar="NAME",
        help="save this run as NNNN_NAME.json in the storage (pytest-benchmark list/compare read it)")
    add("--lbbench-compare", default=None, metavar="REF",
        help="compare with a saved run: its number (0001), its NAME, a path, or 'last'")
    add("--lbbench-fail", action="append", default=[], metavar="METRIC:PCT%",
        help="with --lbbench-compare: fail a test whose METRIC got worse by more than PCT%%, "
        "e.g. ttft_p90_s:10%% or throughput_tpt_per_s:5%% (repeatable)")
    add("--engine-profile", default="l4-llama3.1-8b", metavar="NAME|FILE",
        help="simulated replica profile: a registered name or a JSON file such as "
        '{"base": "l4-llama3.1-8b", "kv_capacity_tokens": 30000}. Default: l4-llama3.1-8b')
    add("--engine-metrics", choices=ENGINE_METRICS_MODES, default="sglang",
        help="how the simulated replica's /metrics gauges behave: 'sglang' sets them only at "
        "SGLang 0.4.5's logging points (after a prefill batch, every 40 decode steps), so a "
        "100 ms probe can see a stale queue, as on a real engine; 'live' reports the current "
        "value at every scrape. Default: sglang")
    add("--time-scale", type=float, default=1.0, metavar="FACTOR",
        help="multiply every simulated engine time by FACTOR (tests use < 1). Default: 1")
    cloud_plugin.add_options(group)
    add_workload_options(parser)


def add_workload_options(parser: pytest.Parser) -> None:
    """The shared arrival/dataset options and every built-in workload's own options."""
    group = parser.getgroup("lbbench-workloads", "pytest-lbbench: workloads (see README)")
    add = group.addoption
    for option in COMMON_OPTIONS:
        add(option.flag, **option.parser_kwargs())
    seen: dict[str, tuple[str, WorkloadOption]] = {}
    for name, workload in WORKLOADS.items():
        for option in workload.options:
            if option.flag in seen:
                other, first = seen[option.flag]
                if (first.type, first.default) != (option.type, option.default):
                    raise ValueError(
                        f"workloads {other} and {name} declare {option.flag} differently"
                    )
                continue
            seen[option.flag] = (name, option)
            users = ", ".join(n for n, w in WORKLOADS.items() if any(o.flag == option.flag for o in w.options))
            kwargs = option.parser_kwargs()
            kwargs["help"] = f"[{users}] {kwargs['help']}"
            add(option.flag, **kwargs)


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
            if spec.name in catalog:
                _fail(
                    f"pytest_lbbench_systems: a system named {spec.name!r} already exists; "
                    f"pick another name (taken: {', '.join(catalog)})."
                )
            catalog[spec.name] = spec
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
        values[option.dest] = value
    return values


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
    regions = _split_names(opt("regions")) or list(
        layout.client_regions if layout else DEFAULT_CLIENT_REGIONS)
    _check_names("region", "--regions", regions, valid_regions)
    replica_regions = _split_names(opt("replica_regions")) or list(
        layout.replica_regions if layout else DEFAULT_REPLICA_REGIONS)
    _check_names("region", "--replica-regions", replica_regions, valid_regions)
    systems = _split_names(opt("systems")) or list(
        layout.scenario.systems if layout else catalog)
    _check_names("system", "--systems", systems, list(catalog))
    workloads = _split_names(opt("workloads")) or list(
        layout.scenario.workloads if layout else ["arena_syn"])
    _check_names("workload", "--workloads", workloads, sorted(workloads_known))
    replicas = opt("replicas")
    if replicas is None:
        replicas = layout.total_replicas if layout else DEFAULT_REPLICAS
    knob_values = {f.name: opt(f.name) for f, _ in knob_fields()}
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
        engine_profile=_check_profile(opt("engine_profile")),
        engine_metrics=opt("engine_metrics"),
        workload_options={**_workload_values(config, workloads, workloads_known), **_common_option_values(opt)},
        dataset_source=opt("dataset_source"),
        dataset_path=str(Path(opt("dataset_path")).resolve()) if opt("dataset_path") else None,
        scenario=layout.scenario.name if layout else None,
        scenario_scale=layout.scale if layout else None,
        scenario_layout=layout.describe() if layout else None,
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


def get_config(config: pytest.Config) -> LbbenchConfig:
    """The run's :class:`LbbenchConfig` (built in ``pytest_configure``)."""
    return config.stash[CONFIG_KEY]
