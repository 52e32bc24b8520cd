"""How exactly the delay links hold each chunk, timerfd against the loop's timers, in one run.

Run with ``pytest benchmarks --lbbench-selfcheck -k link_precision`` (deselected unless asked
for). One uvloop loop holds a sender, a :class:`~pytest_lbbench.netem.link.DelayLink` and a
receiver; the sender writes its ``time.monotonic()`` stamp every 13.7-20.3 ms (so chunks never
queue behind each other) and the receiver subtracts it from its own stamp on arrival. The
excess over the link's one-way delay is what the link adds: its proxying (two loopback hops
and a loop iteration, the same for every delay) plus its timer's error. Measured for a 0.5 ms
intra-region hop and a 79.1 ms hop (us-east-2 to ap-northeast-1), for the timerfd timers
(default on Linux) and the loop's millisecond timers (``precise_timers=False``), rounds
interleaved so the machine's noise falls on both; plus a zero-delay link, the proxying alone.

A benchmark, not a timed test: it asserts only that every chunk arrived.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
import uvloop

from pytest_lbbench.collect import NOTE_KEY
from pytest_lbbench.netem.link import DelayLink
from pytest_lbbench.netem.timers import timerfd_available

DELAYS_S = (0.0005, 0.0791)
SENDS = 150  # per round
ROUNDS = 2


class _Receiver(asyncio.Protocol):
    def __init__(self, sink: list[float]) -> None:
        self.sink = sink
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        *stamps, self.buffer = self.buffer.split(b";")
        self.sink.extend(now - float(s) for s in stamps)


async def _measure(delay_s: float, precise: bool) -> list[float]:
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    server = await loop.create_server(lambda: _Receiver(arrivals), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with DelayLink("bench", ("127.0.0.1", port), delay_s, precise_timers=precise) as link:
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", link.port)
            await asyncio.sleep(4 * delay_s + 0.05)  # past the emulated handshake
            for i in range(SENDS):
                transport.write(f"{time.monotonic():.9f};".encode())
                await asyncio.sleep(0.0137 + (i % 7) * 0.0011)
            await asyncio.sleep(delay_s + 0.1)
            transport.close()
    finally:
        server.close()
    assert len(arrivals) == SENDS, f"{SENDS - len(arrivals)} chunks lost"
    return [1e3 * (a - delay_s) for a in arrivals[5:]]  # the first few warm the lead up


def _quantile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _row(name: str, excess: list[float]) -> str:
    ordered = sorted(excess)
    cells = " ".join(f"{_quantile(ordered, f):>6.3f}" for f in (0.1, 0.5, 0.9, 0.99))
    return f"{name:<28} {cells} {statistics.mean(ordered):>6.3f} {min(ordered):>7.3f}"


@pytest.mark.lbbench_selfcheck
def test_link_precision_timerfd_against_loop_timers(request: pytest.FixtureRequest) -> None:
    if not timerfd_available():
        pytest.skip("no timerfd on this platform: the links use the loop's timers")
    results: dict[str, list[float]] = {}

    async def main() -> None:
        results["zero delay (proxying only)"] = await _measure(0.0, True)
        for _ in range(ROUNDS):
            for delay in DELAYS_S:
                for precise in (True, False):
                    key = f"{delay * 1e3:g} ms, {'timerfd' if precise else 'loop timers'}"
                    results.setdefault(key, []).extend(await _measure(delay, precise))

    uvloop.run(main())
    lines = [f"delay-link excess over the one-way delay (ms), {SENDS} chunks x {ROUNDS} rounds per row",
             f"{'link, timers':<28} {'p10':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'mean':>6} {'min':>7}"]
    lines += [_row(name, excess) for name, excess in results.items()]
    request.node.user_properties.append((NOTE_KEY, ("lbbench delay-link precision", lines)))
    print("\n".join(lines))
    assert all(results.values()), "a row measured nothing"
