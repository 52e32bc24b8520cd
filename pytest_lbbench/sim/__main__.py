"""``python -m pytest_lbbench.sim``: run one simulated replica until SIGTERM/SIGINT.

Follows the process protocol of :mod:`pytest_lbbench.procutil`: bind (port 0 = any free port),
serve, print one ``LBBENCH_READY {"port": ..., "name": ...}`` line, exit with the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .. import procutil
from ..control import control_token_from_env
from .engine import ENGINE_METRICS
from .profile import DEFAULT_PROFILE, PROFILES, load_profile
from .server import DEFAULT_MODEL, ReplicaConfig, SimReplica, quiet_router_probes, run_server


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_lbbench.sim",
        description="A simulated SGLang replica: SGLang-compatible HTTP API over an engine model.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind; 0 = any free port (default: %(default)s)"
    )
    parser.add_argument(
        "--name", default="replica-0", help="replica name, sent in x-lbbench-replica (default: %(default)s)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="served model name (default: %(default)s)")
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=(
            f"engine profile: a registered name ({', '.join(sorted(PROFILES))}) or a JSON file "
            "(default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="answer seed; replicas of one system share it (default: %(default)s)",
    )
    parser.add_argument(
        "--time-scale",
        type=procutil.positive_float,
        default=None,
        metavar="FACTOR",
        help="multiply every engine duration by FACTOR (0.1 = ten times faster; default: the profile's, 1.0)",
    )
    parser.add_argument(
        "--engine-metrics",
        choices=list(ENGINE_METRICS),
        default="sglang",
        help=(
            "sglang: the sglang:* gauges (num_queue_reqs, num_running_reqs, token_usage, "
            "cache_hit_rate, ...) change only at SGLang 0.4.5's logging points (after a prefill "
            "batch, every 40 decode steps, every 30 s idle); live: current values at every "
            "scrape (default: %(default)s)"
        ),
    )
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument(
        "--check-invariants", action="store_true", help="recount KV bookkeeping every iteration (slow)"
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, serve until stopped; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    quiet_router_probes()
    try:
        overrides = {} if args.time_scale is None else {"time_scale": args.time_scale}
        profile = load_profile(args.profile, **overrides)
    except ValueError as exc:
        parser.error(str(exc))
    procutil.watch_parent(args.parent_pid)
    config = ReplicaConfig(
        name=args.name,
        model=args.model,
        profile=profile,
        seed=args.seed,
        check_invariants=args.check_invariants,
        engine_metrics=args.engine_metrics,
    )
    try:
        sock = procutil.bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    loop = procutil.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    procutil.install_stop_signals(loop, stop)

    def _ready(replica: SimReplica) -> None:
        procutil.announce_ready({"port": replica.port, "name": args.name, "url": replica.url})

    try:
        # The run's secret comes from the environment (never argv, which ps shows); without it the
        # replica still serves traffic, but its /lbbench/* control endpoints answer 401.
        loop.run_until_complete(run_server(config, sock, stop=stop, on_ready=_ready,
                                           control_token=control_token_from_env()))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
