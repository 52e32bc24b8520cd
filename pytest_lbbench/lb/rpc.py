"""The LB↔LB control calls, each bounded by a timeout (the original had none, and its latency
check retried forever): ``GET /conf``, ``POST /steal-request`` and the ``GET /sky-lb-health``
latency check. The HTTP shell (:mod:`.server`) runs them for the core (:mod:`.core`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from pytest_lbbench.protocol import LB_HEALTH_PATH

__all__ = ["fetch_conf", "measure_latency", "post_steal"]

log = logging.getLogger(__name__)

_CALL_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)


async def fetch_conf(
    session: aiohttp.ClientSession, url: str, timeout_s: float
) -> dict[str, Any] | None:
    """``GET <url>/conf``; None on any failure (logged at debug level)."""
    try:
        async with session.get(
            url.rstrip("/") + "/conf", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                return None
            data = await resp.json(content_type=None)
    except _CALL_ERRORS as exc:
        log.debug("GET %s/conf failed: %r", url, exc)
        return None
    return data if isinstance(data, dict) else None


async def post_steal(
    session: aiohttp.ClientSession, url: str, num_steal: int, source: str, timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> int | None:
    """``POST <url>/steal-request`` (``headers``: the run's secret); the victim's
    ``remaining_to_steal``, or None on failure."""
    try:
        async with session.post(
            url.rstrip("/") + "/steal-request",
            json={"num_steal": num_steal, "source_lb_url": source},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status != 200:
                log.debug("steal request to %s answered %d", url, resp.status)
                return None
            data = await resp.json(content_type=None)
    except _CALL_ERRORS as exc:
        log.debug("steal request to %s failed: %r", url, exc)
        return None
    remaining = data.get("remaining_to_steal") if isinstance(data, dict) else None
    if isinstance(remaining, bool) or not isinstance(remaining, int):
        return None
    return max(0, min(num_steal, remaining))


async def measure_latency(
    session: aiohttp.ClientSession, url: str, timeout_s: float, attempts: int
) -> float:
    """Seconds of one successful ``GET <url>/sky-lb-health``; ``inf`` after ``attempts`` failures."""
    loop = asyncio.get_running_loop()
    for attempt in range(1, attempts + 1):
        start = loop.time()
        try:
            async with session.get(
                url.rstrip("/") + LB_HEALTH_PATH, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    return loop.time() - start
        except _CALL_ERRORS as exc:
            log.debug("latency check of %s, attempt %d/%d: %r", url, attempt, attempts, exc)
        if attempt < attempts:
            await asyncio.sleep(min(timeout_s, 0.1 * attempt))
    log.warning("latency check of %s failed %d times; ordering it last", url, attempts)
    return math.inf
