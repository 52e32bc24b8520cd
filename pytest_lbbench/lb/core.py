"""The decisions of one load balancer, without I/O: events in, actions out.

:class:`LbCore` holds everything an LB knows (its replicas and peer LBs with their policies,
the request queue, what the peers last reported, counters) and changes it only in answer to
an event. It never opens a socket, never awaits, and never reads a clock of its own: the time
comes from the ``clock`` it was given (the HTTP shell gives ``time.time``; a simulation gives
a virtual clock). The HTTP shell (:mod:`.server`) turns HTTP into these calls and their results
into HTTP.

Events and what they return:

============================================  ==============================================
event                                         result
============================================  ==============================================
:meth:`~LbCore.apply_membership`              the new replicas and LBs (new ones available)
:meth:`~LbCore.arrive` (request arrived)      its :class:`~.queue.RequestEntry`, queued
:meth:`~LbCore.tick` (queue processor tick)   entries decided now: each has ``outcome`` set
                                              (:class:`~.queue.Dispatch` to a replica or a
                                              peer LB, or :class:`~.queue.Failure`); entries
                                              not decided stay queued ("hold")
:meth:`~LbCore.leave` (stream ended / client  the entry leaves the queue, its pre hooks are
gone)                                         undone
:meth:`~LbCore.on_engine_queue` (probe)       replica (un)available
:meth:`~LbCore.peer_probe_round`              a generator: yields :class:`FetchConfs`, takes
                                              :class:`ConfReplies`, stores the peers' status
:meth:`~LbCore.steal_round`                   a generator: yields :class:`FetchConfs` /
                                              :class:`AskSteal`, takes their replies, returns
                                              how many requests the victims handed over
:meth:`~LbCore.hand_over` (steal asked)       entries handed to the thief (outcome: forward)
:meth:`~LbCore.peers_to_measure` /            which peers need a latency check; its result
:meth:`~LbCore.on_peer_latency`
:meth:`~LbCore.evict` (eviction tick)         the pool's prefix tree trimmed
:meth:`~LbCore.health_probe_targets` /        what the health probe checks; a failed probe
:meth:`~LbCore.on_health_probe`               ejects the target, an answer readmits it
:meth:`~LbCore.on_start_failure` (upstream    the target is ejected; True when the request
failed before its first byte)                 is to be decided again (:meth:`~LbCore.retry`)
:meth:`~LbCore.reset`                         the state of a fresh process, membership kept
============================================  ==============================================

Request path (reference §2.2, LB-B), with the two deliberate fixes. Every ``tick_s`` the queue
processor pops head entries and, for each, tries in order:

a. **push to an LB** (``LbMode.PUSH``, user requests only): the meta policy picks among all
   LBs, self included. A remote pick is forwarded with ``X-Sky-Serve-From-LB: true``.
   *Departure:* when the pick is this LB, the request does not take an HTTP hop to our own
   URL (the original hopped); it is accounted exactly like a hop (meta pre/post hooks on
   self, and the ``lb-decision`` and ``second-hop-*`` headers the hop would have added, with
   the times of this LB's own decision). With the original's one pop per tick it re-enters
   the queue at the tail, as the hopped request did, and a later tick dispatches it; with
   ``dispatch_all_placeable`` it continues locally at once.
b. **no replicas** after membership → 503 "No ready replicas" (before the first membership,
   requests simply wait); *our addition:* every replica ejected (see Health) and no healthy peer
   that could take the request → 503 "No healthy replicas";
c. **local replica** chosen by the replica policy among available replicas (``PULL``: last
   engine probe showed an empty waiting queue; ``PUSH``: always; ``CAP``: fewer than
   ``max_concurrent_requests`` in flight from this LB). ``RATE_LIMITED_PUSH`` records the
   request in the meta tree under this LB's own name;
d. **rate-limited push** (``RATE_LIMITED_PUSH``, user requests only): the meta policy picks
   among the peers found available (:func:`.peers.peer_accepts_push`), never self. As in the
   original, availability is decided at probe time against our queue size at that moment and
   our own pushes do not change it until the next probe (``rate_limit_availability`` and
   ``rate_limit_count_own_pushes`` select our variants);
e. otherwise the entry goes back to the **head** of the queue. *Fix 1:* the original dropped
   it on two paths; here no path drops a request.

As in the original, one entry is popped per tick. Our variant ``dispatch_all_placeable`` keeps
going while head entries can be placed and stops at the first that cannot (FIFO kept).
Placing runs the pool's pre hook at once (so the next selection in the same tick sees the new
load); :meth:`LbCore.leave` runs the post hooks when the stream ends, fails, or the client
leaves. "Load" = open streams.

Health (our addition; reference §2.2 has none inside the LB, its controller removed failed
replicas from the ready set every 20 s): a replica or peer LB that fails its health probe, refuses
a connection or fails a request before its first byte is *ejected*: no policy sees it, ``/conf``
counts it neither ready nor available, stealing and pushing skip it, until a health probe
answers again. When every replica of this LB is ejected, this LB ejects itself from its own LB
pool, so that the push modes send user requests to a peer instead. No request is retried unless
``retry_before_first_byte`` (then once, before any byte reached the client).

Stealing (``STEAL_V1``/``STEAL_V2``, every ``steal_interval_s``): peers are ordered by a
``/sky-lb-health`` latency measured once when first seen; the victim side is
:meth:`LbCore.hand_over`. In these modes the meta tree learns only from requests handed to
thieves (the original skipped the self hooks), kept as is. Rate-limited push reads every
peer's ``/conf`` every ``lb_probe_interval_s`` (:meth:`LbCore.peer_probe_round`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Union

from pytest_lbbench.protocol import (
    FROM_LB_HEADER,
    LB_HEALTH_PATH,
    QUEUE_SIZE_HEADER,
    HopTiming,
    LbDecision,
    LbMembership,
    ReplicaDecision,
)

from .config import LbConfig, LbMode, ReplicaMode
from .peers import PeerLoad, PeerStatus, peer_accepts_push, plan_v1_steal, rank_steal_candidates
from .policies import Policy, RequestInfo, make_policy, request_text
from .pool import TargetPool
from .queue import ClientRequest, Dispatch, Failure, LbHop, RequestEntry, RequestQueue

__all__ = [
    "AskSteal",
    "Clock",
    "ConfReplies",
    "FetchConfs",
    "LbCore",
    "PeerCall",
    "PeerReply",
    "StealReplies",
    "UnknownPeer",
]

log = logging.getLogger("pytest_lbbench.lb")

REPLICA_HEALTH_PATH = "/health"
"""Probed on every replica: SGLang's (and vLLM's) liveness endpoint, answered by our simulator."""

Clock = Callable[[], float]
"""Seconds since the epoch (wall time under the HTTP shell, model time in a simulation)."""


# ---------------------------------------------------------------------------- peer calls


@dataclass(frozen=True)
class FetchConfs:
    """Read ``GET /conf`` of each ``(name, url)``; answer with :class:`ConfReplies`."""

    peers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ConfReplies:
    """Each peer's ``/conf`` payload, ``None`` where the call failed."""

    confs: Mapping[str, Mapping[str, Any] | None]


