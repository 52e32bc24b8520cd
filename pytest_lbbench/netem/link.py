"""Userspace delay links: TCP proxies that add a one-way delay in each direction.

The CI kernel has no ``tc netem``, so every cross-region TCP connection of the local backend
goes through a :class:`DelayLink` instead: it listens on loopback, opens a connection to its
target for every accepted client, and holds each chunk it reads for ``one_way_s`` before
writing it to the other side. Reference measurements: ``local-runtime-notes.md`` §6.

Timing model, per direction (a FIFO of ``(due, chunk)``):

* bytes read at time ``t`` are written at ``t + D``. Dues never decrease, so one timer per
  direction (armed for the head of the FIFO) keeps order, and each chunk's delay is computed
  from its own read time, so delays never accumulate;
* with handshake emulation (default) the client's connect "would have taken" one RTT: client
  bytes are delivered at ``max(t, accept + 2D) + D``, so the first request on a fresh
  connection pays two RTTs, as over a real WAN. Target bytes are held until
  ``max(t, accept + 3D) + D`` (the target's accept would only complete at ``accept + 3D``);
  that floor only matters for protocols where the server speaks first;
* EOF, close and reset travel through the same FIFO, so they arrive after the bytes sent
  before them, one delay later.

Precision: on Linux each chunk is released by a timerfd (:mod:`.timers`), so a link adds only
its proxying (two loopback hops and a loop iteration); elsewhere, or with
``precise_timers=False``, the loop's millisecond timers release it within about +-0.5 ms of
its due time, and a one-way delay of 0.5 ms or less is not reproduced. Measured side by side on
the 2-core development machine (``pytest benchmarks --lbbench-selfcheck -k link_precision``),
excess over the one-way delay p50/p90 in two runs: zero delay 0.27-0.29/0.33-0.34 ms; 79.1 ms
with a timerfd 0.38-0.43/0.50-0.72 ms, with loop timers 0.69-0.78/1.20-1.33 ms; 0.5 ms with a
timerfd 0.28-0.29/0.35-0.72 ms, with loop timers -0.24/-0.18 ms (delivered early).

Low-level ``asyncio.Protocol`` callbacks (not streams) keep the per-chunk cost small; the
module works on both asyncio and uvloop loops. Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import math
import socket
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Iterator, Union, cast

from pytest_lbbench.procutil import bind_socket

from .spec import LinkSpec
from .timers import PreciseTimers, TimerHandle

logger = logging.getLogger(__name__)

DEFAULT_HIGH_WATER = 1 << 20  # bytes held for one direction before its reader is paused
DEFAULT_LOW_WATER = 1 << 18  # ... and resumed again

# Linux only; elsewhere (0) the delayed-ACK workaround is simply skipped.
_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)

# Stamps use time.monotonic() (ns resolution; uvloop's loop.time() is truncated to whole ms,
# which alone would shift every delay by up to -1 ms), the clock of the timers (.timers).
_clock = time.monotonic
#: A chunk released more than this after its due time counts as *late* in :class:`LinkStats`:
#: twice the loop timers' precision (the fallback) plus the wake-up latency, so only a loop that
#: could not keep up (a CPU the benchmark saturated) counts, never ordinary timer jitter.
LATE_THRESHOLD_S = 0.002


# Why a half's reader is paused (bit mask: both reasons can hold at once).
_PAUSE_QUEUE = 1  # our delay FIFO is above the high-water mark
_PAUSE_WRITE = 2  # the destination transport's own write buffer is full


class _Marker(enum.Enum):
    EOF = "eof"  # the source half-closed: write_eof() on the destination
    CLOSE = "close"  # the source closed: close() the destination after its buffer drains
    ABORT = "abort"  # the source failed (reset, connect refused): abort() the destination


_Item = Union[bytes, _Marker]


@dataclass
class LinkStats:
    """Counters of one link. Bytes are counted when delivered to the other side."""

    connections_total: int = 0
    connections_active: int = 0
    connect_failures: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    # Most bytes one direction of one connection ever held (bounded by high_water + one read).
    peak_queued_bytes: int = 0
    # How far behind the emulated delay the link ran: per release of due chunks, the time since
    # the head chunk was due, beyond the link's own precision (host lag; never the delay itself).
    releases: int = 0
    late_releases: int = 0  # releases more than LATE_THRESHOLD_S behind
    lateness_total_s: float = 0.0
    lateness_max_s: float = 0.0

    def snapshot(self) -> LinkStats:
        """A copy that no longer changes."""
        return replace(self)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def reset(self) -> None:
        """Zero the counters (open connections stay counted as active)."""
        active = self.connections_active
        for name, value in asdict(LinkStats()).items():
            setattr(self, name, value)
        self.connections_active = active


def _set_sockopt(sock: Any, level: int, option: int, value: int) -> None:
    if sock is None:
        return
    # The socket may already be shut down by the peer; a failed option is not worth an error.
    with contextlib.suppress(OSError):
        sock.setsockopt(level, option, value)


class _Half:
    """One direction of one proxied connection: a FIFO of ``(due, bytes or marker)``."""

    __slots__ = (
        "pipe", "upward", "floor", "src", "dst", "queue", "queued", "timer", "pause_reasons", "closed",
    )

    def __init__(self, pipe: _Pipe, upward: bool, floor: float) -> None:
        self.pipe = pipe
        self.upward = upward  # client -> target; decides which byte counter to bump
        self.floor = floor  # bytes read before this time count as read at it (handshake)
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, _Item]] = collections.deque()
        self.queued = 0
        self.timer: TimerHandle | None = None
        self.pause_reasons = 0
        self.closed = False  # a CLOSE/ABORT was queued or delivered, or the destination is gone

    def push(self, item: _Item, due: float | None = None) -> None:
        if self.closed:
            return
        if due is None:
            due = max(_clock(), self.floor) + self.pipe.delay
        self.queue.append((due, item))
        if isinstance(item, bytes):
            self.queued += len(item)
            link = self.pipe.link
            if self.queued > link._stats.peak_queued_bytes:
                link._stats.peak_queued_bytes = self.queued
            if self.queued > link.high_water and not self.pause_reasons & _PAUSE_QUEUE:
                self.pause(_PAUSE_QUEUE)
        else:
            self.closed = item is not _Marker.EOF
        if self.timer is None:
            self.arm()

    def arm(self) -> None:
        """Schedule :meth:`flush` for the head of the FIFO (no-op while the target is connecting)."""
        if self.timer is not None or not self.queue or self.dst is None:
            return
        self.timer = self.pipe.timers.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        """Write everything that is due, in order; then re-arm for the next chunk."""
        self.timer = None
        dst = self.dst
        if dst is None:
            return
        now = _clock()
        tolerance = self.pipe.timers.tolerance_s
        limit = now + tolerance
        queue = self.queue
        if queue and queue[0][0] <= limit:
            stats = self.pipe.link._stats
            # Beyond the timers' own precision only (a release within it of its due time is on
            # time by design), so scaled runs do not count timer granularity as lag.
            late = now - queue[0][0] - tolerance
            stats.releases += 1
            if late > 0:
                stats.lateness_total_s += late
                if late > stats.lateness_max_s:
                    stats.lateness_max_s = late
                if late > LATE_THRESHOLD_S:
                    stats.late_releases += 1
        chunks: list[bytes] = []
        marker: _Marker | None = None
        while queue and queue[0][0] <= limit:
            item = queue.popleft()[1]
            if isinstance(item, bytes):
                chunks.append(item)
            else:
                marker = item
                break
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.queued -= len(data)
            if not dst.is_closing():
                dst.write(data)
                stats = self.pipe.link._stats
                if self.upward:
                    stats.bytes_up += len(data)
                else:
                    stats.bytes_down += len(data)
            if self.pause_reasons & _PAUSE_QUEUE and self.queued <= self.pipe.link.low_water:
                self.resume(_PAUSE_QUEUE)
        if marker is not None:
            self._deliver_marker(dst, marker)
        if queue and self.dst is not None:
            self.arm()

    def _deliver_marker(self, dst: asyncio.Transport, marker: _Marker) -> None:
        if marker is _Marker.EOF:
            if dst.is_closing():
                return
            if not dst.can_write_eof():
                dst.close()
                return
            try:
                dst.write_eof()
            except OSError:
                # asyncio shuts the socket down right here; that fails if the peer has
                # already reset or fully closed it. The connection is over either way.
                dst.abort()
                return
            self.pipe.eof_delivered(self)
        elif marker is _Marker.CLOSE:
            dst.close()  # close() still sends what the transport has buffered
        else:
            dst.abort()

    def pause(self, reason: int) -> None:
        self.pause_reasons |= reason
        src = self.src
        if src is not None and not src.is_closing():
            src.pause_reading()

    def resume(self, reason: int) -> None:
        self.pause_reasons &= ~reason
        src = self.src
        if not self.pause_reasons and src is not None and not src.is_closing():
            src.resume_reading()

    def discard(self) -> None:
        """Forget everything pending: the destination is gone, or the pipe is being torn down."""
        self.closed = True
        self.dst = None
        self.queue.clear()
        self.queued = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Pipe:
    """One accepted client connection and the upstream connection opened for it."""

    __slots__ = (
        "link", "loop", "timers", "delay", "accepted_at", "up", "down", "client", "client_sock", "upstream",
        "upstream_sock", "client_open", "upstream_state", "connect_task", "done", "eofs",
    )

    def __init__(self, link: DelayLink, client: asyncio.Transport) -> None:
        self.link = link
        self.loop = link._loop_or_raise()
        self.timers = link._timers_or_raise()
        self.delay = link.one_way_s
        self.accepted_at = _clock()
        hs = link.emulate_handshake
        d = self.delay
        self.up = _Half(self, True, self.accepted_at + 2 * d if hs else -math.inf)
        self.down = _Half(self, False, self.accepted_at + 3 * d if hs else -math.inf)
        self.client = client
        self.client_sock = client.get_extra_info("socket")
        # Our writes to the client must never wait for Nagle (asyncio and uvloop set it already,
        # but this is the property the whole latency model depends on, so we do not rely on it).
        _set_sockopt(self.client_sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.up.src = client
        self.down.dst = client
        self.upstream: asyncio.Transport | None = None
        self.upstream_sock: Any = None
        self.client_open = True
        self.upstream_state = "connecting"  # -> "open" -> "closed", or straight to "closed"
        self.done = False
        self.eofs = 0
        # Opened right away (at accept time), so its own setup time hides inside the emulated
        # handshake instead of adding to the first request.
        self.connect_task: asyncio.Task[None] | None = self.loop.create_task(self._connect())
        self.connect_task.add_done_callback(self._connect_done)

    async def _connect(self) -> None:
        link = self.link
        try:
            await self.loop.create_connection(lambda: _UpstreamSide(self), link.target_host, link.target_port)
        except Exception as exc:  # OSError in practice; anything else must not strand the pipe
            link._stats.connect_failures += 1
            logger.info("link %s: connect to %s:%s failed: %s", link.name, link.target_host, link.target_port, exc)
            self.up.discard()
            # The client already saw its connect succeed; it learns of the failure as a reset,
            # one round trip after its SYN would have reached the target.
            if link.emulate_handshake:
                due = max(_clock(), self.accepted_at + self.delay) + self.delay
            else:
                due = _clock() + self.delay
            self.down.push(_Marker.ABORT, due)
            self._upstream_gone()

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        self.connect_task = None
        # A task cancelled before its first step never runs its body, so the "gone" bookkeeping
        # must happen here rather than in an except clause inside _connect.
        if task.cancelled() and self.upstream_state == "connecting":
            self._upstream_gone()

    # -- upstream side -------------------------------------------------------------------------

    def upstream_made(self, transport: asyncio.Transport) -> None:
        if self.done:
            transport.abort()
            return
        self.upstream = transport
        self.upstream_state = "open"
        self.upstream_sock = transport.get_extra_info("socket")
        _set_sockopt(self.upstream_sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.up.dst = transport
        self.down.src = transport
        if self.down.pause_reasons:  # the client's buffer filled up while we were connecting
            transport.pause_reading()
        self.up.arm()

    def upstream_data(self, data: bytes) -> None:
        if self.link.quickack:
            # Send the ACK for these bytes now. Servers without TCP_NODELAY (the sglang router)
            # hold their next small write under Nagle until this ACK; a delayed ACK (40 ms on
            # Linux) would stall every SSE stream on a keep-alive connection
            # (local-runtime-notes.md §2.7). TCP_QUICKACK is not sticky, hence every read.
            _set_sockopt(self.upstream_sock, socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        self.down.push(data)

    def upstream_eof(self) -> None:
        self.down.push(_Marker.EOF)

    def upstream_lost(self, exc: Exception | None) -> None:
        self.up.discard()
        self.down.src = None
        self.down.push(_Marker.ABORT if exc is not None else _Marker.CLOSE)
        self._upstream_gone()

    def _upstream_gone(self) -> None:
        self.upstream_state = "closed"
        self.upstream = None
        self.upstream_sock = None
        self._maybe_done()

    # -- client side ---------------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self.link.quickack:
            _set_sockopt(self.client_sock, socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        self.up.push(data)

    def client_eof(self) -> None:
        self.up.push(_Marker.EOF)

    def client_lost(self, exc: Exception | None) -> None:
        self.client_open = False
        self.client_sock = None
        self.down.discard()
        self.up.src = None
        self.up.push(_Marker.ABORT if exc is not None else _Marker.CLOSE)
        self._maybe_done()

    # -- both ----------------------------------------------------------------------------------

    def pause_src_of(self, half: _Half) -> None:
        half.pause(_PAUSE_WRITE)

    def resume_src_of(self, half: _Half) -> None:
        half.resume(_PAUSE_WRITE)

    def eof_delivered(self, half: _Half) -> None:
        # Both directions half-closed: nothing more can flow, so release both sockets
        # (close(), not abort(), so buffered bytes still go out).
        self.eofs += 1
        if self.eofs == 2:
            self.client.close()
            if self.upstream is not None:
                self.upstream.close()

    def abort(self) -> None:
        """Tear down immediately (link shutdown): drop pending bytes, reset both sockets."""
        self.up.discard()
        self.down.discard()
        if self.connect_task is not None:
            self.connect_task.cancel()
        if self.client_open:
            self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def _maybe_done(self) -> None:
        if self.done or self.client_open or self.upstream_state != "closed":
            return
        self.done = True
        self.up.discard()
        self.down.discard()
        self.link._pipe_done(self)


class _ClientSide(asyncio.Protocol):
    """The accepted side of a link (the client connected to us)."""

    __slots__ = ("link", "pipe")

    def __init__(self, link: DelayLink) -> None:
        self.link = link
        self.pipe: _Pipe | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's TCPTransport does not subclass asyncio.Transport.
        self.pipe = self.link._pipe_started(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        assert self.pipe is not None
        self.pipe.client_data(data)

    def eof_received(self) -> bool:
        assert self.pipe is not None
        self.pipe.client_eof()
        return True  # keep our write side open: the target may still be answering

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe is not None:
            self.pipe.client_lost(exc)

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.pause_src_of(self.pipe.down)

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.resume_src_of(self.pipe.down)


class _UpstreamSide(asyncio.Protocol):
    """The connection a link opened to its target."""

    __slots__ = ("pipe",)

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pipe.upstream_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.pipe.upstream_data(data)

    def eof_received(self) -> bool:
        self.pipe.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.pipe.pause_src_of(self.pipe.up)

    def resume_writing(self) -> None:
        self.pipe.resume_src_of(self.pipe.up)


class DelayLink:
    """A loopback TCP proxy to ``target`` that delays every byte by ``one_way_s`` each way.

    Use ``async with DelayLink(...) as link`` or ``await link.start()`` / ``await link.close()``
    inside one event loop; clients connect to ``link.url`` (or ``127.0.0.1:link.port``).
    """

    def __init__(
        self,
        name: str,
        target: tuple[str, int],
        one_way_s: float,
        *,
        emulate_handshake: bool = True,
        quickack: bool = True,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
        precise_timers: bool = True,
    ) -> None:
        if not math.isfinite(one_way_s) or one_way_s < 0:
            raise ValueError(f"one_way_s must be a finite number >= 0, got {one_way_s!r}")
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {low_water} and {high_water}")
        self.name = name
        self.target = (target[0], int(target[1]))
        self.one_way_s = float(one_way_s)
        self.emulate_handshake = emulate_handshake
        self.quickack = quickack and _TCP_QUICKACK != 0
        self.listen_host = listen_host
        self.high_water = high_water
        self.low_water = low_water
        self._listen_port = listen_port
        self._port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.precise_timers = precise_timers  # False: the loop's millisecond timers (comparisons)
        self._timers: PreciseTimers | None = None
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self._pipes: set[_Pipe] = set()
        self._idle: asyncio.Event | None = None
        self._stats = LinkStats()
        # Fault drill "partition": while set, every connection is reset at once, open or new.
        self.partitioned = False

    @classmethod
    def from_spec(cls, spec: LinkSpec, **kwargs: Any) -> DelayLink:
        """A link built from a validated :class:`~pytest_lbbench.netem.spec.LinkSpec`."""
        return cls(
            spec.name,
            (spec.target_host, spec.target_port),
            spec.one_way_s,
            emulate_handshake=spec.emulate_handshake,
            **kwargs,
        )

    def __repr__(self) -> str:
        where = f"port={self._port}" if self._port else "not started"
        return (
            f"<DelayLink {self.name!r} {where} -> {self.target[0]}:{self.target[1]} "
            f"one_way={self.one_way_s * 1000:g}ms>"
        )

    @property
    def target_host(self) -> str:
        return self.target[0]

    @property
    def target_port(self) -> int:
        return self.target[1]

    @property
    def port(self) -> int:
        """The listening port (only after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError(f"delay link {self.name!r} is not started; await link.start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://<listen_host>:<port>``, the base URL clients use instead of the target's."""
        return f"http://{self.listen_host}:{self.port}"

    @property
    def started(self) -> bool:
        return self._server is not None and not self._closed

    @property
    def active_connections(self) -> int:
        return len(self._pipes)

    def stats(self) -> LinkStats:
        """A snapshot of this link's counters."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        """Zero this link's counters (between experiments)."""
        self._stats.reset()

    def partition(self) -> int:
        """Drop the link: reset every open connection and every new one until :meth:`heal`
        (as a region whose routes are withdrawn: peers see a reset, not a silent hang).
        Returns how many open connections were reset."""
        self.partitioned = True
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.abort()
        return len(pipes)

    def heal(self) -> None:
        """End a :meth:`partition`: new connections pass again."""
        self.partitioned = False

    async def start(self) -> int:
        """Bind and start listening; returns the port. Calling it again returns the same port."""
        if self._closed:
            raise RuntimeError(f"delay link {self.name!r} is closed; create a new one")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._server is None:
                self._loop = asyncio.get_running_loop()
                self._timers = PreciseTimers(self._loop, use_timerfd=self.precise_timers)
                sock = bind_socket(self.listen_host, self._listen_port)
                try:
                    self._server = await self._loop.create_server(lambda: _ClientSide(self), sock=sock)
                except BaseException:
                    sock.close()
                    raise
                self._port = int(sock.getsockname()[1])
        return self.port

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening and reset every connection still open. Idempotent."""
        if self._closed:
            return
        self._closed = True
        server = self._server
        if server is None:
            return
        server.close()
        for pipe in list(self._pipes):
            pipe.abort()
        if self._pipes:
            self._idle = asyncio.Event()
            # connection_lost callbacks arrive on the next loop iterations; bounded in case a
            # transport misbehaves, since close() must never hang a test teardown.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        await server.wait_closed()
        if self._timers is not None:
            self._timers.close()

    async def __aenter__(self) -> DelayLink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- called by the protocols ---------------------------------------------------------------

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _timers_or_raise(self) -> PreciseTimers:
        assert self._timers is not None
        return self._timers

    def _pipe_started(self, transport: asyncio.Transport) -> _Pipe:
        pipe = _Pipe(self, transport)
        self._pipes.add(pipe)
        self._stats.connections_total += 1
        self._stats.connections_active += 1
        if self._closed or self.partitioned:  # closing, or partitioned: do not keep it
            pipe.abort()
        return pipe

    def _pipe_done(self, pipe: _Pipe) -> None:
        if pipe in self._pipes:
            self._pipes.discard(pipe)
            self._stats.connections_active -= 1
        if not self._pipes and self._idle is not None:
            self._idle.set()


class LinkSet:
    """Many delay links served by one event loop, addressed by name."""

    def __init__(self, links: Iterable[DelayLink] = ()) -> None:
        self._links: dict[str, DelayLink] = {}
        for link in links:
            self.add(link)

    @classmethod
    def from_specs(cls, specs: Iterable[LinkSpec], **kwargs: Any) -> LinkSet:
        """One link per spec; ``kwargs`` go to every :class:`DelayLink`."""
        return cls(DelayLink.from_spec(spec, **kwargs) for spec in specs)

    def add(self, link: DelayLink) -> DelayLink:
        """Add a link (names must be unique); start it yourself if the set is already running."""
        if link.name in self._links:
            raise ValueError(f"duplicate delay link name {link.name!r}")
        self._links[link.name] = link
        return link

    def __getitem__(self, name: str) -> DelayLink:
        return self._links[name]

    def __iter__(self) -> Iterator[DelayLink]:
        return iter(self._links.values())

    def __len__(self) -> int:
        return len(self._links)

    @property
    def ports(self) -> dict[str, int]:
        """``{name: port}`` of the started links."""
        return {name: link.port for name, link in self._links.items() if link.started}

    def stats(self) -> dict[str, LinkStats]:
        return {name: link.stats() for name, link in self._links.items()}

    def reset_stats(self) -> None:
        """Zero every link's counters."""
        for link in self._links.values():
            link.reset_stats()

    async def start(self) -> dict[str, int]:
        """Start every link; on any failure close the ones already started and re-raise."""
        try:
            for link in self._links.values():
                await link.start()
        except BaseException:
            await self.close()
            raise
        return self.ports

    async def close(self) -> None:
        """Close every link (idempotent)."""
        await asyncio.gather(*(link.close() for link in self._links.values()))

    async def __aenter__(self) -> LinkSet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
