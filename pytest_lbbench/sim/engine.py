"""An SGLang-0.4.5-like scheduler: the engine model behind the simulated replica.

The engine runs as one asyncio task and advances in *iterations*, as SGLang's scheduler does.
The SGLang 0.4.5 tag is not in the search corpus; the rules below were read from the stored
versions nearest to it (a 0.4.4/0.4.5-era fork of ``schedule_policy.py`` with
``TokenToKVPoolAllocator`` and ``add_chunked_req``, and later upstream ``scheduler.py`` /
``schedule_batch.py``), function by function. Each rule's docstring names the function.

* **Admission** (:meth:`Engine._schedule_prefill`, ``Scheduler.get_new_batch_prefill`` +
  ``PrefillAdder.add_one_req``): FCFS; a request needs its uncached prompt plus its whole
  ``max_new_tokens`` (clipped at ``CLIP_MAX_NEW_TOKENS_ESTIMATION``) below the free + evictable
  pool minus ``new_token_ratio`` × the clipped remaining output of every running request. When
  it fails the scheduler sets ``batch_is_full`` and does not try again until a running request
  leaves the batch (finishes, aborts, or is retracted).
* **new_token_ratio** starts at ``init_new_token_ratio``, falls by ``new_token_ratio_decay`` per
  decode step to ``min_new_token_ratio`` (``Scheduler.update_running_batch``), is set to
  ``retract_decode``'s estimate on a retraction, and back to the initial value when idle
  (``Scheduler.event_loop_normal``).
* **Prefill first**: an iteration is a prefill batch whenever some prompt still needs computing
  (the chunked request, or admissible waiting requests); at most ``chunked_prefill_tokens`` new
  tokens per iteration. Otherwise it is a **decode step** of every running request.
* **Prefix cache after prefill** (``RadixCache.cache_unfinished_req``, called from
  ``Scheduler.process_batch_result_prefill``): a prompt's KV enters the tree as soon as it is
  computed, so a concurrent request sharing it hits it; at the end ``cache_finished_req`` adds
  the output (minus its last token, whose KV was never computed).
* **Retraction** (``ScheduleBatch.retract_decode``): when a decode step has no room for one KV
  slot per request, requests with the fewest output tokens (longest prompt on ties) go to the
  *tail* of the waiting queue until the rest have room for ``retract_decode_steps`` steps each.
* **Gauges** (``sglang:num_queue_reqs`` etc.) are set only at SGLang's logging points: after a
  prefill batch is formed (``log_prefill_stats``), every ``decode_log_interval`` decode steps
  (``log_decode_stats``) and every 30 s when idle (``check_memory``). ``engine_metrics="live"``
  makes them live values instead.
* **Iteration time** comes from the profile. It is realised with ``asyncio.sleep`` against
  deadlines on the loop clock computed from the previous deadline, so sleep overshoot does not
  accumulate; how late each deadline was is counted (the host-lag telemetry).

The answer to a prompt is fixed at submission (:mod:`pytest_lbbench.sim.generation`); the
engine only decides *when* each token appears.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import AsyncIterator

from .generation import generate_answer
from .profile import EngineProfile
from .radix_cache import RadixCache, RadixNode
import contextlib

log = logging.getLogger(__name__)

# If the event loop falls this far behind the engine clock (a CPU stall), restart the clock from
# "now" instead of catching up with a burst of zero-length iterations.
_MAX_CLOCK_LAG_S = 0.25
# An iteration that ends this much after its deadline counts as late (asyncio's own overshoot
# is well below it); every lateness is summed regardless.
_LATE_ITERATION_S = 0.005
#: ``engine_metrics`` values: gauges as SGLang sets them, or live values.
ENGINE_METRICS = ("sglang", "live")
# Throughput is measured over this window of recent decode iterations.
_THROUGHPUT_WINDOW_S = 10.0
_THROUGHPUT_SAMPLE_EVERY_S = 0.25


class RequestRejected(ValueError):
    """The engine cannot serve this request at all (too long, bad limits): an HTTP 400."""


class EngineBusy(RuntimeError):
    """The engine has work in flight, so it cannot be reset now: an HTTP 409."""


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
        "fill_tokens",
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
        self.fill_tokens: list[str] = []  # those tokens (prompt + output so far)
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
    #: Engine iterations run, and those whose end came more than 5 ms after its deadline.
    iterations_total: int = 0
    late_iterations_total: int = 0
    #: Sum and maximum of how late iteration deadlines were met (wall seconds): model time the
    #: host could not keep up with.
    lag_seconds_total: float = 0.0
    lag_max_seconds: float = 0.0
    new_token_ratio: float = 0.0
    batch_is_full: bool = False

    @property
    def cache_hit_rate(self) -> float:
        """Cumulative cached / prompt tokens of admitted requests."""
        return self.cached_tokens_total / self.prompt_tokens_total if self.prompt_tokens_total else 0.0


@dataclass(frozen=True)
class EngineGauges:
    """The ``sglang:*`` gauges as ``/metrics`` shows them (SGLang's ``SchedulerStats``)."""

    num_running_reqs: int = 0
    num_queue_reqs: int = 0
    num_used_tokens: int = 0
    token_usage: float = 0.0
    cache_hit_rate: float = 0.0
    gen_throughput: float = 0.0


class Engine:
    """The simulated inference engine; create, :meth:`start` inside a running loop, then
    :meth:`submit` requests and read their progress; :meth:`close` when done.
    """

    def __init__(
        self,
        profile: EngineProfile,
        *,
        seed: int = 0,
        check_invariants: bool = False,
        engine_metrics: str = "sglang",
    ) -> None:
        if engine_metrics not in ENGINE_METRICS:
            raise ValueError(
                f"engine_metrics must be one of {', '.join(ENGINE_METRICS)}, got {engine_metrics!r}"
            )
        self.profile = profile
        self.seed = seed
        #: Fault drill ``slow``: every iteration takes this many times its profile time (1 = as
        #: profiled). Not a model quantity: it stands for a degraded GPU or a noisy neighbour.
        self.slowdown = 1.0
        #: ``"sglang"``: gauges set at SGLang's logging points; ``"live"``: current values.
        self.engine_metrics = engine_metrics
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
        self._reset_epoch = 0  # bumped by reset(); see _sleep_until
        self._zero_counters()

    def _zero_counters(self) -> None:
        """Every counter and scheduler state a fresh engine starts with (also :meth:`reset`)."""
        profile = self.profile
        #: SGLang's ``new_token_ratio`` (``Scheduler.__init__``: starts at init_new_token_ratio).
        self.new_token_ratio = profile.init_new_token_ratio
        #: SGLang's ``running_batch.batch_is_full``: admission failed; do not retry until a
        #: running request leaves the batch.
        self.batch_is_full = False
        self._gauges = EngineGauges()
        self._last_log_loop: float | None = None  # loop time of the last gauge refresh
        self._decode_ct = 0
        self._decode_log_tokens = 0
        self._last_decode_log_wall = time.time()
        self._iterations = 0
        self._late_iterations = 0
        self._lag_total = 0.0
        self._lag_max = 0.0
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

        Length rules of SGLang 0.4.5: a prompt at least as long as the model's context is refused
        (``TokenizerManager._tokenize_one_request``); so is one of ``max_req_input_len`` tokens or
        more, which the KV pool bounds (``Scheduler.handle_generate_request`` →
        ``validate_input_length``: SGLang finishes it at once with an abort; we answer HTTP 400
        with the same message). ``max_new_tokens`` is capped at ``max_req_len - prompt - 1``
        (``handle_generate_request``). ``sampling_seed`` (the request's ``seed``) picks one of
        many answers to the same prompt, as sampling with a seed does: without it every request
        with this prompt gets the same answer; with it, requests that differ only in their seed
        get different answers, each still the same on every replica.
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
        if n_prompt >= profile.max_req_input_len:
            raise RequestRejected(
                f"Input length ({n_prompt} tokens) exceeds the maximum allowed length "
                f"({profile.max_req_input_len} tokens): the replica's KV pool holds "
                f"{profile.kv_capacity_tokens} tokens (profile {profile.name!r}). Use a shorter input."
            )
        max_new = min(max_new_tokens, profile.max_req_len - n_prompt - 1)
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
            # The running batch shrank (SGLang's filter_batch): admission may try again.
            self.batch_is_full = False
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

    def reset(self) -> dict[str, Any]:
        """Return to the state of a fresh engine: empty prefix cache, every counter and gauge at
        zero, scheduler state (``new_token_ratio``, ``batch_is_full``) initial, no slowdown.

        Only when idle: raise :class:`EngineBusy` if any request is waiting or running. Returns
        what was cleared (the values before the reset).
        """
        if self.waiting or self.running:
            raise EngineBusy(
                f"cannot reset while requests are in flight ({len(self.waiting)} waiting, "
                f"{len(self.running)} running); wait until the replica is idle and retry"
            )
        before = self.stats()
        cleared = {
            "cache_tokens": before.cache_tokens,
            "num_requests_total": before.num_requests_total,
            "prompt_tokens_total": before.prompt_tokens_total,
            "generation_tokens_total": before.generation_tokens_total,
            "cached_tokens_total": before.cached_tokens_total,
            "num_aborted_total": before.num_aborted_total,
            "num_retracted_total": before.num_retracted_total,
            "evicted_tokens_total": before.evicted_tokens_total,
            "prefill_iterations_total": before.prefill_iterations_total,
            "decode_iterations_total": before.decode_iterations_total,
            "clock_resyncs_total": before.clock_resyncs_total,
            "lag_seconds_total": before.lag_seconds_total,
            "new_token_ratio": before.new_token_ratio,
        }
        self.cache = RadixCache(self.profile.kv_capacity_tokens)
        self._zero_counters()
        self._reset_epoch += 1  # an iteration still sleeping counts for the engine before
        self.slowdown = 1.0  # a fresh engine runs at its profile's speed
        if self._task is not None:
            self._last_log_loop = asyncio.get_running_loop().time()
        return cleared

    # ---- stats ----

    def stats(self) -> EngineStats:
        """Current (live) gauges and counters."""
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
            iterations_total=self._iterations,
            late_iterations_total=self._late_iterations,
            lag_seconds_total=self._lag_total,
            lag_max_seconds=self._lag_max,
            new_token_ratio=self.new_token_ratio,
            batch_is_full=self.batch_is_full,
        )

    def gauges(self) -> EngineGauges:
        """The ``sglang:*`` gauges: as last logged (``engine_metrics="sglang"``, SGLang's
        ``SchedulerStats`` between logging points) or computed now (``"live"``: running and
        queue now, cumulative cache hit, windowed throughput).
        """
        if self.engine_metrics == "sglang":
            return self._gauges
        stats = self.stats()
        return EngineGauges(
            num_running_reqs=stats.num_running,
            num_queue_reqs=stats.num_waiting,
            num_used_tokens=stats.used_tokens,
            token_usage=stats.token_usage,
            cache_hit_rate=stats.cache_hit_rate,
            gen_throughput=stats.gen_throughput,
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

    # ---- SGLang's logging points ----

    def _log_stats(self, gauges: EngineGauges) -> None:
        """``MetricsCollector.log_stats``: the gauges change only here."""
        self._gauges = gauges
        self._last_log_loop = asyncio.get_running_loop().time()

    def _log_prefill_stats(self, running_bs: int, used: int, hit: int, computed: int) -> None:
        """``Scheduler.log_prefill_stats``, called once a prefill batch is formed:
        ``num_running_reqs = running_bs`` (the batch before this prefill), queue after the
        admitted requests left it, ``token_usage`` rounded to 2 digits, ``cache_hit_rate`` of
        this batch only (``log_hit_tokens / (log_input_tokens + log_hit_tokens)``); the decode
        throughput is left as it was.
        """
        capacity = self.cache.capacity
        total = hit + computed
        self._log_stats(
            EngineGauges(
                num_running_reqs=running_bs,
                num_queue_reqs=len(self.waiting),
                num_used_tokens=used,
                token_usage=round(used / capacity, 2),
                cache_hit_rate=hit / total if total else 0.0,
                gen_throughput=self._gauges.gen_throughput,
            )
        )

    def _log_decode_stats(self) -> None:
        """``Scheduler.log_decode_stats``, every ``decode_log_interval`` decode steps
        (``process_batch_result_decode``): running and queue now, ``cache_hit_rate = 0.0``,
        ``gen_throughput`` = decode tokens since the last decode log / wall time since then.
        """
        now = time.time()
        gap = now - self._last_decode_log_wall
        throughput = self._decode_log_tokens / gap if gap > 0 else 0.0
        self._last_decode_log_wall = now
        self._decode_log_tokens = 0
        used = self.cache.in_use_tokens
        self._log_stats(
            EngineGauges(
                num_running_reqs=len(self.running),
                num_queue_reqs=len(self.waiting),
                num_used_tokens=used,
                token_usage=used / self.cache.capacity,
                cache_hit_rate=0.0,
                gen_throughput=throughput,
            )
        )

    def _log_idle_stats(self) -> None:
        """``Scheduler.check_memory`` when idle, once ``idle_log_interval_s`` passed since the last
        refresh: running and queue now, ``gen_throughput = 0``; the cache hit rate is kept."""
        used = self.cache.in_use_tokens
        self._log_stats(
            EngineGauges(
                num_running_reqs=len(self.running),
                num_queue_reqs=len(self.waiting),
                num_used_tokens=used,
                token_usage=used / self.cache.capacity,
                cache_hit_rate=self._gauges.cache_hit_rate,
                gen_throughput=0.0,
            )
        )

    # ---- the scheduler ----

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.time()
        if self._last_log_loop is None:
            self._last_log_loop = self._clock
        try:
            while True:
                if not self.waiting and not self.running:
                    # Scheduler.event_loop_normal, no batch: re-init the ratio, idle checks.
                    self.new_token_ratio = self.profile.init_new_token_ratio
                    await self._idle()
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
                    # Waiting requests and nothing running: nothing can free memory, so try the
                    # head once more regardless of batch_is_full; if even an empty pool cannot
                    # take it, it can never run (submit() caps lengths, so this is a guard).
                    self.batch_is_full = False
                    batch = self._schedule_prefill()
                    if batch:
                        await self._run_prefill(batch)
                    else:
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

    async def _idle(self) -> None:
        """Wait for a request; in ``sglang`` metrics mode refresh the gauges every
        ``idle_log_interval_s`` (model time) meanwhile, as ``check_memory`` does."""
        loop = asyncio.get_running_loop()
        interval = self.profile.idle_log_interval_s * self.profile.time_scale
        while not self.waiting and not self.running:
            self._wake.clear()
            assert self._last_log_loop is not None
            remaining = self._last_log_loop + interval - loop.time()
            if remaining <= 0:
                self._log_idle_stats()
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=remaining)

    async def _sleep_until(self, deadline: float) -> bool:
        """Sleep until the iteration's model-time end; False if :meth:`reset` ran meanwhile.

        An iteration whose requests were all aborted still runs to its end (as a GPU kernel
        would), and a reset may come while it sleeps: its telemetry and bookkeeping belong to
        the engine before the reset, so the caller drops them.
        """
        loop = asyncio.get_running_loop()
        delay = deadline - loop.time()
        epoch = self._reset_epoch
        # Always yield once, so request handlers run even when the engine is behind.
        await asyncio.sleep(delay if delay > 0 else 0)
        if epoch != self._reset_epoch:
            self._clock = loop.time()
            return False
        # Host-lag telemetry: how late this deadline was met (0 when the host keeps up).
        late = loop.time() - deadline
        self._iterations += 1
        if late > 0:
            self._lag_total += late
            if late > self._lag_max:
                self._lag_max = late
            if late > _LATE_ITERATION_S:
                self._late_iterations += 1
        self._clock = deadline
        return True

    def _clipped_remaining(self, req: SimRequest) -> int:
        """``min(max_new_tokens - len(output_ids), CLIP_MAX_NEW_TOKENS_ESTIMATION)``."""
        return min(req.max_new_tokens - req.generated, self.profile.clip_max_new_tokens)

    def _schedule_prefill(self) -> list[tuple[SimRequest, int]]:
        """Choose this iteration's prefill work: ``[(request, new tokens to compute)]``.

        ``Scheduler.get_new_batch_prefill`` and ``PrefillAdder`` (``schedule_policy.py``):

        * no attempt while ``batch_is_full`` (or the queue is empty) unless a chunked prefill
          is under way; ``batch_is_full`` is set when ``max_running_requests`` is reached or
          ``add_one_req`` answers ``NO_TOKEN``;
        * the chunked request continues first (``add_chunked_req``);
        * ``rem_total_tokens = available + evictable - offset``, where the offset starts at
          Σ running ``min(max_new - output, CLIP) × new_token_ratio`` (``PrefillAdder.__init__``)
          and grows by each admitted request's ``min(max_new_tokens, CLIP)`` (``_prefill_one_req``;
          0 while its prefill is still chunked);
        * ``add_one_req``: ``NO_TOKEN`` if ``extend_input + min(max_new_tokens, CLIP) >=
          rem_total_tokens`` (checked again after locking the matched prefix), ``OTHER`` if the
          input exceeds ``rem_input_tokens`` with something already in the batch; a prompt above
          the chunk budget is truncated to it and becomes the chunked request; then
          ``budget_state``: ``NO_TOKEN`` if ``rem_total_tokens <= 0``, ``OTHER`` when the input
          or chunk budget is spent.

        FCFS order (the waiting queue is never reordered). Unlike SGLang, the whole uncached
        prompt is allocated at admission (SGLang allocates chunk by chunk); the admission test is
        the same because it already counts the whole prompt.
        """
        profile = self.profile
        cache = self.cache
        chunk_budget = profile.chunked_prefill_tokens
        input_budget = profile.max_prefill_tokens
        batch: list[tuple[SimRequest, int]] = []
        chunked = [r for r in self.running if r.prefilled < r.fill_len]
        if chunked:
            # Scheduler.get_next_batch_to_run: after each round of a chunked request
            # ("chunked request keeps its rid but will get a new req_pool_idx") the flag is reset.
            self.batch_is_full = False
        if (self.batch_is_full or not self.waiting) and not chunked:
            return batch
        # SGLang's chunked_req is outside running_batch while its prefill goes on.
        running_bs = len(self.running) - len(chunked)
        if running_bs >= profile.max_running_requests and not chunked:
            self.batch_is_full = True
            return batch
        ratio = self.new_token_ratio
        offset = sum(self._clipped_remaining(r) * ratio for r in self.running if r.prefilled >= r.fill_len)
        allocated = 0
        hit = computed = 0
        for req in chunked:
            take = min(req.fill_len - req.prefilled, chunk_budget)
            if take <= 0:
                break
            batch.append((req, take))
            chunk_budget -= take
            input_budget -= take
            computed += take
            if take == req.fill_len - req.prefilled:  # the last chunk: count its output now
                offset += min(req.max_new_tokens, profile.clip_max_new_tokens)
        if not self.batch_is_full or chunked:
            while self.waiting and chunk_budget > 0 and input_budget > 0:
                if running_bs + sum(1 for r, _ in batch if r not in chunked) >= profile.max_running_requests:
                    self.batch_is_full = True
                    break
                req = self.waiting[0]
                # A retracted request re-prefills what it had generated too.
                fill = req.prompt if req.generated == 0 else req.prompt + req.answer[: req.generated]
                # At least one token is always computed (Req.adjust_max_prefix_ids: input - 1).
                matched, node = cache.match_prefix(fill, max_len=len(fill) - 1)
                uncached = len(fill) - matched
                total = uncached + min(req.max_new_tokens, profile.clip_max_new_tokens)
                if total >= cache.available_tokens - offset:
                    self.batch_is_full = True  # NO_TOKEN
                    break
                if uncached > input_budget and batch:
                    break  # OTHER
                cache.lock(node)  # PrefillAdder._lock_node: the prefix stops being evictable
                if total > cache.available_tokens - offset:
                    cache.unlock(node)
                    self.batch_is_full = True
                    break
                ok = cache.alloc(uncached)
                assert ok, "admission checked the room"
                allocated += uncached
                self.waiting.popleft()
                take = min(uncached, chunk_budget)
                req.state = RequestState.RUNNING
                req.node = node
                req.private_tokens = uncached
                req.fill_tokens = fill
                req.fill_len = len(fill)
                req.prefilled = matched
                if req.cached_tokens is None:
                    req.cached_tokens = min(matched, len(req.prompt))
                    self._prompt_tokens_total += len(req.prompt)
                    self._cached_tokens_total += req.cached_tokens
                self.running.append(req)
                if take == uncached:
                    offset += min(req.max_new_tokens, profile.clip_max_new_tokens)
                batch.append((req, take))
                chunk_budget -= take
                input_budget -= take
                hit += matched
                computed += take
                if cache.available_tokens - offset <= 0:
                    self.batch_is_full = True  # budget_state: NO_TOKEN
                    break
        if batch:
            # SGLang logs before allocating the batch's KV: count only the locks so far.
            self._log_prefill_stats(running_bs, cache.in_use_tokens - allocated, hit, computed)
        return batch

    async def _run_prefill(self, batch: list[tuple[SimRequest, int]]) -> None:
        new_tokens = sum(take for _, take in batch)
        duration = self.profile.prefill_ms(new_tokens) / 1000.0 * self.profile.time_scale * self.slowdown
        start_wall = time.time()
        for req, _ in batch:
            if req.scheduled_wall is None:
                req.scheduled_wall = start_wall
        self._prefill_iterations += 1
        self._prefill_tokens_computed += new_tokens
        if not await self._sleep_until(self._clock + duration):
            return  # reset while it ran: every request in it was aborted before the reset
        end_wall = time.time()
        for req, take in batch:
            if req.state is not RequestState.RUNNING:
                continue  # aborted while the iteration ran
            req.prefilled += take
            self._cache_unfinished(req, take)
            if req.prefilled >= req.fill_len:
                # The last prefill chunk yields the next token, as on a real engine.
                self._emit_token(req, end_wall)

    def _cache_unfinished(self, req: SimRequest, computed: int) -> None:
        """``RadixCache.cache_unfinished_req`` after a prefill (chunk): the tokens whose KV now
        exists enter the tree at once, the request's lock moves to the new node, and KV that
        another request inserted meanwhile is given back rather than held twice.
        """
        cache = self.cache
        sequence = req.fill_tokens[: req.prefilled]
        cache.insert(sequence, reserved_tokens=computed)
        req.private_tokens -= computed
        length, node = cache.match_prefix(sequence)
        assert length == len(sequence), "the prefill's own tokens fit: they were reserved"
        cache.lock(node)
        if req.node is not None:
            cache.unlock(req.node)
        req.node = node

    async def _run_decode(self) -> None:
        """One decode step, after ``Scheduler.update_running_batch``: if ``check_decode_mem``
        fails, ``retract_decode`` and set ``new_token_ratio`` to its estimate, else decay the
        ratio by ``new_token_ratio_decay`` down to ``min_new_token_ratio``; a smaller batch
        clears ``batch_is_full``. Every ``decode_log_interval`` steps the gauges are logged."""
        cache = self.cache
        profile = self.profile
        initial_bs = len(self.running)
        if not self._check_decode_mem(initial_bs):
            self.new_token_ratio = self._retract_decode()
        else:
            self.new_token_ratio = max(
                self.new_token_ratio - profile.new_token_ratio_decay, profile.min_new_token_ratio
            )
        if len(self.running) < initial_bs:
            self.batch_is_full = False
        batch = list(self.running)
        if not cache.alloc(len(batch)):  # pragma: no cover - submit() caps lengths to capacity
            raise RuntimeError("a single request does not fit the KV cache")
        context = 0
        for req in batch:
            req.private_tokens += 1
            context += len(req.prompt) + req.generated
        duration = profile.decode_step_ms(context, len(batch)) / 1000.0 * profile.time_scale * self.slowdown
        self._decode_iterations += 1
        if not await self._sleep_until(self._clock + duration):
            return  # reset while it ran: every request in it was aborted before the reset
        end_wall = time.time()
        for req in batch:
            if req.state is RequestState.RUNNING:
                self._emit_token(req, end_wall)
                self._decode_log_tokens += 1
        self._decode_ct += 1
        if self.engine_metrics == "sglang" and self._decode_ct % profile.decode_log_interval == 0:
            self._log_decode_stats()
        samples = self._throughput_samples
        if not samples or end_wall - samples[-1][0] >= _THROUGHPUT_SAMPLE_EVERY_S:
            samples.append((end_wall, self._generation_tokens_total))
            while len(samples) > 1 and end_wall - samples[0][0] > _THROUGHPUT_WINDOW_S:
                samples.popleft()

    def _check_decode_mem(self, bs: int) -> bool:
        """``ScheduleBatch.check_decode_mem``: ``bs`` free slots, evicting ``bs`` tokens if not."""
        cache = self.cache
        if cache.free_tokens >= bs:
            return True
        cache.evict(bs)
        return cache.free_tokens >= bs

    def _retract_decode(self) -> float:
        """``ScheduleBatch.retract_decode``: sort by ``(len(output_ids), -len(origin_input_ids))``
        descending and retract from the end (fewest output tokens, longest prompt on ties), at
        least one, until the rest have ``retract_decode_steps`` free slots each (evicting what
        is needed); the retracted requests go to the tail of the waiting queue
        (``Scheduler.update_running_batch``: ``waiting_queue.extend``). Returns the new ratio
        ``min(1, (Σ output + steps × n) / Σ max_new_tokens)`` of the requests kept.
        """
        cache = self.cache
        steps = self.profile.retract_decode_steps
        order = sorted(self.running, key=lambda r: (r.generated, -len(r.prompt)), reverse=True)
        retracted: list[SimRequest] = []
        first = True
        while first or cache.free_tokens < len(order) * steps:
            if len(order) == 1:
                break  # SGLang: "Corner case: only one request left"
            first = False
            req = order.pop()
            retracted.append(req)
            self._free_kv(req)
            cache.evict(max(0, len(order) * steps - cache.free_tokens))
        kept = set(map(id, order))
        self.running = [r for r in self.running if id(r) in kept]
        for req in retracted:
            req.state = RequestState.WAITING
            req.prefilled = 0
            req.fill_len = 0
            req.fill_tokens = []
            req.retractions += 1
            self._num_retracted_total += 1
            self.waiting.append(req)
        decoded = sum(r.generated for r in self.running)
        max_new = sum(r.max_new_tokens for r in self.running)
        return min(1.0, (decoded + steps * len(self.running)) / max_new) if max_new else 1.0

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
        """``RadixCache.cache_finished_req``: KV exists for prompt + output minus the last token
        (never fed back); cache exactly that, release the request's lock."""
        sequence = req.prompt + req.answer[: req.generated - 1] if req.generated > 1 else req.prompt
        self.cache.insert(sequence, reserved_tokens=req.private_tokens)
        req.private_tokens = 0
        assert req.node is not None
        self.cache.unlock(req.node)
        req.node = None
        req.fill_tokens = []
        self.running.remove(req)
        # The running batch shrank: admission may try again (update_running_batch).
        self.batch_is_full = False
        req.state = RequestState.FINISHED
        req.finish_wall = wall
        self._num_requests_total += 1
        req._notify()

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
