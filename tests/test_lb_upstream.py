"""The lean upstream client (:mod:`pytest_lbbench.lb.upstream`) and :func:`.proxy.forward` on
it, against real local aiohttp servers: chunked and content-length answers, an upstream that
dies mid-stream, a refused connect, a read timeout, a client that leaves, connection reuse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from pytest_lbbench.aioserve import first_on_connection
from pytest_lbbench.lb import proxy as proxy_module
from pytest_lbbench.lb import upstream as upstream_module
from pytest_lbbench.lb.proxy import RetryElsewhere, forward
from pytest_lbbench.lb.queue import ClientRequest, Dispatch
from pytest_lbbench.lb.upstream import Timeouts, UpstreamConnectError, UpstreamPool, UpstreamTimeout

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    """A local aiohttp server answering every path with ``handler``; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def tokens(request: web.Request) -> web.StreamResponse:
    """A chunked stream of 5 events (with a header the proxy must pass through)."""
    await request.read()
    resp = web.StreamResponse(headers={"X-Upstream": "yes", "Content-Encoding": "gzip"})
    await resp.prepare(request)
    for i in range(5):
        await resp.write(b"data: %d\n\n" % i)
    await resp.write_eof()
    return resp


async def fixed(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 70000 + b"end", content_type="text/plain")


async def dies(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"data: first\n\n")
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return resp


async def stalls(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"data: first\n\n")
    await asyncio.sleep(1.5)
    return resp


async def fails(request: web.Request) -> web.Response:
    return web.Response(status=503, text="busy")


def test_get_reads_chunked_and_content_length_bodies_and_reuses_the_connection() -> None:
    async def run() -> None:
        pool = UpstreamPool()
        async with server(tokens) as url_a, server(fixed) as url_b:
            for _ in range(3):
                status, body = await pool.get(url_a, "/metrics", 2.0)
                assert status == 200 and body == b"".join(b"data: %d\n\n" % i for i in range(5))
            status, body = await pool.get(url_b, "/", 2.0)
            assert status == 200 and len(body) == 70003 and body.endswith(b"end")
        pool.close()

    asyncio.run(run())


def test_get_connect_refused_and_timeout_raise() -> None:
    async def run() -> None:
        pool = UpstreamPool()
        with pytest.raises(UpstreamConnectError, match="Cannot connect"):
            await pool.get("http://127.0.0.1:9", "/metrics", 1.0)
        async with server(stalls) as url:
            with pytest.raises(UpstreamTimeout):
                await pool.get(url, "/metrics", 0.2)
        pool.close()

    asyncio.run(run())


@asynccontextmanager
async def proxy(upstream_url: str, pool: UpstreamPool, read_s: float = 2.0,
                retry: bool = False) -> AsyncIterator[tuple[str, list[str]]]:
    """An aiohttp server whose every request is :func:`forward`-ed to ``upstream_url``;
    yields its URL and the list of events (``upstream_error``, ``start_failure: ...``)."""
    events: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        client_request = ClientRequest(request.method, request.raw_path, tuple(request.headers.items()), body)
        dispatch = Dispatch(name="up", url=upstream_url, to_lb=False, decisions=())

        def start_failure(reason: str) -> bool:
            events.append(f"start_failure: {reason}")
            return retry

        try:
            return await forward(request, client_request, dispatch, pool, Timeouts(1.0, read_s),
                                 lambda: events.append("upstream_error"), start_failure)
        except RetryElsewhere:
            events.append("retry")
            return web.Response(status=299)

    async with server(handler) as url:
        yield url, events


