"""Poll every component of a system once a second and append one JSON line per tick.

The line keeps the original ``queue_fetcher`` shape — ``{"time": <epoch>, "<lb url>": {<the
/conf object>, "raw_queue_size": …}, …}`` — so the authors' plotting code reads it, and adds
the replicas (``kind: "replica"``: queue, running, KV usage, cache hit rate from ``/metrics``),
the sglang-router (``kind: "sglang_router"``: its ``/workers`` view), gateways (``/conf``) and a
user's balancer (``kind: "custom"``: every sample of its Prometheus ``/metrics``, if it has one).
All targets are polled concurrently (the original polled one after another, so its
"snapshot" was skewed across LBs), each with a timeout; a failed poll is recorded as
``{"error": …}`` for that target and never stops the poller. No pytest import here.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import IO, Any

import aiohttp

from pytest_lbbench.prometheus import parse_samples

KINDS = ("sky_lb", "replica", "sglang_router", "gateway", "custom")
#: At most this many samples of a custom balancer's /metrics per tick (a line stays small).
MAX_CUSTOM_SAMPLES = 200

REPLICA_GAUGES = {
    "sglang:num_queue_reqs": "num_queue_reqs",
    "sglang:num_running_reqs": "num_running_reqs",
    "sglang:token_usage": "token_usage",
    "sglang:cache_hit_rate": "cache_hit_rate",
    "sglang:gen_throughput": "gen_throughput",
    # vLLM's names for the same gauges (a --replica-url replica may be vLLM): v1 and v0.
    "vllm:num_requests_waiting": "num_queue_reqs",
    "vllm:num_requests_running": "num_running_reqs",
    "vllm:kv_cache_usage_perc": "token_usage",
    "vllm:gpu_cache_usage_perc": "token_usage",
    "vllm:gpu_prefix_cache_hit_rate": "cache_hit_rate",
}


@dataclass(frozen=True)
class Target:
    """One component to poll."""

    name: str
    url: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"target {self.name!r}: unknown kind {self.kind!r}; valid: {', '.join(KINDS)}")


async def _poll_one(session: aiohttp.ClientSession, target: Target, timeout_s: float) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        if target.kind == "replica":
            async with session.get(f"{target.url}/metrics", timeout=timeout) as resp:
                samples = parse_samples(await resp.text())
            data: dict[str, Any] = {
                short: samples[full] for full, short in REPLICA_GAUGES.items() if full in samples
            }
        elif target.kind == "custom":
            async with session.get(f"{target.url}/metrics", timeout=timeout) as resp:
                if resp.status == 200:
                    samples = parse_samples(await resp.text())
                    data = {"metrics": dict(list(samples.items())[:MAX_CUSTOM_SAMPLES])}
                else:  # no /metrics: say so once per tick, cheaply
                    data = {"metrics": None, "status": resp.status}
        elif target.kind == "sglang_router":
            async with session.get(f"{target.url}/workers", timeout=timeout) as resp:
                data = {"workers": json.loads(await resp.text())}
        else:
            async with session.get(f"{target.url}/conf", timeout=timeout) as resp:
                data = json.loads(await resp.text())
            if target.kind == "sky_lb" and "queue_size" in data:
                data["raw_queue_size"] = data["queue_size"]  # as the original fetcher did
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        data = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    data["name"] = target.name
    data["kind"] = target.kind
    return data


async def poll_forever(
    targets: list[Target], out: IO[str], interval_s: float = 1.0, stop: asyncio.Event | None = None
) -> int:
    """Append one line per ``interval_s`` to ``out`` until ``stop`` is set; returns the line count."""
    stop = stop or asyncio.Event()
    lines = 0
    timeout_s = max(0.1, interval_s * 0.8)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        next_tick = time.monotonic()
        while not stop.is_set():
            stamp = time.time()
            results = await asyncio.gather(*(_poll_one(session, t, timeout_s) for t in targets))
            line: dict[str, Any] = {"time": stamp}
            for target, data in zip(targets, results):
                line[target.url] = data
            out.write(json.dumps(line) + "\n")
            out.flush()
            lines += 1
            next_tick += interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # a slow round: skip ahead instead of bursting to catch up
                next_tick = time.monotonic()
                delay = 0
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
    return lines

