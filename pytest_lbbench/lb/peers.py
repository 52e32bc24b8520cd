"""LB-level cooperation between regional LBs: stealing (V1, V2) and the rate-limited push.

Pure decision rules, unit-tested by hand-computed examples (the LB↔LB calls that feed them
are in :mod:`.rpc`):

* :func:`plan_v1_steal`: the V1 "avg / fair share" arithmetic of reference §2.4;
* :func:`rank_steal_candidates`: which queued requests a victim hands to a thief first;
* :func:`peer_accepts_push`: when a peer LB is "available" for the rate-limited push (§1.2
  system 5, LB-B rule);
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .policies import Policy
from .queue import RequestEntry

__all__ = [
    "PeerLoad",
    "PeerStatus",
    "StealPlan",
    "peer_accepts_push",
    "plan_v1_steal",
    "rank_steal_candidates",
]

log = logging.getLogger(__name__)


def _int_field(conf: Mapping[str, Any], key: str) -> int:
    value = conf.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"/conf field {key!r} is not a number: {value!r}")
    return int(value)


@dataclass(frozen=True)
class PeerLoad:
    """What V1 stealing reads from one peer's ``/conf``."""

    queue_size: int
    """``queue_size``: every queued entry, from users and from LBs."""
    queue_size_actual: int
    """``queue_size_actual``: queued user requests (the only stealable ones)."""
    inflight: int
    """``Σ replica_queue``: requests the peer has streaming to its replicas."""
    num_replicas: int
    """``num_replicas``: ready replicas (not available ones)."""

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> PeerLoad:
        """Parse a ``/conf`` payload; ``ValueError`` when a field is missing or malformed."""
        replica_queue = conf.get("replica_queue")
        if not isinstance(replica_queue, Mapping):
            raise ValueError(f"/conf field 'replica_queue' is not an object: {replica_queue!r}")
        inflight = sum(_int_field(replica_queue, key) for key in replica_queue)
        return cls(
            queue_size=_int_field(conf, "queue_size"),
            queue_size_actual=_int_field(conf, "queue_size_actual"),
            inflight=inflight,
            num_replicas=_int_field(conf, "num_replicas"),
        )


@dataclass(frozen=True)
class StealPlan:
    """The outcome of the V1 arithmetic: the totals and how many to ask each target for."""

    total: int
    num_replicas: int
    per_replica: int
    target_self: int
    remaining: int
    """What was still unassigned after walking every target."""
    steals: tuple[tuple[str, int], ...] = ()
    """``(target, n)`` in latency order, ``n > 0``."""


def plan_v1_steal(
    *,
    own_queue_size: int,
    own_inflight: int,
    own_num_replicas: int,
    peers: Sequence[tuple[str, PeerLoad]],
) -> StealPlan:
    """V1 "fair share" (``_request_stealing_v1_avg``), exactly as reference §2.4 states it.

    ``peers`` are the steal targets that answered ``/conf``, in latency order. With
    ``total = Σ_t (queue_size_t + inflight_t) + own_qsize + own_inflight`` and
    ``R = Σ_t num_replicas_t + own_num_replicas``: ``per_replica = total // R``,
    ``target_self = per_replica × own_num_replicas`` (nothing to do when ≤ 0) and
    ``remaining = target_self − own_qsize − own_inflight``; then per target, skipping those with
    ``queue_size ≤ 0`` or ``queue_size_actual ≤ 0``:
    ``should = queue_size + inflight − per_replica × num_replicas``,
    ``n = min(remaining, should, queue_size_actual)``, and if ``n > 0`` ask for ``n``.
    """
    total = sum(p.queue_size + p.inflight for _, p in peers) + own_queue_size + own_inflight
    replicas = sum(p.num_replicas for _, p in peers) + own_num_replicas
    if replicas <= 0:
        return StealPlan(total, replicas, 0, 0, 0)
    per_replica = total // replicas
    target_self = per_replica * own_num_replicas
    if target_self <= 0:
        return StealPlan(total, replicas, per_replica, target_self, 0)
    remaining = target_self - own_queue_size - own_inflight
    steals: list[tuple[str, int]] = []
    for name, peer in peers:
        if peer.queue_size <= 0 or peer.queue_size_actual <= 0:
            continue
        should = peer.queue_size + peer.inflight - per_replica * peer.num_replicas
        n = min(remaining, should, peer.queue_size_actual)
        if n > 0:
            remaining -= n
            steals.append((name, n))
    return StealPlan(total, replicas, per_replica, target_self, remaining, tuple(steals))


def rank_steal_candidates(
    entries: Sequence[RequestEntry], policy: Policy, lbs: Sequence[str], thief: str
) -> list[RequestEntry]:
    """Order queued requests for handing over to ``thief`` (victim side of ``/steal-request``).

    ``entries`` are the queued user requests in queue order (oldest first). For each, the meta
    policy names the LB it belongs to among ``lbs``, without side effects (``touch=False``; the
    original's scan refreshed LRU stamps). Entries whose LB is the thief come first, higher match
    rate first (queue order on ties); then all the others, newest first.
    """
    mine: list[tuple[float, int, RequestEntry]] = []
    others: list[RequestEntry] = []
    for index, entry in enumerate(entries):
        best, rate = policy.select_with_match(entry.info, lbs, touch=False)
        if best == thief:
            mine.append((-rate, index, entry))
        else:
            others.append(entry)
    mine.sort(key=lambda item: (item[0], item[1]))
    return [entry for _, _, entry in mine] + others[::-1]


@dataclass
class PeerStatus:
    """A peer's load as last seen by the rate-limited push's ``/conf`` probe."""

    queue_size: int
    num_available_replicas: int
    seen_at: float = 0.0
    """When the probe that read it answered (the LB core's clock, seconds)."""
    pushed_since_probe: int = 0
    """Requests this LB pushed to the peer after that probe (see ``rate_limit_count_own_pushes``)."""
    own_queue_at_probe: int = 0
    """Our own ``queue_size`` when that probe round started: what the original's
    ``_probe_lb_status`` compares the peer with (``self_qsize``)."""

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], own_queue_size: int = 0, seen_at: float = 0.0) -> PeerStatus:
        """Parse a ``/conf`` payload; ``ValueError`` when a field is missing or malformed."""
        return cls(
            _int_field(conf, "queue_size"), _int_field(conf, "num_available_replicas"),
            seen_at=seen_at, own_queue_at_probe=own_queue_size,
        )

    def effective_queue_size(self, count_own_pushes: bool) -> int:
        """The queue size the availability rule compares."""
        return self.queue_size + (self.pushed_since_probe if count_own_pushes else 0)


def peer_accepts_push(
    *, peer_queue_size: int, peer_available_replicas: int, own_queue_size: int, threshold: int
) -> bool:
    """Rate-limited push (LB-B/LB-C ``_probe_lb_status_one_lb``: ``conf['queue_size'] <=
    self_qsize and conf['queue_size'] <= _STEAL_TRIGGER_THRESHOLD and
    conf['num_available_replicas'] > 0``): a peer is available when its ``queue_size`` is at
    most ours and at most ``threshold`` (10), and it has at least one available replica."""
    return (
        peer_queue_size <= own_queue_size
        and peer_queue_size <= threshold
        and peer_available_replicas > 0
    )