@pytest.mark.parametrize("path", ["raw", "public"])
def test_forward_streams_untouched_bytes_and_reuses_upstream_connections(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both relays: straight onto the client transport (this aiohttp) and the public
    ``await response.write`` fallback (another aiohttp)."""
    used: list[bool] = []
    real = proxy_module._raw_chunk_writer

    def spy(response: web.StreamResponse) -> Callable[[bytes], None] | None:
        writer = real(response) if path == "raw" else None
        used.append(writer is not None)
        return writer

    monkeypatch.setattr(proxy_module, "_raw_chunk_writer", spy)

    async def run() -> None:
        pool = UpstreamPool()
        app_seen: list[bool | None] = []

        async def recording(request: web.Request) -> web.StreamResponse:
            app_seen.append(first_on_connection(request))
            return await tokens(request)

        async with server(recording) as up, proxy(up, pool) as (url, events):
            async with aiohttp.ClientSession(auto_decompress=False) as client:
                for _ in range(3):
                    async with client.post(url + "/v1/chat", data=b'{"a": 1}') as resp:
                        assert resp.status == 200 and resp.headers["X-Upstream"] == "yes"
                        assert resp.headers["Content-Encoding"] == "gzip"  # passed through, not decoded
                        assert await resp.read() == b"".join(b"data: %d\n\n" % i for i in range(5))
            assert events == []
        assert app_seen == [True, False, False]  # one upstream connection for all three
        assert used == [path == "raw"] * 3
        pool.close()

    asyncio.run(run())


def test_forward_refused_is_502_or_retry() -> None:
    async def run() -> None:
        pool = UpstreamPool()
        async with aiohttp.ClientSession() as client:
            async with proxy("http://127.0.0.1:9", pool) as (url, events):
                async with client.get(url + "/x") as resp:
                    assert resp.status == 502 and "Cannot connect" in (await resp.json())["error"]["message"]
                assert events[0].startswith("start_failure: UpstreamConnectError") and events[1:] == ["upstream_error"]
            async with proxy("http://127.0.0.1:9", pool, retry=True) as (url, events):
                async with client.get(url + "/x") as resp:
                    assert resp.status == 299 and events[-1] == "retry"
            async with server(fails) as up, proxy(up, pool) as (url, events):
                async with client.get(url + "/x") as resp:
                    assert resp.status == 503 and await resp.text() == "busy"
                assert events == ["start_failure: HTTP 503", "upstream_error"]
        pool.close()

    asyncio.run(run())


def test_forward_mid_stream_death_and_read_timeout_abort_the_client() -> None:
    async def run() -> None:
        pool = UpstreamPool()
        async with aiohttp.ClientSession() as client:
            for handler, read_s in ((dies, 2.0), (stalls, 0.3)):
                async with server(handler) as up, proxy(up, pool, read_s=read_s) as (url, events):
                    async with client.get(url + "/x") as resp:
                        assert resp.status == 200
                        with pytest.raises(aiohttp.ClientPayloadError):
                            await resp.read()
                    assert events == ["upstream_error"]
        pool.close()

    asyncio.run(run())


def test_forward_client_leaving_closes_upstream_and_is_no_error() -> None:
    async def run() -> None:
        pool = UpstreamPool()
        closed = asyncio.Event()

        async def endless(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            try:
                while True:
                    await resp.write(b"data: more\n\n")
                    await asyncio.sleep(0.01)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                closed.set()
                raise
            return resp

        async with server(endless) as up, proxy(up, pool) as (url, events):
            async with aiohttp.ClientSession() as client:
                async with client.get(url + "/x") as resp:
                    await resp.content.readuntil(b"\n\n")
            await asyncio.wait_for(closed.wait(), 5)
            assert events == []
        pool.close()

    asyncio.run(run())


class _FakeTransport:
    """Enough of a transport for the protocol's parser."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_parser_handles_any_split_of_1xx_chunk_extensions_and_trailers(step: int) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        conn = upstream_module._Connection(loop)
        conn.connection_made(_FakeTransport())  # type: ignore[arg-type]
        conn.start(b"GET / HTTP/1.1\r\n\r\n", no_body=False)
        payloads: list[bytes] = []
        conn.sink = payloads.append
        wire = (b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
                b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n")
        for i in range(0, len(wire), step):
            conn.data_received(wire[i:i + step])
        assert conn.head is not None and conn.head.status == 200 and conn.head.headers["X-A"] == "b"
        assert b"".join(payloads) == b"hello" + b"z" * 26
        assert conn.done is not None and conn.done.done() and conn.finished and conn.keep_alive

    asyncio.run(run())
