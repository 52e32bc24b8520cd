"""The client's command line, and the per-region overrides (``--region-to-args``) it shares.

The knobs (:mod:`pytest_lbbench.runspec`), the shared arrival/dataset options
(:data:`COMMON_OPTIONS`) and every workload's own options are declared once and registered
here for ``python -m pytest_lbbench.client`` run by hand (or on a cloud VM), and parsed from
``--region-to-args`` strings by :func:`parse_region_args`. Runs started by pytest skip this
parser: the plugin writes a job file (:mod:`pytest_lbbench.client.job`) and the client reads
only that. No pytest import here.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Iterable
from typing import Any

from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS, RttMatrix
from pytest_lbbench.runspec import add_knob_options, knob_fields
from pytest_lbbench.workloads import WORKLOADS, get_workload
from pytest_lbbench.workloads.base import Arrival, Workload, WorkloadArgs, WorkloadOption, WorkloadPlan
from pytest_lbbench.workloads.sources import DATASET_SOURCES

# The options every workload shares, declared once for this CLI and for the pytest plugin
# (which passes non-default values on with WorkloadOption.to_argv).
COMMON_OPTIONS: tuple[WorkloadOption, ...] = (
    WorkloadOption(
        "--request-rate", "float", None, metavar="RPS",
        help="open loop: requests per second per client region (gamma arrivals, see "
        "--burstiness), whatever the server does; for chat workloads. Default: the workload's "
        "own pattern (closed loop or timestamp replay)",
    ),
    WorkloadOption(
        "--burstiness", "float", 1.0, metavar="SHAPE",
        help="with --request-rate: gamma shape of the gaps; 1 = Poisson, < 1 burstier",
    ),
    WorkloadOption(
        "--open-loop-threshold", "float", None, metavar="SECONDS",
        help="closed loop: a user's next turn starts no sooner than this many seconds after its "
        "previous turn started (a think-time floor, as the original wildchat)",
    ),
    WorkloadOption(
        "--dataset-source", "str", "synthetic", choices=DATASET_SOURCES, metavar="SOURCE",
        help="synthetic: data generated offline; hf: the real Hugging Face datasets (needs "
        "HF_TOKEN for the gated ones and pip install 'pytest-lbbench[hf]'), or --dataset-path",
    ),
    WorkloadOption(
        "--dataset-path", "str", None, metavar="PATH",
        help="a local file or directory in the workload's dataset row format, used instead of "
        "generated or downloaded rows (no download, no token; needs pytest-lbbench[hf])",
    ),
)


def build_parser(workload_name: str | None) -> argparse.ArgumentParser:
    """The client's options; a workload's own options are added once it is known."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_lbbench.client",
        description="Simulated chat users against one LLM endpoint; one record per request. "
        "Give either --job-file (written by pytest-lbbench) or --backend-url and --workload.",
    )
    parser.add_argument("--job-file", default=None,
                        help="run this job (JSON written by pytest-lbbench); every other option is ignored")
    parser.add_argument("--backend-url", help="endpoint base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--workload", help=f"one of: {', '.join(sorted(WORKLOADS))}")
    parser.add_argument("--region", default="us-east-2", help="client region name (default: %(default)s)")
    parser.add_argument(
        "--region-index", type=int, default=None,
        help="shard index of this region in the workload data (default: position in "
        f"{', '.join(DEFAULT_REPLICA_REGIONS)}, else 0)",
    )
    add_knob_options(parser.add_argument)
    for option in COMMON_OPTIONS:
        option.add_to(parser)
    parser.add_argument("--exp-name", default="sky-exp")
    parser.add_argument("--output-dir", default="lbbench-results")
    parser.add_argument("--output-file", default=None, help="write the result JSON here instead")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    if workload_name in WORKLOADS:
        for option in get_workload(workload_name).options:
            option.add_to(parser)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse client arguments, including the options of the chosen workload."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workload")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(known.workload)
    args = parser.parse_args(argv)
    if args.job_file is None:
        missing = [flag for flag, value in (("--backend-url", args.backend_url),
                                            ("--workload", args.workload)) if value is None]
        if missing:
            parser.error(f"the following arguments are required without --job-file: {', '.join(missing)}")
        if args.workload not in WORKLOADS:
            parser.error(
                f"argument --workload: unknown workload {args.workload!r}; valid workloads: "
                f"{', '.join(sorted(WORKLOADS))} (others run from a --job-file)"
            )
    return args


