"""Command-line options → one frozen, validated :class:`LbbenchConfig` in the config stash.

Every mistake a user can make on the command line is caught here, at start-up, with a
``pytest.UsageError`` (exit code 4) that quotes the bad value and lists what is valid.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.benchstore import BaselineNotFound, load_baseline
from pytest_lbbench.gate import Threshold, parse_threshold
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS, RttMatrix
from pytest_lbbench.report.__main__ import parse_slo
from pytest_lbbench.systems import SYSTEMS, SystemSpec
from pytest_lbbench.workloads import WORKLOADS

BACKENDS = ("local",)
DEFAULT_CLIENT_REGIONS = ("us-east-2", "ap-northeast-1")
DEFAULT_OUTPUT_DIR = "lbbench-results"

CONFIG_KEY = pytest.StashKey["LbbenchConfig"]()


@dataclass(frozen=True)
class LbbenchConfig:
    """The effective configuration of one pytest-lbbench run."""

    backend: str
    regions: tuple[str, ...]
    replica_regions: tuple[str, ...]
    replicas: int
    systems: tuple[str, ...]
    workloads: tuple[str, ...]
    duration_s: float
    num_users: int
    num_conv: int
    seed: int
    exp_name: str | None
    output_dir: Path
    region_to_args: dict[str, str] = field(default_factory=dict)
    max_tokens: int | None = None
    request_timeout_s: float = 100.0
    drain_timeout_s: float = 100.0
    lag_threshold_ms: float = 10.0
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

    def system(self, name: str) -> SystemSpec:
        """The catalog entry of ``name`` (built-in or added through the hook)."""
        return self.catalog[name]

    def exp_prefix(self, workload: str) -> str:
        """``<exp>`` of the result paths: ``--exp-name`` or the workload's name."""
        return self.exp_name or workload

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        data.pop("rtt")
        data.pop("baseline")
        data["storage"] = str(self.storage)
        data["thresholds"] = [f"{t.metric}:{t.max_worse_pct:g}%" for t in self.thresholds]
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
    add("--backend", default="local", metavar="NAME",
        help=f"where systems run: {', '.join(BACKENDS)}. Default: local")
    add("--regions", nargs="+", default=None, metavar="REGION",
        help="client regions, space- or comma-separated. Default: "
        + " ".join(DEFAULT_CLIENT_REGIONS))
    add("--replica-regions", nargs="+", default=None, metavar="REGION",
        help="ordered regions that replicas are placed on round-robin. Default: "
        + " ".join(DEFAULT_REPLICA_REGIONS))
    add("--replicas", type=int, default=4, metavar="N",
        help="replicas per system. Default: 4")
    add("--systems", nargs="+", default=None, metavar="NAME",
        help=f"systems to run (default: all): {', '.join(SYSTEMS)}, and any added by the "
        "pytest_lbbench_systems hook")
    add("--workloads", nargs="+", default=None, metavar="NAME",
        help=f"workloads to run (default: arena_syn): {', '.join(WORKLOADS)}")
    add("--duration", type=float, default=60.0, metavar="SECONDS",
        help="seconds during which users start new turns; turns in flight then finish. Default: 60")
    add("--num-users", type=int, default=50, metavar="N",
        help="simulated users per client region. Default: 50")
    add("--num-conv", type=int, default=1000, metavar="N",
        help="conversations per client region. Default: 1000")
    add("--seed", type=int, default=0, metavar="INT", help="workload seed. Default: 0")
    add("--exp-name", default=None, metavar="NAME",
        help="experiment name in result paths (<exp>_<system>). Default: the workload name")
    add("--output-dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
        help=f"where results go. Default: {DEFAULT_OUTPUT_DIR}")
    add("--region-to-args", default=None, metavar="JSON",
        help='per-client-region client arguments, e.g. \'{"us-east-2": "--num-users 40"}\'')
    add("--max-tokens", type=int, default=None, metavar="N",
        help="override the workload's max_tokens (arena_syn: 512)")
    add("--request-timeout", type=float, default=100.0, metavar="SECONDS",
        help="per-request client timeout. Default: 100")
    add("--drain-timeout", type=float, default=100.0, metavar="SECONDS",
        help="how long turns in flight at the end of --duration may take. Default: 100")
    add("--lag-threshold-ms", type=float, default=10.0, metavar="MS",
        help="client event-loop lag p99 above which a run is flagged client-bound. Default: 10")
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
    add("--time-scale", type=float, default=1.0, metavar="FACTOR",
        help="multiply every simulated engine time by FACTOR (tests use < 1). Default: 1")


def _fail(message: str) -> None:
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
    for region, args in data.items():
        try:
            shlex.split(args)
        except ValueError as exc:
            _fail(f"--region-to-args: arguments for {region!r} do not parse ({exc}): {args!r}")
    return dict(data)


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


def build_config(config: pytest.Config) -> LbbenchConfig:
    """Validate the options and freeze them (raises ``pytest.UsageError`` on bad input)."""
    opt = config.getoption
    catalog = build_catalog(config)
    rtt = RttMatrix()
    valid_regions = list(rtt.regions)
    backend = opt("backend")
    if backend not in BACKENDS:
        _fail(f"--backend: unknown backend {backend!r}. Valid backends: {', '.join(BACKENDS)}.")
    regions = _split_names(opt("regions")) or list(DEFAULT_CLIENT_REGIONS)
    _check_names("region", "--regions", regions, valid_regions)
    replica_regions = _split_names(opt("replica_regions")) or list(DEFAULT_REPLICA_REGIONS)
    _check_names("region", "--replica-regions", replica_regions, valid_regions)
    systems = _split_names(opt("systems")) or list(catalog)
    _check_names("system", "--systems", systems, list(catalog))
    workloads = _split_names(opt("workloads")) or ["arena_syn"]
    _check_names("workload", "--workloads", workloads, sorted(WORKLOADS))
    positive = {
        "--replicas": opt("replicas"), "--num-users": opt("num_users"),
        "--num-conv": opt("num_conv"), "--duration": opt("duration"),
        "--request-timeout": opt("request_timeout"), "--time-scale": opt("time_scale"),
    }
    for name, value in positive.items():
        if value <= 0:
            _fail(f"{name} must be positive, got {value!r}.")
    if opt("max_tokens") is not None and opt("max_tokens") < 1:
        _fail(f"--max-tokens must be at least 1, got {opt('max_tokens')!r}.")
    if opt("drain_timeout") < 0:
        _fail(f"--drain-timeout must be >= 0, got {opt('drain_timeout')!r}.")
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
    return LbbenchConfig(
        backend=backend,
        regions=tuple(dict.fromkeys(regions)),
        replica_regions=tuple(dict.fromkeys(replica_regions)),
        replicas=opt("replicas"),
        systems=tuple(dict.fromkeys(systems)),
        workloads=tuple(dict.fromkeys(workloads)),
        duration_s=opt("duration"),
        num_users=opt("num_users"),
        num_conv=opt("num_conv"),
        seed=opt("seed"),
        exp_name=opt("exp_name"),
        output_dir=Path(opt("output_dir")).resolve(),
        region_to_args=_parse_region_to_args(opt("region_to_args"), valid_regions),
        max_tokens=opt("max_tokens"),
        request_timeout_s=opt("request_timeout"),
        drain_timeout_s=opt("drain_timeout"),
        lag_threshold_ms=opt("lag_threshold_ms"),
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
    )


def get_config(config: pytest.Config) -> LbbenchConfig:
    """The run's :class:`LbbenchConfig` (built in ``pytest_configure``)."""
    return config.stash[CONFIG_KEY]
