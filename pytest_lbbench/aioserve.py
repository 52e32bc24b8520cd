"""Serving an aiohttp app on a socket we bound ourselves; shared by the LB and the gateway."""

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
