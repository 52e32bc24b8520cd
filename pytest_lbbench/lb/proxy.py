"""Forward one request upstream and stream the response back, chunk by chunk.

Headers: the client's request headers go upstream minus hop-by-hop ones (``x-hash-key`` and
the LB headers survive); the upstream status and headers come back minus hop-by-hop ones and
``content-length`` (we re-chunk), plus the LB's timing and decision headers. Upstream failures
before the response starts become HTTP 502 with a JSON error; failures mid-stream abort the
client connection, so a truncated stream can never pass for a complete one. A failure *before*
the first byte (no connection, a timeout, or an upstream 5xx) is reported to
``on_start_failure``, which may ask for the request to be sent elsewhere
(:class:`RetryElsewhere`: nothing reached the client yet).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from pytest_lbbench.protocol import number_decisions

from .queue import ClientRequest, Dispatch
from .upstream import Exchange, Timeouts, UpstreamClosed, UpstreamError, UpstreamPool

__all__ = [
    "HOP_BY_HOP", "RetryElsewhere", "client_response_headers", "forward", "json_error", "upstream_request_headers",
]

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed by the client library for the new connection / body.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# Stop reading the upstream while the client's transport holds more than this (aiohttp's
# StreamWriter drains at the same 64 KiB).
_CLIENT_BUFFER_LIMIT = 0x10000


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    # Headers named in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1).
    tokens: set[str] = set()
    for key, value in headers:
        if key.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def upstream_request_headers(
    client_headers: Iterable[tuple[str, str]], extra: Iterable[tuple[str, str]] = ()
) -> CIMultiDict[str]:
    """Headers to send upstream: the client's minus hop-by-hop ones, then ``extra`` (replacing)."""
    items = list(client_headers)
    drop = _REQUEST_DROP | _connection_tokens(items)
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in items if k.lower() not in drop)
    for key, value in extra:
        out[key] = value
    return out


def client_response_headers(upstream: CIMultiDictProxy[str], dispatch: Dispatch) -> CIMultiDict[str]:
    """Upstream response headers for the client, plus this hop's timing and decision headers."""
    items = list(upstream.items())
    drop = _RESPONSE_DROP | _connection_tokens(items)
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in items if k.lower() not in drop)
    for timing in dispatch.timing:
        for key, value in timing.headers():
            out[key] = value
    for key, value in number_decisions(out.keys(), dispatch.decisions):
        out[key] = value
    return out


class RetryElsewhere(Exception):
    """:func:`forward` gave up on an upstream that failed before its first byte, because
    ``on_start_failure`` asked for the request to be decided again; the client got nothing yet."""


