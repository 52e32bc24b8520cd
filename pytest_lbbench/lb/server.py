"""One load-balancer process: admission, the 10 ms queue processor, dispatch and endpoints.

Request path (reference §2.2, LB-B), with the two deliberate fixes:

1. The handler appends a :class:`~.queue.RequestEntry` to the FIFO and waits for a decision.
2. Every ``tick_s`` the queue processor pops head entries and, for each, tries in order:

   a. **push to an LB** (``LbMode.PUSH``, user requests only): the meta policy picks among all
      LBs, self included. A remote pick is forwarded with ``X-Sky-Serve-From-LB: true``.
      *Departure:* when the pick is this LB, the request does not take an HTTP hop to our own
      URL (the original hopped); it is accounted exactly like a hop (meta pre/post hooks on
      self, ``lb-decision`` and ``second-hop-*`` headers). With the original's one pop per tick
      it re-enters the queue at the tail, as the hopped request did, and a later tick
      dispatches it; with ``dispatch_all_placeable`` it continues locally at once.
   b. **no replicas** after membership → 503 "No ready replicas" (before the first
      membership, requests simply wait);
   c. **local replica** chosen by the replica policy among available replicas (``PULL``:
      last engine probe showed an empty waiting queue; ``PUSH``: always; ``CAP``: fewer than
      ``max_concurrent_requests`` in flight from this LB). ``RATE_LIMITED_PUSH`` records the
      request in the meta tree under this LB's own name;
   d. **rate-limited push** (``RATE_LIMITED_PUSH``, user requests only): the meta policy picks
      among the peers found available (:func:`.peers.peer_accepts_push`), never self. As in the
      original, availability is decided at probe time against our queue size at that moment
      and our own pushes do not change it until the next probe (``rate_limit_availability`` and
      ``rate_limit_count_own_pushes`` select our variants);
   e. otherwise the entry goes back to the **head** of the queue. *Fix 1:* the original
      dropped it on two paths; here no path drops a request.

   As in the original, one entry is popped per tick. Our variant ``dispatch_all_placeable``
   keeps going while head entries can be placed and stops at the first that cannot (FIFO
   kept).
3. Dispatch runs the pool's pre hook synchronously (so the next selection in the same tick
   sees the new load), then the handler proxies and streams; post hooks run when the stream
   ends, fails, or the client leaves. "Load" = open streams.

LB-level background work besides the queue processor:

* ``STEAL_V1``/``STEAL_V2``: a stealing loop every ``steal_interval_s`` (10 ms, as the
  original; :meth:`LoadBalancer.steal_round`).
  Peers are ordered by a ``/sky-lb-health`` latency measured once when first seen. The victim
  side is :meth:`LoadBalancer.hand_over`. In these modes the meta tree learns only from
  requests handed to thieves (the original skipped the self hooks), kept as is.
* ``RATE_LIMITED_PUSH``: every peer's ``/conf`` every ``lb_probe_interval_s``
  (:meth:`LoadBalancer.probe_peers_once`).

Every LB↔LB control call has a timeout (``lb_rpc_timeout_s``); the original had none.

Endpoints: ``GET /sky-lb-health``, ``GET /conf`` (with ``"lag"``: how late the periodic loops
woke, :mod:`.lag`), ``POST /lbbench/membership`` (replaces the controller sync),
``POST /lbbench/reset`` (the state of a fresh process, membership kept; 409 while requests are
queued or in flight), ``POST /steal-request`` (steal modes; 409 in the others), and a catch-all
proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from ..aioserve import serve_app, string_map

from .config import IMPLEMENTED_LB_MODES, LbConfig, LbMode, ReplicaMode
from .lag import LoopLag
from .peers import (
    PeerLoad,
    PeerStatus,
    fetch_conf,
    measure_latency,
    peer_accepts_push,
    plan_v1_steal,
    post_steal,
    rank_steal_candidates,
)
from pytest_lbbench.protocol import FROM_LB_HEADER, HASH_KEY_HEADER, MEMBERSHIP_PATH, QUEUE_SIZE_HEADER, RESET_PATH

from .policies import Policy, RequestInfo, make_policy, request_text
from .pool import TargetPool
from .probe import probe_engine_queues
from .proxy import forward, json_error
from .queue import Dispatch, Failure, LbHop, Outcome, RequestEntry, RequestQueue

__all__ = ["FROM_LB_HEADER", "QUEUE_SIZE_HEADER", "RESET_PATH", "LoadBalancer", "serve"]

log = logging.getLogger("pytest_lbbench.lb")

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
        cap = config.max_concurrent_requests if config.replica_mode is ReplicaMode.CAP else None
        per_probe = (
            config.pull_dispatches_per_probe
            if config.replica_mode is ReplicaMode.PULL and config.pull_dispatches_per_probe > 0
            else None
        )
        self.replicas = TargetPool(
            "replica", self._new_replica_policy(), concurrency_cap=cap, dispatches_per_probe=per_probe,
        )
        # The original's ClientPool for LBs shares ``use_ie_queue_indicator`` with the replica
        # pool: with the concurrency cap (``USE_IE_QUEUE_INDICATOR=false``) its hooks cap the
        # requests in flight to each LB at ``max_concurrent_requests`` as well.
        self.lbs = TargetPool("lb", self._new_meta_policy(), concurrency_cap=cap)
        self.queue = RequestQueue()
        self.lag = LoopLag()
        self.lb_regions: dict[str, str] = {}
        # Rate-limited push: each peer's load from its last ``/conf`` (absent = unknown, which
        # makes the peer unavailable).
        self.peer_status: dict[str, PeerStatus] = {}
        # Stealing: ``/sky-lb-health`` latency per peer, measured once per (name, URL).
        self.peer_latency: dict[str, tuple[str, float]] = {}
        self._latency_pending: set[str] = set()
        self._zero_counters()
        self._needs_text = self.replicas.policy.needs_text or (
            config.lb_mode.uses_meta_policy and self.lbs.policy.needs_text
        )
        self._session: aiohttp.ClientSession | None = None
        # Per read, not per exchange: the original's httpx ``timeout=120`` bounds each step
        # (connect, every read), so a long stream that keeps producing tokens is never cut.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_read=config.stream_timeout_s, sock_connect=config.connect_timeout_s
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _new_replica_policy(self) -> Policy:
        config = self.config
        policy = make_policy(config.policy, **config.policy_kwargs(config.policy))
        if config.replica_mode.replica_load_balancing:
            policy.enable_load_balancing()
        return policy

    def _new_meta_policy(self) -> Policy:
        config = self.config
        policy = make_policy(config.meta_policy, **config.policy_kwargs(config.meta_policy))
        if config.lb_mode.meta_load_balancing:
            policy.enable_load_balancing()
        return policy

    def _zero_counters(self) -> None:
        self.dispatched_total = 0
        self.forwarded_total = 0  # sent to another LB: pushed + stolen away
        self.pushed_total = 0  # sent to another LB by this LB's own decision (push modes)
        self.self_pushed_total = 0  # PUSH mode: the meta policy picked this LB itself
        self.stolen_total = 0  # received through this LB's steal requests (as the victims said)
        self.stolen_away_total = 0  # handed to thieves
        self.failed_total = 0  # answered by the LB itself (503 "No ready replicas")
        self.upstream_errors_total = 0  # upstream failed: 502, or a stream aborted midway

    def busy(self) -> str | None:
        """Why :meth:`reset` must wait (requests queued or in flight), or None when idle."""
        in_flight = sum(self.replicas.in_flight.values()) + sum(self.lbs.in_flight.values())
        if len(self.queue) or in_flight:
            return (f"LB {self.name!r} still holds {len(self.queue)} queued and {in_flight} in-flight "
                    f"request(s); reset only between experiments, once every request has finished "
                    f"(retry in a moment)")
        return None

    def reset(self) -> dict[str, Any]:
        """Give this LB the state of a fresh process, keeping its membership.

        Fresh replica and meta policies (empty prefix trees, round-robin at the first target,
        zero least-load counts; the consistent-hash ring is rebuilt from the same members, so it
        is the ring a fresh process builds), every target available again, no peer status or
        latency (re-measured as a fresh LB would), counters and lag zero. Raises
        ``RuntimeError`` (the message of :meth:`busy`) when requests are queued or in flight.
        """
        reason = self.busy()
        if reason is not None:
            raise RuntimeError(reason)
        self.replicas.reset(self._new_replica_policy())
        self.lbs.reset(self._new_meta_policy())
        self.queue = RequestQueue()
        self.peer_status = {}
        self.peer_latency = {}
        self._zero_counters()
        self.lag.reset()
        log.info("reset: fresh policies, queues, counters and lag; membership kept")
        return {
            "ok": True, "name": self.name, "num_replicas": len(self.replicas.urls),
            "num_lbs": len(self.lbs.urls), "time": time.time(),
        }

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
        """The ``GET /conf`` payload: the original keys plus ours (time, identity, counters, lag)."""
        available_peers = set(self.push_candidates(len(self.queue)))
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
            "pushed_total": self.pushed_total,
            "self_pushed_total": self.self_pushed_total,
            "stolen_total": self.stolen_total,
            "stolen_away_total": self.stolen_away_total,
            "failed_total": self.failed_total,
            "upstream_errors_total": self.upstream_errors_total,
            "replica_names": {url: name for name, url in self.replicas.urls.items()},
            "lb_queue": self.lbs.in_flight_by_url(),
            "lb_status": {
                name: {
                    "queue_size": st.queue_size,
                    "num_available_replicas": st.num_available_replicas,
                    "pushed_since_probe": st.pushed_since_probe,
                    "own_queue_at_probe": st.own_queue_at_probe,
                    "available": name in available_peers,
                    "age_s": round(time.monotonic() - st.seen_at, 3),
                }
                for name, st in self.peer_status.items()
            },
            "lb_latency_s": {
                name: (None if latency == float("inf") else latency)
                for name, (_, latency) in self.peer_latency.items()
            },
            "lag": self.lag.snapshot(),
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
        lbs = string_map(payload, "lbs", MembershipError)
        replicas = string_map(payload, "replicas", MembershipError)
        regions = {
            **string_map(payload, "regions", MembershipError),
            **string_map(payload, "lb_regions", MembershipError),
        }
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
            if not self.config.dispatch_all_placeable:
                return placed  # the original: one pop per tick

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
                    self.pushed_total += 1
                    return True
                # Self: as if the request had just arrived from an LB (no HTTP hop).
                entry.lb_hop = LbHop(lb, self.lbs.url_of(lb), self.region, now)
                self.self_pushed_total += 1
                if not self.config.dispatch_all_placeable:
                    # The original's self-hop: the request re-enters our queue at the tail and a
                    # later tick (one pop each) dispatches it.
                    self.queue.append(entry)
                    return True
            # No LB known yet (before membership): fall through, as the original did.
        if not self.replicas.known:
            return False
        if not self.replicas.urls:
            self._resolve(entry, Failure(503, "No ready replicas"))
            self.failed_total += 1
            return True
        replica = self.replicas.select(entry.info)
        if replica is not None:
            if self.config.lb_mode.meta_records_self and self.name in self.lbs.urls:
                entry.acquire(self.lbs, self.name)
            entry.acquire(self.replicas, replica)
            self._resolve(entry, self._replica_dispatch(entry, replica, now))
            self.dispatched_total += 1
            return True
        return self._try_rate_limited_push(entry, now)

    def push_candidates(self, own_queue_size: int) -> list[str]:
        """Peers (never self) that the rate-limited push may use now, in membership order.

        ``own_queue_size`` (our queue now) is compared only with ``rate_limit_availability =
        "dispatch"``; the original's ``"probe"`` compares with our queue at the start of the
        probe round that read the peer, so the verdict is the probe's until the next one."""
        count_own = self.config.rate_limit_count_own_pushes
        at_probe = self.config.rate_limit_availability == "probe"
        candidates = []
        for name in self.lbs.urls:
            status = self.peer_status.get(name)
            if name == self.name or status is None or not self.lbs.is_available(name):
                continue
            if peer_accepts_push(
                peer_queue_size=status.effective_queue_size(count_own),
                peer_available_replicas=status.num_available_replicas,
                own_queue_size=status.own_queue_at_probe if at_probe else own_queue_size,
                threshold=self.config.rate_limit_queue_threshold,
            ):
                candidates.append(name)
        return candidates

    def _try_rate_limited_push(self, entry: RequestEntry, now: float) -> bool:
        """Step (d): push a user request to a peer LB that advertises spare capacity."""
        if self.config.lb_mode is not LbMode.RATE_LIMITED_PUSH or not entry.is_user_request:
            return False
        # Our queue as ``/conf`` would show it right now: the popped head counts.
        lb = self.lbs.select_among(entry.info, self.push_candidates(len(self.queue) + 1))
        if lb is None:
            return False
        entry.acquire(self.lbs, lb)
        self._resolve(entry, self._lb_dispatch(entry, lb, now))
        self.peer_status[lb].pushed_since_probe += 1
        self.pushed_total += 1
        self.forwarded_total += 1
        return True

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
                (QUEUE_SIZE_HEADER, str(self._last_seen_queue_size(lb))),
            ),
            # The original calls the LB hop "second" (its comment: "first and second hop is
            # inversed"), because headers are added on the way back.
            timing_headers=(
                ("second-hop-sky-time-arrive", str(entry.time_arrive)),
                ("second-hop-sky-time-scheduled", str(now)),
            ),
            decision_headers=(("lb-decision", f"Select LB in region {region} ({url})"),),
        )

    def _last_seen_queue_size(self, lb: str) -> int:
        status = self.peer_status.get(lb)
        return -1 if status is None else status.queue_size

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

    # ------------------------------------------------------------------ stealing

    def resolve_lb(self, ref: str) -> str | None:
        """The membership name of an LB given by name or by URL (None if unknown)."""
        if ref in self.lbs.urls:
            return ref
        wanted = ref.rstrip("/")
        for name, url in self.lbs.urls.items():
            if url.rstrip("/") == wanted:
                return name
        return None

    def hand_over(self, thief: str, num_steal: int) -> int:
        """Victim side of ``/steal-request``: give ``thief`` up to ``num_steal`` queued user requests.

        Runs without awaiting, so the scan and the removal are atomic with respect to the queue
        processor (the original held the queue lock). Candidates are ranked by
        :func:`.peers.rank_steal_candidates`; each chosen entry leaves the queue and is forwarded
        to the thief as a from-LB request, with the meta pre hook under the thief's name (so this
        LB's meta tree learns that the thief now serves the prefix). Returns how many were given.
        """
        if num_steal <= 0:
            return 0
        candidates = [e for e in self.queue if e.is_user_request and not e.abandoned]
        if not candidates:
            return 0
        ranked = rank_steal_candidates(candidates, self.lbs.policy, self.lbs.available(), thief)
        chosen = ranked[:num_steal]
        now = time.time()
        for entry in chosen:
            self.queue.remove(entry)
            entry.acquire(self.lbs, thief)
            self._resolve(entry, self._lb_dispatch(entry, thief, now))
        self.stolen_away_total += len(chosen)
        self.forwarded_total += len(chosen)
        return len(chosen)

    def steal_targets(self) -> list[str]:
        """Every peer, nearest first. As in the original's ``_steal_targets`` (a new LB URL gets
        ``PoolEntry(latency=inf)`` until its latency check returns), a peer not measured yet, or
        measured at an old URL, is a target too, ordered last (ties in membership order)."""
        ranked = []
        for index, (name, url) in enumerate(self.lbs.urls.items()):
            if name == self.name:
                continue
            measured = self.peer_latency.get(name)
            latency = measured[1] if measured is not None and measured[0] == url else math.inf
            ranked.append((latency, index, name))
        return [name for _, _, name in sorted(ranked)]

    def _check_new_peers(self) -> None:
        """Start a latency check for every peer (or changed peer URL) not measured yet."""
        for name, url in self.lbs.urls.items():
            if name == self.name or name in self._latency_pending:
                continue
            measured = self.peer_latency.get(name)
            if measured is None or measured[0] != url:
                self._latency_pending.add(name)
                self._spawn(self._measure_peer(name, url), f"latency-{name}")

    async def _measure_peer(self, name: str, url: str) -> None:
        assert self._session is not None
        try:
            latency = await measure_latency(
                self._session, url, self.config.lb_rpc_timeout_s, self.config.latency_check_attempts
            )
            self.peer_latency[name] = (url, latency)
        finally:
            self._latency_pending.discard(name)

    def own_inflight(self) -> int:
        """Requests streaming to this LB's replicas (``Σ replica_queue`` of our ``/conf``)."""
        return sum(self.replicas.in_flight_by_url().values())

    async def steal_round(self) -> int:
        """One round of the stealing loop; returns how many requests the victims handed over."""
        self._check_new_peers()
        if self.name not in self.lbs.urls:  # own identity not in the LB list: never steal
            return 0
        # The original reads ``self_qsize`` once, at the start of the round, and V1 uses that
        # value after the peers' ``/conf`` replies came back.
        own_queue_size = len(self.queue)
        if own_queue_size > self.config.steal_threshold or not self.replicas.available():
            return 0
        targets = self.steal_targets()
        if not targets:
            return 0
        if self.config.lb_mode is LbMode.STEAL_V1:
            stolen = await self._steal_v1(targets, own_queue_size)
        else:
            stolen = await self._steal_v2(targets)
        self.stolen_total += stolen
        return stolen

    async def _steal_v1(self, targets: list[str], own_queue_size: int) -> int:
        assert self._session is not None
        session, timeout = self._session, self.config.lb_rpc_timeout_s
        confs = await asyncio.gather(
            *(fetch_conf(session, self.lbs.url_of(t), timeout) for t in targets)
        )
        peers: list[tuple[str, PeerLoad]] = []
        for target, conf in zip(targets, confs):
            if conf is None:
                continue
            try:
                peers.append((target, PeerLoad.from_conf(conf)))
            except ValueError as exc:
                log.debug("ignoring /conf of %s: %s", target, exc)
        if not peers:
            return 0
        plan = plan_v1_steal(
            own_queue_size=own_queue_size,
            own_inflight=self.own_inflight(),
            own_num_replicas=len(self.replicas.urls),
            peers=peers,
        )
        if not plan.steals:
            return 0
        log.debug("V1 steal plan: %s", plan)
        remaining = await asyncio.gather(
            *(post_steal(session, self.lbs.url_of(t), n, self.name, timeout) for t, n in plan.steals)
        )
        return sum(n - left for (_, n), left in zip(plan.steals, remaining) if left is not None)

    async def _steal_v2(self, targets: list[str]) -> int:
        assert self._session is not None
        wanted = self.config.steal_v2_batch_factor * len(self.replicas.available())
        stolen = 0
        for target in targets:
            if wanted <= 0:
                break
            left = await post_steal(
                self._session, self.lbs.url_of(target), wanted, self.name,
                self.config.lb_rpc_timeout_s,
            )
            if left is None:
                continue
            stolen += wanted - left
            wanted = left
        return stolen

    # ------------------------------------------------------------------ rate-limited push

    async def probe_peers_once(self) -> None:
        """Read every peer's ``/conf`` concurrently; a peer that fails becomes unknown
        (unavailable) until it answers again, and our push count for it restarts at 0."""
        assert self._session is not None
        # The original reads ``self_qsize`` once, before the round's requests go out.
        own_queue_size = len(self.queue)
        peers = [(n, u) for n, u in self.lbs.urls.items() if n != self.name]
        confs = await asyncio.gather(
            *(fetch_conf(self._session, url, self.config.lb_rpc_timeout_s) for _, url in peers)
        )
        seen: dict[str, PeerStatus] = {}
        for (name, _), conf in zip(peers, confs):
            if conf is None:
                continue
            try:
                seen[name] = PeerStatus.from_conf(conf, own_queue_size)
            except ValueError as exc:
                log.debug("ignoring /conf of %s: %s", name, exc)
        self.peer_status = seen

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
        thief = self.resolve_lb(source)
        if thief is None or thief == self.name:
            return json_error(400, f"steal request from unknown LB {source!r}")
        stolen = self.hand_over(thief, num)
        return web.json_response({"remaining_to_steal": num - stolen, "stolen": stolen})

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
        app.router.add_post(RESET_PATH, self._reset)
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
                    self.config.probe_timeout_s, self.lag,
                ),
                "engine-queue-probe",
            )
        self._start_eviction(self.replicas)
        if self.config.lb_mode.uses_meta_policy:
            self._start_eviction(self.lbs)
        if self.config.lb_mode.steals:
            self._spawn(self._steal_loop(), "steal-loop")
        if self.config.lb_mode.probes_peer_status:
            self._spawn(self._peer_status_loop(), "lb-status-probe")
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
            await self.lag.sleep("queue_tick", self.config.tick_s)
            try:
                self.process_queue()
            except Exception:  # pragma: no cover - keep serving; the bug shows in the log
                log.exception("queue processor step failed")

    async def _steal_loop(self) -> None:
        while True:
            await self.lag.sleep("steal_loop", self.config.steal_interval_s)
            try:
                await self.steal_round()
            except Exception:  # pragma: no cover - keep stealing; the bug shows in the log
                log.exception("steal round failed")

    async def _peer_status_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            try:
                await self.probe_peers_once()
            except Exception:  # pragma: no cover
                log.exception("peer status probe failed")
            await self.lag.sleep(
                "lb_status_probe", max(0.0, self.config.lb_probe_interval_s - (loop.time() - start))
            )

    @staticmethod
    async def _eviction_loop(pool: TargetPool, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            pool.policy.evict()


async def serve(
    lb: LoadBalancer,
    sock: socket.socket,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``lb`` on the already-bound ``sock`` until ``stop`` is set."""
    await serve_app(lb.make_app(), sock, stop, on_ready)
