"""A lean HTTP/1.1 client on asyncio Protocols, for the LB's hot paths: relaying a streamed
answer (:func:`.proxy.forward`) and the engine-queue probe (:mod:`.probe`).

Why not aiohttp's client: per streamed token chunk it runs its response parser, a StreamReader
feed, a read-timeout reschedule and a task wake-up of the reader; at our chunk rates that was
about half of the LB's CPU per request. Here the body's chunk framing is parsed in
:meth:`_Connection.data_received` and every payload goes straight to a synchronous sink (the
caller writes it to its client there), so a chunk costs one callback and no task switch.

Semantics kept from the aiohttp setup it replaces: connections are kept alive and pooled per
``(host, port)`` with a 15 s idle expiry (aiohttp's ``keepalive_timeout``), so a replica sees a
new connection only when we opened one; the connect timeout bounds the TCP connect; the read
timeout bounds each wait for bytes (not the whole exchange), so a long stream is never cut; the
body is passed through untouched (no decompression).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar, cast
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "KEEPALIVE_S", "ResponseHead", "Timeouts", "UpstreamClosed", "UpstreamConnectError", "UpstreamError", "UpstreamPool",
    "UpstreamTimeout", "Exchange",
]

KEEPALIVE_S = 15.0
"""Idle connections close after this long (aiohttp's ``TCPConnector`` default)."""

_MAX_HEAD_BYTES = 64 * 1024  # a response head larger than this is a broken upstream
_NO_BODY_STATUSES = frozenset({204, 304})

Sink = Callable[[bytes], None]
_T = TypeVar("_T")


class UpstreamError(Exception):
    """The upstream exchange failed (connection lost, malformed answer, ...)."""


class UpstreamClosed(UpstreamError, ConnectionError):
    """The upstream closed the connection before the answer was complete."""


class UpstreamConnectError(UpstreamError, ConnectionError):
    """The TCP connect failed (refused, unreachable, ...); the message says where, as
    aiohttp's ``ClientConnectorError`` did ("Cannot connect to host ...")."""


class UpstreamTimeout(UpstreamError, asyncio.TimeoutError):
    """No byte arrived from the upstream within the read timeout, or the connect timed out."""


@dataclass(frozen=True)
class Timeouts:
    """``connect_s`` bounds the TCP connect, ``read_s`` every wait for bytes (None: no limit)."""

    connect_s: float | None = None
    read_s: float | None = None


@dataclass(frozen=True)
class ResponseHead:
    """Status line and headers of an upstream answer."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]


def _split_target(url: str) -> tuple[str, int, str]:
    """``(host, port, base path)`` of an ``http://`` base URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UpstreamError(f"only http:// URLs are supported, not {url!r}")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


class _Connection(asyncio.Protocol):
    """One upstream connection: parses a response head, then the body's framing as it arrives,
    handing each payload to the current sink. One exchange at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.on_lost: Callable[[_Connection], None] | None = None  # the pool forgets it
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self._head_buf = bytearray()
        self.head: ResponseHead | None = None
        self.head_waiter: asyncio.Future[ResponseHead] | None = None
        self.done: asyncio.Future[None] | None = None  # set when the body ended (or failed)
        self.sink: Sink | None = None
        self.pending: list[bytes] = []  # payloads received before a sink was attached
        self.keep_alive = True
        self.last_read = 0.0
        self._no_body = False
        # Body framing: "chunked" (a state machine below), "length" (``_remaining`` bytes) or
        # "close" (until EOF; the connection is then not reusable).
        self._framing = ""
        self._remaining = 0
        self._chunk_state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailers
        self._line = b""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Token chunks are small and latency-bound: never let Nagle hold a request back.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):  # pragma: no cover - not TCP
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if self.on_lost is not None:
            self.on_lost(self)
        if self._framing == "close" and self.head is not None:
            self._finish()  # EOF is the end of an unframed body
            return
        self._fail(UpstreamClosed(f"upstream closed the connection{f': {exc}' if exc else ''}"))

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()  # the lazy read timer checks this (no re-arm per read)
        if self.head is None:
            self._head_buf += data
            end = self._head_buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head_buf) > _MAX_HEAD_BYTES:
                    self._protocol_error("response head too large")
                return
            raw, rest = bytes(self._head_buf[:end]), bytes(self._head_buf[end + 4:])
            self._head_buf = bytearray()
            try:
                self._parse_head(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                self._protocol_error(f"malformed response head: {exc}")
                return
            if self.head is None:  # an informational 1xx: the real head follows
                if rest:
                    self.data_received(rest)
                return
            if not rest and self._framing != "done":
                return
            data = rest
        if self._framing == "chunked":
            self._chunked(data)
        elif self._framing == "length":
            if len(data) >= self._remaining:
                if len(data) > self._remaining:
                    self.keep_alive = False  # bytes beyond the body: do not trust the connection
                payload, self._remaining = data[: self._remaining], 0
                if payload:
                    self._emit(payload)
                self._finish()
            else:
                self._remaining -= len(data)
                self._emit(data)
        elif self._framing == "close":
            self._emit(data)
        elif self._framing == "done":
            self._finish()
            if data:
                self.keep_alive = False

    # -- parsing -------------------------------------------------------------------------

    def _parse_head(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        version, _, status_reason = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"bad status line {lines[0]!r}")
        code, _, reason = status_reason.partition(" ")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            return  # e.g. 100 Continue (the client's Expect went upstream): skip it, as aiohttp does
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"bad header line {line!r}")
            headers.add(name, value.strip())
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0" and "keep-alive" not in connection or "close" in connection:
            self.keep_alive = False
        encoding = headers.get("transfer-encoding", "").lower()
        if self._no_body or status in _NO_BODY_STATUSES or status == 101:
            self._framing = "done"
        elif "chunked" in encoding:
            self._framing = "chunked"
        elif "content-length" in headers:
            self._remaining = int(headers["content-length"])
            if self._remaining < 0:
                raise ValueError("negative content-length")
            self._framing = "length" if self._remaining else "done"
        else:
            self._framing, self.keep_alive = "close", False
        self.head = ResponseHead(status, reason, CIMultiDictProxy(headers))
        if self.head_waiter is not None and not self.head_waiter.done():
            self.head_waiter.set_result(self.head)

    def _chunked(self, data: bytes) -> None:
        """Walk the chunk framing of ``data``; payloads of one call go out as one piece."""
        pos, end, out = 0, len(data), []
        state = self._chunk_state
        while pos < end:
            if state == 1:  # chunk data
                take = min(self._remaining, end - pos)
                out.append(data[pos:pos + take] if take != end or pos else data)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    state, self._remaining = 2, 2
            elif state == 2:  # the CRLF after the data: skip it
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    state = 0
            else:  # a size line (0) or a trailer line (3)
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._line += data[pos:]
                    if len(self._line) > _MAX_HEAD_BYTES:
                        self._protocol_error("chunk size line too long")
                        return
                    break
                line = (self._line + data[pos:nl]).rstrip(b"\r")
                self._line = b""
                pos = nl + 1
                if state == 3:
                    if not line:  # the empty line after the trailers: the body is complete
                        self._chunk_state = 4
                        if pos < end:
                            self.keep_alive = False
                        self._flush(out)
                        self._finish()
                        return
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    self._protocol_error(f"bad chunk size line {line[:40]!r}")
                    return
                if size:
                    state, self._remaining = 1, size
                else:
                    state = 3
        self._chunk_state = state
        self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self._emit(out[0] if len(out) == 1 else b"".join(out))

    def _emit(self, payload: bytes) -> None:
        sink = self.sink
        if sink is None:
            self.pending.append(payload)
        else:
            sink(payload)

    def _protocol_error(self, message: str) -> None:
        self._fail(UpstreamError(message))
        self.close()

    def _finish(self) -> None:
        self._framing = "finished"
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.keep_alive = False
        if self.head_waiter is not None and not self.head_waiter.done():
            self.head_waiter.set_exception(exc)
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved here: a caller that left must not log it

    # -- used by the pool and Exchange -----------------------------------------------------

    def start(self, request: bytes, no_body: bool) -> None:
        """Send one request; the futures for its answer are fresh."""
        self._reset_exchange()
        self._no_body = no_body
        self.head_waiter = self.loop.create_future()
        self.done = self.loop.create_future()
        self.last_read = self.loop.time()
        assert self.transport is not None
        self.transport.write(request)

    @property
    def finished(self) -> bool:
        """The last answer was read completely."""
        return self._framing in ("finished", "done") and not self.closed

    def close(self) -> None:
        """Close the connection (it is never reused)."""
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()


class Exchange:
    """One request/response on a pooled connection: :meth:`head`, then :meth:`relay` or
    :meth:`read`, then :meth:`release` (always; returns the connection or closes it)."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Connection, read_s: float | None) -> None:
        self._pool, self._key, self._conn, self._read_s = pool, key, conn, read_s

    async def _wait(self, fut: asyncio.Future[_T]) -> _T:
        """Await ``fut``, failing when no byte arrived for ``read_s``. The timer is lazy: it
        fires at most once per ``read_s`` and re-arms from the last read, rather than being
        rescheduled on every read as aiohttp does."""
        read_s = self._read_s
        if read_s is None or fut.done():
            return await fut
        conn, loop = self._conn, self._conn.loop

        handle: list[asyncio.TimerHandle] = []

        def check() -> None:
            due = conn.last_read + read_s
            if loop.time() >= due:
                conn._fail(UpstreamTimeout(f"no data from upstream for {read_s} s"))
                conn.close()
            else:
                handle[0] = loop.call_at(due, check)

        handle.append(loop.call_at(conn.last_read + read_s, check))
        try:
            return await fut
        finally:
            handle[0].cancel()

    async def head(self) -> ResponseHead:
        """The status line and headers (raises :class:`UpstreamError` / ``OSError``)."""
        assert self._conn.head_waiter is not None
        return await self._wait(self._conn.head_waiter)

    async def relay(self, sink: Sink) -> None:
        """Hand every body payload to ``sink`` (synchronously, from the protocol) until the
        body ends; raises :class:`UpstreamError` when it fails first."""
        conn = self._conn
        pending, conn.pending = conn.pending, []
        for payload in pending:
            sink(payload)
        conn.sink = sink
        assert conn.done is not None
        await self._wait(conn.done)

    async def read(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        await self.relay(parts.append)
        return b"".join(parts)

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (raised by :meth:`relay`) and close the connection."""
        self._conn._fail(exc)
        self._conn.close()

    def pause(self) -> None:
        """Stop reading from the upstream (the client's buffer is full)."""
        if self._conn.transport is not None and not self._conn.closed:
            self._conn.transport.pause_reading()

    def resume(self) -> None:
        """Read from the upstream again."""
        if self._conn.transport is not None and not self._conn.closed:
            self._conn.transport.resume_reading()

    def release(self) -> None:
        """Back to the pool if the answer was read completely and may be reused, else close."""
        conn = self._conn
        conn.sink = None
        if conn.finished and conn.keep_alive:
            self._pool._put(self._key, conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections per ``(host, port)``, idle ones closed after :data:`KEEPALIVE_S`."""

    def __init__(self, keepalive_s: float = KEEPALIVE_S) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._keepalive_s = keepalive_s
        self._closed = False

    async def request(
        self, method: str, url: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes,
        timeouts: Timeouts,
    ) -> Exchange:
        """Send ``method path_qs`` to the server of base ``url`` (its path prefixes
        ``path_qs``); returns the :class:`Exchange` to read the answer from. Raises
        ``OSError`` / :class:`UpstreamTimeout` when it cannot connect."""
        host, port, base = _split_target(url)
        key = (host, port)
        conn = self._take(key)
        if conn is None:
            conn = await self._connect(host, port, timeouts.connect_s)
        request = _serialize(method, base + path_qs, host, port, headers, body)
        conn.start(request, no_body=method.upper() == "HEAD")
        return Exchange(self, key, conn, timeouts.read_s)

    async def get(self, url: str, path: str, timeout_s: float) -> tuple[int, bytes]:
        """``GET`` a whole answer within ``timeout_s`` in total: ``(status, body)``."""
        exchange: Exchange | None = None
        try:
            async with _timeout(timeout_s):
                exchange = await self.request("GET", url, path, (), b"", Timeouts(timeout_s, None))
                head = await exchange.head()
                body = await exchange.read()
                return head.status, body
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"GET {url}{path}: no complete answer in {timeout_s} s") from exc
        finally:
            if exchange is not None:
                exchange.release()

    async def _connect(self, host: str, port: int, connect_s: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with _timeout(connect_s):
                _, conn = await loop.create_connection(lambda: _Connection(loop), host, port)
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"connect to {host}:{port} timed out after {connect_s} s") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"Cannot connect to host {host}:{port} [{exc.strerror or exc}]") from exc
        return conn

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: least likely to have expired
            if conn.idle_handle is not None:
                conn.idle_handle.cancel()
                conn.idle_handle = None
            conn.on_lost = None
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _put(self, key: tuple[str, int], conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(key, [])
        idle.append(conn)

        def forget(lost: _Connection) -> None:
            # The server closed an idle connection: drop it so it is never handed out.
            if lost in idle:
                idle.remove(lost)

        conn.on_lost = forget
        conn.idle_handle = conn.loop.call_later(self._keepalive_s, conn.close)

    def close(self) -> None:
        """Close every idle connection; later releases close theirs."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _serialize(
    method: str, target: str, host: str, port: int, headers: Iterable[tuple[str, str]], body: bytes
) -> bytes:
    """The request bytes. ``Host`` and ``Content-Length`` are ours (as aiohttp's client
    computes them); the caller has removed hop-by-hop headers."""
    lines = [f"{method} {target or '/'} HTTP/1.1", f"Host: {host}" if port == 80 else f"Host: {host}:{port}"]
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise UpstreamError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    if body or method.upper() in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


if sys.version_info >= (3, 11):  # no extra task per timed wait
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    import contextlib
    from collections.abc import AsyncIterator

    @contextlib.asynccontextmanager
    async def _timeout(delay: float | None) -> AsyncIterator[None]:
        """``asyncio.timeout`` for Python 3.10: cancel the task at the deadline, raise
        ``TimeoutError`` instead of the cancellation."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        fired: list[bool] = []

        def cancel() -> None:
            fired.append(True)
            task.cancel()

        handle = loop.call_later(delay, cancel) if delay is not None else None
        try:
            yield
        except asyncio.CancelledError as exc:
            if fired:
                raise asyncio.TimeoutError from exc
            raise
        finally:
            if handle is not None:
                handle.cancel()