@dataclass(frozen=True)
class AskSteal:
    """``POST /steal-request`` to each ``(name, url, num_steal)``, all at once, naming
    ``source`` as the thief; answer with :class:`StealReplies`."""

    asks: tuple[tuple[str, str, int], ...]
    source: str


@dataclass(frozen=True)
class StealReplies:
    """Each victim's ``remaining_to_steal`` (clamped to ``[0, num_steal]``), ``None`` on failure."""

    remaining: Mapping[str, int | None]


PeerCall = Union[FetchConfs, AskSteal]
PeerReply = Union[ConfReplies, StealReplies]


class UnknownPeer(ValueError):
    """A steal request from an LB that is not a peer of this one."""


def _expect(reply: PeerReply, kind: type[ConfReplies] | type[StealReplies]) -> Any:
    if not isinstance(reply, kind):
        raise TypeError(f"expected {kind.__name__} for the call just yielded, got {type(reply).__name__}")
    return reply


# ---------------------------------------------------------------------------- the core


class LbCore:
    """The state and decisions of one LB (see the module docstring for its events)."""

    def __init__(self, config: LbConfig, *, name: str, region: str, clock: Clock) -> None:
        self.config = config
        self.name = name
        self.region = region
        self.clock = clock
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
        #: Called when a request enters an empty queue (the server's queue processor wakes up).
        self.on_queue_filled: Callable[[], None] | None = None
        self.queue = RequestQueue(on_fill=self._queue_filled)
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

    def _new_replica_policy(self) -> Policy:
        config = self.config
        policy = make_policy(config.policy, **config.policy_kwargs(config.policy))
        if config.replica_mode.replica_load_balancing:
            policy.enable_load_balancing()
        policy.use_clock(self.clock)
        return policy

    def _new_meta_policy(self) -> Policy:
        config = self.config
        policy = make_policy(config.meta_policy, **config.policy_kwargs(config.meta_policy))
        if config.lb_mode.meta_load_balancing:
            policy.enable_load_balancing()
        policy.use_clock(self.clock)
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
        # Decided requests that were queued while a tick could not place the head of the queue
        # (no replica with capacity and no peer to push to, or no membership yet): the requests
        # the policy *held*, as opposed to ones that only waited for their tick behind others.
        self.held_total = 0
        self.retried_total = 0  # decided again after an upstream failed before its first byte
        self._head_declines = 0  # ticks that could not place the head; entries remember it

    # ------------------------------------------------------------------ lifecycle

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
        latency (re-measured as a fresh LB would), counters zero. Raises ``RuntimeError`` (the
        message of :meth:`busy`) when requests are queued or in flight.
        """
        reason = self.busy()
        if reason is not None:
            raise RuntimeError(reason)
        self.replicas.reset(self._new_replica_policy())
        self.lbs.reset(self._new_meta_policy())
        self.queue = RequestQueue(on_fill=self._queue_filled)
        self.peer_status = {}
        self.peer_latency = {}
        self._zero_counters()
        log.info("reset: fresh policies, queues and counters; membership kept")
        return {
            "ok": True, "name": self.name, "num_replicas": len(self.replicas.urls),
            "num_lbs": len(self.lbs.urls), "time": self.clock(),
        }

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
        """The ``GET /conf`` payload (without ``lag``, which the shell measures): the
        original keys plus ours (time, identity, counters)."""
        available_peers = set(self.push_candidates(len(self.queue)))
        now = self.clock()
        return {
            "queue_size": len(self.queue),
            "queue_size_actual": self.queue.user_count(),
            "replica_queue": self.replicas.in_flight_by_url(),
            # Ready = known and healthy, as the original's controller kept failed replicas out
            # of the ready set; V1 stealing divides load by it.
            "num_replicas": len(self.replicas.healthy()),
            "num_known_replicas": len(self.replicas.urls),
            "num_available_replicas": len(self.replicas.available()),
            "max_concurrent_requests": self.config.max_concurrent_requests,
            "load_balancing_policy_name": self.config.policy,
            "time": now,
            "name": self.name,
            "region": self.region,
            "lb_mode": self.config.lb_mode.value,
            "replica_mode": self.config.replica_mode.value,
            "time_scale": self.config.time_scale,
            "dispatched_total": self.dispatched_total,
            "forwarded_total": self.forwarded_total,
            "pushed_total": self.pushed_total,
            "self_pushed_total": self.self_pushed_total,
            "stolen_total": self.stolen_total,
            "stolen_away_total": self.stolen_away_total,
            "failed_total": self.failed_total,
            "upstream_errors_total": self.upstream_errors_total,
            "held_total": self.held_total,
            "retried_total": self.retried_total,
            "replica_names": {url: name for name, url in self.replicas.urls.items()},
            "lb_queue": self.lbs.in_flight_by_url(),
            "lb_status": {
                name: {
                    "queue_size": st.queue_size,
                    "num_available_replicas": st.num_available_replicas,
                    "pushed_since_probe": st.pushed_since_probe,
                    "own_queue_at_probe": st.own_queue_at_probe,
                    "available": name in available_peers,
                    "age_s": round(now - st.seen_at, 3),
                }
                for name, st in self.peer_status.items()
            },
            "replica_health": self.replicas.health_report(now),
            "lb_health": self.lbs.health_report(now),
            # Prefix-tree characters per target at both levels (empty for tree-less policies).
            "prefix_tree_chars": {"replicas": self.replicas.policy.state_size(),
                                  "lbs": self.lbs.policy.state_size()},
            "lb_latency_s": {
                name: (None if latency == math.inf else latency)
                for name, (_, latency) in self.peer_latency.items()
            },
        }

    # ------------------------------------------------------------------ membership

    def apply_membership(self, membership: LbMembership) -> None:
        """Replace who this LB works with: ``lbs`` lists every LB including this one;
        ``replicas`` are the replicas *this* LB dispatches to; ``regions`` names the LB regions
        shown in ``lb-decision`` headers (merged with what was known)."""
        self.lb_regions.update(membership.regions)
        self.lb_regions[self.name] = self.region
        self.replicas.update(membership.replicas)
        self.lbs.update(membership.lbs)
        self._sync_self_health()
        log.info(
            "membership: %d replica(s) %s, %d LB(s) %s",
            len(membership.replicas), sorted(membership.replicas), len(membership.lbs),
            sorted(membership.lbs),
        )

    # ------------------------------------------------------------------ requests

    def arrive(
        self, request: ClientRequest, *, from_lb: bool, hash_key: str | None, time_arrive: float,
        new_connection: bool | None = None,
    ) -> RequestEntry:
        """A request arrived (at ``time_arrive``, by :attr:`clock`; ``new_connection``: on a
        connection its sender opened for it): queue it at the tail."""
        info = RequestInfo(
            text=request_text(request.path_qs.split("?", 1)[0], request.body, request.method)
            if self._needs_text else None,
            hash_key=hash_key,
        )
        entry = RequestEntry(request=request, info=info, from_lb=from_lb, time_arrive=time_arrive,
                             declines_at_arrival=self._head_declines, new_connection=new_connection)
        self.queue.append(entry)
        return entry

    def leave(self, entry: RequestEntry) -> None:
        """The request is over (its stream ended or failed, or its client left): out of the
        queue if still there, and every pre hook undone. Idempotent."""
        if entry.outcome is None:
            entry.left = True
        self.queue.remove(entry)
        entry.release_all()

    def on_upstream_error(self) -> None:
        """The upstream of a dispatched request failed (502, or a stream aborted midway)."""
        self.upstream_errors_total += 1

    def tick(self) -> list[RequestEntry]:
        """One queue-processor tick: place head entries until one cannot be placed (or after
        one, as the original). Returns the entries decided now (``outcome`` set)."""
        decided: list[RequestEntry] = []
        while True:
            entry = self.queue.pop_head()
            if entry is None:
                return decided
            if entry.settled:  # defensive: :meth:`leave` already took it out
                entry.release_all()
                continue
            if not self._place(entry, decided):
                self._head_declines += 1
                self.queue.put_head(entry)
                return decided
            if not self.config.dispatch_all_placeable:
                return decided  # the original: one pop per tick

    def _place(self, entry: RequestEntry, decided: list[RequestEntry]) -> bool:
        """Decide for one entry; False means "not now" (the caller puts it back at the head)."""
        now = self.clock()
        if self.config.lb_mode.pushes_user_requests and entry.is_user_request:
            lb = self.lbs.select(entry.info)
            if lb is not None:
                entry.acquire(self.lbs, lb)
                if lb != self.name:
                    self._settle(entry, self._lb_dispatch(entry, lb, now), decided)
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
            self._settle(entry, Failure(503, "No ready replicas"), decided)
            self.failed_total += 1
            return True
        replica = self.replicas.select(entry.info)
        if replica is not None:
            if self.config.lb_mode.meta_records_self and self.name in self.lbs.urls:
                entry.acquire(self.lbs, self.name)
            entry.acquire(self.replicas, replica)
            self._settle(entry, self._replica_dispatch(entry, replica, now), decided)
            self.dispatched_total += 1
            return True
        if self._try_rate_limited_push(entry, now, decided):
            return True
        if not self.replicas.healthy() and not self._peers_may_take(entry):
            # Every replica is down and no peer can take the request: answer now rather than
            # hold it until the client gives up (health, our addition).
            reasons = sorted({e.reason for e in self.replicas.ejected.values()})
            self._settle(entry, Failure(503, f"No healthy replicas: every replica of LB {self.name} "
                                             f"is unhealthy ({'; '.join(reasons)})"), decided)
            self.failed_total += 1
            return True
        return False

    def _peers_may_take(self, entry: RequestEntry) -> bool:
        """Whether a held ``entry`` can still leave through a healthy peer LB (pushed, or
        stolen); requests from peers never move on."""
        if not entry.is_user_request or self.config.lb_mode is LbMode.GLOBAL:
            return False
        return any(name != self.name for name in self.lbs.healthy())

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

    def _try_rate_limited_push(self, entry: RequestEntry, now: float, decided: list[RequestEntry]) -> bool:
        """Step (d): push a user request to a peer LB that advertises spare capacity."""
        if self.config.lb_mode is not LbMode.RATE_LIMITED_PUSH or not entry.is_user_request:
            return False
        # Our queue as ``/conf`` would show it right now: the popped head counts.
        lb = self.lbs.select_among(entry.info, self.push_candidates(len(self.queue) + 1))
        if lb is None:
            return False
        entry.acquire(self.lbs, lb)
        self._settle(entry, self._lb_dispatch(entry, lb, now), decided)
        self.peer_status[lb].pushed_since_probe += 1
        self.pushed_total += 1
        self.forwarded_total += 1
        return True

    def _settle(self, entry: RequestEntry, outcome: Dispatch | Failure, decided: list[RequestEntry]) -> None:
        entry.time_scheduled = self.clock()
        entry.outcome = outcome
        if self._head_declines > entry.declines_at_arrival:
            self.held_total += 1
        decided.append(entry)

    def _lb_dispatch(self, entry: RequestEntry, lb: str, now: float) -> Dispatch:
        url = self.lbs.url_of(lb)
        return Dispatch(
            name=lb,
            url=url,
            to_lb=True,
            extra_request_headers=(
                (FROM_LB_HEADER, "true"),
                (QUEUE_SIZE_HEADER, str(self._last_seen_queue_size(lb))),
            ),
            timing=(HopTiming("second", entry.time_arrive, now, entry.new_connection),),
            decisions=(LbDecision(self.lb_regions.get(lb, "N/A"), url),),
        )

    def _last_seen_queue_size(self, lb: str) -> int:
        status = self.peer_status.get(lb)
        return -1 if status is None else status.queue_size

    def _replica_dispatch(self, entry: RequestEntry, replica: str, now: float) -> Dispatch:
        url = self.replicas.url_of(replica)
        hop = entry.lb_hop
        # A hop to itself (the meta policy picked this LB) crossed no connection.
        timing = [HopTiming("first", hop.time_scheduled if hop else entry.time_arrive, now,
                            False if hop else entry.new_connection)]
        decisions: list[ReplicaDecision | LbDecision] = [ReplicaDecision(self.replicas.ids[replica], url)]
        extra: tuple[tuple[str, str], ...] = ()
        if hop is not None:
            # This LB's own LB-level decision (the meta policy picked itself): what the hop the
            # original took to its own URL added on the way back, with this decision's times.
            timing.append(HopTiming("second", entry.time_arrive, hop.time_scheduled, entry.new_connection))
            decisions.append(LbDecision(hop.region, hop.url))
            extra = ((FROM_LB_HEADER, "true"),)
        return Dispatch(
            name=replica, url=url, to_lb=False, extra_request_headers=extra,
            timing=tuple(timing), decisions=tuple(decisions),
        )

    # ------------------------------------------------------------------ engine probe

    def engine_probe_targets(self) -> list[tuple[str, str]]:
        """``(name, url)`` of every replica whose engine queue the pull mode probes."""
        return list(self.replicas.urls.items())

    def on_engine_queue(self, replica: str, waiting: float) -> None:
        """A probe read ``waiting`` requests in ``replica``'s engine queue: available only
        when it is empty (as the original ``_probe_ie_queue``)."""
        self.replicas.set_available(replica, waiting <= 0)

    # ------------------------------------------------------------------ health

    def _pool(self, kind: str) -> TargetPool:
        if kind == self.replicas.kind:
            return self.replicas
        if kind == self.lbs.kind:
            return self.lbs
        raise ValueError(f"unknown pool kind {kind!r}; expected 'replica' or 'lb'")

    def health_probe_targets(self) -> list[tuple[str, str, str]]:
        """``(pool kind, name, URL to GET)`` of every replica and every peer LB (never self)."""
        targets = [
            (self.replicas.kind, name, url.rstrip("/") + REPLICA_HEALTH_PATH)
            for name, url in self.replicas.urls.items()
        ]
        targets += [
            (self.lbs.kind, name, url.rstrip("/") + LB_HEALTH_PATH)
            for name, url in self.lbs.urls.items() if name != self.name
        ]
        return targets

    def on_health_probe(self, kind: str, name: str, ok: bool, reason: str = "") -> None:
        """A health probe of ``name`` (pool ``kind``) answered (``ok``) or failed (``reason``)."""
        pool = self._pool(kind)
        if ok:
            if pool.readmit(name):
                log.warning("%s %s answers its health probe again: back in use", kind, name)
        elif pool.eject(name, f"health probe failed: {reason}", self.clock()):
            log.warning("%s %s failed its health probe (%s): taken out", kind, name, reason)
        if pool is self.replicas:
            self._sync_self_health()

    def on_start_failure(self, entry: RequestEntry, reason: str) -> bool:
        """``entry``'s upstream failed before streaming a byte (refused, timed out, or answered
        5xx): eject that target. True when the request is to be decided again (:meth:`retry`)."""
        dispatch = entry.outcome
        if not isinstance(dispatch, Dispatch):
            raise ValueError("on_start_failure needs an entry that was dispatched")
        pool = self.lbs if dispatch.to_lb else self.replicas
        if pool.eject(dispatch.name, f"request failed before its first byte: {reason}", self.clock()):
            log.warning("%s %s failed a request before its first byte (%s): taken out",
                        pool.kind, dispatch.name, reason)
        if pool is self.replicas:
            self._sync_self_health()
        return self.config.retry_before_first_byte and entry.retries == 0

    def _queue_filled(self) -> None:
        if self.on_queue_filled is not None:
            self.on_queue_filled()

    def retry(self, entry: RequestEntry) -> None:
        """Decide ``entry`` once more, first in line: its holds are released, its decision gone."""
        entry.release_all()
        entry.outcome = None
        entry.time_scheduled = None
        entry.lb_hop = None
        entry.retries += 1
        entry.declines_at_arrival = self._head_declines
        self.retried_total += 1
        self.queue.put_head(entry)

    def _sync_self_health(self) -> None:
        """This LB leaves its own LB pool while every one of its replicas is ejected (so the
        push modes pick a peer), and comes back with the first replica."""
        if self.name not in self.lbs.urls or not self.replicas.urls:
            return
        if self.replicas.healthy():
            self.lbs.readmit(self.name)
        else:
            self.lbs.eject(self.name, "every replica of this LB is ejected", self.clock())

    # ------------------------------------------------------------------ eviction

    def eviction_intervals(self) -> dict[str, float]:
        """Pool kind → seconds between prefix-tree evictions, for the pools that evict."""
        pools = [self.replicas] + ([self.lbs] if self.config.lb_mode.uses_meta_policy else [])
        return {
            pool.kind: interval for pool in pools
            if (interval := pool.policy.eviction_interval_s) is not None
        }

    def evict(self, kind: str) -> None:
        """Eviction tick of the ``"replica"`` or ``"lb"`` pool's policy."""
        (self.replicas if kind == self.replicas.kind else self.lbs).policy.evict()

    # ------------------------------------------------------------------ rate-limited push

    def peer_probe_round(self) -> Generator[FetchConfs, PeerReply, None]:
        """One ``/conf`` round over every peer: a peer that fails becomes unknown
        (unavailable) until it answers again, and our push count for it restarts at 0."""
        # The original reads ``self_qsize`` once, before the round's requests go out.
        own_queue_size = len(self.queue)
        peers = tuple((n, u) for n, u in self.lbs.urls.items() if n != self.name)
        replies: ConfReplies = _expect((yield FetchConfs(peers)), ConfReplies)
        now = self.clock()
        seen: dict[str, PeerStatus] = {}
        for name, _ in peers:
            conf = replies.confs.get(name)
            if conf is None:
                continue
            try:
                seen[name] = PeerStatus.from_conf(conf, own_queue_size, seen_at=now)
            except ValueError as exc:
                log.debug("ignoring /conf of %s: %s", name, exc)
        self.peer_status = seen

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

    def hand_over(self, thief_ref: str, num_steal: int) -> list[RequestEntry]:
        """Victim side of ``/steal-request``: give the thief (by name or URL) up to
        ``num_steal`` queued user requests; returns them, each decided as a forward to it.

        Candidates are ranked by :func:`.peers.rank_steal_candidates`; each chosen entry leaves
        the queue and is forwarded to the thief as a from-LB request, with the meta pre hook
        under the thief's name (so this LB's meta tree learns that the thief now serves the
        prefix). ``UnknownPeer`` when ``thief_ref`` is not a peer.
        """
        thief = self.resolve_lb(thief_ref)
        if thief is None or thief == self.name:
            raise UnknownPeer(f"steal request from unknown LB {thief_ref!r}")
        if num_steal <= 0:
            return []
        candidates = [e for e in self.queue if e.is_user_request and not e.settled]
        if not candidates:
            return []
        ranked = rank_steal_candidates(candidates, self.lbs.policy, self.lbs.available(), thief)
        chosen = ranked[:num_steal]
        now = self.clock()
        decided: list[RequestEntry] = []
        for entry in chosen:
            self.queue.remove(entry)
            entry.acquire(self.lbs, thief)
            self._settle(entry, self._lb_dispatch(entry, thief, now), decided)
        self.stolen_away_total += len(chosen)
        self.forwarded_total += len(chosen)
        return decided

    def steal_targets(self) -> list[str]:
        """Every healthy peer, nearest first. As in the original's ``_steal_targets`` (a new LB URL gets
        ``PoolEntry(latency=inf)`` until its latency check returns), a peer not measured yet, or
        measured at an old URL, is a target too, ordered last (ties in membership order)."""
        ranked = []
        for index, (name, url) in enumerate(self.lbs.urls.items()):
            if name == self.name or name in self.lbs.ejected:
                continue
            measured = self.peer_latency.get(name)
            latency = measured[1] if measured is not None and measured[0] == url else math.inf
            ranked.append((latency, index, name))
        return [name for _, _, name in sorted(ranked)]

    def peers_to_measure(self) -> list[tuple[str, str]]:
        """``(name, url)`` of every peer (or changed peer URL) whose latency is not known and
        not being measured; they count as being measured until :meth:`on_peer_latency`."""
        todo = []
        for name, url in self.lbs.urls.items():
            if name == self.name or name in self._latency_pending:
                continue
            measured = self.peer_latency.get(name)
            if measured is None or measured[0] != url:
                self._latency_pending.add(name)
                todo.append((name, url))
        return todo

    def on_peer_latency(self, name: str, url: str, latency_s: float | None) -> None:
        """A latency check ended: ``latency_s`` (``inf`` after failed attempts), or ``None``
        when it did not finish (it will be tried again)."""
        self._latency_pending.discard(name)
        if latency_s is not None:
            self.peer_latency[name] = (url, latency_s)

    def own_inflight(self) -> int:
        """Requests streaming to this LB's replicas (``Σ replica_queue`` of our ``/conf``)."""
        return sum(self.replicas.in_flight_by_url().values())

    def steal_round(self) -> Generator[PeerCall, PeerReply, int]:
        """One round of the stealing loop; returns how many requests the victims handed over."""
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
            stolen = yield from self._steal_v1(targets, own_queue_size)
        else:
            stolen = yield from self._steal_v2(targets)
        self.stolen_total += stolen
        return stolen

    def _steal_v1(self, targets: list[str], own_queue_size: int) -> Generator[PeerCall, PeerReply, int]:
        confs: ConfReplies = _expect(
            (yield FetchConfs(tuple((t, self.lbs.url_of(t)) for t in targets))), ConfReplies
        )
        peers: list[tuple[str, PeerLoad]] = []
        for target in targets:
            conf = confs.confs.get(target)
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
            own_num_replicas=len(self.replicas.healthy()),
            peers=peers,
        )
        if not plan.steals:
            return 0
        log.debug("V1 steal plan: %s", plan)
        asks = tuple((t, self.lbs.url_of(t), n) for t, n in plan.steals)
        replies: StealReplies = _expect((yield AskSteal(asks, self.name)), StealReplies)
        stolen = 0
        for target, _, n in asks:
            left = replies.remaining.get(target)
            if left is not None:
                stolen += n - left
        return stolen

    def _steal_v2(self, targets: list[str]) -> Generator[PeerCall, PeerReply, int]:
        wanted = self.config.steal_v2_batch_factor * len(self.replicas.available())
        stolen = 0
        for target in targets:
            if wanted <= 0:
                break
            replies: StealReplies = _expect(
                (yield AskSteal(((target, self.lbs.url_of(target), wanted),), self.name)), StealReplies
            )
            left = replies.remaining.get(target)
            if left is None:
                continue
            stolen += wanted - left
            wanted = left
        return stolen
