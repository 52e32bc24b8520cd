"""The delay links' timers (:mod:`pytest_lbbench.netem.timers`): order, cancel, close, fallback."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import uvloop

from pytest_lbbench.netem.timers import PreciseTimers, timerfd_available

LOOPS = ["asyncio", "uvloop"]
MODES = [True, False]
#: Scheduled out of order, some within a millisecond of each other.
OFFSETS = [0.030, 0.0102, 0.0104, 0.020, 0.0011, 0.0250, 0.0103]


def _run(loop_name: str, coro_fn: object) -> object:
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), 10))  # type: ignore[operator]
    finally:
        loop.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("use_timerfd", MODES, ids=["timerfd", "loop-timers"])
def test_timers_run_in_due_order_never_early_beyond_their_tolerance(loop_name: str, use_timerfd: bool) -> None:
    async def main() -> tuple[list[int], list[float], float, bool]:
        timers = PreciseTimers(asyncio.get_running_loop(), use_timerfd=use_timerfd)
        ran: list[int] = []
        early: list[float] = []
        done = asyncio.get_running_loop().create_future()
        start = time.monotonic()
        offsets = OFFSETS

        def make(i: int, when: float) -> object:
            def fire() -> None:
                ran.append(i)
                early.append(when - time.monotonic())
                if len(ran) == len(offsets):
                    done.set_result(None)
            return fire

        for i, offset in enumerate(offsets):
            timers.call_at(start + offset, make(i, start + offset))  # type: ignore[arg-type]
        await done
        tolerance = timers.tolerance_s
        precise = timers.precise
        timers.close()
        return ran, early, tolerance, precise

    ran, early, tolerance, precise = _run(loop_name, main)  # type: ignore[misc]
    assert precise == (use_timerfd and timerfd_available())
    order = sorted(range(len(OFFSETS)), key=OFFSETS.__getitem__)
    if precise:
        assert ran == order  # sub-millisecond apart, still in order
        bound = 0.00055  # the lead (at most 0.5 ms) plus float rounding
    else:
        assert set(ran) == set(order)  # millisecond timers: ties within a millisecond may swap
        bound = tolerance + 0.0011  # uvloop rounds to the nearest ms of a truncated loop time
    assert max(early) <= bound, (early, tolerance)


@pytest.mark.skipif(not timerfd_available(), reason="no timerfd on this platform")
def test_cancelled_timers_do_not_run_and_close_releases_the_fd() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = PreciseTimers(loop)
        assert timers.precise
        fired: list[str] = []
        keep = timers.call_at(time.monotonic() + 0.004, lambda: fired.append("keep"))
        drop = timers.call_at(time.monotonic() + 0.002, lambda: fired.append("drop"))
        drop.cancel()
        assert timers.pending() == 1
        await asyncio.sleep(0.02)
        assert fired == ["keep"]
        keep.cancel()  # after it ran: a no-op
        fd = timers._fd.fd if timers._fd is not None else -1
        timers.call_at(time.monotonic() + 0.005, lambda: fired.append("after close"))
        timers.close()
        timers.close()  # idempotent
        with pytest.raises(OSError):
            os.fstat(fd)
        await asyncio.sleep(0.02)
        assert fired == ["keep"]

    _run("uvloop", main)


@pytest.mark.skipif(not timerfd_available(), reason="no timerfd on this platform")
def test_a_failing_callback_is_reported_and_the_others_still_run() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        timers = PreciseTimers(loop)
        fired: list[int] = []
        now = time.monotonic()

        def boom() -> None:
            raise RuntimeError("bug in one link")

        timers.call_at(now + 0.002, boom)
        timers.call_at(now + 0.002, lambda: fired.append(1))
        timers.call_at(now + 0.004, lambda: fired.append(2))
        await asyncio.sleep(0.02)
        timers.close()
        assert fired == [1, 2]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)

    _run("asyncio", main)
