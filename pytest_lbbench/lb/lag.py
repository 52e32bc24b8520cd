"""Host-lag telemetry: how late an LB's (or gateway's) periodic loops wake up.

Every periodic loop of the LB (the 10 ms queue tick, the steal loop, the engine-queue and peer
``/conf`` probes) sleeps through :meth:`LoopLag.sleep`, which records how much later than asked
the loop woke. On an idle host that is asyncio's own rounding (its selector timeout is in whole
milliseconds, so a wake-up can be up to ~1 ms late by design); beyond that, the event loop was
busy or the process did not get a core, i.e. the host could not keep up and model time
stretched. Only lateness beyond :data:`PRECISION_S` counts, as the delay links count only what
lies beyond their own precision.

``/conf`` shows :meth:`LoopLag.snapshot` as ``"lag"`` (``ticks``, ``late_ticks``,
``tick_late_s_total``, ``tick_late_max_s`` over all loops, plus a per-loop breakdown under
``"loops"``); ``POST /lbbench/reset`` zeroes it. ``pytest_lbbench.hostlag`` reads those keys.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["PRECISION_S", "LoopLag"]

#: Lateness a loop may show without counting as late: asyncio rounds its selector timeout up to
#: whole milliseconds (``BaseEventLoop._run_once``), so up to 1 ms is the clock, not the host.
PRECISION_S = 0.001


@dataclass
class _Counter:
    ticks: int = 0
    late_ticks: int = 0
    late_s_total: float = 0.0
    late_max_s: float = 0.0

    def add(self, late_s: float) -> None:
        self.ticks += 1
        if late_s > 0.0:
            self.late_ticks += 1
            self.late_s_total += late_s
            self.late_max_s = max(self.late_max_s, late_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ticks": self.ticks,
            "late_ticks": self.late_ticks,
            "tick_late_s_total": round(self.late_s_total, 6),
            "tick_late_max_s": round(self.late_max_s, 6),
        }


class LoopLag:
    """Lateness counters per named loop, since start or the last :meth:`reset`."""

    def __init__(self, precision_s: float = PRECISION_S) -> None:
        self.precision_s = precision_s
        self._loops: dict[str, _Counter] = {}
        self.since = time.time()

    def record(self, loop: str, lateness_s: float) -> None:
        """Count one wake-up of ``loop`` that came ``lateness_s`` after it was due."""
        self._loops.setdefault(loop, _Counter()).add(max(0.0, lateness_s - self.precision_s))

    async def sleep(self, loop: str, seconds: float) -> None:
        """``asyncio.sleep(seconds)``, recording how late the wake-up came."""
        clock = asyncio.get_running_loop()
        due = clock.time() + max(0.0, seconds)
        await asyncio.sleep(seconds)
        self.record(loop, clock.time() - due)

    def reset(self) -> None:
        """Zero every counter (an experiment starts)."""
        self._loops.clear()
        self.since = time.time()

    def snapshot(self) -> dict[str, Any]:
        """Totals over all loops plus ``loops: {name: counters}`` and the precision used."""
        total = _Counter()
        for counter in self._loops.values():
            total.ticks += counter.ticks
            total.late_ticks += counter.late_ticks
            total.late_s_total += counter.late_s_total
            total.late_max_s = max(total.late_max_s, counter.late_max_s)
        return {
            **total.as_dict(),
            "precision_s": self.precision_s,
            "since": self.since,
            "loops": {name: c.as_dict() for name, c in sorted(self._loops.items())},
        }
