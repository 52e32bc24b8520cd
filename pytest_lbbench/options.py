"""Command-line and ini options of pytest-lbbench: declared here, read by :mod:`.runconfig`.

This module is what pytest imports for ``--help`` and for every run, lbbench tests or not, so it
imports only the light catalogues (names, defaults, help). Every option can also be set in
``[tool.pytest.ini_options]`` (or ``pytest.ini``) as ``lbbench_<name>`` (see :func:`ini_name`);
list options take commas (``--systems sgl,sky_walker``) or repeat (``--systems sgl --systems
sky_walker``), and never take more than one word, so they cannot swallow test paths.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

import pytest

from pytest_lbbench import cloud_options
from pytest_lbbench.client.planning import COMMON_OPTIONS
from pytest_lbbench.hostlag import DEFAULT_THRESHOLD_MS as DEFAULT_HOST_LAG_THRESHOLD_MS
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.runspec import add_knob_options
from pytest_lbbench.scenarios import SCENARIOS
from pytest_lbbench.systems import SYSTEMS
from pytest_lbbench.workloads import WORKLOADS
from pytest_lbbench.workloads.base import WorkloadOption

if TYPE_CHECKING:
    from pytest_lbbench.runconfig import LbbenchConfig

DEFAULT_CLIENT_REGIONS = ("us-east-2", "ap-northeast-1")
DEFAULT_OUTPUT_DIR = "lbbench-results"
DEFAULT_REPLICAS = 4
#: ``python -m pytest_lbbench.sim --engine-metrics`` choices (``sim.engine.ENGINE_METRICS``), stated
#: here because importing the simulator package at plugin start-up would load aiohttp's server.
ENGINE_METRICS_MODES = ("sglang", "live")

#: Where :mod:`pytest_lbbench.runconfig` keeps the run's built config (absent until built).
CONFIG_KEY = pytest.StashKey["LbbenchConfig"]()
DEFAULT_MAX_FAILURE_RATE = 0.01
DEFAULT_FAULT_GRACE_S = 5.0


def split_names(values: list[str] | None) -> list[str]:
    """A list option's values, flattened: ``--regions a,b`` and ``--regions a --regions b``
    (and the ini's ``lbbench_regions = a, b`` or ``a b``) all give ``[a, b]``."""
    out: list[str] = []
    for value in values or []:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


@dataclass(frozen=True)
class DeclaredOption:
    """One lbbench option as declared, so that :func:`apply_ini` can read it from the ini file."""

    flag: str
    dest: str
    ini: str
    #: "bool" (a switch), "names" (a comma list), "lines" (repeatable values), "value" (one).
    kind: str
    default: Any
    convert: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None


#: dest → declaration, filled by :func:`pytest_addoption` (the same every time it runs).
DECLARED: dict[str, DeclaredOption] = {}


def ini_name(flag: str) -> str:
    """The ini key of the option ``flag``: ``lbbench_`` and its name with underscores
    (``--systems`` → ``lbbench_systems``, ``--duration`` → ``lbbench_duration``,
    ``--lbbench-max-failure-rate`` → ``lbbench_max_failure_rate``)."""
    name = flag.lstrip("-").replace("-", "_")
    return name if name.startswith("lbbench_") else f"lbbench_{name}"


class _Declarer:
    """Adds each option to pytest's command line and its ``lbbench_<name>`` twin to the ini.

    ``nargs="+"`` list options become one value per flag (``action="append"``, commas split
    later by :func:`split_names`): a list option that took every following word would swallow
    the test paths after it (``pytest --systems sgl benchmarks/``)."""

    def __init__(self, parser: pytest.Parser, group: Any) -> None:
        self.parser = parser
        self.group = group

    def addoption(self, flag: str, **kwargs: Any) -> None:
        dest = kwargs.get("dest") or flag.lstrip("-").replace("-", "_")
        kwargs["dest"] = dest
        action = kwargs.get("action")
        ini_type: Literal["args", "bool", "linelist", "string"]
        if kwargs.pop("nargs", None) == "+":
            kwargs["action"], kind, ini_type = "append", "names", "args"
        elif action == "store_true":
            kind, ini_type = "bool", "bool"
        elif action == "append":
            kind, ini_type = "lines", "linelist"
        else:
            kind, ini_type = "value", "string"
        choices = kwargs.get("choices")
        DECLARED[dest] = DeclaredOption(
            flag=flag, dest=dest, ini=ini_name(flag), kind=kind, default=kwargs.get("default"),
            convert=kwargs.get("type"), choices=tuple(choices) if choices else None)
        self.group.addoption(flag, **kwargs)
        self.parser.addini(ini_name(flag), type=ini_type, help=f"as {flag} (the command line wins)")


_INI_APPLIED = pytest.StashKey[bool]()


def given_flags(config: pytest.Config) -> set[str]:
    """Every ``--flag`` the command line, ``PYTEST_ADDOPTS`` or the ini's ``addopts`` gave."""
    words = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    try:
        words += list(config.getini("addopts"))
    except ValueError:
        pass
    return {str(w).split("=", 1)[0] for w in words if str(w).startswith("--")}


def apply_ini(config: pytest.Config) -> None:
    """Set every lbbench option the command line left alone from its ``lbbench_<name>`` ini
    key, converted and checked as the command line would be (``pytest.UsageError`` naming the
    key otherwise). Runs once per config; later reads of ``config.getoption`` see the result."""
    if config.stash.get(_INI_APPLIED, False):
        return
    config.stash[_INI_APPLIED] = True
    given = given_flags(config)
    for option in DECLARED.values():
        if option.flag in given:
            continue
        try:
            raw = config.getini(option.ini)
        except ValueError:  # declared by another parser (a pytester run in this process)
            continue
        if raw in ("", [], None, False) or getattr(config.option, option.dest, None) != option.default:
            continue
        setattr(config.option, option.dest, _from_ini(option, raw))


def _from_ini(option: DeclaredOption, raw: Any) -> Any:
    if option.kind in ("bool", "names", "lines"):
        return raw if option.kind == "bool" else [str(v) for v in raw]
    text = str(raw).strip()
    try:
        value = option.convert(text) if option.convert is not None else text
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise pytest.UsageError(
            f"ini option {option.ini} = {text!r} is not a valid value for {option.flag} ({exc}). "
            f"Fix it in [tool.pytest.ini_options] (pyproject.toml) or pytest.ini.") from None
    if option.choices is not None and value not in option.choices:
        raise pytest.UsageError(
            f"ini option {option.ini} = {text!r}: {option.flag} takes one of "
            f"{', '.join(option.choices)}.")
    return value


def _as_levels(flag: str, kwargs: dict[str, Any], kind: str) -> dict[str, Any]:
    """``--num-users`` / ``--request-rate`` as one value or a comma list of load levels."""
    from pytest_lbbench.loads import parse_levels

    def levels(text: str) -> tuple[float, ...]:
        try:
            return parse_levels(text, kind)  # type: ignore[arg-type]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return {**kwargs, "type": levels, "metavar": f"{kwargs.get('metavar', 'N')}[,{kwargs.get('metavar', 'N')}...]",
            "help": kwargs.get("help", "") + "; a comma list runs each system at each level "
            "(the load axis: test ids gain u<N> / r<RPS>)"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = _Declarer(parser, parser.getgroup(
        "lbbench", "pytest-lbbench: multi-region LLM load-balancer benchmarks "
        "(each also settable in the ini file as lbbench_<name>, e.g. lbbench_systems = sgl,sky_walker)"))
    add = group.addoption
    add("--regions", nargs="+", default=None, metavar="REGION[,REGION...]",
        help="client regions, comma-separated or repeated. Default: "
        + ",".join(DEFAULT_CLIENT_REGIONS))
    add("--replica-regions", nargs="+", default=None, metavar="REGION[,REGION...]",
        help="ordered regions that replicas are placed on round-robin (comma-separated or "
        "repeated). Default: " + ",".join(DEFAULT_REPLICA_REGIONS))
    add("--replica-url", action="append", default=[], metavar="REGION=URL",
        help="use a running OpenAI-compatible server (SGLang, vLLM, or python -m pytest_lbbench.sim) "
        "as a replica in REGION instead of a simulated one, behind the same delay links "
        "(repeatable; sets --replicas and --replica-regions). Local backend only")
    add("--replicas", type=int, default=None, metavar="N",
        help=f"replicas per system. Default: {DEFAULT_REPLICAS} (or the --scenario's)")
    add("--systems", nargs="+", default=None, metavar="NAME[,NAME...]",
        help=f"systems to run, comma-separated or repeated (default: all): {', '.join(SYSTEMS)}, "
        "and any added by the pytest_lbbench_systems hook")
    add("--custom-system", action="append", default=[], metavar="NAME[@regional]=COMMAND",
        help="add a system whose balancer is COMMAND, run behind the simulated replicas and delay "
        "links (repeatable). Placeholders: {host} {port} {region} {name} {worker_urls} "
        "{worker_urls_csv} {worker_urls_json}, and with @regional (one instance per replica region) "
        "{peer_urls}. Ready when GET /v1/models answers 200. E.g. "
        "'mylb=python my_lb.py --port {port} --workers {worker_urls}'")
    add("--workloads", nargs="+", default=None, metavar="NAME[,NAME...]",
        help=f"workloads to run, comma-separated or repeated (default: arena_syn): {', '.join(WORKLOADS)}")
    # --duration, --num-users, --seed, --max-tokens, --request-timeout, --drain-timeout,
    # --lag-threshold-ms, --warmup: declared once, with their defaults, in runspec.RunKnobs.
    # --num-users also takes a list of levels: the load axis (pytest_lbbench.loads).
    add_knob_options(lambda flag, **kw: add(flag, **(_as_levels(flag, kw, "users") if flag == "--num-users" else kw)))
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
        "e.g. ttft_p90_s:10%%, goodput_requests_per_s:5%% or capacity:10%% (repeatable; an "
        "unknown METRIC is refused with the valid names)")
    add("--lbbench-sla", default=None, metavar="METRIC=BOUND,...",
        help="find each system's capacity at these targets instead of running one load: the "
        "highest load (bisection within --lbbench-sla-range) whose experiment keeps every "
        "latency METRIC at or under its BOUND (higher-is-better ones at or over), e.g. "
        "ttft_p90_s=1.0,e2e_p90_s=30")
    add("--lbbench-sla-load", default="users", choices=["users", "rate"],
        help="what the SLA search varies: users per client region (closed loop) or the "
        "request rate per client region (open loop). Default: users")
    add("--lbbench-sla-range", default=None, metavar="LO,HI",
        help="the load range the SLA search bisects. Default: 1,200 users or 0.25,32 req/s")
    add("--lbbench-sla-probes", type=int, default=7, metavar="N",
        help="at most N experiments per system in the SLA search (>= 2). Default: 7")
    add("--lbbench-repeat", type=int, default=1, metavar="N",
        help="run each experiment N times (seeds --seed, --seed+1, ...); the summary gives each "
        "metric's mean and 95%% confidence interval, and gates then fail only past the noise")
    add("--lbbench-repeat-same-seed", action="store_true", default=False,
        help="with --lbbench-repeat: every repetition uses --seed itself (the noise of the "
        "system alone, not of the workload)")
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
    cloud_options.add_options(group)
    add_workload_options(parser)


def add_workload_options(parser: pytest.Parser) -> None:
    """The shared arrival/dataset options and every built-in workload's own options."""
    group = _Declarer(parser, parser.getgroup("lbbench-workloads", "pytest-lbbench: workloads (see README)"))
    add = group.addoption
    for option in COMMON_OPTIONS:
        kwargs = option.parser_kwargs()
        add(option.flag, **(_as_levels(option.flag, kwargs, "rate") if option.flag == "--request-rate" else kwargs))
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