def json_error(status: int, message: str, **details: object) -> web.Response:
    """An OpenAI-style JSON error response."""
    body = {"error": {"message": message, "type": "lb_error", "code": status, **details}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _raw_chunk_writer(response: web.StreamResponse) -> Callable[[bytes], None] | None:
    """A synchronous ``write(payload)`` that frames ``payload`` as one HTTP chunk straight onto
    the client's transport, or None when this aiohttp cannot be driven that way safely.

    Why: :meth:`web.StreamResponse.write` is a coroutine, so relaying through it costs a task
    wake-up per token chunk; writing from the upstream protocol's ``data_received`` costs none.
    aiohttp's server always re-chunks (``web_response._prepare_headers``); its
    ``http_writer.StreamWriter`` (3.12+) buffers the head until the first body write, has a
    public-ish ``send_headers()`` to flush it, and ``write_eof()`` then adds only the final
    ``0\\r\\n\\r\\n``. These are internals: every attribute is checked, and anything
    unexpected (another aiohttp, compression, a declared length, signals on sent chunks) makes
    this return None so :func:`forward` falls back to ``await response.write``."""
    writer = getattr(response, "_payload_writer", None)
    send_headers = getattr(writer, "send_headers", None)
    if (
        writer is None or not callable(send_headers)
        or getattr(writer, "chunked", None) is not True
        or getattr(writer, "_compress", True) is not None
        or getattr(writer, "length", True) is not None
        or getattr(writer, "_on_chunk_sent", True) is not None
        or getattr(writer, "on_body_write", True) is not None
        or getattr(writer, "_eof", True) is not False
    ):
        return None
    transport = getattr(writer, "transport", None)
    # Duck-typed: uvloop's transports do not subclass asyncio.Transport.
    if transport is None or not all(hasattr(transport, a) for a in ("writelines", "get_write_buffer_size", "is_closing")):
        return None
    if transport.is_closing():
        return None
    send_headers()
    if getattr(writer, "_headers_written", None) is not True:
        return None  # pragma: no cover - a StreamWriter that did not flush as expected
    writelines = transport.writelines

    def write(payload: bytes) -> None:
        if payload:  # an empty chunk would end the client's body early
            writelines((b"%x\r\n" % len(payload), payload, b"\r\n"))

    return write


class _ClientLeft(Exception):
    """The client's connection closed while we relayed to it."""


async def _relay(exchange: Exchange, response: web.StreamResponse) -> None:
    """Copy the upstream body to the client, then end the response; raises
    :class:`_ClientLeft` if the client went away, :class:`UpstreamError` / ``OSError`` if the
    upstream failed."""
    raw = _raw_chunk_writer(response)
    if raw is None:
        # The public path (another aiohttp): one task wake-up and ``write`` per payload.
        queue: list[bytes] = []
        wake: list[asyncio.Future[None]] = []

        def collect(payload: bytes) -> None:
            queue.append(payload)
            if wake and not wake[0].done():
                wake[0].set_result(None)

        loop = asyncio.get_running_loop()
        body = loop.create_task(exchange.relay(collect))
        try:
            while True:
                if not queue:
                    if body.done():
                        break
                    wake[:] = [loop.create_future()]
                    await asyncio.wait((body, wake[0]), return_when=asyncio.FIRST_COMPLETED)
                    continue
                chunk = b"".join(queue)
                queue.clear()
                await response.write(chunk)
            body.result()
        finally:
            body.cancel()
        await response.write_eof()
        return
    writer: Any = getattr(response, "_payload_writer")  # checked by _raw_chunk_writer
    transport = writer.transport
    assert transport is not None
    draining: list[asyncio.Task[None]] = []

    async def drain_then_resume() -> None:
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client left: the next payload's sink call notices and ends the relay
        finally:
            exchange.resume()

    def sink(payload: bytes) -> None:
        if transport.is_closing():
            exchange.fail(_ClientLeft())
            return
        raw(payload)
        if transport.get_write_buffer_size() > _CLIENT_BUFFER_LIMIT and not (draining and not draining[0].done()):
            # A slow client: stop reading the upstream until its buffer drained.
            exchange.pause()
            draining[:] = [asyncio.get_running_loop().create_task(drain_then_resume())]

    try:
        await exchange.relay(sink)
    finally:
        if draining:
            draining[0].cancel()
    await response.write_eof()


async def forward(
    request: web.Request,
    client_request: ClientRequest,
    dispatch: Dispatch,
    pool: UpstreamPool,
    timeouts: Timeouts,
    on_upstream_error: Callable[[], None] | None = None,
    on_start_failure: Callable[[str], bool] | None = None,
) -> web.StreamResponse:
    """Proxy ``client_request`` to ``dispatch.url`` and stream the answer to ``request``'s client.

    ``on_upstream_error`` is called once when the upstream fails (502, an upstream 5xx, or a
    mid-stream abort); a client that leaves does not count. ``on_start_failure(reason)`` is
    called when the upstream failed before its first byte; when it returns True, nothing is
    sent to the client and :class:`RetryElsewhere` is raised instead.
    """
    headers = upstream_request_headers(client_request.headers, dispatch.extra_request_headers)
    response: web.StreamResponse | None = None
    exchange: Exchange | None = None
    try:
        exchange = await pool.request(
            client_request.method, dispatch.url, client_request.path_qs, headers.items(),
            client_request.body, timeouts,
        )
        head = await exchange.head()
        if head.status >= 500:
            if on_start_failure is not None and on_start_failure(f"HTTP {head.status}"):
                raise RetryElsewhere(f"upstream {dispatch.name} answered HTTP {head.status}")
            if on_upstream_error is not None:
                on_upstream_error()
        response = web.StreamResponse(
            status=head.status,
            reason=head.reason or None,
            headers=client_response_headers(head.headers, dispatch),
        )
        await response.prepare(request)
        await _relay(exchange, response)
        return response
    except _ClientLeft:
        # The client went away mid-stream; the upstream connection is closed below.
        assert response is not None
        return response
    except (UpstreamError, asyncio.TimeoutError, OSError) as exc:
        if response is not None and response.prepared:
            if isinstance(exc, (ConnectionResetError, aiohttp.ClientConnectionResetError)) and not isinstance(
                exc, UpstreamClosed
            ) and (request.transport is None or request.transport.is_closing()):
                # The client went away mid-stream (a write to it failed).
                return response
            log.warning("upstream %s failed mid-stream: %r", dispatch.name, exc)
            if on_upstream_error is not None:
                on_upstream_error()
            # Headers are out: we cannot send a 502 any more. Abort the connection so the
            # client sees a broken transfer instead of a clean (truncated) end of stream.
            if request.transport is not None:
                request.transport.abort()
            return response
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError) and "limits:" not in reason:
            reason += f" (limits: read {timeouts.read_s} s, connect {timeouts.connect_s} s)"
        if on_start_failure is not None and on_start_failure(reason):
            raise RetryElsewhere(f"upstream {dispatch.name} failed: {reason}") from exc
        if on_upstream_error is not None:
            on_upstream_error()
        return json_error(502, f"upstream {dispatch.name} ({dispatch.url}) failed: {reason}",
                          upstream=dispatch.name)
    finally:
        if exchange is not None:
            exchange.release()  # pooled only if the answer was read completely
