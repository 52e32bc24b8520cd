"""One gateway front end process: health checks, the routing decision, and the streaming proxy.

Request path: the catch-all handler waits (bounded) for the first membership, asks the
:class:`~.routing.Router` for a backend, and proxies with the LB's own
:func:`pytest_lbbench.lb.proxy.forward`, so hop-by-hop handling, streaming, 502s and mid-stream
aborts are identical to our LB's. The response carries upstream headers (``x-lbbench-replica``
among them) plus ``gateway-decision-<n>: Select backend <name> in region <r> (spill: yes|no)``.
There is no queue: like a Google front end, the gateway forwards every request at once.

Endpoints: ``GET /health``, ``GET /conf`` (with ``"lag"``: how late the health-check loop woke,
:mod:`pytest_lbbench.lb.lag`), ``POST /lbbench/membership``, ``POST /lbbench/reset`` (the state
of a fresh process, membership kept; 409 while requests are in flight), catch-all proxy.
Membership and reset need the run's secret (401 without it), and membership may only name
backends on the allowed hosts (:mod:`pytest_lbbench.control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from ..aioserve import serve_app
from ..control import LOOPBACK_TARGETS, AllowedTargets, control_middleware
from ..protocol import MEMBERSHIP_PATH, RESET_PATH, GatewayDecision, GatewayMembership, MembershipError

from ..lb.lag import LoopLag
from ..lb.proxy import RetryElsewhere, forward, json_error
from ..lb.queue import ClientRequest, Dispatch
from ..lb.upstream import Timeouts, UpstreamPool
from .config import GatewayConfig
from .routing import Choice, Router

__all__ = ["DECISION_HEADER", "MEMBERSHIP_PATH", "RESET_PATH", "Gateway", "MembershipError", "serve"]

log = logging.getLogger("pytest_lbbench.gateway")

DECISION_HEADER = GatewayDecision.KEY
# The same cap as our LB: chat prompts of long conversations can be large.
_MAX_BODY_BYTES = 64 * 1024 * 1024


class Gateway:
    """One front end of the emulated GKE multi-cluster Gateway; :meth:`make_app` serves it.

    Rate budgets are accounted per front end: each process only sees the requests it sent
    itself (the real Google front-end fleet shares load reports; ours do not share state).
    """

    def __init__(self, config: GatewayConfig, *, name: str, region: str, control_token: str | None = None,
                 allowed_targets: AllowedTargets | None = None) -> None:
        """``control_token``: the run's secret (None: membership and reset answer 401);
        ``allowed_targets``: hosts membership may name (default: loopback only)."""
        self.config = config
        self.name = name
        self.region = region
        self.control_token = control_token
        self.allowed_targets = allowed_targets or AllowedTargets.parse(LOOPBACK_TARGETS)
        self.router = self._new_router()
        # The last membership applied, so that a reset can rebuild the router around it.
        self._membership_args: tuple[dict[str, str], dict[str, str], list[str]] | None = None
        self.in_flight: dict[str, int] = {}
        self._zero_counters()
        self.lag = LoopLag()
        self.has_membership = False
        self._membership_event: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        # Per read, not per exchange, as in our LB: a long stream that keeps producing tokens
        # must never be cut by a total limit.
        self._timeouts = Timeouts(connect_s=config.connect_timeout_s, read_s=config.stream_timeout_s)
        # Upstream connections of the proxy (and, in the LB, the engine-queue probe): the lean
        # client of :mod:`pytest_lbbench.lb.upstream`; the aiohttp session serves the rest.
        self._upstreams: UpstreamPool | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _new_router(self) -> Router:
        config = self.config
        scale = config.time_scale
        return Router(
            max_rate_per_endpoint=config.max_rate_per_endpoint,
            window_s=config.rate_window_s,
            healthy_threshold=config.healthy_threshold,
            unhealthy_threshold=config.unhealthy_threshold,
            consecutive_errors=config.consecutive_errors if config.outlier_detection else None,
            base_ejection_time_s=config.base_ejection_time_s,
            max_ejection_percent=config.max_ejection_percent,
            # A model clock: budgets and reported rates mean the same at every time scale.
            clock=lambda: time.monotonic() / scale,
        )

    def _zero_counters(self) -> None:
        self.requests_total = 0
        self.failed_total = 0  # answered by the gateway itself (503)
        self.upstream_errors_total = 0  # upstream failed: 502, or a stream aborted midway

    def reset(self) -> dict[str, Any]:
        """The state of a fresh process with the same membership: a new router (no rate history,
        spill counters or round-robin cursors; health as a fresh gateway starts it), counters and
        lag zero. ``RuntimeError`` while a request is in flight."""
        busy = sum(self.in_flight.values())
        if busy:
            raise RuntimeError(
                f"gateway {self.name!r} still has {busy} request(s) in flight; reset only between "
                f"experiments, once every request has finished (retry in a moment)"
            )
        self.router = self._new_router()
        if self._membership_args is not None:
            self.router.set_membership(*self._membership_args)
        self.in_flight = {}
        self._zero_counters()
        self.lag.reset()
        log.info("reset: fresh router, counters and lag; membership kept")
        return {"ok": True, "name": self.name, "num_backends": len(self.router.backends),
                "time": time.time()}

    # ------------------------------------------------------------------ description

    def describe(self) -> dict[str, Any]:
        """Identity and effective configuration (logged once at start)."""
        return {"system": "gke_gateway", "name": self.name, "region": self.region,
                **self.config.to_dict()}

    def conf(self) -> dict[str, Any]:
        """The ``GET /conf`` payload: identity, budget, per-region rates, spills, health."""
        return {
            "time": time.time(),
            "name": self.name,
            "region": self.region,
            "system": "gke_gateway",
            "membership": self.has_membership,
            "max_rate_per_endpoint": self.config.max_rate_per_endpoint,
            "rate_window_s": self.config.rate_window_s,
            "time_scale": self.config.time_scale,
            **self.router.describe(),
            "in_flight": {name: self.in_flight.get(name, 0) for name in self.router.backends},
            "requests_total": self.requests_total,
            "failed_total": self.failed_total,
            "upstream_errors_total": self.upstream_errors_total,
            "lag": self.lag.snapshot(),
        }

    # ------------------------------------------------------------------ membership

    def apply_membership(self, membership: GatewayMembership) -> None:
        """Route to ``membership.backends``, trying regions in ``region_order`` (nearest to this
        front end first; ``None`` means "this front end's region, then the others by name")."""
        backends, regions = membership.backends, membership.regions
        order = list(membership.region_order) if membership.region_order is not None else [self.region]
        try:
            appended = self.router.set_membership(backends, regions, order)
        except ValueError as exc:
            raise MembershipError(str(exc)) from None
        if appended and membership.region_order is not None:
            log.warning("regions %s host backends but are not in region_order; tried last",
                        appended)
        self._membership_args = (dict(backends), dict(regions), list(order))
        self.has_membership = True
        if self._membership_event is not None:
            self._membership_event.set()
        log.info("membership: %d backend(s) %s, region order %s",
                 len(backends), sorted(backends), self.router.region_order)

    # ------------------------------------------------------------------ HTTP handlers

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _conf(self, request: web.Request) -> web.Response:
        return web.json_response(self.conf())

    async def _membership(self, request: web.Request) -> web.Response:
        try:
            membership = GatewayMembership.from_json(await request.json(), self.name)
            refusals = [f"{name}: {reason}" for name, url in membership.backends.items()
                        if (reason := self.allowed_targets.refusal(url)) is not None]
            if refusals:
                return json_error(403, "membership refused: " + "; ".join(refusals)
                                  + ". Start the gateway with --allow-target-hosts naming them if they are the run's own")
            self.apply_membership(membership)
        except (ValueError, MembershipError) as exc:
            return json_error(400, f"bad membership payload: {exc}")
        return web.json_response(
            {"ok": True, "num_backends": len(self.router.backends),
             "region_order": self.router.region_order}
        )

    async def _wait_for_membership(self) -> bool:
        if self.has_membership:
            return True
        assert self._membership_event is not None, "request handled before startup"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._membership_event.wait(), self.config.membership_wait_s)
        return self.has_membership

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        self.requests_total += 1
        body = await request.read()
        if not await self._wait_for_membership():
            self.failed_total += 1
            return json_error(
                503,
                f"gateway {self.name} has no backends yet: no membership was posted to "
                f"{MEMBERSHIP_PATH} within {self.config.membership_wait_s} s",
                gateway=self.name,
            )
        client_request = ClientRequest(request.method, request.raw_path, tuple(request.headers.items()), body)
        tried: set[str] = set()
        while True:
            choice = self.router.choose(exclude=frozenset(tried))
            if choice is None:
                self.failed_total += 1
                return json_error(503, f"gateway {self.name}: no healthy backends in any region",
                                  gateway=self.name)
            assert self._upstreams is not None, "request handled before startup"
            retry_allowed = self.config.retry_before_first_byte and not tried
            tried.add(choice.backend)

            def start_failed(reason: str, backend: str = choice.backend, retry: bool = retry_allowed) -> bool:
                self._start_failed(backend, reason)
                return retry

            self.in_flight[choice.backend] = self.in_flight.get(choice.backend, 0) + 1
            try:
                response = await forward(
                    request, client_request, self._dispatch(choice), self._upstreams, self._timeouts,
                    self._count_upstream_error,
                    start_failed,
                )
                if response.prepared and response.status < 500:
                    self.router.record_request(choice.backend, ok=True)
                return response
            except RetryElsewhere as exc:
                log.info("%s; sending the request once more", exc)
            finally:
                # Runs on every path, including cancellation when the client disconnects.
                self.in_flight[choice.backend] -= 1

    def _start_failed(self, backend: str, reason: str) -> None:
        """A request to ``backend`` failed before its first byte: outlier detection counts it."""
        if self.router.record_request(backend, ok=False):
            log.warning("backend %s ejected by outlier detection (%s)", backend, reason)

    @staticmethod
    def _dispatch(choice: Choice) -> Dispatch:
        return Dispatch(
            name=choice.backend,
            url=choice.url,
            to_lb=False,
            decisions=(GatewayDecision(choice.backend, choice.region, choice.spill),),
        )

    async def _reset(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.reset())
        except RuntimeError as exc:
            return json_error(409, str(exc))

    def _count_upstream_error(self) -> None:
        self.upstream_errors_total += 1

    # ------------------------------------------------------------------ health checks

    async def _probe(self, name: str, url: str) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.config.probe_timeout_s)
        ok = False
        try:
            async with self._session.get(
                url.rstrip("/") + self.config.health_path, timeout=timeout, allow_redirects=False
            ) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        if self.router.record_probe(name, ok):
            state = "healthy" if ok else "UNHEALTHY"
            log.warning("backend %s (%s) is now %s", name, url, state)

    async def _health_loop(self) -> None:
        while True:
            # Probe all backends concurrently, then wait one interval: a hung backend costs one
            # probe timeout, never a stalled loop.
            targets = [(b.name, b.url) for b in self.router.backends.values()]
            if targets:
                await asyncio.gather(*(self._probe(n, u) for n, u in targets))
            await self.lag.sleep("health_probe", self.config.health_interval_s)

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        """The aiohttp application (routes, startup/cleanup of the session and health loop)."""
        app = web.Application(
            client_max_size=_MAX_BODY_BYTES,
            middlewares=[control_middleware(self.control_token, (MEMBERSHIP_PATH, RESET_PATH),
                                            max_body_bytes=_MAX_BODY_BYTES, server=f"gateway {self.name}")],
        )
        app.router.add_get("/health", self._health)
        app.router.add_get("/conf", self._conf)
        app.router.add_post(MEMBERSHIP_PATH, self._membership)
        app.router.add_post(RESET_PATH, self._reset)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._membership_event = asyncio.Event()
        if self.has_membership:
            self._membership_event.set()
        self._upstreams = UpstreamPool()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            # As our LB: pass bytes through untouched and invent no headers.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self._tasks.append(asyncio.create_task(self._health_loop(), name=f"{self.name}:health"))
        log.info("System Config: %s", json.dumps(self.describe(), sort_keys=True))

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


async def serve(
    gateway: Gateway,
    sock: socket.socket,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``gateway`` on the already-bound ``sock`` until ``stop`` is set."""
    await serve_app(gateway.make_app(), sock, stop, on_ready)
