"""An SGLang-like scheduler: the engine model behind the simulated replica.

The engine runs as one asyncio task and advances in *iterations*, as SGLang's scheduler does:

* **Admission** is FCFS from the waiting queue and bounded by KV memory: a request needs its
  uncached prompt tokens plus a reserve of ``new_token_reserve_ratio`` × its remaining
  ``max_new_tokens``, out of free + evictable slots minus what running requests have reserved.
  The head of the queue blocks the rest (no overtaking), and at most ``max_running_requests`` run.
* **Prefill first**: an iteration is a prefill batch whenever some prompt still needs computing
  (a continuing chunk, or admissible waiting requests); at most ``chunked_prefill_tokens`` new
  tokens per iteration, so a long prompt takes several iterations. Otherwise the iteration is a
  **decode step** in which every running request gets one token (continuous batching).
* **Iteration time** comes from the profile: prefill time of the batch's uncached tokens, decode
  time of the batch's total context. It is realised with ``asyncio.sleep`` against deadlines on
  the loop clock computed from the previous deadline, so sleep overshoot does not accumulate.
* **Retraction**: when a decode step cannot get one KV slot per request, the most recently
  admitted request goes back to the head of the queue (its KV is freed; it re-prefills later).
* **Prefix cache**: a finished request's tokens go into the radix cache (as SGLang does:
  prompt + output without the last token, whose KV was never computed), so the next turn of the
  conversation hits it.

The answer to a prompt is fixed at submission (:mod:`pytest_lbbench.sim.generation`); the
engine only decides *when* each token appears.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import math
import time
from dataclasses import dataclass
from collections.abc import AsyncIterator

from .generation import generate_answer
from .profile import EngineProfile
from .radix_cache import RadixCache, RadixNode
import contextlib

log = logging.getLogger(__name__)

# If the event loop falls this far behind the engine clock (a CPU stall), restart the clock from
# "now" instead of catching up with a burst of zero-length iterations.
_MAX_CLOCK_LAG_S = 0.25
# Throughput is measured over this window of recent decode iterations.
_THROUGHPUT_WINDOW_S = 10.0
_THROUGHPUT_SAMPLE_EVERY_S = 0.25


class RequestRejected(ValueError):
    """The engine cannot serve this request at all (too long, bad limits): an HTTP 400."""


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no more requests."""


class RequestAborted(RuntimeError):
    """A request ended without an answer (client gone, or the engine shut down)."""


