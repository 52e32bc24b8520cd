"""Serving an aiohttp app on a socket we bound ourselves (the LB and the gateway), and what a
server can tell about a request's connection (the LBs and the replicas)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp import web


async def serve_app(
    app: web.Application,
    sock: socket.socket,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` on the already-bound ``sock`` until ``stop`` is set."""
    runner = web.AppRunner(
        app,
        access_log=None,  # one line per request would cost more than the proxying itself
        handler_cancellation=True,  # a client disconnect cancels its handler → upstream closed
        shutdown_timeout=2.0,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        if on_ready is not None:
            on_ready(int(sock.getsockname()[1]))
        await stop.wait()
    finally:
        await runner.cleanup()


def first_on_connection(request: web.Request) -> bool | None:
    """Whether ``request`` is the first on its connection, i.e. the sender opened the
    connection for it (HTTP/1.1 without pipelining); ``None`` if aiohttp does not say.

    aiohttp counts the requests of each connection in ``RequestHandler._request_count``, a
    private attribute: read defensively, so another aiohttp version only loses the flag."""
    count = getattr(request.protocol, "_request_count", None)
    return count == 1 if isinstance(count, int) else None
