"""One load-balancer process: admission, the 10 ms queue processor, dispatch and endpoints.

Request path (reference §2.2, LB-B), with the two deliberate fixes:

1. The handler appends a :class:`~.queue.RequestEntry` to the FIFO and waits for a decision.
2. Every ``tick_s`` the queue processor pops head entries and, for each, tries in order:

   a. **push to an LB** (``LbMode.PUSH``, user requests only): the meta policy picks among all
      LBs, self included. A remote pick is forwarded with ``X-Sky-Serve-From-LB: true``.
      *Departure:* when the pick is this LB, the request continues locally instead of taking
      an HTTP hop to our own URL (the original hopped); it is accounted exactly like a hop
      (meta pre/post hooks on self, ``lb-decision`` and ``second-hop-*`` headers).
   b. **no replicas** after membership → 503 "No ready replicas" (before the first
      membership, requests simply wait);
   c. **local replica** chosen by the replica policy among available replicas;
   d. *(rate-limited push, later issue)*;
   e. otherwise the entry goes back to the **head** of the queue. *Fix 1:* the original
      dropped it on two paths; here no path drops a request.

   *Fix 2:* the processor keeps going while head entries can be placed and stops at the
   first that cannot (FIFO kept); ``mimic_one_dispatch_per_tick`` restores the original one
   pop per tick.
3. Dispatch runs the pool's pre hook synchronously (so the next selection in the same tick
   sees the new load), then the handler proxies and streams; post hooks run when the stream
   ends, fails, or the client leaves. "Load" = open streams.

Endpoints: ``GET /sky-lb-health``, ``GET /conf``, ``POST /lbbench/membership`` (replaces the
controller sync), ``POST /steal-request`` (501 until stealing lands), and a catch-all proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from .config import IMPLEMENTED_LB_MODES, LbConfig, ReplicaMode
from .policies import HASH_KEY_HEADER, RequestInfo, make_policy, request_text
from .pool import TargetPool
from .probe import probe_engine_queues
from .proxy import forward, json_error
from .queue import Dispatch, Failure, LbHop, Outcome, RequestEntry, RequestQueue

__all__ = ["FROM_LB_HEADER", "QUEUE_SIZE_HEADER", "LoadBalancer", "serve"]

log = logging.getLogger("pytest_lbbench.lb")

FROM_LB_HEADER = "X-Sky-Serve-From-LB"
QUEUE_SIZE_HEADER = "X-Sky-Serve-Queue-Size"
MEMBERSHIP_PATH = "/lbbench/membership"
# Chat prompts of long conversations can be large; aiohttp's default cap is 1 MiB (the SGLang
# router allowed 4 MB).
_MAX_BODY_BYTES = 64 * 1024 * 1024


class MembershipError(ValueError):
    """A membership payload that cannot be applied."""


class LoadBalancer:
    """The state and behaviour of one LB; :meth:`make_app` exposes it over HTTP."""

    def __init__(self, config: LbConfig, *, name: str, region: str) -> None:
        if config.lb_mode not in IMPLEMENTED_LB_MODES:
            supported = ", ".join(sorted(m.value for m in IMPLEMENTED_LB_MODES))
            raise NotImplementedError(
                f"LB mode {config.lb_mode.value!r} is not implemented yet; supported: {supported}"
            )
        self.config = config
        self.name = name
        self.region = region
        self.replicas = TargetPool("replica", make_policy(config.policy))
        self.lbs = TargetPool("lb", make_policy(config.meta_policy))
        if config.replica_mode is ReplicaMode.PUSH:
            self.replicas.policy.enable_load_balancing()
        if config.lb_mode.meta_load_balancing:
            self.lbs.policy.enable_load_balancing()
        self.queue = RequestQueue()
        self.lb_regions: dict[str, str] = {}
        # Last queue size seen per peer LB (rate-limited push probes fill it; -1 = unknown).
        self.lb_queue_sizes: dict[str, int] = {}
        self.dispatched_total = 0
        self.forwarded_total = 0
        self.failed_total = 0  # answered by the LB itself (503 "No ready replicas")
        self.upstream_errors_total = 0  # upstream failed: 502, or a stream aborted midway
        self._needs_text = self.replicas.policy.needs_text or (
            config.lb_mode.pushes_user_requests and self.lbs.policy.needs_text
        )
        self._session: aiohttp.ClientSession | None = None
        # Per read, not per exchange: the original's httpx ``timeout=120`` bounds each step
        # (connect, every read), so a long stream that keeps producing tokens is never cut.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_read=config.stream_timeout_s, sock_connect=config.connect_timeout_s
        )
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ description

    def describe(self) -> dict[str, Any]:
        """Effective configuration: logged once at start as "System Config", and meant to be
        recorded with results (identity, modes, constants, fixes, policy settings)."""
        return {
            "name": self.name,
            "region": self.region,
            **self.config.to_dict(),
            "replica_policy_config": self.replicas.policy.describe(),
            "meta_policy_config": self.lbs.policy.describe(),
        }

    def conf(self) -> dict[str, Any]:
        """The ``GET /conf`` payload: the original keys plus ours (time, identity, counters)."""
        return {
            "queue_size": len(self.queue),
            "queue_size_actual": self.queue.user_count(),
            "replica_queue": self.replicas.in_flight_by_url(),
            "num_replicas": len(self.replicas.urls),
            "num_available_replicas": len(self.replicas.available()),
            "max_concurrent_requests": self.config.max_concurrent_requests,
            "load_balancing_policy_name": self.config.policy,
            "time": time.time(),
            "name": self.name,
            "region": self.region,
            "lb_mode": self.config.lb_mode.value,
            "replica_mode": self.config.replica_mode.value,
            "dispatched_total": self.dispatched_total,
            "forwarded_total": self.forwarded_total,
            "failed_total": self.failed_total,
            "upstream_errors_total": self.upstream_errors_total,
            "replica_names": {url: name for name, url in self.replicas.urls.items()},
            "lb_queue": self.lbs.in_flight_by_url(),
        }

    # ------------------------------------------------------------------ membership

    def apply_membership(self, payload: Mapping[str, Any]) -> None:
        """Apply ``{"self": name, "lbs": {name: url}, "replicas": {name: url}}``.

        ``lbs`` lists every LB including this one; ``replicas`` are the replicas *this* LB
        dispatches to. Optional ``regions: {component name: region}`` (``lb_regions`` is
        accepted too) names the LB regions shown in ``lb-decision`` headers.
        """
        if not isinstance(payload, Mapping):
            raise MembershipError("membership must be a JSON object")
        me = payload.get("self", self.name)
        if me != self.name:
            raise MembershipError(f"membership is for {me!r}, but this LB is {self.name!r}")
        lbs = _str_map(payload, "lbs")
        replicas = _str_map(payload, "replicas")
        regions = {**_str_map(payload, "regions"), **_str_map(payload, "lb_regions")}
        self.lb_regions.update(regions)
        self.lb_regions[self.name] = self.region
        self.replicas.update(replicas)
        self.lbs.update(lbs)
        log.info(
            "membership: %d replica(s) %s, %d LB(s) %s",
            len(replicas), sorted(replicas), len(lbs), sorted(lbs),
        )

    # ------------------------------------------------------------------ queue processing

    def process_queue(self) -> int:
        """One tick: place head entries until one cannot be placed. Returns entries placed."""
        placed = 0
        while True:
            entry = self.queue.pop_head()
            if entry is None:
                return placed
            if entry.abandoned:  # the client left while queued; its handler cleaned up
                entry.release_all()
                continue
            if not self._place(entry):
                self.queue.put_head(entry)
                return placed
            placed += 1
            if self.config.mimic_one_dispatch_per_tick:
                return placed

    def _place(self, entry: RequestEntry) -> bool:
        """Decide for one entry; False means "not now" (the caller puts it back at the head)."""
        now = time.time()
        if self.config.lb_mode.pushes_user_requests and entry.is_user_request:
            lb = self.lbs.select(entry.info)
            if lb is not None:
                entry.acquire(self.lbs, lb)
                if lb != self.name:
                    self._resolve(entry, self._lb_dispatch(entry, lb, now))
                    self.forwarded_total += 1
                    return True
                # Self: continue as if the request had just arrived from an LB (no HTTP hop).
                entry.lb_hop = LbHop(lb, self.lbs.url_of(lb), self.region, now)
            # No LB known yet (before membership): fall through, as the original did.
        if not self.replicas.known:
            return False
        if not self.replicas.urls:
            self._resolve(entry, Failure(503, "No ready replicas"))
            self.failed_total += 1
            return True
        replica = self.replicas.select(entry.info)
        if replica is not None:
            entry.acquire(self.replicas, replica)
            self._resolve(entry, self._replica_dispatch(entry, replica, now))
            self.dispatched_total += 1
            return True
        return self._try_rate_limited_push(entry)

    def _try_rate_limited_push(self, entry: RequestEntry) -> bool:
        """Step (d): push to a peer LB with spare capacity. Arrives with ``RATE_LIMITED_PUSH``."""
        return False

    @staticmethod
    def _resolve(entry: RequestEntry, outcome: Outcome) -> None:
        entry.time_scheduled = time.time()
        entry.outcome.set_result(outcome)

    def _lb_dispatch(self, entry: RequestEntry, lb: str, now: float) -> Dispatch:
        url = self.lbs.url_of(lb)
        region = self.lb_regions.get(lb, "N/A")
        return Dispatch(
            name=lb,
            url=url,
            to_lb=True,
            extra_request_headers=(
                (FROM_LB_HEADER, "true"),
                (QUEUE_SIZE_HEADER, str(self.lb_queue_sizes.get(lb, -1))),
            ),
            # The original calls the LB hop "second" (its comment: "first and second hop is
            # inversed"), because headers are added on the way back.
            timing_headers=(
                ("second-hop-sky-time-arrive", str(entry.time_arrive)),
                ("second-hop-sky-time-scheduled", str(now)),
            ),
            decision_headers=(("lb-decision", f"Select LB in region {region} ({url})"),),
        )

    def _replica_dispatch(self, entry: RequestEntry, replica: str, now: float) -> Dispatch:
        url = self.replicas.url_of(replica)
        hop = entry.lb_hop
        timing: tuple[tuple[str, str], ...] = (
            ("first-hop-sky-time-arrive", str(hop.time_scheduled if hop else entry.time_arrive)),
            ("first-hop-sky-time-scheduled", str(now)),
        )
        decisions: tuple[tuple[str, str], ...] = (
            ("replica-decision", f"Select Replica with id {self.replicas.ids[replica]} ({url})"),
        )
        extra: tuple[tuple[str, str], ...] = ()
        if hop is not None:
            # What the skipped self-hop would have added on its way back to the client.
            timing += (
                ("second-hop-sky-time-arrive", str(entry.time_arrive)),
                ("second-hop-sky-time-scheduled", str(hop.time_scheduled)),
            )
            decisions += (("lb-decision", f"Select LB in region {hop.region} ({hop.url})"),)
            extra = ((FROM_LB_HEADER, "true"),)
        return Dispatch(
            name=replica,
            url=url,
            to_lb=False,
            extra_request_headers=extra,
            timing_headers=timing,
            decision_headers=decisions,
        )

    # ------------------------------------------------------------------ HTTP handlers

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _conf(self, request: web.Request) -> web.Response:
        return web.json_response(self.conf())

    async def _membership(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            self.apply_membership(payload)
        except (ValueError, MembershipError) as exc:
            return json_error(400, f"bad membership payload: {exc}")
        return web.json_response(
            {"ok": True, "num_replicas": len(self.replicas.urls), "num_lbs": len(self.lbs.urls)}
        )

    async def _steal_request(self, request: web.Request) -> web.Response:
        # Stealing (STEAL_V1/V2) arrives with the systems issue; the victim side slots in here.
        return json_error(501, "request stealing is not implemented by this LB yet")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        arrive = time.time()
        body = await request.read()
        headers = request.headers
        info = RequestInfo(
            text=request_text(request.path, body, request.method) if self._needs_text else None,
            hash_key=headers.get(HASH_KEY_HEADER),
        )
        entry = RequestEntry(
            method=request.method,
            path_qs=request.raw_path,
            headers=tuple(headers.items()),
            body=body,
            info=info,
            from_lb=headers.get(FROM_LB_HEADER, "").lower() == "true",
            time_arrive=arrive,
            outcome=asyncio.get_running_loop().create_future(),
        )
        self.queue.append(entry)
        try:
            outcome = await entry.outcome
            if isinstance(outcome, Failure):
                return json_error(outcome.status, outcome.message)
            assert self._session is not None, "request handled before startup"
            return await forward(
                request, entry, outcome, self._session, self._timeout, self._count_upstream_error
            )
        finally:
            # Runs on every path, including cancellation when the client disconnects
            # (handler_cancellation=True): leave the queue, undo the pre hooks.
            self.queue.remove(entry)
            entry.release_all()

    def _count_upstream_error(self) -> None:
        self.upstream_errors_total += 1

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        """The aiohttp application (routes, startup/cleanup of the session and loops)."""
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_get("/sky-lb-health", self._health)
        app.router.add_get("/conf", self._conf)
        app.router.add_post(MEMBERSHIP_PATH, self._membership)
        app.router.add_post("/steal-request", self._steal_request)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            # Pass bytes through untouched (the client asked for its own encoding) and do not
            # invent headers the client did not send.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self._spawn(self._queue_loop(), "queue-processor")
        if self.config.replica_mode.probes_engine_queue:
            self._spawn(
                probe_engine_queues(
                    self._session, self.replicas, self.config.probe_interval_s,
                    self.config.probe_timeout_s,
                ),
                "engine-queue-probe",
            )
        self._start_eviction(self.replicas)
        if self.config.lb_mode.pushes_user_requests:
            self._start_eviction(self.lbs)
        log.info("System Config: %s", json.dumps(self.describe(), sort_keys=True))

    async def _on_cleanup(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"{self.name}:{name}"))

    def _start_eviction(self, pool: TargetPool) -> None:
        interval = pool.policy.eviction_interval_s
        if interval is not None:
            self._spawn(self._eviction_loop(pool, interval), f"{pool.kind}-eviction")

    async def _queue_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                self.process_queue()
            except Exception:  # pragma: no cover - keep serving; the bug shows in the log
                log.exception("queue processor step failed")

    @staticmethod
    async def _eviction_loop(pool: TargetPool, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            pool.policy.evict()


def _str_map(payload: Mapping[str, Any], key: str) -> dict[str, str]:
    value = payload.get(key, {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise MembershipError(f"{key!r} must be an object of name → string")
    return dict(value)


async def serve(
    lb: LoadBalancer,
    sock: socket.socket,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``lb`` on the already-bound ``sock`` until ``stop`` is set."""
    runner = web.AppRunner(
        lb.make_app(),
        access_log=None,  # one line per request would cost more than the proxying itself
        handler_cancellation=True,  # a client disconnect cancels its handler → upstream closed
        shutdown_timeout=2.0,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        if on_ready is not None:
            on_ready(int(sock.getsockname()[1]))
        await stop.wait()
    finally:
        await runner.cleanup()
