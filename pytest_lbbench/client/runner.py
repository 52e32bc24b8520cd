"""Closed-loop simulated users over aiohttp: the load generator of every backend.

Each simulated user goes through its conversations turn by turn; a turn is sent when the
previous answer has fully arrived, and the server's answer joins the history. At the deadline
no new turn starts; turns in flight finish (each bounded by the request timeout), so no
request is cut short by the benchmark itself. Every request produces one record, handed to a
sink the moment it completes (the CLI appends it to a partial-results file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from pytest_lbbench.client.loop_monitor import LoopLagMonitor
from pytest_lbbench.client.records import RequestRecord, served_by
from pytest_lbbench.workloads.base import Conversation, UserScript, WorkloadPlan

DEFAULT_REQUEST_TIMEOUT_S = 100.0  # the original client's timeout
DEFAULT_LAG_THRESHOLD_MS = 10.0
# After a failed turn a user pauses briefly, so a dead endpoint is not hammered in a hot loop.
FAILURE_BACKOFF_S = 0.1
# Large read buffer: aiohttp's 64 KiB default throttles long SSE streams (vllm-project/vllm#39963).
READ_BUFSIZE = 1 << 20

RecordSink = Callable[[RequestRecord], None]


@dataclass(frozen=True)
class ClientSettings:
    """How one client process drives one endpoint."""

    backend_url: str
    region: str
    duration_s: float
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    drain_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    lag_threshold_ms: float = DEFAULT_LAG_THRESHOLD_MS
    model: str | None = None
    ready_timeout_s: float = 30.0


@dataclass
class ClientRun:
    """What a finished client run hands back (the records went to the sink already)."""

    latency_s: float
    sent: int
    recorded: int
    model: str
    loop_lag: dict[str, Any] = field(default_factory=dict)


class EndpointNotReady(RuntimeError):
    """The endpoint did not answer ``GET /v1/models`` in time."""


async def discover_model(
    session: aiohttp.ClientSession, base_url: str, timeout_s: float
) -> str:
    """``data[0].id`` of ``GET /v1/models``, retried until ``timeout_s``.

    The body is parsed as JSON whatever the Content-Type: the sglang router omits it.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt"
    while time.monotonic() < deadline:
        try:
            async with session.get(
                f"{base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return str(json.loads(text)["data"][0]["id"])
                last_error = f"http {resp.status}: {text[:200]}"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)
    raise EndpointNotReady(
        f"{base_url}/v1/models did not answer within {timeout_s:.0f} s (last error: {last_error})"
    )


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    record: RequestRecord,
    timeout_s: float,
) -> str | None:
    """Send one streaming chat request and fill ``record``. Never raises (but re-raises
    cancellation after recording it); returns the answer text, or ``None`` on failure."""
    t0 = time.perf_counter()
    parts: list[str] = []
    last_chunk_at: float | None = None
    finished = False
    try:
        async with session.post(
            url, json=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            record.response_start = time.time()
            record.headers = {k: v for k, v in resp.headers.items()}
            record.replica, record.lbs = served_by(record.headers)
            if resp.status != 200:
                body = (await resp.text())[:300]
                record.failed = f"http {resp.status}: {body}"
                return None
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                now = time.perf_counter()
                if record.ttft is None:
                    record.ttft = now - t0
                    record.streaming_start = time.time()
                chunk = json.loads(data)
                choices = chunk.get("choices") or []
                if choices and not finished:
                    choice = choices[0]
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
                        if last_chunk_at is not None:
                            record.itl.append(round(now - last_chunk_at, 6))
                        last_chunk_at = now
                    if choice.get("finish_reason"):
                        finished = True
                        record.e2e_latency = now - t0
                        record.end = time.time()
                usage = chunk.get("usage")
                if usage:
                    record.input_tokens = usage.get("prompt_tokens")
                    record.output_tokens = usage.get("completion_tokens") or 0
                    details = usage.get("prompt_tokens_details") or {}
                    record.cached_tokens = details.get("cached_tokens")
                if chunk.get("lbbench"):
                    record.replica_timing = chunk["lbbench"]
            if not finished:
                record.failed = "stream ended without a finish_reason"
                return None
            return "".join(parts)
    except asyncio.TimeoutError:
        record.failed = "timeout"
    except asyncio.CancelledError:
        record.failed = "cancelled: drain timeout exceeded"
        raise
    except (aiohttp.ClientError, ValueError, OSError) as exc:
        record.failed = f"{type(exc).__name__}: {exc}"[:300]
    return None


async def _run_user(
    user: UserScript,
    plan: WorkloadPlan,
    settings: ClientSettings,
    session: aiohttp.ClientSession,
    model: str,
    deadline: float,
    sink: RecordSink,
    counter: list[int],
) -> None:
    url = f"{settings.backend_url}/v1/chat/completions"
    conversations: tuple[Conversation, ...] = user.conversations
    if not conversations:
        return
    while time.monotonic() < deadline:
        for conv_index, conv in enumerate(conversations):
            messages: list[dict[str, str]] = []
            for turn_index, text in enumerate(conv.user_turns):
                if time.monotonic() >= deadline:
                    return
                messages.append({"role": "user", "content": text})
                record = RequestRecord(
                    uid=settings.region,
                    hash_key=conv.user_key,
                    program_id=f"{settings.region}-{user.user_index}-{conv.conv_id}",
                    client_region=settings.region,
                    user_index=user.user_index,
                    conv_index=conv_index,
                    turn_index=turn_index,
                    start=time.time(),
                )
                payload = {
                    "model": model,
                    "messages": list(messages),
                    "max_tokens": plan.settings.max_tokens,
                    "temperature": plan.settings.temperature,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                counter[0] += 1
                try:
                    answer = await stream_chat(
                        session, url, payload, {"x-hash-key": conv.user_key}, record,
                        settings.request_timeout_s,
                    )
                finally:
                    sink(record)
                if answer is None:
                    # Without the server's answer the chat cannot go on: next conversation.
                    await asyncio.sleep(FAILURE_BACKOFF_S)
                    break
                messages.append({"role": "assistant", "content": answer})


async def run_client(plan: WorkloadPlan, settings: ClientSettings, sink: RecordSink) -> ClientRun:
    """Drive every user of ``plan`` against ``settings.backend_url`` until the deadline."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFSIZE) as session:
        model = settings.model or await discover_model(
            session, settings.backend_url, settings.ready_timeout_s
        )
        monitor = LoopLagMonitor()
        monitor.start()
        counter = [0]
        recorded = [0]

        def counting_sink(record: RequestRecord) -> None:
            recorded[0] += 1
            sink(record)

        started = time.perf_counter()
        deadline = time.monotonic() + settings.duration_s
        tasks = [
            asyncio.create_task(
                _run_user(user, plan, settings, session, model, deadline, counting_sink, counter)
            )
            for user in plan.users
        ]
        try:
            remaining = settings.duration_s + settings.drain_timeout_s
            _, pending = await asyncio.wait(tasks, timeout=remaining)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await monitor.stop()
        latency = time.perf_counter() - started
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # a bug in the client, not a failed request
        return ClientRun(
            latency_s=latency,
            sent=counter[0],
            recorded=recorded[0],
            model=model,
            loop_lag=monitor.summary(settings.lag_threshold_ms),
        )
