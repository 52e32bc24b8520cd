"""``python -m pytest_lbbench.lb``: run one load balancer until SIGTERM or the parent exits.

Example::

    python -m pytest_lbbench.lb --name lb-us-east-2 --region us-east-2 \\
        --lb-mode push --replica-mode push --policy prefix_tree --meta-policy prefix_tree

It binds (port 0 = any free port), prints ``LBBENCH_READY {"port": ..., "name": ...}`` and then
waits for ``POST /lbbench/membership`` to learn its replicas and peer LBs; requests that arrive
earlier wait in the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .. import procutil
from .config import LbConfig, LbMode, ReplicaMode
from .policies import POLICIES
from .server import LoadBalancer, serve


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI of one LB process."""
    defaults = LbConfig()
    p = argparse.ArgumentParser(prog="python -m pytest_lbbench.lb", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="listen address. Default: %(default)s")
    p.add_argument("--port", type=int, default=0, help="listen port, 0 = any free. Default: %(default)s")
    p.add_argument("--name", default="lb", help="this LB's membership name. Default: %(default)s")
    p.add_argument("--region", default="global", help="this LB's region. Default: %(default)s")
    p.add_argument("--lb-mode", choices=[m.value for m in LbMode], default=defaults.lb_mode.value,
                   help="LB-level behaviour. Default: %(default)s")
    p.add_argument("--replica-mode", choices=[m.value for m in ReplicaMode],
                   default=defaults.replica_mode.value,
                   help="replica availability rule. Default: %(default)s")
    p.add_argument("--policy", choices=sorted(POLICIES), default=defaults.policy,
                   help="replica-level policy. Default: %(default)s")
    p.add_argument("--meta-policy", choices=sorted(POLICIES), default=defaults.meta_policy,
                   help="LB-level policy. Default: %(default)s")
    p.add_argument("--mimic-one-dispatch-per-tick", action="store_true",
                   help="restore the original cap of one queue pop per tick")
    p.add_argument("--max-concurrent-requests", type=int, default=defaults.max_concurrent_requests,
                   help="reported in /conf. Default: %(default)s")
    for field_name in ("tick_s", "probe_interval_s", "probe_timeout_s", "lb_probe_interval_s",
                       "stream_timeout_s", "connect_timeout_s"):
        p.add_argument("--" + field_name.replace("_", "-"), type=_positive_float,
                       default=getattr(defaults, field_name), help="Default: %(default)s")
    p.add_argument("--steal-threshold", type=int, default=defaults.steal_threshold,
                   help="Default: %(default)s")
    p.add_argument("--steal-v2-batch-factor", type=int, default=defaults.steal_v2_batch_factor,
                   help="Default: %(default)s")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="Default: %(default)s")
    return p


def config_from_args(args: argparse.Namespace) -> LbConfig:
    """The :class:`LbConfig` described by parsed CLI arguments."""
    return LbConfig(
        lb_mode=LbMode(args.lb_mode),
        replica_mode=ReplicaMode(args.replica_mode),
        policy=args.policy,
        meta_policy=args.meta_policy,
        tick_s=args.tick_s,
        probe_interval_s=args.probe_interval_s,
        probe_timeout_s=args.probe_timeout_s,
        lb_probe_interval_s=args.lb_probe_interval_s,
        steal_threshold=args.steal_threshold,
        steal_v2_batch_factor=args.steal_v2_batch_factor,
        stream_timeout_s=args.stream_timeout_s,
        connect_timeout_s=args.connect_timeout_s,
        max_concurrent_requests=args.max_concurrent_requests,
        mimic_one_dispatch_per_tick=args.mimic_one_dispatch_per_tick,
    )


async def _run(lb: LoadBalancer, host: str, port: int) -> None:
    stop = asyncio.Event()
    procutil.install_stop_signals(asyncio.get_running_loop(), stop)
    sock = procutil.bind_socket(host, port)

    def _ready(bound: int) -> None:
        procutil.announce_ready({"port": bound, "name": lb.name, "region": lb.region})

    await serve(lb, sock, stop, on_ready=_ready)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {args.name} %(name)s: %(message)s",
    )
    try:
        lb = LoadBalancer(config_from_args(args), name=args.name, region=args.region)
    except (NotImplementedError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    procutil.watch_parent(args.parent_pid)
    loop = procutil.new_event_loop()
    try:
        loop.run_until_complete(_run(lb, args.host, args.port))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