class RequestState(enum.Enum):
    """Where a request is in the engine."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


class SimRequest:
    """One generation request as the engine tracks it; the server reads progress from it.

    Times ending in ``_wall`` are ``time.time()`` values (epoch seconds, wall clock, scaled model
    time when ``time_scale != 1``).
    """

    __slots__ = (
        "rid",
        "prompt",
        "answer",
        "target_finish_reason",
        "max_new_tokens",
        "generated",
        "state",
        "cached_tokens",
        "node",
        "private_tokens",
        "fill_len",
        "prefilled",
        "retractions",
        "arrival_wall",
        "scheduled_wall",
        "first_token_wall",
        "finish_wall",
        "error",
        "_changed",
    )

    def __init__(
        self,
        rid: str,
        prompt: list[str],
        answer: list[str],
        finish_reason: str,
        max_new_tokens: int,
    ) -> None:
        self.rid = rid
        self.prompt = prompt
        self.answer = answer
        self.target_finish_reason = finish_reason
        self.max_new_tokens = max_new_tokens
        self.generated = 0
        self.state = RequestState.WAITING
        #: Prefix-cache hit at the first admission (``None`` until admitted).
        self.cached_tokens: int | None = None
        self.node: RadixNode | None = None  # the locked prefix while running
        self.private_tokens = 0  # KV slots allocated outside the tree
        self.fill_len = 0  # tokens to have KV for when this admission's prefill ends
        self.prefilled = 0  # tokens of fill_len whose KV exists (cached + computed)
        self.retractions = 0
        self.arrival_wall = time.time()
        self.scheduled_wall: float | None = None
        self.first_token_wall: float | None = None
        self.finish_wall: float | None = None
        self.error: str | None = None
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        """Finished or aborted."""
        return self.state is RequestState.FINISHED or self.state is RequestState.ABORTED

    @property
    def output_tokens(self) -> list[str]:
        """The tokens generated so far."""
        return self.answer[: self.generated]

    @property
    def finish_reason(self) -> str | None:
        """``"stop"`` or ``"length"`` once finished, else ``None``."""
        return self.target_finish_reason if self.state is RequestState.FINISHED else None

    def timings(self) -> dict[str, float | None]:
        """The replica's own view of this request (wall-clock epoch seconds)."""
        queue_wait = None if self.scheduled_wall is None else self.scheduled_wall - self.arrival_wall
        return {
            "arrival": self.arrival_wall,
            "scheduled": self.scheduled_wall,
            "first_token": self.first_token_wall,
            "finish": self.finish_wall,
            "queue_wait_s": queue_wait,
        }

    async def stream(self) -> AsyncIterator[list[str]]:
        """Yield the newly generated tokens as they appear (several at once if the reader was
        slow); end when the request finishes, raise :class:`RequestAborted` if it is aborted.
        """
        sent = 0
        while True:
            if self.generated > sent:
                new = self.answer[sent : self.generated]
                sent = self.generated
                yield new
                continue
            if self.state is RequestState.FINISHED:
                return
            if self.state is RequestState.ABORTED:
                raise RequestAborted(self.error or "aborted")
            self._changed.clear()
            await self._changed.wait()

    async def wait_done(self) -> None:
        """Wait until the request finishes; raise :class:`RequestAborted` if it is aborted."""
        while not self.done:
            self._changed.clear()
            await self._changed.wait()
        if self.state is RequestState.ABORTED:
            raise RequestAborted(self.error or "aborted")

    def _notify(self) -> None:
        self._changed.set()


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's state and counters (what ``/metrics`` and ``/get_load`` show)."""

    num_waiting: int
    num_running: int
    kv_capacity_tokens: int
    #: KV slots running requests need (SGLang's ``num_used``: excludes evictable cache).
    used_tokens: int
    #: KV slots occupied at all (tree + reservations); never above the capacity.
    occupied_tokens: int
    cache_tokens: int
    evictable_tokens: int
    peak_occupied_tokens: int
    token_usage: float
    prompt_tokens_total: int
    cached_tokens_total: int
    generation_tokens_total: int
    num_requests_total: int
    num_aborted_total: int
    num_retracted_total: int
    evicted_tokens_total: int
    prefill_iterations_total: int
    decode_iterations_total: int
    prefill_tokens_computed_total: int
    clock_resyncs_total: int
    gen_throughput: float

    @property
    def cache_hit_rate(self) -> float:
        """Cumulative cached / prompt tokens of admitted requests."""
        return self.cached_tokens_total / self.prompt_tokens_total if self.prompt_tokens_total else 0.0


