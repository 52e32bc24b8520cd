"""``python -m pytest_lbbench.netem``: serve several delay links from one process.

Follows the child-process protocol of :mod:`pytest_lbbench.procutil`: binds every listening
socket itself (free ports), prints ``LBBENCH_READY {"links": {name: port, ...}, "pid": N}``,
exits on SIGTERM/SIGINT or when ``--parent-pid`` disappears. On exit it logs one line
``LBBENCH_NETEM_STATS {name: counters}`` to stderr.

With ``--control`` it also serves, on its own 127.0.0.1 port (``"control_port"`` in the ready
line), ``GET /stats`` (every link's counters, lateness included: how far the links fell behind
the emulated delays) and ``POST /reset`` (zero the counters between experiments).

Exit status: 0 after a normal stop, 2 on invalid arguments or link specs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from aiohttp import web

from pytest_lbbench.control import control_middleware, control_token_from_env
from pytest_lbbench.protocol import FAULT_PATH
from pytest_lbbench.procutil import (
    announce_ready,
    bind_socket,
    install_stop_signals,
    new_event_loop,
    positive_float,
    watch_parent,
)

from .link import LinkSet
from .spec import LINKS_JSON_EXAMPLE, SPEC_FORMAT_HELP, LinkSpec, LinkSpecError, parse_link_specs

STATS_PREFIX = "LBBENCH_NETEM_STATS "

logger = logging.getLogger("pytest_lbbench.netem")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the delay-link process."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_lbbench.netem",
        description="Userspace delay links: TCP proxies on 127.0.0.1 that add a one-way delay "
        "in each direction. " + SPEC_FORMAT_HELP.capitalize() + ".",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--links-json", metavar="JSON", help=f"link specs, e.g. '{LINKS_JSON_EXAMPLE}'")
    source.add_argument("--links-file", metavar="PATH", type=Path, help="read the same JSON from a file")
    parser.add_argument(
        "--listen-host", default="127.0.0.1", help="address every link listens on (default: %(default)s)"
    )
    parser.add_argument(
        "--no-quickack", dest="quickack", action="store_false",
        help="do not force immediate ACKs after each read (only for experiments; see "
        "local-runtime-notes.md §2.7)",
    )
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default: %(default)s; INFO logs failed target connects)",
    )
    parser.add_argument(
        "--nice", type=int, default=None, metavar="N",
        help="set this process's nice value, e.g. -10 (needs root or CAP_SYS_NICE), so delays stay "
        "accurate while the benchmark saturates the CPU (default: unchanged)",
    )
    parser.add_argument(
        "--control", action="store_true",
        help="serve GET /stats and POST /reset on a control port of 127.0.0.1 (announced as "
        "control_port in the ready line)",
    )
    parser.add_argument(
        "--time-scale", type=positive_float, default=1.0, metavar="FACTOR",
        help="run every link's one_way_ms (model time) at FACTOR x (the benchmark's --time-scale; "
        "default: %(default)s)",
    )
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def load_specs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[LinkSpec]:
    """The validated specs from ``--links-json`` or ``--links-file``; usage error (exit 2) otherwise."""
    if args.links_file is not None:
        try:
            text = args.links_file.read_text()
        except OSError as exc:
            parser.error(f"--links-file: cannot read {str(args.links_file)!r}: {exc.strerror or exc}")
        source = f"--links-file {args.links_file}"
    else:
        text, source = args.links_json, "--links-json"
    try:
        return parse_link_specs(text, source=source)
    except LinkSpecError as exc:
        parser.error(str(exc))


def control_app(links: LinkSet, control_token: str | None = None) -> web.Application:
    """``GET /stats``, ``POST /reset`` (counters) and ``POST /lbbench/fault`` (``{"partition":
    [names], "heal": [names]}``) over ``links``. Reset and fault need the run's secret."""

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({name: s.as_dict() for name, s in links.stats().items()})

    async def reset(request: web.Request) -> web.Response:
        links.reset_stats()
        return web.json_response({"reset": sorted(link.name for link in links)})

    async def fault(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return web.json_response({"error": {"message": f"body is not JSON: {exc}"}}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "body must be a JSON object"}}, status=400)
        names = {key: body.get(key, []) for key in ("partition", "heal")}
        known = {link.name for link in links}
        for key, value in names.items():
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                return web.json_response({"error": {"message": f"{key!r} must be a list of link names"}}, status=400)
            unknown = sorted(set(value) - known)
            if unknown:
                return web.json_response(
                    {"error": {"message": f"unknown link(s) {unknown}; known: {sorted(known)}"}}, status=400)
        reset = sum(links[n].partition() for n in names["partition"])
        for name in names["heal"]:
            links[name].heal()
        return web.json_response({"partitioned": sorted(link.name for link in links if link.partitioned),
                                  "connections_reset": reset})

    app = web.Application(middlewares=[control_middleware(
        control_token, ("/reset", FAULT_PATH), max_body_bytes=1024 * 1024, server="delay links")])
    app.add_routes([web.get("/stats", stats), web.post("/reset", reset), web.post(FAULT_PATH, fault)])
    return app


async def serve(
    specs: Sequence[LinkSpec], listen_host: str = "127.0.0.1", quickack: bool = True,
    control: bool = False,
) -> LinkSet:
    """Run ``specs`` until SIGTERM/SIGINT; returns the (closed) set for its counters."""
    stop = asyncio.Event()
    install_stop_signals(asyncio.get_running_loop(), stop)
    links = LinkSet.from_specs(specs, listen_host=listen_host, quickack=quickack)
    runner: web.AppRunner | None = None
    async with links:
        ready: dict[str, object] = {"links": links.ports, "pid": os.getpid()}
        if control:
            runner = web.AppRunner(control_app(links, control_token_from_env()), access_log=None)
            await runner.setup()
            sock = bind_socket("127.0.0.1", 0)
            site = web.SockSite(runner, sock)
            await site.start()
            ready["control_port"] = int(sock.getsockname()[1])
        try:
            announce_ready(ready)
            await stop.wait()
        finally:
            if runner is not None:
                await runner.cleanup()
    return links


def set_nice(value: int) -> None:
    """Set our scheduling priority; warn (do not fail) when not permitted.

    Every chunk waits on a timer; on a saturated 2-core machine the wake-up waits for a CPU
    slice, which added about 2 ms per hop (104 ms for a 100 ms RTT) with two busy processes
    running; at nice -10 the RTT stayed within 100 +- 3 ms. The links use little CPU, so
    favouring them costs the benchmarked processes almost nothing.
    """
    # Linux nice values are per thread: call this before any thread starts (watch_parent).
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as exc:
        logger.warning("cannot set nice %d (%s); delays may stretch under CPU load", value, exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    specs = [spec.at_scale(args.time_scale) for spec in load_specs(args, parser)]
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s netem %(levelname)s %(message)s")
    if args.nice is not None:
        set_nice(args.nice)
    watch_parent(args.parent_pid)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        links = loop.run_until_complete(serve(specs, args.listen_host, args.quickack, args.control))
    finally:
        loop.close()
    stats = {name: s.as_dict() for name, s in links.stats().items()}
    sys.stderr.write(STATS_PREFIX + json.dumps(stats) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
