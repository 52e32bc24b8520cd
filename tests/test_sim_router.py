"""The real sglang-router accepts the simulated replica as a worker and streams through it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pytest_lbbench import procutil

pytest.importorskip("sglang_router")

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def start_router(tmp_path: Path, worker_url: str) -> tuple[procutil.ManagedProcess, str]:
    """Launch the router on free ports; retry if a port was taken in the meantime."""
    for attempt in range(3):
        port, prom_port = procutil.free_port(), procutil.free_port()
        argv = [
            sys.executable, "-m", "sglang_router.launch_router",
            "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", worker_url,
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom_port),
            "--log-level", "warn",
        ]  # fmt: skip
        proc = procutil.spawn(
            f"router-{attempt}", argv, log_path=tmp_path / f"router-{attempt}.log", wait_ready_line=False
        )
        time.sleep(0.3)
        if proc.alive():
            return proc, f"http://127.0.0.1:{port}"
        proc.stop()
    raise RuntimeError(f"sglang-router did not start; log:\n{proc.log_tail()}")


async def wait_ready(url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll ``/readiness`` (not ``/health``, which is 200 before any worker registers)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/readiness") as resp:
                    if resp.status == 200:
                        return dict(await resp.json(content_type=None))
                    last = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.2)
    raise TimeoutError(f"router at {url} not ready after {timeout_s:.0f} s (last: {last!r})")


async def stream_through(url: str) -> tuple[dict[str, str], list[Any]]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is a load balancer?"}],
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events: list[Any] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            headers = dict(resp.headers)
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    payload = line[len("data: ") :]
                    events.append(payload if payload == "[DONE]" else json.loads(payload))
    return headers, events


def test_sglang_router_routes_streaming_chat_to_the_simulated_replica(tmp_path: Path) -> None:
    replica = procutil.spawn(
        "sim",
        procutil.python_module_argv("pytest_lbbench.sim", "--name", "sim-0", "--time-scale", "0.05"),
        log_path=tmp_path / "sim.log",
    )
    router: procutil.ManagedProcess | None = None
    try:
        router, router_url = start_router(tmp_path, f"http://127.0.0.1:{replica.info['port']}")
        readiness = asyncio.run(wait_ready(router_url))
        assert readiness.get("healthy_workers", 1) >= 1
        headers, events = asyncio.run(stream_through(router_url))
        assert events[-1] == "[DONE]"
        chunks = [e for e in events if isinstance(e, dict)]
        tokens = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
        assert tokens and all(tokens)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        final = chunks[-1]
        assert final["choices"][0]["finish_reason"] in ("stop", "length")
        assert final["usage"]["completion_tokens"] == len(tokens)
        assert final["usage"]["prompt_tokens"] > 0
        assert "cached_tokens" in final["usage"]["prompt_tokens_details"]
        assert final["lbbench"]["replica"] == "sim-0"
        # Worker response headers pass through the router: the client learns the replica.
        assert {k.lower(): v for k, v in headers.items()}["x-lbbench-replica"] == "sim-0"
    finally:
        if router is not None:
            router.stop()
        replica.stop()
    assert not replica.alive() and (router is None or not router.alive())
    assert "Traceback" not in (replica.log_tail(200) or ""), replica.log_tail()