class Engine:
    """The simulated inference engine; create, :meth:`start` inside a running loop, then
    :meth:`submit` requests and read their progress; :meth:`close` when done.
    """

    def __init__(self, profile: EngineProfile, *, seed: int = 0, check_invariants: bool = False) -> None:
        self.profile = profile
        self.seed = seed
        #: Recount the whole cache after every iteration (slow; for tests).
        self.check_invariants = check_invariants
        self.cache = RadixCache(profile.kv_capacity_tokens)
        self.waiting: collections.deque[SimRequest] = collections.deque()
        self.running: list[SimRequest] = []  # in admission order: the last one is retracted first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._clock = 0.0
        self._ids = itertools.count()
        self._prompt_tokens_total = 0
        self._cached_tokens_total = 0
        self._generation_tokens_total = 0
        self._num_requests_total = 0
        self._num_aborted_total = 0
        self._num_retracted_total = 0
        self._prefill_iterations = 0
        self._decode_iterations = 0
        self._prefill_tokens_computed = 0
        self._clock_resyncs = 0
        self._throughput_samples: collections.deque[tuple[float, int]] = collections.deque()

    # ---- lifecycle ----

    def start(self) -> None:
        """Start the scheduler task on the running loop."""
        if self._task is not None:
            raise RuntimeError("engine already started")
        if self._closed:
            raise EngineClosed("engine is closed")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lbbench-sim-engine")

    async def close(self) -> None:
        """Stop the scheduler and abort every request still in it. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for req in [*self.running, *self.waiting]:
            self.abort(req, "engine shut down")

    # ---- requests ----

    def submit(
        self, prompt_tokens: list[str], max_new_tokens: int, *, ignore_eos: bool = False,
        sampling_seed: int | None = None,
    ) -> SimRequest:
        """Queue a request; raise :class:`RequestRejected` if it can never be served.

        ``max_new_tokens`` is capped so that prompt + output fits the context length and the KV
        pool, as SGLang caps it. ``sampling_seed`` (the request's ``seed``) picks one of many
        answers to the same prompt, as sampling with a seed does: without it every request with
        this prompt gets the same answer; with it, requests that differ only in their seed get
        different answers, each still the same on every replica.
        """
        if self._closed:
            raise EngineClosed("the replica is shutting down")
        profile = self.profile
        n_prompt = len(prompt_tokens)
        if n_prompt == 0:
            raise RequestRejected("the prompt is empty")
        if max_new_tokens < 1:
            raise RequestRejected(f"max_tokens must be at least 1, got {max_new_tokens}")
        if n_prompt >= profile.max_context_tokens:
            raise RequestRejected(
                f"The input ({n_prompt} tokens) is longer than the model's context length "
                f"({profile.max_context_tokens} tokens); shorten the prompt."
            )
        if n_prompt >= profile.kv_capacity_tokens:
            raise RequestRejected(
                f"The input ({n_prompt} tokens) does not fit this replica's KV cache "
                f"({profile.kv_capacity_tokens} tokens, profile {profile.name!r})."
            )
        limit = min(profile.max_context_tokens, profile.kv_capacity_tokens) - n_prompt
        max_new = min(max_new_tokens, limit)
        answer = generate_answer(
            prompt_tokens,
            seed=self.seed if sampling_seed is None else f"{self.seed}:{sampling_seed}",
            max_new_tokens=max_new,
            median_tokens=profile.output_median_tokens,
            sigma=profile.output_sigma,
            ignore_eos=ignore_eos,
        )
        req = SimRequest(f"{next(self._ids)}", prompt_tokens, answer.tokens, answer.finish_reason, max_new)
        self.waiting.append(req)
        self._wake.set()
        return req

    def abort(self, req: SimRequest, reason: str = "aborted by the client") -> None:
        """Remove a request wherever it is and free its KV; no-op if it is already done."""
        if req.state is RequestState.WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        elif req.state is RequestState.RUNNING:
            self._free_kv(req)
            self.running.remove(req)
        else:
            return
        req.state = RequestState.ABORTED
        req.error = reason
        self._num_aborted_total += 1
        req._notify()
        self._wake.set()

    def flush_cache(self) -> int:
        """Evict every unlocked prefix-cache entry; return the tokens evicted."""
        return self.cache.evict_all()

    # ---- stats ----

    def stats(self) -> EngineStats:
        """Current gauges and counters."""
        cache = self.cache
        return EngineStats(
            num_waiting=len(self.waiting),
            num_running=len(self.running),
            kv_capacity_tokens=cache.capacity,
            used_tokens=cache.in_use_tokens,
            occupied_tokens=cache.used_tokens,
            cache_tokens=cache.tree_tokens,
            evictable_tokens=cache.evictable_tokens,
            peak_occupied_tokens=cache.peak_used_tokens,
            token_usage=cache.in_use_tokens / cache.capacity,
            prompt_tokens_total=self._prompt_tokens_total,
            cached_tokens_total=self._cached_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
            num_requests_total=self._num_requests_total,
            num_aborted_total=self._num_aborted_total,
            num_retracted_total=self._num_retracted_total,
            evicted_tokens_total=cache.evicted_tokens_total,
            prefill_iterations_total=self._prefill_iterations,
            decode_iterations_total=self._decode_iterations,
            prefill_tokens_computed_total=self._prefill_tokens_computed,
            clock_resyncs_total=self._clock_resyncs,
            gen_throughput=self._gen_throughput(),
        )

    def _gen_throughput(self) -> float:
        samples = self._throughput_samples
        if not samples:
            return 0.0
        now = time.time()
        while len(samples) > 1 and now - samples[0][0] > _THROUGHPUT_WINDOW_S:
            samples.popleft()
        t0, count0 = samples[0]
        span = now - t0
        return (self._generation_tokens_total - count0) / span if span > 0 else 0.0

    # ---- the scheduler ----

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.time()
        try:
            while True:
                if not self.waiting and not self.running:
                    self._wake.clear()
                    await self._wake.wait()
                    # Idle time is not model time: the next iteration starts now.
                    self._clock = loop.time()
                    continue
                now = loop.time()
                if now - self._clock > _MAX_CLOCK_LAG_S:
                    self._clock = now
                    self._clock_resyncs += 1
                batch = self._schedule_prefill()
                if batch:
                    await self._run_prefill(batch)
                elif self.running:
                    await self._run_decode()
                else:
                    # Waiting requests, nothing running, and the head still does not fit: only
                    # possible if a request can never fit. Fail it rather than spin.
                    head = self.waiting[0]
                    log.error("request %s can never be admitted; aborting it", head.rid)
                    self.abort(head, "request does not fit the replica's KV cache")
                if self.check_invariants:
                    self._check()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug; make it loud, and fail every request
            log.exception("simulated engine crashed")
            self._closed = True
            for req in [*self.running, *self.waiting]:
                self.abort(req, "simulated engine crashed")
            raise

    async def _sleep_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay = deadline - loop.time()
        # Always yield once, so request handlers run even when the engine is behind.
        await asyncio.sleep(delay if delay > 0 else 0)
        self._clock = deadline

    def _decode_reserve(self, req: SimRequest) -> int:
        return math.ceil(self.profile.new_token_reserve_ratio * (req.max_new_tokens - req.generated))

    def _schedule_prefill(self) -> list[tuple[SimRequest, int]]:
        """Choose this iteration's prefill work: ``[(request, new tokens to compute)]``."""
        profile = self.profile
        budget = profile.chunked_prefill_tokens
        batch: list[tuple[SimRequest, int]] = []
        # A prompt already being chunked continues first (SGLang's chunked_req).
        for req in self.running:
            remaining = req.fill_len - req.prefilled
            if remaining > 0:
                take = min(remaining, budget)
                batch.append((req, take))
                budget -= take
                if budget == 0:
                    return batch
        if not self.waiting or len(self.running) >= profile.max_running_requests:
            return batch
        cache = self.cache
        reserved = sum(self._decode_reserve(r) for r in self.running)
        while self.waiting and budget > 0 and len(self.running) < profile.max_running_requests:
            req = self.waiting[0]
            # A retracted request re-prefills what it had generated too.
            fill = req.prompt if req.generated == 0 else req.prompt + req.answer[: req.generated]
            # At least one token is always computed, as in SGLang (the logits come from it).
            matched, node = cache.match_prefix(fill, max_len=len(fill) - 1)
            # Lock before measuring: the matched prefix stops being evictable room.
            cache.lock(node)
            uncached = len(fill) - matched
            reserve = self._decode_reserve(req)
            if uncached + reserve > cache.available_tokens - reserved:
                cache.unlock(node)
                break  # FCFS: the head blocks the queue until memory frees up
            allocated = cache.alloc(uncached)
            assert allocated, "admission checked the room"
            self.waiting.popleft()
            req.state = RequestState.RUNNING
            req.node = node
            req.private_tokens = uncached
            req.fill_len = len(fill)
            req.prefilled = matched
            if req.cached_tokens is None:
                req.cached_tokens = min(matched, len(req.prompt))
                self._prompt_tokens_total += len(req.prompt)
                self._cached_tokens_total += req.cached_tokens
            self.running.append(req)
            reserved += reserve
            take = min(uncached, budget)
            batch.append((req, take))
            budget -= take
        return batch

    async def _run_prefill(self, batch: list[tuple[SimRequest, int]]) -> None:
        new_tokens = sum(take for _, take in batch)
        duration = self.profile.prefill_ms(new_tokens) / 1000.0 * self.profile.time_scale
        start_wall = time.time()
        for req, _ in batch:
            if req.scheduled_wall is None:
                req.scheduled_wall = start_wall
        self._prefill_iterations += 1
        self._prefill_tokens_computed += new_tokens
        await self._sleep_until(self._clock + duration)
        end_wall = time.time()
        for req, take in batch:
            if req.state is not RequestState.RUNNING:
                continue  # aborted while the iteration ran
            req.prefilled += take
            if req.prefilled >= req.fill_len:
                # The last prefill chunk yields the next token, as on a real engine.
                self._emit_token(req, end_wall)

    async def _run_decode(self) -> None:
        cache = self.cache
        batch = list(self.running)
        # One new KV slot per request; retract the newest requests until that fits.
        while len(batch) > 1 and cache.available_tokens < len(batch):
            self._retract(batch.pop())
        if not cache.alloc(len(batch)):  # pragma: no cover - submit() caps lengths to capacity
            raise RuntimeError("a single request does not fit the KV cache")
        context = 0
        for req in batch:
            req.private_tokens += 1
            context += len(req.prompt) + req.generated
        duration = self.profile.decode_step_ms(context) / 1000.0 * self.profile.time_scale
        self._decode_iterations += 1
        await self._sleep_until(self._clock + duration)
        end_wall = time.time()
        for req in batch:
            if req.state is RequestState.RUNNING:
                self._emit_token(req, end_wall)
        samples = self._throughput_samples
        if not samples or end_wall - samples[-1][0] >= _THROUGHPUT_SAMPLE_EVERY_S:
            samples.append((end_wall, self._generation_tokens_total))
            while len(samples) > 1 and end_wall - samples[0][0] > _THROUGHPUT_WINDOW_S:
                samples.popleft()

    def _emit_token(self, req: SimRequest, wall: float) -> None:
        req.generated += 1
        self._generation_tokens_total += 1
        if req.first_token_wall is None:
            req.first_token_wall = wall
        if req.generated >= len(req.answer):
            self._finish(req, wall)
        else:
            req._notify()

    def _finish(self, req: SimRequest, wall: float) -> None:
        # KV exists for prompt + output minus the last token (never fed back); cache exactly that.
        sequence = req.prompt + req.answer[: req.generated - 1] if req.generated > 1 else req.prompt
        self.cache.insert(sequence, reserved_tokens=req.private_tokens)
        req.private_tokens = 0
        assert req.node is not None
        self.cache.unlock(req.node)
        req.node = None
        self.running.remove(req)
        req.state = RequestState.FINISHED
        req.finish_wall = wall
        self._num_requests_total += 1
        req._notify()

    def _retract(self, req: SimRequest) -> None:
        self._free_kv(req)
        self.running.remove(req)
        req.state = RequestState.WAITING
        req.prefilled = 0
        req.fill_len = 0
        req.retractions += 1
        self._num_retracted_total += 1
        # Back to the head: it was admitted before everything still waiting.
        self.waiting.appendleft(req)

    def _free_kv(self, req: SimRequest) -> None:
        self.cache.release(req.private_tokens)
        req.private_tokens = 0
        if req.node is not None:
            self.cache.unlock(req.node)
            req.node = None

    def _check(self) -> None:
        self.cache.check_invariants()
        private = sum(r.private_tokens for r in self.running)
        if private != self.cache.reserved_tokens:
            raise AssertionError(
                f"requests hold {private} private tokens, cache reserved {self.cache.reserved_tokens}"
            )
