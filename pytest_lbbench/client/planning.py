"""The client's options and how they become a :class:`~pytest_lbbench.workloads.base.WorkloadPlan`.

One parser serves the ``python -m pytest_lbbench.client`` command and the pytest plugin: the
plugin builds each client region's plan in-process from the very argument list the client
would get (so a workload added in a ``conftest.py`` works, and a dataset is loaded once) and
hands the client the plan as a file (``--plan-file``). No pytest import here.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pytest_lbbench.client.runner import DEFAULT_LAG_THRESHOLD_MS, DEFAULT_REQUEST_TIMEOUT_S
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS, RttMatrix
from pytest_lbbench.workloads import WORKLOADS, get_workload
from pytest_lbbench.workloads.base import Arrival, WorkloadOption, WorkloadPlan
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
        description="Simulated chat users against one LLM endpoint; one record per request.",
    )
    parser.add_argument("--backend-url", required=True, help="endpoint base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--workload", required=True, help=f"one of: {', '.join(sorted(WORKLOADS))}")
    parser.add_argument("--region", default="us-east-2", help="client region name (default: %(default)s)")
    parser.add_argument(
        "--region-index", type=int, default=None,
        help="shard index of this region in the workload data (default: position in "
        f"{', '.join(DEFAULT_REPLICA_REGIONS)}, else 0)",
    )
    parser.add_argument("--num-users", type=int, default=1, help="simulated users (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds to start new requests (default: %(default)s)")
    parser.add_argument(
        "--warmup", type=float, default=0.0, metavar="SECONDS",
        help="run this long before --duration starts; requests started then are recorded with "
        "warmup=true and left out of every metric (default: %(default)s)",
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="override the workload's max_tokens")
    for option in COMMON_OPTIONS:
        option.add_to(parser)
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    parser.add_argument(
        "--drain-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
        help="after --duration, how long requests in flight may take to finish (default: %(default)s)",
    )
    parser.add_argument("--lag-threshold-ms", type=float, default=DEFAULT_LAG_THRESHOLD_MS)
    parser.add_argument("--exp-name", default="sky-exp")
    parser.add_argument("--output-dir", default="lbbench-results")
    parser.add_argument("--output-file", default=None, help="write the result JSON here instead")
    parser.add_argument(
        "--plan-file", default=None,
        help="run this plan (JSON written by pytest-lbbench) instead of building one from the workload",
    )
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    if workload_name in WORKLOADS:
        for option in get_workload(workload_name).options:
            option.add_to(parser)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse client arguments, including the options of the chosen workload."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workload")
    pre.add_argument("--plan-file")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(known.workload)
    args = parser.parse_args(argv)
    if args.plan_file is None and args.workload not in WORKLOADS:
        parser.error(
            f"argument --workload: unknown workload {args.workload!r}; valid workloads: "
            f"{', '.join(sorted(WORKLOADS))} (others need --plan-file)"
        )
    return args


def region_index_of(args: argparse.Namespace) -> int:
    if args.region_index is not None:
        return int(args.region_index)
    return RttMatrix().shard_index(args.region)


def apply_arrival_options(plan: WorkloadPlan, args: argparse.Namespace) -> WorkloadPlan:
    """The workload's plan with ``--request-rate`` / ``--open-loop-threshold`` applied.

    ``ValueError`` says what does not fit (an open-loop rate on a tree workload, bad values).
    """
    arrival = plan.arrival
    if args.request_rate is not None:
        if args.request_rate <= 0:
            raise ValueError(f"--request-rate must be > 0 requests/s, got {args.request_rate!r}")
        if args.burstiness <= 0:
            raise ValueError(f"--burstiness must be > 0, got {args.burstiness!r}")
        if plan.tree is not None:
            raise ValueError(
                f"--request-rate drives chat workloads; {plan.name} sends trees of requests whose "
                "later stages depend on earlier answers. Drop --request-rate, or use a chat "
                "workload (arena, arena_syn, arena_1m, wildchat)."
            )
        arrival = Arrival(kind="rate", request_rate=args.request_rate, burstiness=args.burstiness)
    if args.open_loop_threshold is not None:
        if args.open_loop_threshold < 0:
            raise ValueError(f"--open-loop-threshold must be >= 0 s, got {args.open_loop_threshold!r}")
        if arrival.kind != "closed":
            raise ValueError(
                "--open-loop-threshold is a think-time floor for closed-loop users; it does not "
                f"combine with {arrival.kind} arrivals (drop it or --request-rate)."
            )
        arrival = dataclasses.replace(arrival, think_time_floor_s=args.open_loop_threshold)
    return dataclasses.replace(plan, arrival=arrival)


def build_plan(args: argparse.Namespace) -> WorkloadPlan:
    """The plan of one client region: from ``--plan-file``, or built by the workload."""
    if args.plan_file:
        return WorkloadPlan.from_json(Path(args.plan_file).read_text())
    if args.num_users < 1:
        raise ValueError(f"--num-users must be >= 1, got {args.num_users}")
    plan = get_workload(args.workload).plan(args, args.region, region_index_of(args))
    return apply_arrival_options(plan, args)


def plan_from_argv(argv: list[str]) -> WorkloadPlan:
    """What ``python -m pytest_lbbench.client <argv>`` would run (``ValueError`` if invalid)."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse reports on stderr and exits; surface it as an error
        raise ValueError(f"invalid client arguments {argv!r}") from exc
    return build_plan(args)
