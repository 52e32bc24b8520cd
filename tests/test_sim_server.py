"""The simulated replica over real HTTP on loopback: API shapes, streaming, cache, metrics.

Each test starts its own in-process replica on a free port (``SimReplica``) and talks to it with
aiohttp. Timing assertions compare two measurements of the same run, never a fixed threshold.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from control_support import HEADERS, TOKEN
from pytest_lbbench.sim.profile import DEFAULT_PROFILE, PROFILES, EngineProfile
from pytest_lbbench.protocol import REPLICA_HEADER
from pytest_lbbench.sim.server import ReplicaConfig, SimReplica
from pytest_lbbench.sim.tokenizer import DEFAULT_SYSTEM_PREAMBLE, tokenize

T = TypeVar("T")
BASE = PROFILES[DEFAULT_PROFILE]


def serve(
    body: Callable[..., Awaitable[T]],
    *profiles: EngineProfile,
    seed: int = 0,
    timeout_s: float = 60,
    engine_metrics: str = "sglang",
) -> T:
    """Start one replica per profile, run ``body(session, *replicas)``, stop everything."""

    async def main() -> T:
        replicas = [
            SimReplica(
                ReplicaConfig(
                    name=f"replica-{i}", profile=p, seed=seed, check_invariants=True,
                    engine_metrics=engine_metrics,
                ),
                control_token=TOKEN,
            )
            for i, p in enumerate(profiles)
        ]
        try:
            for r in replicas:
                await r.start()
            async with aiohttp.ClientSession() as session:
                return await asyncio.wait_for(body(session, *replicas), timeout_s)
        finally:
            for r in replicas:
                await r.close()

    return asyncio.run(main())


@dataclass
class Stream:
    """What a client saw of one streaming request."""

    status: int
    headers: dict[str, str]
    events: list[Any] = field(default_factory=list)  # parsed JSON chunks, then the string "[DONE]"
    start: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # perf_counter of every data event

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict)]

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start

    @property
    def final(self) -> dict[str, Any]:
        return self.chunks[-1]

    def text(self) -> str:
        out = []
        for c in self.chunks:
            choice = c["choices"][0]
            out.append(choice["delta"].get("content", "") if "delta" in choice else choice["text"])
        return "".join(out)


async def stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Stream:
    """POST a streaming request and record every SSE event with its arrival time."""
    start = time.perf_counter()
    async with session.post(url, json={**body, "stream": True}) as resp:
        result = Stream(status=resp.status, headers=dict(resp.headers), start=start)
        if resp.status != 200:
            result.events.append(await resp.json())
            return result
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line:
                continue
            assert line.startswith("data: "), line
            result.chunk_times.append(time.perf_counter())
            payload = line[len("data: ") :]
            result.events.append(payload if payload == "[DONE]" else json.loads(payload))
    return result


def chat(content: str | list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return {"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": messages, **extra}


def words(n: int, salt: str) -> str:
    return " ".join(f"{salt}{i % 97}" for i in range(n))


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{model_name="([^"]*)"\} (\S+)$')


def parse_metrics(text: str) -> dict[str, float]:
    """A strict reader of our exposition: HELP and TYPE precede each sample."""
    values: dict[str, float] = {}
    declared: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter"), line
            declared[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparsable metrics line: {line!r}"
        name, _, value = match.groups()
        assert name in declared, f"{name} has no # TYPE line"
        if declared[name] == "counter":
            assert name.endswith("_total"), name
        values[name] = float(value)
    return values


async def metrics(session: aiohttp.ClientSession, replica: SimReplica) -> dict[str, float]:
    async with session.get(replica.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse_metrics(await resp.text())


# ---------------------------------------------------------------------------------------------


def test_streaming_chat_format() -> None:
    profile = BASE.replace(time_scale=0.02)

    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        request = chat(
            words(300, "w"),
            max_tokens=50,
            stream_options={"include_usage": True},
            # Fields the sglang router adds; they must be ignored.
            no_stop_trim=False,
            skip_special_tokens=True,
            separate_reasoning=True,
            temperature=0.7,
        )
        s = await stream(session, replica.url + "/v1/chat/completions", request)
        assert s.status == 200
        assert s.headers["Content-Type"].startswith("text/event-stream")
        assert s.headers[REPLICA_HEADER] == "replica-0"
        assert s.events[-1] == "[DONE]" and s.events.count("[DONE]") == 1
        chunks = s.chunks
        first, tokens, final = chunks[0], chunks[1:-1], chunks[-1]
        assert first["object"] == "chat.completion.chunk"
        assert first["choices"][0]["delta"]["role"] == "assistant"
        assert first["choices"][0]["delta"]["content"], "the first chunk carries the first token"
        assert first["choices"][0]["finish_reason"] is None
        assert all(
            "role" not in c["choices"][0]["delta"] and c["choices"][0]["delta"]["content"] for c in tokens
        )
        assert len({c["id"] for c in chunks}) == 1
        assert final["choices"][0]["delta"] == {}
        assert final["choices"][0]["finish_reason"] in ("stop", "length")
        usage = final["usage"]
        n_out = len(chunks) - 1
        assert usage["completion_tokens"] == n_out <= 50
        # BOS, the template's system block (header 4, preamble, eot), user header (4), 300
        # one-token words, eot, assistant header (5: "assist" + "ant").
        system_block = 4 + len(tokenize(DEFAULT_SYSTEM_PREAMBLE)) + 1
        assert usage["prompt_tokens"] == 1 + system_block + 4 + 300 + 1 + 5
        assert usage["total_tokens"] == usage["prompt_tokens"] + n_out
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
        info = final["lbbench"]
        assert info["replica"] == "replica-0"
        assert info["arrival"] <= info["scheduled"] <= info["first_token"] <= info["finish"]
        assert info["queue_wait_s"] == pytest.approx(info["scheduled"] - info["arrival"])
        # The answer round-trips through the tokenizer (one chunk = one token).
        assert len(tokenize(s.text())) == n_out

        # Same request, not streamed: the same answer, a chat.completion object.
        async with session.post(
            replica.url + "/v1/chat/completions", json={**request, "stream": False}
        ) as resp:
            assert resp.status == 200 and resp.headers[REPLICA_HEADER] == "replica-0"
            full = await resp.json()
        assert full["object"] == "chat.completion"
        assert full["choices"][0]["message"] == {"role": "assistant", "content": s.text()}
        assert full["choices"][0]["finish_reason"] == final["choices"][0]["finish_reason"]
        assert full["usage"]["completion_tokens"] == n_out
        # The first request's prompt is now cached (all but the last prompt token is reused).
        assert full["usage"]["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
        assert full["lbbench"]["replica"] == "replica-0"

        # Without include_usage the final chunk has no usage, but still the lbbench times.
        plain = await stream(session, replica.url + "/v1/chat/completions", chat("hi", max_tokens=3))
        assert "usage" not in plain.final and "lbbench" in plain.final
        assert plain.final["choices"][0]["finish_reason"] in ("stop", "length")

    serve(body, profile)


def test_streaming_and_plain_completions() -> None:
    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        request = {"model": "m", "prompt": "Once upon a time", "max_tokens": 12, "ignore_eos": True}
        s = await stream(
            session, replica.url + "/v1/completions", {**request, "stream_options": {"include_usage": True}}
        )
        assert s.status == 200
        assert [c["object"] for c in s.chunks] == ["text_completion"] * 13
        assert all(c["choices"][0]["text"] for c in s.chunks[:-1])
        assert s.final["choices"][0]["finish_reason"] == "length"
        assert s.final["usage"]["completion_tokens"] == 12
        assert s.final["usage"]["prompt_tokens"] == 5  # BOS + 4 words
        async with session.post(replica.url + "/v1/completions", json=request) as resp:
            full = await resp.json()
        assert full["object"] == "text_completion"
        assert full["choices"][0]["text"] == s.text()

    serve(body, BASE.replace(time_scale=0.01))


def test_info_endpoints_and_errors() -> None:
    profile = BASE.replace(time_scale=0.01, max_context_tokens=500)

    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        async def get(path: str) -> Any:
            async with session.get(replica.url + path) as resp:
                assert resp.status == 200, path
                assert resp.headers[REPLICA_HEADER] == "replica-0", path
                return await resp.json() if resp.content_type == "application/json" else await resp.text()

        models = await get("/v1/models")
        model = "meta-llama/Llama-3.1-8B-Instruct"
        assert models["object"] == "list"
        assert models["data"][0] | {"created": 0} == {
            "id": model,
            "object": "model",
            "owned_by": "sglang",
            "root": model,
            "created": 0,
        }
        await get("/health")
        await get("/health_generate")
        for path in ("/get_server_info", "/server_info"):
            info = await get(path)
            assert info["model_path"] == info["served_model_name"] == model
            assert (info["dp_size"], info["tp_size"]) == (1, 1)
            assert info["max_total_num_tokens"] == profile.kv_capacity_tokens
            assert info["chunked_prefill_size"] == profile.chunked_prefill_tokens
            assert info["lbbench_profile"]["max_context_tokens"] == 500
        for path in ("/get_model_info", "/model_info"):
            assert await get(path) == {"model_path": model, "tokenizer_path": model, "is_generation": True}
        assert await get("/get_load") == [
            {"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}
        ]

        async def post_error(path: str, status: int, **kwargs: Any) -> str:
            async with session.post(replica.url + path, **kwargs) as resp:
                assert resp.status == status
                assert resp.headers[REPLICA_HEADER] == "replica-0"
                error = (await resp.json())["error"]
                assert error["code"] == status and error["type"]
                return str(error["message"])

        assert "not valid JSON" in await post_error("/v1/chat/completions", 400, data=b"{nope")
        assert "JSON object" in await post_error("/v1/chat/completions", 400, json=[1, 2])
        assert "messages" in await post_error("/v1/chat/completions", 400, json={"model": "m"})
        assert "role" in await post_error("/v1/chat/completions", 400, json={"messages": [{"content": "x"}]})
        assert "max_tokens" in await post_error("/v1/chat/completions", 400, json=chat("x", max_tokens="5"))
        assert "prompt" in await post_error("/v1/completions", 400, json={"prompt": 5})
        too_long = await post_error("/v1/chat/completions", 400, json=chat(words(600, "x"), stream=True))
        system_block = 4 + len(tokenize(DEFAULT_SYSTEM_PREAMBLE)) + 1
        assert "context length (500 tokens)" in too_long and f"{611 + system_block} tokens" in too_long
        async with session.get(replica.url + "/no/such/path") as resp:
            assert resp.status == 404 and resp.headers[REPLICA_HEADER] == "replica-0"
            assert (await resp.json())["error"]["code"] == 404

    serve(body, profile)


def test_prefix_cache_hit_lowers_ttft() -> None:
    profile = BASE.replace(time_scale=0.2)

    async def body(session: aiohttp.ClientSession, warm: SimReplica, cold: SimReplica) -> None:
        url = "/v1/chat/completions"
        options = {"max_tokens": 20, "stream_options": {"include_usage": True}}
        messages = [
            {"role": "system", "content": words(1500, "sys")},
            {"role": "user", "content": words(1500, "q")},
        ]
        turn1 = await stream(session, warm.url + url, chat(messages, **options))
        p1 = turn1.final["usage"]["prompt_tokens"]
        out1 = turn1.final["usage"]["completion_tokens"]
        messages += [{"role": "assistant", "content": turn1.text()}, {"role": "user", "content": "Why?"}]

        warm2 = await stream(session, warm.url + url, chat(messages, **options))
        cold2 = await stream(session, cold.url + url, chat(messages, **options))
        assert warm2.text() == cold2.text(), "same prompt, same seed: same answer on every replica"
        assert warm2.final["usage"]["prompt_tokens_details"]["cached_tokens"] == p1 + out1 - 1
        assert cold2.final["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        # The client sees it, and so does the replica's own accounting.
        assert warm2.ttft < 0.5 * cold2.ttft
        own = [s.final["lbbench"]["first_token"] - s.final["lbbench"]["scheduled"] for s in (warm2, cold2)]
        assert own[0] < 0.5 * own[1]

    serve(body, profile, profile)


def test_kv_capacity_evicts_earlier_prefixes() -> None:
    profile = BASE.replace(time_scale=0.01, kv_capacity_tokens=2500)

    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        url = replica.url + "/v1/chat/completions"

        async def cached(content: str) -> int:
            async with session.post(url, json=chat(content, max_tokens=8)) as resp:
                assert resp.status == 200
                return int((await resp.json())["usage"]["prompt_tokens_details"]["cached_tokens"])

        first = words(800, "first")
        assert await cached(first) == 0
        assert await cached(first) >= 800  # hit
        for i in range(6):  # 6 × ~800 tokens: far more than the 2500-token pool
            await cached(words(800, f"other{i}"))
        # Only the chat-template prefix every prompt shares (BOS, the system block, the user
        # header) is left of the first conversation.
        shared = 1 + 4 + len(tokenize(DEFAULT_SYSTEM_PREAMBLE)) + 1 + 4
        assert await cached(first) <= shared
        m = await metrics(session, replica)
        assert m["lbbench:evicted_tokens_total"] > 0
        assert m["lbbench:peak_occupied_tokens"] <= 2500
        assert m["lbbench:cache_tokens"] <= 2500

    serve(body, profile)


def test_metrics_report_queue_running_and_counters() -> None:
    """With ``engine_metrics="live"`` the gauges are the engine's state at every scrape."""
    profile = BASE.replace(time_scale=0.05, max_running_requests=2)

    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        request = chat(
            words(100, "m"), max_tokens=30, ignore_eos=True, stream_options={"include_usage": True}
        )
        streams = [
            asyncio.create_task(
                stream(session, replica.url + "/v1/chat/completions", {**request, "user": str(i)})
            )
            for i in range(6)
        ]
        seen_busy = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(t.done() for t in streams):
            m = await metrics(session, replica)
            async with session.get(replica.url + "/get_load") as resp:
                (load,) = await resp.json()
            if m["sglang:num_running_reqs"] == 2 and m["sglang:num_queue_reqs"] >= 1:
                seen_busy = (m, load)
                break
            await asyncio.sleep(0.005)
        assert seen_busy is not None, "never saw 2 running requests with a queue behind them"
        m, load = seen_busy
        assert m["sglang:token_usage"] > 0 and m["sglang:num_used_tokens"] > 0
        assert load["num_reqs"] == m["sglang:num_running_reqs"] + m["sglang:num_queue_reqs"]
        assert load["num_waiting_reqs"] == m["sglang:num_queue_reqs"]
        assert load["num_tokens"] > 0
        results = await asyncio.gather(*streams)
        assert all(r.final["usage"]["completion_tokens"] == 30 for r in results)
        m = await metrics(session, replica)
        assert m["sglang:num_running_reqs"] == m["sglang:num_queue_reqs"] == 0
        assert m["sglang:num_requests_total"] == 6
        assert m["sglang:generation_tokens_total"] == 180
        prompt = results[0].final["usage"]["prompt_tokens"]
        assert m["sglang:prompt_tokens_total"] == 6 * prompt
        cached = sum(r.final["usage"]["prompt_tokens_details"]["cached_tokens"] for r in results)
        assert cached > 0 and m["sglang:cached_tokens_total"] == cached
        assert m["sglang:cache_hit_rate"] == pytest.approx(cached / (6 * prompt))
        assert m["sglang:gen_throughput"] > 0
        assert m["sglang:token_usage"] == 0

    serve(body, profile, engine_metrics="live")


