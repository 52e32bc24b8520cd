"""``python -m pytest_lbbench.lb``: run one load balancer until SIGTERM or the parent exits.

Example::

    LBBENCH_CONTROL_TOKEN=$(openssl rand -hex 16) python -m pytest_lbbench.lb \\
        --name lb-us-east-2 --region us-east-2 \\
        --lb-mode push --replica-mode push --policy prefix_tree --meta-policy prefix_tree

It binds (port 0 = any free port), prints ``LBBENCH_READY {"port": ..., "name": ...}`` and then
waits for ``POST /lbbench/membership`` (with the secret of ``LBBENCH_CONTROL_TOKEN`` in the
``X-Lbbench-Control-Token`` header) to learn its replicas and peer LBs; requests that arrive
earlier wait in the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields

from .. import procutil
from ..control import CONTROL_TOKEN_ENV, LOOPBACK_TARGETS, AllowedTargets, control_token_from_env
from .config import RATE_LIMIT_AVAILABILITY, LbConfig, LbMode, ReplicaMode
from .policies import POLICIES
from .server import LoadBalancer, serve


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


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
    p.add_argument("--dispatch-all-placeable", action="store_true",
                   help="our variant: each tick places every head request that can be placed "
                        "(default: the original's one queue pop per tick)")
    # Kept so older launch lines keep working: one pop per tick is now the default.
    p.add_argument("--mimic-one-dispatch-per-tick", action="store_true", dest="_legacy_mimic",
                   help=argparse.SUPPRESS)
    p.add_argument("--pull-dispatches-per-probe", type=_int_at_least(0),
                   default=defaults.pull_dispatches_per_probe,
                   help="replica pull: dispatches a replica may take between two engine-queue "
                        "probes; 0 = unlimited (the original's rule). Default: %(default)s")
    p.add_argument("--max-concurrent-requests", type=_int_at_least(1),
                   default=defaults.max_concurrent_requests,
                   help="per-replica in-flight cap of --replica-mode cap; reported in /conf. "
                        "Default: %(default)s")
    for field_name in ("tick_s", "steal_interval_s", "probe_interval_s", "probe_timeout_s", "lb_probe_interval_s",
                       "lb_rpc_timeout_s", "stream_timeout_s", "connect_timeout_s", "health_interval_s",
                       "health_timeout_s"):
        p.add_argument("--" + field_name.replace("_", "-"), type=procutil.positive_float,
                       default=getattr(defaults, field_name), help="Default: %(default)s")
    p.add_argument("--retry-before-first-byte", action="store_true",
                   help="our option: decide a request once more (elsewhere) when its upstream failed "
                        "before streaming a byte (default: no retry, as the original)")
    p.add_argument("--latency-check-attempts", type=_int_at_least(1),
                   default=defaults.latency_check_attempts,
                   help="tries of a new peer's /sky-lb-health latency check. Default: %(default)s")
    p.add_argument("--steal-threshold", type=_int_at_least(0), default=defaults.steal_threshold,
                   help="steal only while the own queue holds at most this many. "
                        "Default: %(default)s")
    p.add_argument("--steal-v2-batch-factor", type=_int_at_least(0),
                   default=defaults.steal_v2_batch_factor,
                   help="V2 steals factor x available replicas per round. Default: %(default)s")
    p.add_argument("--rate-limit-queue-threshold", type=_int_at_least(0),
                   default=defaults.rate_limit_queue_threshold,
                   help="rate-limited push: a peer's queue_size must be at most this. "
                        "Default: %(default)s")
    p.add_argument("--rate-limit-availability", choices=list(RATE_LIMIT_AVAILABILITY),
                   default=defaults.rate_limit_availability,
                   help="rate-limited push: decide a peer's availability once per /conf probe "
                        "against our queue at probe time (probe, the original's) or at every "
                        "push decision against our current queue (dispatch). Default: %(default)s")
    p.add_argument("--rate-limit-count-own-pushes", dest="rate_limit_count_own_pushes",
                   action="store_true", default=defaults.rate_limit_count_own_pushes,
                   help="rate-limited push, our variant: add what we pushed to a peer since its "
                        "last /conf to its queue size (default: not counted, as the original)")
    p.add_argument("--no-rate-limit-count-own-pushes", dest="rate_limit_count_own_pushes",
                   action="store_false", help="the default: own pushes are not counted")
    prefix = p.add_argument_group("prefix_tree policy (replica and meta level)")
    prefix.add_argument("--cache-threshold", type=_non_negative_float,
                        default=defaults.cache_threshold,
                        help="minimum prefix match rate. Default: %(default)s")
    prefix.add_argument("--balance-abs-threshold", type=_int_at_least(0),
                        default=defaults.balance_abs_threshold,
                        help="imbalance fallback: max - min load above this ... "
                             "Default: %(default)s")
    prefix.add_argument("--balance-rel-threshold", type=_non_negative_float,
                        default=defaults.balance_rel_threshold,
                        help="... and max above this x min. Default: %(default)s")
    prefix.add_argument("--eviction-interval-s", type=procutil.positive_float,
                        default=defaults.eviction_interval_s, help="Default: %(default)s")
    prefix.add_argument("--max-tree-size", type=_int_at_least(1), default=defaults.max_tree_size,
                        help="characters kept per target. Default: %(default)s")
    prefix.add_argument("--no-least-load-fallback", dest="least_load_fallback",
                        action="store_false",
                        help="always take the best prefix match (DISABLE_LEAST_LOAD_IN_PREFIX)")
    p.add_argument("--time-scale", type=procutil.positive_float, default=defaults.time_scale, metavar="FACTOR",
                   help="run the loop periods (tick, steal, probes) at FACTOR x their model value "
                        "(the benchmark's --time-scale). Default: %(default)s")
    p.add_argument("--allow-target-hosts", default=",".join(LOOPBACK_TARGETS), metavar="HOSTS",
                   help="comma-separated hosts or networks membership may name as replicas and LBs. "
                        "Default: %(default)s")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="Default: %(default)s")
    return p


def config_from_args(args: argparse.Namespace) -> LbConfig:
    """The :class:`LbConfig` described by parsed CLI arguments (one flag per field)."""
    values = {f.name: getattr(args, f.name) for f in fields(LbConfig)}
    values["lb_mode"] = LbMode(args.lb_mode)
    values["replica_mode"] = ReplicaMode(args.replica_mode)
    return LbConfig(**values)


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
    token = control_token_from_env()
    if token is None:
        print(f"error: {CONTROL_TOKEN_ENV} is not set. The LB's control endpoints (membership, reset, "
              f"steal) accept only requests carrying the run's secret; export {CONTROL_TOKEN_ENV}=<a "
              "random string> for this process and send it in the X-Lbbench-Control-Token header "
              "(the benchmark does this for you)", file=sys.stderr)
        return 2
    try:
        allowed = AllowedTargets.parse(h for h in args.allow_target_hosts.split(",") if h.strip())
        lb = LoadBalancer(config_from_args(args), name=args.name, region=args.region,
                          control_token=token, allowed_targets=allowed)
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
