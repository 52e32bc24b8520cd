"""Event-loop lag monitor: is the client itself distorting the latencies it measures?

A task sleeps a fixed interval and records how late it wakes up. When the client's loop is
saturated (too many users or chunks for one process), every timestamp it takes is late by
about that much, so the run is flagged "client-bound" instead of being trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from pytest_lbbench.stats import percentile

DEFAULT_INTERVAL_S = 0.01


@dataclass
class LoopLagMonitor:
    """Samples the running loop's wake-up lateness every ``interval_s`` seconds."""

    interval_s: float = DEFAULT_INTERVAL_S
    samples_s: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.samples_s.append(max(0.0, time.perf_counter() - before - self.interval_s))

    def summary(self, threshold_ms: float) -> dict[str, float | int | bool | None]:
        """p50/p99/max lag in ms, and ``client_bound`` when p99 exceeds ``threshold_ms``."""
        p50 = percentile(self.samples_s, 50)
        p99 = percentile(self.samples_s, 99)
        return {
            "samples": len(self.samples_s),
            "lag_p50_ms": None if p50 is None else p50 * 1e3,
            "lag_p99_ms": None if p99 is None else p99 * 1e3,
            "lag_max_ms": max(self.samples_s) * 1e3 if self.samples_s else None,
            "threshold_ms": threshold_ms,
            "client_bound": bool(p99 is not None and p99 * 1e3 > threshold_ms),
        }