def test_decode_step_time_grows_with_the_batch() -> None:
    # Ten times the KV bytes per token makes the context term dominate, so the effect is large.
    profile = BASE.replace(time_scale=0.1, kv_bytes_per_token=BASE.kv_bytes_per_token * 10)

    async def gaps(session: aiohttp.ClientSession, replica: SimReplica, batch: int) -> float:
        request = chat(words(1000, "d"), max_tokens=40, ignore_eos=True)
        results = await asyncio.gather(
            *(
                stream(
                    session,
                    replica.url + "/v1/chat/completions",
                    {**request, "messages": [{"role": "user", "content": words(1000, f"b{i}x")}]},
                )
                for i in range(batch)
            )
        )
        all_gaps = [
            b - a for r in results for a, b in zip(r.chunk_times[:-2], r.chunk_times[1:-1], strict=True)
        ]
        return statistics.median(all_gaps)

    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        single = await gaps(session, replica, 1)
        batched = await gaps(session, replica, 16)
        predicted = profile.decode_step_ms(16 * 1020) / profile.decode_step_ms(1020)
        assert predicted > 2
        assert batched > 1.4 * single, (single, batched)

    serve(body, profile)


def test_client_disconnect_aborts_and_frees_kv() -> None:
    profile = BASE.replace(time_scale=0.05, max_running_requests=1)

    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        request = chat(words(500, "z"), max_tokens=2000, ignore_eos=True, stream=True)
        running = await session.post(replica.url + "/v1/chat/completions", json=request)
        await running.content.readline()  # the first token arrived: it is running
        # A second client queues behind it (headers come at once), then gives up before its first token.
        queued = await session.post(replica.url + "/v1/chat/completions", json={**request, "user": "2"})
        for _ in range(200):
            m = await metrics(session, replica)
            if m["sglang:num_queue_reqs"] == 1:
                break
            await asyncio.sleep(0.01)
        assert (m["sglang:num_running_reqs"], m["sglang:num_queue_reqs"]) == (1, 1)
        # The queued request is dropped at once, while it never wrote a byte and the other runs.
        queued.close()
        for _ in range(200):
            m = await metrics(session, replica)
            if m["lbbench:num_aborted_total"] == 1:
                break
            await asyncio.sleep(0.01)
        assert (m["sglang:num_running_reqs"], m["sglang:num_queue_reqs"]) == (1, 0)
        assert m["lbbench:num_aborted_total"] == 1
        running.close()  # drop the connection mid-stream
        for _ in range(200):
            m = await metrics(session, replica)
            if m["lbbench:num_aborted_total"] == 2:
                break
            await asyncio.sleep(0.01)
        assert m["lbbench:num_aborted_total"] == 2
        assert m["sglang:num_running_reqs"] == m["sglang:num_queue_reqs"] == 0
        assert m["sglang:num_used_tokens"] == 0
        assert m["sglang:num_requests_total"] == 0

    serve(body, profile, engine_metrics="live")


