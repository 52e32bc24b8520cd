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

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from pytest_lbbench.protocol import number_decisions

from .queue import ClientRequest, Dispatch

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


async def forward(
    request: web.Request,
    client_request: ClientRequest,
    dispatch: Dispatch,
    session: aiohttp.ClientSession,
    timeout: aiohttp.ClientTimeout,
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
    url = dispatch.url.rstrip("/") + client_request.path_qs
    response: web.StreamResponse | None = None
    try:
        async with session.request(
            client_request.method,
            url,
            headers=headers,
            data=client_request.body if client_request.body else None,
            timeout=timeout,
            allow_redirects=False,
        ) as upstream:
            if upstream.status >= 500:
                if on_start_failure is not None and on_start_failure(f"HTTP {upstream.status}"):
                    raise RetryElsewhere(f"upstream {dispatch.name} answered HTTP {upstream.status}")
                if on_upstream_error is not None:
                    on_upstream_error()
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=client_response_headers(upstream.headers, dispatch),
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        if response is not None and response.prepared:
            if isinstance(exc, (ConnectionResetError, aiohttp.ClientConnectionResetError)) and (
                request.transport is None or request.transport.is_closing()
            ):
                # The client went away mid-stream; leaving the ``async with`` closed upstream.
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
        if isinstance(exc, asyncio.TimeoutError):
            reason += f" (limits: total {timeout.total} s, connect {timeout.sock_connect} s)"
        if on_start_failure is not None and on_start_failure(reason):
            raise RetryElsewhere(f"upstream {dispatch.name} failed: {reason}") from exc
        if on_upstream_error is not None:
            on_upstream_error()
        return json_error(502, f"upstream {dispatch.name} ({dispatch.url}) failed: {reason}",
                          upstream=dispatch.name)
