"""Simulated chat users over aiohttp: the load generator of every backend.

A plan's :class:`~pytest_lbbench.workloads.base.Arrival` says when requests start:

* closed loop: each user goes through its conversations turn by turn; a turn is sent when the
  previous answer has fully arrived (optionally no sooner than a think-time floor after the
  previous turn started);
* replay: conversations start at their (scaled) recorded timestamps, turns in order;
* rate: open loop, gamma/Poisson arrivals at a fixed rate, each one the next turn of a
  conversation whose previous answer has arrived, or the first turn of a new one.

The server's answer joins the history, so later turns extend earlier prompts. In a tree
workload (:class:`~pytest_lbbench.workloads.base.TreeShape`) each stage answers every node
``num_branches`` times. At the deadline no new request starts; requests in flight finish
(each bounded by the request timeout), so none is cut short by the benchmark itself. Requests
started during the warm-up are recorded with ``warmup=True`` and left out of the metrics.
Every request produces one record, handed to a sink the moment it completes (the CLI appends
it to a partial-results file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator

import aiohttp

from pytest_lbbench.client.loop_monitor import LoopLagMonitor
from pytest_lbbench.client.records import RequestRecord
from pytest_lbbench.protocol import HASH_KEY_HEADER, served_by
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.workloads.base import Conversation, UserScript, WorkloadPlan

# After a failed turn a user pauses briefly, so a dead endpoint is not hammered in a hot loop.
FAILURE_BACKOFF_S = 0.1
# Large read buffer: aiohttp's 64 KiB default throttles long SSE streams (vllm-project/vllm#39963).
READ_BUFSIZE = 1 << 20

RecordSink = Callable[[RequestRecord], None]


@dataclass(frozen=True)
class ClientSettings:
    """How one client process drives one endpoint: the experiment's knobs (one place for
    their defaults: :class:`~pytest_lbbench.runspec.RunKnobs`) and where to send."""

    backend_url: str
    region: str
    knobs: RunKnobs = field(default_factory=RunKnobs)
    model: str | None = None

    @property
    def duration_s(self) -> float:
        return self.knobs.duration_s

    @property
    def warmup_s(self) -> float:
        return self.knobs.warmup_s

    @property
    def request_timeout_s(self) -> float:
        return self.knobs.request_timeout_s

    @property
    def drain_timeout_s(self) -> float:
        return self.knobs.drain_timeout_s

    @property
    def lag_threshold_ms(self) -> float:
        return self.knobs.lag_threshold_ms

    @property
    def seed(self) -> int:
        """Seeds the open-loop arrival times (with the region)."""
        return self.knobs.seed


@dataclass
class ClientRun:
    """What a finished client run hands back (the records went to the sink already)."""

    latency_s: float  # from the end of the warm-up to the last completion
    sent: int
    recorded: int
    model: str
    loop_lag: dict[str, Any] = field(default_factory=dict)


class EndpointNotReady(RuntimeError):
    """The endpoint did not answer ``GET /v1/models`` in time."""


async def discover_model(
    session: aiohttp.ClientSession, base_url: str, timeout_s: float,
    connections: ConnectionSeen | None = None,
) -> str:
    """``data[0].id`` of ``GET /v1/models``, retried until ``timeout_s``.

    The body is parsed as JSON whatever the Content-Type: the sglang router omits it. Pass
    the session's ``connections`` so the chat request that reuses this connection is not
    taken for the one that opened it.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt"
    while time.monotonic() < deadline:
        try:
            async with session.get(
                f"{base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                if connections is not None:
                    connections.first_use(resp)
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


class ConnectionSeen:
    """Tells, per response, whether the session's pool opened its connection for it: the
    first response on a connection (its protocol object) is new, later ones reused it. A new
    connection across a delay link pays the emulated handshake.

    Not aiohttp's ``TraceConfig``: with tracing on, every request awaits a coroutine per trace
    signal, which cost about 0.13 ms per request between the client's start stamp and its
    bytes reaching the server (measured on the 2-core development machine), all of it counted
    in the TTFT decomposition's harness residual."""

    def __init__(self) -> None:
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

    def first_use(self, response: aiohttp.ClientResponse) -> bool | None:
        """``True``: ``response`` came on a fresh connection; ``False``: a reused one;
        ``None``: aiohttp no longer holds its connection (nobody can tell)."""
        connection = response.connection
        # A short answer read whole with its head has already given its connection back to the
        # pool (``connection`` is None); the response still names the protocol it came on
        # (private in aiohttp 3, so read defensively: without it the answer is "unknown").
        protocol = connection.protocol if connection is not None else getattr(response, "_protocol", None)
        if protocol is None:
            return None
        if protocol in self._seen:
            return False
        self._seen.add(protocol)
        return True


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    record: RequestRecord,
    timeout_s: float,
    connections: ConnectionSeen | None = None,
) -> str | None:
    """Send one streaming chat request and fill ``record``. Never raises (but re-raises
    cancellation after recording it); returns the answer text, or ``None`` on failure.
    ``connections`` (one per session) sets ``record.new_connection``."""
    # The wall-clock start and the TTFT clock start together: the TTFT decomposition lays the
    # LBs' and the replica's time.time() stamps on the interval start .. start + ttft.
    record.start = time.time()
    t0 = time.perf_counter()
    parts: list[str] = []
    last_chunk_at: float | None = None
    finished = False
    try:
        async with session.post(
            url, json=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            record.response_start = time.time()
            if connections is not None:
                record.new_connection = connections.first_use(resp)
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


Message = dict[str, str]


class _Run:
    """Shared state of one client run: session, clock, counters and the record sink."""

    def __init__(
        self, plan: WorkloadPlan, settings: ClientSettings, session: aiohttp.ClientSession,
        model: str, sink: RecordSink, connections: ConnectionSeen | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.session = session
        # Which responses came on a fresh connection (shared with discover_model's request).
        self.connections = connections if connections is not None else ConnectionSeen()
        self.model = model
        self.sink = sink
        self.url = f"{settings.backend_url}/v1/chat/completions"
        self.started = time.monotonic()
        self.warmup_end = self.started + settings.warmup_s
        self.deadline = self.warmup_end + settings.duration_s
        self.sent = 0
        self.recorded = 0
        self.inflight: set[asyncio.Task[Any]] = set()

    def over(self) -> bool:
        return time.monotonic() >= self.deadline

    async def sleep_until(self, when: float) -> bool:
        """Sleep until monotonic ``when``; if that is past the deadline, sleep until the
        deadline instead and return ``False`` (the caller then starts nothing more)."""
        if when >= self.deadline:
            await asyncio.sleep(max(0.0, self.deadline - time.monotonic()))
            return False
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Start ``coro`` as a task the run waits for (and cancels at the drain timeout)."""
        task = asyncio.ensure_future(coro)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def send(
        self, user: UserScript, conv: Conversation, conv_index: int, turn_index: int,
        messages: list[Message], branch: str | None = None, sampling_seed: int | None = None,
    ) -> str | None:
        """Send one request with ``messages`` as the history; record it; return the answer.

        ``sampling_seed`` goes out as the request's ``seed``: tree branches use it so siblings
        sample different thoughts (reproducibly) instead of the same greedy answer."""
        now = time.monotonic()
        record = RequestRecord(
            uid=self.settings.region,
            hash_key=conv.user_key,
            program_id=f"{self.settings.region}-{user.user_index}-{conv.conv_id}",
            client_region=self.settings.region,
            user_index=user.user_index,
            conv_index=conv_index,
            turn_index=turn_index,
            start=time.time(),
            branch=branch,
            warmup=now < self.warmup_end,
        )
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.plan.settings.max_tokens,
            "temperature": self.plan.settings.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling_seed is not None:
            payload["seed"] = sampling_seed
        self.sent += 1
        try:
            return await stream_chat(
                self.session, self.url, payload, {HASH_KEY_HEADER: conv.user_key}, record,
                self.settings.request_timeout_s, self.connections,
            )
        finally:
            if record.failed is not None and record.failed_at is None:
                record.failed_at = time.time()  # when it failed: fault drills match it by time
            self.recorded += 1
            self.sink(record)


async def _chat(
    run: _Run, user: UserScript, conv: Conversation, conv_index: int,
    think_time_floor_s: float | None = None,
) -> bool:
    """Go through one conversation turn by turn; ``False`` if it stopped on a failure."""
    messages: list[Message] = []
    for turn_index, text in enumerate(conv.user_turns):
        if run.over():
            return True
        turn_started = time.monotonic()
        messages.append({"role": "user", "content": text})
        answer = await run.send(user, conv, conv_index, turn_index, list(messages))
        if answer is None:
            return False  # without the server's answer the chat cannot go on
        messages.append({"role": "assistant", "content": answer})
        # The floor follows every turn, the last included: it is the user's, not the chat's.
        if think_time_floor_s and not await run.sleep_until(turn_started + think_time_floor_s):
            return True
    return True


async def _tree(run: _Run, user: UserScript, conv: Conversation, conv_index: int) -> bool:
    """Answer every node of every stage ``num_branches`` times; ``False`` if no node survived."""
    assert run.plan.tree is not None
    shape = run.plan.tree
    # A node is (its path, its history); the root has an empty history.
    nodes: list[tuple[str, list[Message]]] = [("", [])]
    for stage, text in enumerate(conv.user_turns):
        if run.over():
            return True
        asks: list[tuple[str, list[Message]]] = []
        for path, history in nodes:
            prompt = history + [{"role": "user", "content": text}]
            for b in range(shape.num_branches):
                asks.append((f"{path}.{b}" if path else str(b), prompt))

        async def ask(child: str, prompt: list[Message]) -> tuple[str, list[Message], str | None]:
            # Sibling k asks with seed k: b different thoughts per node, the same in every run.
            seed = int(child.rsplit(".", 1)[-1])
            answer = await run.send(user, conv, conv_index, stage, prompt, branch=child, sampling_seed=seed)
            return child, prompt, answer

        if shape.parallel:
            answered = await asyncio.gather(*(ask(c, p) for c, p in asks))
        else:
            answered = []
            for c, p in asks:
                if run.over():
                    break
                answered.append(await ask(c, p))
        nodes = [
            (child, prompt + [{"role": "assistant", "content": answer}])
            for child, prompt, answer in answered
            if answer is not None
        ]
        if not nodes:
            return False
    return True


async def _conversation(run: _Run, user: UserScript, conv: Conversation, conv_index: int) -> bool:
    if run.plan.tree is not None:
        return await _tree(run, user, conv, conv_index)
    return await _chat(run, user, conv, conv_index, run.plan.arrival.think_time_floor_s)


async def _closed_loop_user(run: _Run, user: UserScript) -> None:
    """Go through the user's conversations in a loop until the deadline."""
    if not user.conversations:
        return
    while not run.over():
        for conv_index, conv in enumerate(user.conversations):
            if run.over():
                return
            if not await _conversation(run, user, conv, conv_index):
                # Pause briefly, so a dead endpoint is not hammered in a hot loop.
                await asyncio.sleep(FAILURE_BACKOFF_S)


def replay_offsets(conversations: tuple[Conversation, ...], span_s: float | None) -> list[float]:
    """Start offsets (s) of a user's conversations: recorded gaps, squeezed to fit ``span_s``.

    As the original arena replay: ``scale = max(1, recorded span / span_s)``; the first
    conversation starts at 0.
    """
    if not conversations:
        return []
    first = conversations[0].timestamp
    span = conversations[-1].timestamp - first
    scale = max(1.0, span / span_s) if span_s else 1.0
    return [(c.timestamp - first) / scale for c in conversations]


async def _replay_user(run: _Run, user: UserScript, index: int) -> None:
    """Start each conversation at its replayed time; conversations overlap, turns do not."""
    arrival = run.plan.arrival
    begin = run.started + index * arrival.user_stagger_s
    for conv_index, (conv, offset) in enumerate(
        zip(user.conversations, replay_offsets(user.conversations, arrival.replay_span_s))
    ):
        if not await run.sleep_until(begin + offset):
            return
        run.spawn(_conversation(run, user, conv, conv_index))


def arrival_gaps(rate: float, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Gamma-distributed gaps with mean ``1/rate`` and shape ``burstiness`` (1 = Poisson)."""
    theta = 1.0 / (rate * burstiness)
    while True:
        yield rng.gammavariate(burstiness, theta)


class _OpenLoopChat:
    """A conversation in an open-loop run: its history so far and the next turn to send."""

    def __init__(self, user: UserScript, conv: Conversation, conv_index: int) -> None:
        self.user = user
        self.conv = conv
        self.conv_index = conv_index
        self.turn = 0
        self.messages: list[Message] = []


def _new_conversations(users: tuple[UserScript, ...]) -> Iterator[_OpenLoopChat]:
    """Users' conversations interleaved (user 0's first, user 1's first, …), looping forever."""
    if not any(u.conversations for u in users):
        return
    while True:
        depth = max(len(u.conversations) for u in users)
        for k in range(depth):
            for user in users:
                if k < len(user.conversations):
                    yield _OpenLoopChat(user, user.conversations[k], k)


async def _open_loop(run: _Run) -> None:
    """Send requests at the plan's rate, whatever the server does, until the deadline."""
    arrival = run.plan.arrival
    assert arrival.request_rate is not None
    rng = random.Random(f"{run.settings.seed}:{run.settings.region}:arrivals")
    fresh = _new_conversations(run.plan.users)
    ready: deque[_OpenLoopChat] = deque()

    async def turn(chat: _OpenLoopChat) -> None:
        chat.messages.append({"role": "user", "content": chat.conv.user_turns[chat.turn]})
        answer = await run.send(chat.user, chat.conv, chat.conv_index, chat.turn, list(chat.messages))
        if answer is None:
            return  # the chat cannot go on without the answer
        chat.messages.append({"role": "assistant", "content": answer})
        chat.turn += 1
        if chat.turn < len(chat.conv.user_turns):
            ready.append(chat)

    when = run.started
    for gap in arrival_gaps(arrival.request_rate, arrival.burstiness, rng):
        when += gap  # absolute times, so a late wake-up does not shift later arrivals
        if not await run.sleep_until(when):
            return
        chat = ready.popleft() if ready else next(fresh, None)
        if chat is None:
            return
        run.spawn(turn(chat))


async def _drive(run: _Run) -> None:
    kind = run.plan.arrival.kind
    if kind == "rate":
        await _open_loop(run)
    elif kind == "replay":
        await asyncio.gather(*(_replay_user(run, u, i) for i, u in enumerate(run.plan.users)))
    else:
        await asyncio.gather(*(_closed_loop_user(run, u) for u in run.plan.users))
    # Open-loop and replay conversations run as their own tasks: wait for them too.
    while run.inflight:
        await asyncio.gather(*list(run.inflight), return_exceptions=True)


async def run_client(plan: WorkloadPlan, settings: ClientSettings, sink: RecordSink) -> ClientRun:
    """Drive every user of ``plan`` against ``settings.backend_url`` until the deadline."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFSIZE) as session:
        connections = ConnectionSeen()
        model = settings.model or await discover_model(
            session, settings.backend_url, settings.knobs.ready_timeout_s, connections
        )
        monitor = LoopLagMonitor()
        monitor.start()
        run = _Run(plan, settings, session, model, sink, connections)
        driver = asyncio.create_task(_drive(run))
        try:
            remaining = settings.warmup_s + settings.duration_s + settings.drain_timeout_s
            done, _ = await asyncio.wait([driver], timeout=remaining)
            if not done:
                driver.cancel()
                for task in list(run.inflight):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver
                await asyncio.gather(*list(run.inflight), return_exceptions=True)
        finally:
            if not driver.done():
                driver.cancel()
                await asyncio.gather(driver, return_exceptions=True)
            await monitor.stop()
        latency = time.monotonic() - run.warmup_end
        if not driver.cancelled() and driver.exception() is not None:
            raise driver.exception()  # type: ignore[misc]  # a bug in the client, not a failed request
        return ClientRun(
            latency_s=latency,
            sent=run.sent,
            recorded=run.recorded,
            model=model,
            loop_lag=monitor.summary(settings.lag_threshold_ms),
        )