def test_sglang_gauges_change_only_at_logging_points_and_reset_restores_a_fresh_replica() -> None:
    profile = BASE.replace(time_scale=0.01, kv_capacity_tokens=3000)

    async def body(session: aiohttp.ClientSession, replica: SimReplica) -> None:
        url = replica.url + "/v1/chat/completions"
        running = await session.post(
            url, json=chat(words(100, "a"), max_tokens=1000, ignore_eos=True, stream=True)
        )
        await running.content.readline()  # first token: a's prefill batch was logged
        engine = replica.engine
        start = engine.stats().decode_iterations_total
        # 950 + 2000 tokens cannot be admitted while a runs: it waits in the queue.
        queued = await session.post(
            url, json=chat(words(950, "b"), max_tokens=2000, ignore_eos=True, stream=True)
        )
        for _ in range(200):
            if engine.stats().num_waiting == 1:
                break
            await asyncio.sleep(0.002)
        m = await metrics(session, replica)
        assert m["lbbench:live_num_queue_reqs"] == 1
        if engine.stats().decode_iterations_total // 40 == start // 40:
            assert m["sglang:num_queue_reqs"] == 0, "stale until the next log_decode_stats"
        target = (engine.stats().decode_iterations_total // 40 + 1) * 40 + 1
        while engine.stats().decode_iterations_total < target:
            await asyncio.sleep(0.002)
        m = await metrics(session, replica)
        assert m["sglang:num_queue_reqs"] == 1 and m["sglang:num_running_reqs"] == 1
        async with session.post(replica.url + "/lbbench/reset", headers=HEADERS) as resp:
            assert resp.status == 409
            assert "in flight" in (await resp.json())["error"]["message"]
        running.close()
        queued.close()
        for _ in range(500):
            if not engine.waiting and not engine.running:
                break
            await asyncio.sleep(0.002)
        async with session.post(replica.url + "/lbbench/reset", headers=HEADERS) as resp:
            assert resp.status == 200
            body_json = await resp.json()
        assert body_json["reset"] is True and body_json["cleared"]["num_aborted_total"] == 2
        m = await metrics(session, replica)
        for name in (
            "sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:prompt_tokens_total",
            "sglang:generation_tokens_total", "lbbench:cache_tokens", "lbbench:num_aborted_total",
            "lbbench:decode_iterations_total", "lbbench:engine_lag_seconds_total",
            "lbbench:engine_iterations_total", "lbbench:peak_occupied_tokens",
        ):
            assert m[name] == 0, name
        async with session.get(replica.url + "/get_server_info") as resp:
            info = await resp.json()
        assert info["lbbench"]["engine_metrics"] == "sglang"
        assert info["lbbench"]["engine_lag_seconds_total"] == 0
        assert info["context_length"] == 131072 and info["max_req_input_len"] == 2994

    serve(body, profile)
