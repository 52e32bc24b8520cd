"""Sub-millisecond timers for the delay links: ``call_at`` on ``time.monotonic()``.

Both event loops we run on have millisecond timers (asyncio rounds its epoll timeout up to
whole milliseconds; uvloop rounds each delay to the nearest millisecond and counts it from a
cached, truncated loop time). Measured on the 2-core development machine, that put a chunk
through a 79.1 ms one-way link 0.69-0.78 ms late at the median and 1.2-1.3 ms at p90 (about
0.28/0.33 ms of which any link adds by proxying), and a 0.5 ms intra-region link delivered
0.23 ms early: the emulated delays were off by about half a millisecond per hop, which the TTFT
decomposition then counted as harness cost (``benchmarks/test_link_precision.py``).

On Linux a ``timerfd`` (``CLOCK_MONOTONIC``, the clock of ``time.monotonic()``, armed with an
absolute expiry in nanoseconds) wakes the loop through an ordinary readable file descriptor,
so a release is late only by the machine's wake-up latency, and arming it early by the median
of that latency centres releases on their due time. One timerfd serves every timer of
a :class:`PreciseTimers`: a heap of expiries, the fd armed for the earliest. Elsewhere (or if
the kernel refuses a timerfd) the loop's own ``call_later`` is used, corrected for its
rounding. Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import logging
import os
import sys
import time
from typing import Callable, Protocol

__all__ = ["PreciseTimers", "TimerHandle", "timerfd_available"]

log = logging.getLogger(__name__)

_clock = time.monotonic

#: A timer is run once its expiry is at most this far (plus the lead below) ahead: float
#: rounding between the heap and the clock.
_TIMERFD_TOLERANCE_S = 0.00002
# The kernel never fires a timerfd early, but the loop wakes some time after it fires (the
# machine's wake-up latency: 150-190 us at the median on the 2-core development machine, for a
# timerfd and for a plain sleep alike, with a long tail). So the fd is armed that much early:
# the lead follows the median of the observed wake-up lateness (a step up when a wake was later
# than the lead, a step down when not), bounded so a saturated CPU never makes timers run more
# than _LEAD_MAX_S early. Releases are then centred on their due time instead of all late.
_LEAD_STEP_S = 0.000005
_LEAD_MAX_S = 0.0005

# Fallback precision (loop timers). asyncio rounds the epoll timeout *up* to whole ms, so it
# wakes 0-1 ms after the requested time: request half a millisecond early. uvloop rounds the
# delay to the nearest ms: no correction. Shorter than 1 ms, uvloop turns a timer into "call
# soon", which would spin.
_LOOP_TOLERANCE_S = 0.0005
_MIN_LOOP_TIMER_S = 0.001


def _uses_ms_timers(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


def _loop_timer_delay(wait: float, loop: asyncio.AbstractEventLoop) -> float:
    """The ``call_later`` delay that wakes ``loop`` within about 0.5 ms of ``wait`` from now."""
    if _uses_ms_timers(loop):
        return max(wait, _MIN_LOOP_TIMER_S)
    return max(wait - _LOOP_TOLERANCE_S, _MIN_LOOP_TIMER_S)


class TimerHandle(Protocol):
    """What :meth:`PreciseTimers.call_at` returns (``asyncio.Handle`` fits too)."""

    def cancel(self) -> None: ...


# -- the timerfd ---------------------------------------------------------------------------------

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """One Linux timerfd on ``CLOCK_MONOTONIC``: ``os.timerfd_*`` (Python 3.13+) or libc."""

    def __init__(self) -> None:
        flags = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK / TFD_CLOEXEC have these values
        self._libc: ctypes.CDLL | None = None
        create = getattr(os, "timerfd_create", None)
        if create is not None:
            self.fd: int = create(time.CLOCK_MONOTONIC, flags=flags)
            return
        name = ctypes.util.find_library("c") or "libc.so.6"
        libc = ctypes.CDLL(name, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_create.restype = ctypes.c_int
        libc.timerfd_settime.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.POINTER(_Itimerspec)]
        libc.timerfd_settime.restype = ctypes.c_int
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, flags)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self._libc = libc
        self._spec = _Itimerspec()

    def arm_at(self, when: float) -> None:
        """Expire once at monotonic time ``when`` (seconds; in the past: at once)."""
        ns = max(1, int(when * 1e9))  # 0 would disarm
        if self._libc is None:
            os.timerfd_settime_ns(self.fd, flags=os.TFD_TIMER_ABSTIME, initial=ns)  # type: ignore[attr-defined]
            return
        spec = self._spec
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def drain(self) -> None:
        """Consume the expiry count, so the fd stops being readable."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.fd, 8)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def timerfd_available() -> bool:
    """Whether this platform gives :class:`PreciseTimers` a timerfd (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        _TimerFd().close()
    except (OSError, AttributeError):
        return False
    return True


# -- the scheduler ------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class PreciseTimers:
    """Timers of one event loop, released within the machine's wake-up latency of their time.

    ``call_at(when, callback)`` runs ``callback()`` (no arguments, inside the loop) once
    ``time.monotonic()`` reaches ``when``; the returned handle's ``cancel()`` forgets it. Call
    :meth:`close` when done (it releases the timerfd). ``precise`` says whether a timerfd is in
    use; without one this falls back to the loop's millisecond timers.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, use_timerfd: bool = True) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._armed_for: float | None = None
        self._armed_at = 0.0  # when the fd will fire: _armed_for minus the lead at arming
        self._lead = 0.0
        self._fd: _TimerFd | None = None
        self._closed = False
        self._expiring = False  # inside _expired: re-arm once at its end, not per call_at
        if use_timerfd and sys.platform.startswith("linux"):
            try:
                fd = _TimerFd()
            except (OSError, AttributeError) as exc:
                log.warning("no timerfd (%s): delay links fall back to millisecond loop timers", exc)
            else:
                try:
                    loop.add_reader(fd.fd, self._expired)
                except (OSError, NotImplementedError, RuntimeError) as exc:
                    fd.close()
                    log.warning("cannot watch a timerfd (%s): millisecond loop timers instead", exc)
                else:
                    self._fd = fd

    @property
    def precise(self) -> bool:
        """A timerfd drives these timers (else the loop's millisecond timers)."""
        return self._fd is not None

    @property
    def tolerance_s(self) -> float:
        """How early a timer may run: what is due within this is due now."""
        return _TIMERFD_TOLERANCE_S + self._lead if self._fd is not None else _LOOP_TOLERANCE_S

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` at monotonic time ``when`` (on the next loop iteration when that
        is within :attr:`tolerance_s` from now)."""
        wait = when - _clock()
        if wait <= self.tolerance_s:
            return self._loop.call_soon(callback)
        if self._fd is None:
            return self._loop.call_later(_loop_timer_delay(wait, self._loop), callback)
        entry = _Entry(callback)
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        if not self._expiring and (self._armed_for is None or when < self._armed_for):
            self._arm(when)
        return entry

    def _arm(self, when: float) -> None:
        assert self._fd is not None
        self._armed_at = when - self._lead
        self._fd.arm_at(self._armed_at)
        self._armed_for = when

    def _expired(self) -> None:
        fd = self._fd
        if fd is None:
            return
        fd.drain()
        now = _clock()
        if self._armed_for is not None:
            if now - self._armed_at > self._lead:
                self._lead = min(_LEAD_MAX_S, self._lead + _LEAD_STEP_S)
            else:
                self._lead = max(0.0, self._lead - _LEAD_STEP_S)
        self._armed_for = None
        heap = self._heap
        limit = now + self.tolerance_s
        self._expiring = True
        try:
            while heap and heap[0][0] <= limit:
                entry = heapq.heappop(heap)[2]
                if entry.cancelled:
                    continue
                entry.cancelled = True  # ran: a later cancel() is a no-op
                try:
                    entry.callback()
                except Exception as exc:  # one link's bug must not stop every other link's timers
                    self._loop.call_exception_handler(
                        {"message": "delay-link timer callback failed", "exception": exc})
        finally:
            self._expiring = False
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if heap and not self._closed:
            self._arm(heap[0][0])

    def pending(self) -> int:
        """Timers not yet run nor cancelled (for tests)."""
        return sum(1 for _, _, entry in self._heap if not entry.cancelled)

    def close(self) -> None:
        """Stop watching the timerfd and close it; pending timers never run. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._heap.clear()
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd.fd)
            fd.close()