def region_index_of(args: argparse.Namespace) -> int:
    if args.region_index is not None:
        return int(args.region_index)
    return RttMatrix().shard_index(args.region)


def workload_option_values(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """The shared and ``workload``'s own option values from parsed client arguments, by dest."""
    return {o.dest: getattr(args, o.dest) for o in (*COMMON_OPTIONS, *workload.options)}


def option_defaults(workload: Workload) -> dict[str, Any]:
    """Every option ``workload`` takes (shared and its own) at its default, by dest."""
    return {o.dest: o.default for o in (*COMMON_OPTIONS, *workload.options)}


def parse_region_args(text: str, workloads: Iterable[Workload] | None = None) -> dict[str, Any]:
    """The options a ``--region-to-args`` string sets, by dest (knobs by field name): only
    what it names, typed. It may name a knob, a shared option or any workload's own option;
    :func:`check_overrides` tells whether one workload takes them. ``ValueError`` when the
    string does not parse (quoting) or names an unknown option or a bad value. ``workloads``:
    whose own options it may name (default: the built-in ones)."""
    parser = argparse.ArgumentParser(prog="--region-to-args", add_help=False,
                                     argument_default=argparse.SUPPRESS, exit_on_error=False)
    add_knob_options(lambda *a, **k: parser.add_argument(*a, **{**k, "default": argparse.SUPPRESS}))
    seen: set[str] = set()
    known = list(WORKLOADS.values() if workloads is None else workloads)
    for option in (*COMMON_OPTIONS, *(o for w in known for o in w.options)):
        if option.flag not in seen:
            seen.add(option.flag)
            kwargs = {**option.parser_kwargs(), "default": argparse.SUPPRESS}
            if option.type != "bool":
                kwargs["choices"] = option.choices
            parser.add_argument(option.flag, **kwargs)
    try:
        namespace, extra = parser.parse_known_args(shlex.split(text))
    except (argparse.ArgumentError, ValueError) as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if extra:
        raise ValueError(f"{text!r}: unknown client arguments {' '.join(extra)}")
    return vars(namespace)


def check_overrides(overrides: dict[str, Any], workload: Workload) -> None:
    """``ValueError`` if ``overrides`` (from :func:`parse_region_args`) names an option that
    ``workload`` does not take."""
    valid = {f.name for f, _ in knob_fields()} | set(option_defaults(workload))
    foreign = sorted(set(overrides) - valid)
    if foreign:
        raise ValueError(f"workload {workload.name} takes no option {', '.join(foreign)} (from --region-to-args)")


def apply_arrival_options(plan: WorkloadPlan, args: WorkloadArgs) -> WorkloadPlan:
    """The workload's plan with ``--request-rate`` / ``--open-loop-threshold`` applied.

    ``ValueError`` says what does not fit (an open-loop rate on a tree workload, bad values).
    """
    arrival = plan.arrival
    request_rate = args.options.get("request_rate")
    burstiness = args.options.get("burstiness", 1.0)
    open_loop_threshold = args.options.get("open_loop_threshold")
    if request_rate is not None:
        if request_rate <= 0:
            raise ValueError(f"--request-rate must be > 0 requests/s, got {request_rate!r}")
        if burstiness <= 0:
            raise ValueError(f"--burstiness must be > 0, got {burstiness!r}")
        if plan.tree is not None:
            raise ValueError(
                f"--request-rate drives chat workloads; {plan.name} sends trees of requests whose "
                "later stages depend on earlier answers. Drop --request-rate, or use a chat "
                "workload (arena, arena_syn, arena_1m, wildchat)."
            )
        arrival = Arrival(kind="rate", request_rate=request_rate, burstiness=burstiness)
    if open_loop_threshold is not None:
        if open_loop_threshold < 0:
            raise ValueError(f"--open-loop-threshold must be >= 0 s, got {open_loop_threshold!r}")
        if arrival.kind != "closed":
            raise ValueError(
                "--open-loop-threshold is a think-time floor for closed-loop users; it does not "
                f"combine with {arrival.kind} arrivals (drop it or --request-rate)."
            )
        arrival = dataclasses.replace(arrival, think_time_floor_s=open_loop_threshold)
    return dataclasses.replace(plan, arrival=arrival)
