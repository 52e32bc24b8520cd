"""The engine model: admission, chunked prefill, batching, retraction, caching, abort.

These tests drive :class:`Engine` directly on an event loop (no HTTP) and check its own
accounting, not wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TypeVar
from collections.abc import Awaitable, Callable

import pytest

from pytest_lbbench.sim.engine import Engine, EngineBusy, EngineGauges, RequestRejected, RequestState, SimRequest
from pytest_lbbench.sim.profile import DEFAULT_PROFILE, PROFILES, EngineProfile
from pytest_lbbench.sim.tokenizer import apply_chat_template

T = TypeVar("T")

FAST = PROFILES[DEFAULT_PROFILE].replace(time_scale=0.01)


def run(profile: EngineProfile, body: Callable[[Engine], Awaitable[T]], *, seed: int = 0) -> T:
    """Run ``body(engine)`` with a started engine that checks its invariants every iteration."""

    async def main() -> T:
        engine = Engine(profile, seed=seed, check_invariants=True)
        engine.start()
        try:
            return await asyncio.wait_for(body(engine), timeout=60)
        finally:
            await engine.close()

    return asyncio.run(main())


def prompt_of(n_tokens: int, salt: str) -> list[str]:
    rng = random.Random(salt)
    return ["<|begin_of_text|>"] + [f" {salt}{rng.randrange(10_000)}"[:6] for _ in range(n_tokens - 1)]


def test_engine_never_exceeds_kv_capacity_under_load_and_every_request_completes() -> None:
    profile = FAST.replace(kv_capacity_tokens=3000, max_running_requests=64)
    rng = random.Random(3)
    shared = [prompt_of(rng.randint(50, 300), f"p{i}") for i in range(5)]

    async def body(engine: Engine) -> None:
        requests: list[SimRequest] = []
        for i in range(80):
            prompt = rng.choice(shared) + prompt_of(rng.randint(20, 300), f"r{i}")[1:]
            # ignore_eos makes requests grow past their admission reserve: that forces retraction.
            requests.append(engine.submit(prompt, rng.randint(30, 200), ignore_eos=i % 2 == 0))
            if i % 10 == 0:
                await asyncio.sleep(0.005)
        await asyncio.gather(*(r.wait_done() for r in requests))
        for r in requests:
            assert r.state is RequestState.FINISHED
            assert r.generated == len(r.answer) and r.output_tokens == r.answer
            assert r.cached_tokens is not None and 0 <= r.cached_tokens < len(r.prompt)
        stats = engine.stats()
        assert stats.num_requests_total == 80
        assert stats.peak_occupied_tokens <= profile.kv_capacity_tokens
        assert stats.num_retracted_total > 0, "the load should have forced retractions"
        assert stats.evicted_tokens_total > 0, "the load should have forced evictions"
        assert stats.cached_tokens_total > 0, "shared prefixes should have hit the cache"
        assert stats.num_running == stats.num_waiting == stats.used_tokens == 0
        assert engine.cache.reserved_tokens == 0 and engine.cache.protected_tokens == 0

    run(profile, body)


def test_chunked_prefill_splits_a_long_prompt_into_iterations() -> None:
    async def body(engine: Engine) -> None:
        req = engine.submit(prompt_of(5000, "long"), 3)
        await req.wait_done()
        stats = engine.stats()
        # ceil(5000 / 2048) = 3 prefill iterations, each of them paying the fixed overhead.
        assert stats.prefill_iterations_total == 3
        assert stats.prefill_tokens_computed_total == 5000
        assert stats.decode_iterations_total == 2  # 3 tokens: one from prefill, two decoded

    run(FAST, body)


def test_a_finished_turn_is_cached_for_the_next_turn() -> None:
    async def body(engine: Engine) -> None:
        messages = [{"role": "user", "content": "Describe the ocean in detail " * 40}]
        first_prompt = apply_chat_template(messages)
        first = engine.submit(first_prompt, 50)
        await first.wait_done()
        assert first.cached_tokens == 0
        messages += [
            {"role": "assistant", "content": "".join(first.output_tokens)},
            {"role": "user", "content": "And the mountains?"},
        ]
        second = engine.submit(apply_chat_template(messages), 50)
        await second.wait_done()
        # Everything but the answer's last token (never fed back, so it has no KV) was cached.
        assert second.cached_tokens == len(first_prompt) + first.generated - 1
        stats = engine.stats()
        assert (
            stats.prefill_tokens_computed_total
            == len(first_prompt) + len(second.prompt) - second.cached_tokens
        )

    run(FAST, body)


def test_same_prompt_same_answer_different_seed_different_answer() -> None:
    prompt = apply_chat_template([{"role": "user", "content": "Write a poem about rivers"}])

    async def answer(engine: Engine) -> list[str]:
        req = engine.submit(list(prompt), 1000)
        await req.wait_done()
        return req.output_tokens

    a = run(FAST, answer, seed=0)
    b = run(FAST, answer, seed=0)
    c = run(FAST, answer, seed=1)
    assert a == b
    assert a != c


def test_admission_is_fcfs_and_bounded_by_max_running_requests() -> None:
    profile = FAST.replace(max_running_requests=2)

    async def body(engine: Engine) -> None:
        reqs = [engine.submit(prompt_of(200, f"q{i}"), 40, ignore_eos=True) for i in range(5)]
        await reqs[0]._changed.wait()  # first token of the first request
        stats = engine.stats()
        assert (stats.num_running, stats.num_waiting) == (2, 3)
        await asyncio.gather(*(r.wait_done() for r in reqs))
        scheduled = [r.scheduled_wall for r in reqs]
        assert all(s is not None for s in scheduled)
        assert scheduled == sorted(scheduled)  # type: ignore[type-var]

    run(profile, body)


def test_abort_frees_kv_of_running_and_waiting_requests() -> None:
    profile = FAST.replace(max_running_requests=1)

    async def body(engine: Engine) -> None:
        running = engine.submit(prompt_of(1000, "a"), 500, ignore_eos=True)
        waiting = engine.submit(prompt_of(1000, "b"), 500, ignore_eos=True)
        async for _ in running.stream():
            break
        assert engine.cache.in_use_tokens >= 1000
        engine.abort(waiting)
        engine.abort(running)
        assert running.state is waiting.state is RequestState.ABORTED
        assert engine.cache.in_use_tokens == 0 and engine.cache.reserved_tokens == 0
        stats = engine.stats()
        assert stats.num_running == stats.num_waiting == 0 and stats.num_aborted_total == 2
        # The engine keeps serving afterwards.
        after = engine.submit(prompt_of(10, "c"), 5)
        await after.wait_done()
        assert after.generated == len(after.answer)

    run(profile, body)


def test_bad_requests_are_rejected_and_long_outputs_are_capped() -> None:
    profile = FAST.replace(max_context_tokens=1000, kv_capacity_tokens=5000)

    async def body(engine: Engine) -> None:
        with pytest.raises(
            RequestRejected, match=r"input \(1000 tokens\) is longer than the model's context length \(1000"
        ):
            engine.submit(prompt_of(1000, "x"), 10)
        with pytest.raises(RequestRejected, match="max_tokens"):
            engine.submit(prompt_of(10, "x"), 0)
        req = engine.submit(prompt_of(990, "y"), 500, ignore_eos=True)
        await req.wait_done()
        # SGLang's cap: max_req_len - input - 1, max_req_len = min(context - 1, pool - 1) = 999.
        assert req.generated == 8

    run(profile, body)


def test_admission_needs_the_whole_max_new_tokens_of_the_new_request() -> None:
    # SGLang: extend_input + min(max_new_tokens, 4096) must stay below the free + evictable pool
    # minus new_token_ratio × the remaining output of running requests.
    profile = FAST.replace(kv_capacity_tokens=3000)

    async def body(engine: Engine) -> None:
        a = engine.submit(prompt_of(100, "a"), 1000, ignore_eos=True)
        async for _ in a.stream():
            break
        # Next round: offset 0.7 × 999 ≈ 699; room 3000 - 101 - 699 ≈ 2200.
        fits = engine.submit(prompt_of(100, "b"), 2000, ignore_eos=True)  # 2100 < 2200
        await asyncio.sleep(0.05)
        assert fits.state is RequestState.RUNNING
        # Now a holds ~0.7 × its remaining and fits ~0.7 × 2000: a prompt of 100 + 1000 does not fit.
        blocked = engine.submit(prompt_of(100, "c"), 1000)
        small = engine.submit(prompt_of(10, "d"), 5)  # would fit, but FCFS: no overtaking
        await asyncio.sleep(0.05)
        assert (blocked.state, small.state) == (RequestState.WAITING, RequestState.WAITING)
        assert engine.batch_is_full
        await asyncio.gather(a.wait_done(), fits.wait_done(), blocked.wait_done(), small.wait_done())

    run(profile, body)


def test_a_failed_admission_is_not_retried_until_a_running_request_finishes() -> None:
    """SGLang sets running_batch.batch_is_full on NO_TOKEN and skips get_new_batch_prefill
    until the batch shrinks: the head waits even once it would fit."""
    profile = FAST.replace(kv_capacity_tokens=3000)

    async def body(engine: Engine) -> None:
        # Same round: a's whole max_new_tokens counts (1000), so b (1950) does not fit 3000-100-1000.
        a = engine.submit(prompt_of(100, "a"), 1000, ignore_eos=True)
        b = engine.submit(prompt_of(950, "b"), 1000, ignore_eos=True)
        async for _ in a.stream():
            break
        assert b.state is RequestState.WAITING and engine.batch_is_full
        # One decode step later b would fit (3000 - 101 - 0.7 × 999 ≈ 2200 > 1950), yet it waits.
        for _ in range(50):
            await asyncio.sleep(0.005)
            assert b.state is RequestState.WAITING
        await a.wait_done()
        await b.wait_done()
        assert a.finish_wall is not None and b.scheduled_wall is not None
        assert b.scheduled_wall >= a.finish_wall

    run(profile, body)

    async def control(engine: Engine) -> None:
        # The same b submitted one step later is admitted at once: the wait above was the flag.
        a = engine.submit(prompt_of(100, "a"), 1000, ignore_eos=True)
        async for _ in a.stream():
            break
        b = engine.submit(prompt_of(950, "b"), 1000, ignore_eos=True)
        async for _ in b.stream():
            break
        assert a.state is RequestState.RUNNING
        engine.abort(a)
        engine.abort(b)

    run(profile, control)


def test_new_token_ratio_decays_per_decode_step_to_the_floor() -> None:
    profile = FAST

    async def body(engine: Engine) -> None:
        assert engine.new_token_ratio == pytest.approx(0.7)
        req = engine.submit(prompt_of(20, "a"), 700, ignore_eos=True)
        while req.generated < 101:
            await asyncio.sleep(0.002)
        steps = engine.stats().decode_iterations_total
        assert engine.new_token_ratio == pytest.approx(0.7 - steps * (0.7 - 0.098) / 600)
        while req.generated < 650:
            await asyncio.sleep(0.002)
        assert engine.new_token_ratio == pytest.approx(0.098)  # the floor, 0.7 × 0.14
        await req.wait_done()
        await asyncio.sleep(0.01)
        assert engine.new_token_ratio == pytest.approx(0.7)  # idle: back to the initial ratio

    run(profile, body)


def test_a_retracted_request_goes_to_the_tail_of_the_queue() -> None:
    # An optimistic ratio (0.1, no decay) admits two growing requests that cannot both finish.
    profile = FAST.replace(kv_capacity_tokens=1200, init_new_token_ratio=0.1, min_new_token_ratio_factor=1.0)

    async def body(engine: Engine) -> None:
        a = engine.submit(prompt_of(600, "a"), 400, ignore_eos=True)
        async for _ in a.stream():
            break
        b = engine.submit(prompt_of(50, "b"), 400, ignore_eos=True)  # 450 < 1200 - 601 - 0.1 × 399
        async for _ in b.stream():
            break
        w = engine.submit(prompt_of(100, "w"), 500, ignore_eos=True)  # 600: does not fit now
        seen: list[list[SimRequest]] = []
        while b.retractions == 0:
            await asyncio.sleep(0)
            if w.state is not RequestState.WAITING:
                break
        seen.append(list(engine.waiting))
        # b has fewer output tokens than a, so it is retracted, and queues behind w.
        assert a.retractions == 0 and b.retractions == 1
        assert seen[0] == [w, b]
        await asyncio.gather(a.wait_done(), b.wait_done(), w.wait_done())
        assert b.output_tokens == b.answer and engine.stats().num_retracted_total >= 1

    run(profile, body)


def test_retraction_order_fewest_output_tokens_then_longest_prompt() -> None:
    async def main() -> None:
        engine = Engine(FAST)
        reqs = [engine.submit(prompt_of(n, f"r{n}"), 50) for n in (30, 60, 40)]
        for req, generated in zip(reqs, (5, 2, 2)):
            req.state = RequestState.RUNNING
            req.generated = generated
        engine.running = list(reqs)
        engine.waiting.clear()
        # The cache holds nothing, so only the mandatory first retraction happens... unless the
        # rest lacks 20 free slots each: a pool of FAST's size has them.
        engine._retract_decode()
        assert [r.retractions for r in reqs] == [0, 1, 0]  # 2 output tokens, 60-token prompt
        assert list(engine.waiting) == [reqs[1]]

    asyncio.run(main())


def test_tree_siblings_hit_the_prompt_cached_after_the_first_prefill() -> None:
    shared = prompt_of(1200, "question")

    async def body(engine: Engine) -> None:
        first = engine.submit(shared + prompt_of(30, "x")[1:], 200, ignore_eos=True)
        async for _ in first.stream():
            break  # its prefill is done; it decodes on
        second = engine.submit(shared + prompt_of(30, "y")[1:], 20)
        async for _ in second.stream():
            break
        assert first.state is RequestState.RUNNING
        assert second.cached_tokens is not None and second.cached_tokens >= len(shared)
        engine.abort(first)
        await second.wait_done()

    run(FAST, body)


def test_queue_gauge_lags_a_new_arrival_until_the_next_logging_point() -> None:
    profile = FAST.replace(kv_capacity_tokens=3000)

    def scenario(mode: str) -> tuple[int, int, int]:
        async def main() -> tuple[int, int, int]:
            engine = Engine(profile, check_invariants=True, engine_metrics=mode)
            engine.start()
            try:
                a = engine.submit(prompt_of(100, "a"), 1000, ignore_eos=True)
                async for _ in a.stream():
                    break
                start = engine.stats().decode_iterations_total
                b = engine.submit(prompt_of(950, "b"), 2000, ignore_eos=True)  # will not fit
                await asyncio.sleep(0.005)
                assert b.state is RequestState.WAITING
                before = engine.gauges().num_queue_reqs
                # The next decode log point: a multiple of 40 decode steps.
                target = (start // 40 + 1) * 40 + 1
                while engine.stats().decode_iterations_total < target:
                    await asyncio.sleep(0.001)
                after = engine.gauges().num_queue_reqs
                engine.abort(a)
                engine.abort(b)
                return before, after, len(engine.waiting)
            finally:
                await engine.close()

        return asyncio.run(main())

    before, after, _ = scenario("sglang")
    assert (before, after) == (0, 1)  # stale until log_decode_stats
    before, after, _ = scenario("live")
    assert (before, after) == (1, 1)


def test_reset_only_when_idle_and_back_to_a_fresh_state() -> None:
    async def body(engine: Engine) -> None:
        req = engine.submit(prompt_of(300, "a"), 200, ignore_eos=True)
        async for _ in req.stream():
            break
        with pytest.raises(EngineBusy, match="1 running"):
            engine.reset()
        await req.wait_done()
        cleared = engine.reset()
        assert cleared["num_requests_total"] == 1 and cleared["cache_tokens"] > 0
        stats = engine.stats()
        assert stats.cache_tokens == stats.num_requests_total == stats.generation_tokens_total == 0
        assert stats.decode_iterations_total == stats.peak_occupied_tokens == 0
        assert engine.gauges() == EngineGauges() and engine.new_token_ratio == pytest.approx(0.7)
        again = engine.submit(prompt_of(300, "a"), 5)
        await again.wait_done()
        assert again.cached_tokens == 0  # the cache was flushed

    run(FAST, body)


def test_an_iteration_that_straddles_a_reset_counts_for_the_engine_before_it() -> None:
    # CI once saw engine_lag_seconds_total > 0 right after a reset: the decode iteration of the
    # just-aborted requests was still sleeping, and on waking it counted its lateness (and its
    # step) into the fresh counters.
    async def body(engine: Engine) -> None:
        req = engine.submit(prompt_of(50, "a"), 400, ignore_eos=True)
        async for _ in req.stream():
            break
        engine.slowdown = 300.0  # the next steps take ~0.2 s each (0.7 ms at this time scale)
        steps = engine.stats().decode_iterations_total
        while engine.stats().decode_iterations_total < steps + 2:
            await asyncio.sleep(0.001)  # the second step after the change began: it is slow
        engine.abort(req)
        engine.reset()
        time.sleep(0.3)  # the host stalls past the sleeping step's deadline: it wakes up late
        await asyncio.sleep(0.05)  # it has woken up and ended; the engine is idle
        stats = engine.stats()
        assert stats.lag_seconds_total == stats.lag_max_seconds == 0
        assert stats.iterations_total == stats.decode_iterations_total == 0
        assert stats.generation_tokens_total == 0 and engine.gauges() == EngineGauges()

    run(FAST, body)


def test_lag_counters_move_under_an_artificial_stall() -> None:
    async def body(engine: Engine) -> None:
        req = engine.submit(prompt_of(50, "a"), 400, ignore_eos=True)
        async for _ in req.stream():
            break
        before = engine.stats()
        assert before.lag_max_seconds < 0.2
        time.sleep(0.4)  # the host stalls: the engine's next deadline is met ~0.4 s late
        while engine.stats().decode_iterations_total < before.decode_iterations_total + 3:
            await asyncio.sleep(0.001)
        after = engine.stats()
        assert after.lag_max_seconds >= 0.3
        assert after.lag_seconds_total - before.lag_seconds_total >= 0.3
        assert after.late_iterations_total > before.late_iterations_total
        assert after.clock_resyncs_total == before.clock_resyncs_total + 1
        engine.abort(req)

    run(FAST, body)


def test_a_sampling_seed_picks_one_of_many_answers_reproducibly() -> None:
    async def main() -> None:
        engine = Engine(PROFILES[DEFAULT_PROFILE], seed=3)
        prompt = apply_chat_template([{"role": "user", "content": "Propose a plan for 2+3."}])
        plain = [engine.submit(list(prompt), 64) for _ in range(2)]
        seeded = [engine.submit(list(prompt), 64, sampling_seed=k) for k in (0, 1, 0)]
        assert plain[0].answer == plain[1].answer  # greedy: one answer per prompt
        assert seeded[0].answer == seeded[2].answer  # same seed, same answer
        assert seeded[0].answer != seeded[1].answer  # another seed, another thought
        other = Engine(PROFILES[DEFAULT_PROFILE], seed=3).submit(list(prompt), 64, sampling_seed=1)
        assert other.answer == seeded[1].answer  # the same on every replica
        await engine.close()

    asyncio.run(main())
