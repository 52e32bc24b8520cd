"""``python -m pytest_lbbench.gateway``: run one GKE-Gateway front end until SIGTERM or parent exit.

Example::

    python -m pytest_lbbench.gateway --name gke-us-east-2 --region us-east-2 \\
        --max-rate-per-endpoint 1 --rate-window-s 10 --health-interval-s 5

It binds (port 0 = any free port), prints ``LBBENCH_READY {"port": ..., "name": ...}`` and then
waits for ``POST /lbbench/membership`` to learn the backends, their regions and the region
order; requests that arrive earlier wait up to ``--membership-wait-s``, then get a 503.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from .. import procutil
from ..control import CONTROL_TOKEN_ENV, LOOPBACK_TARGETS, AllowedTargets, control_token_from_env
from .config import GatewayConfig
from .server import Gateway, serve


def _number(kind: Callable[[str], float], minimum: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < minimum or (strict and value == minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value

    return parse


_positive = _number(float, 0.0, strict=True)
_at_least_one = _number(int, 1, strict=False)


def build_parser() -> argparse.ArgumentParser:
    """The CLI of one gateway front end."""
    d = GatewayConfig()
    p = argparse.ArgumentParser(prog="python -m pytest_lbbench.gateway",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="listen address. Default: %(default)s")
    p.add_argument("--port", type=int, default=0,
                   help="listen port, 0 = any free. Default: %(default)s")
    p.add_argument("--name", default="gke-gateway",
                   help="this front end's name. Default: %(default)s")
    p.add_argument("--region", default="us-east-2",
                   help="this front end's region. Default: %(default)s")
    p.add_argument("--max-rate-per-endpoint", type=_positive, default=d.max_rate_per_endpoint,
                   metavar="RPS",
                   help="rate budget per healthy backend, requests/s. Default: %(default)s")
    p.add_argument("--rate-window-s", type=_positive, default=d.rate_window_s,
                   help="sliding window the rate is measured over. Default: %(default)s")
    p.add_argument("--health-interval-s", type=_positive, default=d.health_interval_s,
                   help="seconds between health-check rounds. Default: %(default)s")
    p.add_argument("--health-timeout-s", type=_positive, default=None,
                   help="per-probe timeout. Default: min(5, --health-interval-s)")
    p.add_argument("--healthy-threshold", type=_at_least_one, default=d.healthy_threshold,
                   help="consecutive successes to become healthy. Default: %(default)s")
    p.add_argument("--unhealthy-threshold", type=_at_least_one, default=d.unhealthy_threshold,
                   help="consecutive failures to become unhealthy. Default: %(default)s")
    p.add_argument("--health-path", default=d.health_path, help="Default: %(default)s")
    p.add_argument("--no-outlier-detection", dest="outlier_detection", action="store_false",
                   help="only health checks take a backend out (default: outlier detection on)")
    p.add_argument("--consecutive-errors", type=_at_least_one, default=d.consecutive_errors,
                   help="outlier detection: failed requests in a row that eject a backend. "
                        "Default: %(default)s")
    p.add_argument("--base-ejection-time-s", type=_positive, default=d.base_ejection_time_s,
                   help="outlier detection: ejection time (model seconds) x ejections so far. "
                        "Default: %(default)s")
    p.add_argument("--max-ejection-percent", type=float, default=d.max_ejection_percent,
                   help="outlier detection: at most this share of backends ejected. Default: %(default)s")
    p.add_argument("--retry-before-first-byte", action="store_true",
                   help="send a request whose backend failed before its first byte once more, "
                        "elsewhere (default: no retry)")
    p.add_argument("--membership-wait-s", type=_positive, default=d.membership_wait_s,
                   help="how long early requests wait for a membership. Default: %(default)s")
    p.add_argument("--stream-timeout-s", type=_positive, default=d.stream_timeout_s,
                   help="upstream timeout per read. Default: %(default)s")
    p.add_argument("--connect-timeout-s", type=_positive, default=d.connect_timeout_s,
                   help="upstream connect timeout. Default: %(default)s")
    p.add_argument("--time-scale", type=_positive, default=d.time_scale, metavar="FACTOR",
                   help="the replicas' --time-scale: budget and window are model time, measured "
                        "on wall seconds / FACTOR. Default: %(default)s")
    p.add_argument("--allow-target-hosts", default=",".join(LOOPBACK_TARGETS), metavar="HOSTS",
                   help="comma-separated hosts or networks membership may name as backends. "
                        "Default: %(default)s")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="Default: %(default)s")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The :class:`GatewayConfig` described by parsed CLI arguments."""
    return GatewayConfig(
        max_rate_per_endpoint=args.max_rate_per_endpoint,
        rate_window_s=args.rate_window_s,
        health_interval_s=args.health_interval_s,
        health_timeout_s=args.health_timeout_s,
        healthy_threshold=int(args.healthy_threshold),
        unhealthy_threshold=int(args.unhealthy_threshold),
        health_path=args.health_path,
        outlier_detection=args.outlier_detection,
        consecutive_errors=int(args.consecutive_errors),
        base_ejection_time_s=args.base_ejection_time_s,
        max_ejection_percent=args.max_ejection_percent,
        retry_before_first_byte=args.retry_before_first_byte,
        membership_wait_s=args.membership_wait_s,
        stream_timeout_s=args.stream_timeout_s,
        connect_timeout_s=args.connect_timeout_s,
        time_scale=args.time_scale,
    )


async def _run(gateway: Gateway, host: str, port: int) -> None:
    stop = asyncio.Event()
    procutil.install_stop_signals(asyncio.get_running_loop(), stop)
    sock = procutil.bind_socket(host, port)

    def _ready(bound: int) -> None:
        procutil.announce_ready({"port": bound, "name": gateway.name, "region": gateway.region})

    await serve(gateway, sock, stop, on_ready=_ready)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {args.name} %(name)s: %(message)s",
    )
    token = control_token_from_env()
    if token is None:
        parser.error(f"{CONTROL_TOKEN_ENV} is not set. The gateway's control endpoints (membership, "
                     f"reset) accept only requests carrying the run's secret; export {CONTROL_TOKEN_ENV}="
                     "<a random string> for this process and send it in the X-Lbbench-Control-Token "
                     "header (the benchmark does this for you)")
    try:
        allowed = AllowedTargets.parse(h for h in args.allow_target_hosts.split(",") if h.strip())
        gateway = Gateway(config_from_args(args), name=args.name, region=args.region,
                          control_token=token, allowed_targets=allowed)
    except ValueError as exc:
        parser.error(str(exc))
    procutil.watch_parent(args.parent_pid)
    loop = procutil.new_event_loop()
    try:
        loop.run_until_complete(_run(gateway, args.host, args.port))
    except OSError as exc:  # the bind failed: say so instead of a traceback
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
