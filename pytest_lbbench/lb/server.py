"""One load-balancer process: the HTTP shell around :class:`.core.LbCore`.

The shell turns HTTP into core events and the core's decisions into HTTP; it decides nothing
itself. It owns the event loop, the sockets and the clock (``time.time``), and runs:

* the request handler: :meth:`~.core.LbCore.arrive`, wait for the decision, then proxy and
  stream (:func:`.proxy.forward`), then :meth:`~.core.LbCore.leave` on every path;
* the periodic loops, each timed with :class:`.lag.LoopLag`: the queue processor (every
  ``tick_s`` while anything is queued), the health probe (every replica and peer LB, ``health_interval_s``), the
  engine-queue probe (pull), the peer ``/conf`` probe (rate-limited push), the
  stealing loop (steal modes) and the prefix-tree eviction;
* the LB↔LB calls the core asks for (:mod:`.rpc`), each with a timeout (``lb_rpc_timeout_s``;
  the original had none).

Every decided request is handed to its waiting handler in one place, :meth:`LoadBalancer._deliver`.

Endpoints: ``GET /sky-lb-health``, ``GET /conf`` (with ``"lag"``: how late the periodic loops
woke, :mod:`.lag`), ``POST /lbbench/membership`` (replaces the controller sync; its targets must
be on the allowed hosts),
``POST /lbbench/reset`` (the state of a fresh process, membership kept; 409 while requests are
queued or in flight), ``POST /steal-request`` (steal modes; 409 in the others), and a catch-all
proxy. Membership, reset and steal are control endpoints: without the run's secret they answer
401 (:mod:`pytest_lbbench.control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from pytest_lbbench.protocol import (
    FROM_LB_HEADER,
    HASH_KEY_HEADER,
    LB_HEALTH_PATH,
    MEMBERSHIP_PATH,
    QUEUE_SIZE_HEADER,
    RESET_PATH,
    LbMembership,
    MembershipError,
)

from ..aioserve import first_on_connection, serve_app
from ..control import LOOPBACK_TARGETS, AllowedTargets, control_headers, control_middleware
from .config import LbConfig
from .core import AskSteal, ConfReplies, FetchConfs, LbCore, PeerCall, PeerReply, StealReplies, UnknownPeer
from .lag import LoopLag
from .probe import probe_engine_queues
from .proxy import RetryElsewhere, forward, json_error
from .queue import ClientRequest, Failure, Outcome, RequestEntry
from .rpc import fetch_conf, measure_latency, post_steal
from .upstream import Timeouts, UpstreamPool

__all__ = ["FROM_LB_HEADER", "QUEUE_SIZE_HEADER", "RESET_PATH", "LoadBalancer", "serve"]

log = logging.getLogger("pytest_lbbench.lb")

# Chat prompts of long conversations can be large; aiohttp's default cap is 1 MiB (the SGLang
# router allowed 4 MB).
_MAX_BODY_BYTES = 64 * 1024 * 1024

_T = TypeVar("_T")

STEAL_PATH = "/steal-request"
CONTROL_PATHS = (MEMBERSHIP_PATH, RESET_PATH, STEAL_PATH)
"""The LB's control endpoints: they need the run's secret."""


def wait_for_next_tick(interval_s: float, parked_for_s: float) -> float:
    """Seconds from now to the next tick of a schedule that ticked ``parked_for_s`` ago and
    every ``interval_s`` since (0 to ``interval_s``)."""
    return interval_s - parked_for_s % interval_s


class LoadBalancer:
    """One LB over HTTP: :attr:`core` decides, this class does the I/O (:meth:`make_app`)."""

    def __init__(self, config: LbConfig, *, name: str, region: str, control_token: str | None = None,
                 allowed_targets: AllowedTargets | None = None) -> None:
        """``control_token``: the run's secret (None: every control endpoint answers 401);
        ``allowed_targets``: hosts membership may name (default: loopback only)."""
        self.core = LbCore(config, name=name, region=region, clock=time.time)
        self.config = config
        self.name = name
        self.region = region
        self.control_token = control_token
        self.allowed_targets = allowed_targets or AllowedTargets.parse(LOOPBACK_TARGETS)
        self.lag = LoopLag()
        self._waiting: dict[int, asyncio.Future[Outcome]] = {}
        self._session: aiohttp.ClientSession | None = None
        # Per read, not per exchange: the original's httpx ``timeout=120`` bounds each step
        # (connect, every read), so a long stream that keeps producing tokens is never cut.
        self._timeouts = Timeouts(connect_s=config.connect_timeout_s, read_s=config.stream_timeout_s)
        # Upstream connections of the proxy (and, in the LB, the engine-queue probe): the lean
        # client of :mod:`pytest_lbbench.lb.upstream`; the aiohttp session serves the rest.
        self._upstreams: UpstreamPool | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def conf(self) -> dict[str, Any]:
        """The ``GET /conf`` payload: the core's view plus how late the loops woke."""
        return {**self.core.conf(), "lag": self.lag.snapshot()}

    def reset(self) -> dict[str, Any]:
        """``POST /lbbench/reset``: the core's reset, and the lag counters zero."""
        result = self.core.reset()
        self.lag.reset()
        return result

    # ------------------------------------------------------------------ decisions → handlers

    def _deliver(self, decided: list[RequestEntry]) -> None:
        """Wake the handler of every decided request (the only place a decision is handed
        over). A handler whose client already left has a cancelled future: skip it."""
        for entry in decided:
            waiter = self._waiting.get(entry.id)
            if waiter is not None and not waiter.done() and entry.outcome is not None:
                waiter.set_result(entry.outcome)

    async def _run_peer_calls(self, round_: Generator[PeerCall, PeerReply, _T]) -> _T:
        """Drive one of the core's peer rounds: perform each call it yields, send the reply."""
        try:
            call = next(round_)
            while True:
                call = round_.send(await self._perform(call))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _perform(self, call: PeerCall) -> PeerReply:
        assert self._session is not None
        session, timeout = self._session, self.config.lb_rpc_timeout_s
        if isinstance(call, FetchConfs):
            confs = await asyncio.gather(*(fetch_conf(session, url, timeout) for _, url in call.peers))
            return ConfReplies({name: conf for (name, _), conf in zip(call.peers, confs)})
        assert isinstance(call, AskSteal)
        headers = control_headers(self.control_token)
        remaining = await asyncio.gather(
            *(post_steal(session, url, n, call.source, timeout, headers) for _, url, n in call.asks)
        )
        return StealReplies({name: left for (name, _, _), left in zip(call.asks, remaining)})

    # ------------------------------------------------------------------ HTTP handlers

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _conf(self, request: web.Request) -> web.Response:
        return web.json_response(self.conf())

    async def _membership(self, request: web.Request) -> web.Response:
        try:
            membership = LbMembership.from_json(await request.json(), self.name)
        except (ValueError, MembershipError) as exc:
            return json_error(400, f"bad membership payload: {exc}")
        refusals = [
            f"{name}: {reason}"
            for name, url in [*membership.lbs.items(), *membership.replicas.items()]
            if (reason := self.allowed_targets.refusal(url)) is not None
        ]
        if refusals:
            return json_error(403, "membership refused: " + "; ".join(refusals)
                              + ". Start the LB with --allow-target-hosts naming them if they are the run's own")
        self.core.apply_membership(membership)
        return web.json_response(
            {"ok": True, "num_replicas": len(self.core.replicas.urls), "num_lbs": len(self.core.lbs.urls)}
        )

    async def _reset(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.reset())
        except RuntimeError as exc:
            return json_error(409, str(exc))

    async def _steal_request(self, request: web.Request) -> web.Response:
        if not self.config.lb_mode.steals:
            return json_error(409, f"request stealing is off in lb_mode {self.config.lb_mode.value!r}")
        try:
            payload = await request.json()
        except ValueError as exc:
            return json_error(400, f"bad steal request: {exc}")
        num = payload.get("num_steal") if isinstance(payload, dict) else None
        source = payload.get("source_lb_url") if isinstance(payload, dict) else None
        if isinstance(num, bool) or not isinstance(num, int) or not isinstance(source, str):
            return json_error(400, 'steal request must be {"num_steal": int, "source_lb_url": str}')
        try:
            handed = self.core.hand_over(source, num)
        except UnknownPeer as exc:
            return json_error(400, str(exc))
        self._deliver(handed)
        return web.json_response({"remaining_to_steal": num - len(handed), "stolen": len(handed)})

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        arrive = self.core.clock()
        body = await request.read()
        headers = request.headers
        entry = self.core.arrive(
            ClientRequest(request.method, request.raw_path, tuple(headers.items()), body),
            from_lb=headers.get(FROM_LB_HEADER, "").lower() == "true",
            hash_key=headers.get(HASH_KEY_HEADER),
            time_arrive=arrive,
            new_connection=first_on_connection(request),
        )
        loop = asyncio.get_running_loop()
        try:
            while True:
                waiter: asyncio.Future[Outcome] = loop.create_future()
                self._waiting[entry.id] = waiter
                outcome = await waiter
                if isinstance(outcome, Failure):
                    return json_error(outcome.status, outcome.message)
                assert self._upstreams is not None, "request handled before startup"
                try:
                    return await forward(
                        request, entry.request, outcome, self._upstreams, self._timeouts,
                        self.core.on_upstream_error,
                        lambda reason: self.core.on_start_failure(entry, reason),
                    )
                except RetryElsewhere as exc:
                    log.info("request %d: %s; deciding it again", entry.id, exc)
                    self.core.retry(entry)
        finally:
            # Runs on every path, including cancellation when the client disconnects
            # (handler_cancellation=True): leave the queue, undo the pre hooks.
            del self._waiting[entry.id]
            self.core.leave(entry)

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        """The aiohttp application (routes, startup/cleanup of the session and loops)."""
        app = web.Application(
            client_max_size=_MAX_BODY_BYTES,
            middlewares=[control_middleware(self.control_token, CONTROL_PATHS,
                                            max_body_bytes=_MAX_BODY_BYTES, server=f"LB {self.name}")],
        )
        app.router.add_get(LB_HEALTH_PATH, self._health)
        app.router.add_get("/conf", self._conf)
        app.router.add_post(MEMBERSHIP_PATH, self._membership)
        app.router.add_post(RESET_PATH, self._reset)
        app.router.add_post(STEAL_PATH, self._steal_request)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._upstreams = UpstreamPool()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            # Pass bytes through untouched (the client asked for its own encoding) and do not
            # invent headers the client did not send.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self._spawn(self._queue_loop(), "queue-processor")
        self._spawn(self._probe_loop(self.probe_health_once, "health_interval_s", "health_probe"), "health-probe")
        if self.config.replica_mode.probes_engine_queue:
            self._spawn(
                probe_engine_queues(
                    self._upstreams, self.core.engine_probe_targets, self.core.on_engine_queue,
                    self.config.loop_interval_s("probe_interval_s"), self.config.probe_timeout_s, self.lag,
                ),
                "engine-queue-probe",
            )
        for kind, interval in self.core.eviction_intervals().items():
            self._spawn(self._eviction_loop(kind, interval), f"{kind}-eviction")
        if self.config.lb_mode.steals:
            self._spawn(self._steal_loop(), "steal-loop")
        if self.config.lb_mode.probes_peer_status:
            self._spawn(self._probe_loop(self.probe_peers_once, "lb_probe_interval_s", "lb_status_probe"),
                        "lb-status-probe")
        log.info("System Config: %s", json.dumps(self.core.describe(), sort_keys=True))

    async def _on_cleanup(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._upstreams is not None:
            self._upstreams.close()
            self._upstreams = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"{self.name}:{name}"))

    async def _queue_loop(self) -> None:
        """Tick every ``tick_s`` as the original's ``while True: sleep; process``, but sleep
        through the time the queue is empty: a tick of an empty queue places nothing, and waking
        100 times a second for it was most of an idle LB's CPU (1.7 % of a core, measured). When
        a request enters the empty queue the loop resumes on the schedule it would have kept
        (ticks every ``tick_s`` from the last one), so a request still waits for the next tick,
        0 to ``tick_s``, exactly as before. Only real ticks are counted in the lag telemetry."""
        loop = asyncio.get_running_loop()
        interval = self.config.loop_interval_s("tick_s")
        filled = asyncio.Event()
        self.core.on_queue_filled = filled.set
        try:
            while True:
                wait = interval
                if not len(self.core.queue):
                    parked_at = loop.time()
                    filled.clear()
                    await filled.wait()
                    wait = wait_for_next_tick(interval, loop.time() - parked_at)
                await self.lag.sleep("queue_tick", wait)
                try:
                    self._deliver(self.core.tick())
                except Exception:  # pragma: no cover - keep serving; the bug shows in the log
                    log.exception("queue processor step failed")
        finally:
            self.core.on_queue_filled = None

    async def probe_health_once(self) -> None:
        """One health-probe round: every replica's ``/health`` and every peer's
        ``/sky-lb-health``, concurrently, each bounded by ``health_timeout_s``."""
        targets = self.core.health_probe_targets()
        if targets:
            await asyncio.gather(*(self._probe_health(kind, name, url) for kind, name, url in targets))

    async def _probe_health(self, kind: str, name: str, url: str) -> None:
        assert self._session is not None
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=self.config.health_timeout_s), allow_redirects=False
            ) as resp:
                await resp.read()
                ok, reason = resp.status == 200, f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            ok, reason = False, f"no answer within {self.config.health_timeout_s} s"
        except (aiohttp.ClientError, OSError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.core.on_health_probe(kind, name, ok, reason)

    async def _probe_loop(self, round_: Callable[[], Coroutine[Any, Any, None]], period: str, lag_name: str) -> None:
        """Run ``round_`` forever; the next round starts one ``period`` (an :class:`LbConfig`
        field) after the previous one started, or at once when it took longer (as the
        original's probes)."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            try:
                await round_()
            except Exception:  # pragma: no cover - keep probing; the bug shows in the log
                log.exception("%s round failed", lag_name)
            await self.lag.sleep(lag_name, max(0.0, self.config.loop_interval_s(period) - (loop.time() - start)))

    async def steal_round(self) -> int:
        """One round of the stealing loop: start latency checks of new peers, then let the
        core steal; returns how many requests the victims handed over."""
        for name, url in self.core.peers_to_measure():
            self._spawn(self._measure_peer(name, url), f"latency-{name}")
        return await self._run_peer_calls(self.core.steal_round())

    async def _measure_peer(self, name: str, url: str) -> None:
        assert self._session is not None
        latency: float | None = None
        try:
            latency = await measure_latency(
                self._session, url, self.config.lb_rpc_timeout_s, self.config.latency_check_attempts
            )
        finally:
            self.core.on_peer_latency(name, url, latency)

    async def _steal_loop(self) -> None:
        while True:
            await self.lag.sleep("steal_loop", self.config.loop_interval_s("steal_interval_s"))
            try:
                await self.steal_round()
            except Exception:  # pragma: no cover - keep stealing; the bug shows in the log
                log.exception("steal round failed")

    async def probe_peers_once(self) -> None:
        """One rate-limited-push probe round: every peer's ``/conf``, concurrently."""
        await self._run_peer_calls(self.core.peer_probe_round())


    async def _eviction_loop(self, kind: str, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.core.evict(kind)


async def serve(
    lb: LoadBalancer,
    sock: socket.socket,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``lb`` on the already-bound ``sock`` until ``stop`` is set."""
    await serve_app(lb.make_app(), sock, stop, on_ready)
