"""Replica "pull" gating: poll every replica's engine queue and mark it (un)available.

As in the original ``_probe_ie_queue``: all replicas are probed concurrently, the next round
starts ``max(0, interval − duration of the last round)`` after the previous one, the first
``sglang:num_queue_reqs`` sample (or vLLM's ``vllm:num_requests_waiting``) is handed to the LB
core (:meth:`.core.LbCore.on_engine_queue`: > 0 → unavailable, 0 → available), and a failed
probe leaves the state unchanged. Dispatching does not
touch availability, so a burst inside one probe window lands on the same replicas (faithful).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .lag import LoopLag
from .upstream import UpstreamError, UpstreamPool

__all__ = ["QUEUE_METRICS", "parse_queue_length", "probe_engine_queues", "probe_once"]

log = logging.getLogger(__name__)

QUEUE_METRICS: tuple[str, ...] = ("sglang:num_queue_reqs", "vllm:num_requests_waiting")


def parse_queue_length(text: str, names: tuple[str, ...] = QUEUE_METRICS) -> float | None:
    """Value of the first sample in Prometheus ``text`` whose metric is one of ``names``."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for name in names:
            if not line.startswith(name):
                continue
            rest = line[len(name):]
            if rest.startswith("{"):
                close = rest.rfind("}")
                if close < 0:
                    continue
                rest = rest[close + 1:]
            elif not rest[:1].isspace():
                continue  # a longer metric name that merely starts with ``name``
            parts = rest.split()
            if not parts:
                continue
            try:
                return float(parts[0])
            except ValueError:
                continue
    return None


async def _probe_one(
    pool: UpstreamPool, name: str, url: str, timeout_s: float, on_result: Callable[[str, float], None],
) -> None:
    # The lean client (:mod:`.upstream`), not aiohttp's: 4 replicas every 0.1 s through
    # aiohttp's ClientSession were about half of the LB's CPU per request.
    try:
        status, body = await pool.get(url, "/metrics", timeout_s)
    except (UpstreamError, asyncio.TimeoutError, OSError):
        return  # unchanged, as in the original
    if status != 200:
        return
    value = parse_queue_length(body.decode("utf-8", "replace"))
    if value is not None:
        on_result(name, value)


async def probe_once(
    pool: UpstreamPool, targets: list[tuple[str, str]], timeout_s: float,
    on_result: Callable[[str, float], None],
) -> None:
    """Probe every ``(name, url)`` once, concurrently; ``on_result(name, waiting)`` for each
    replica that answered with a queue length."""
    if targets:
        await asyncio.gather(*(_probe_one(pool, n, u, timeout_s, on_result) for n, u in targets))


async def probe_engine_queues(
    pool: UpstreamPool, targets: Callable[[], list[tuple[str, str]]],
    on_result: Callable[[str, float], None], interval_s: float, timeout_s: float,
    lag: LoopLag | None = None,
) -> None:
    """Run probe rounds over ``targets()`` forever (cancel the task to stop); ``lag`` records
    late wake-ups."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        try:
            await probe_once(pool, targets(), timeout_s, on_result)
        except Exception:  # pragma: no cover - a bug here must not stop gating for good
            log.exception("engine-queue probe round failed")
        pause = max(0.0, interval_s - (loop.time() - start))
        if lag is None:
            await asyncio.sleep(pause)
        else:
            await lag.sleep("engine_probe", pause)
