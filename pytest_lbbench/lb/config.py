"""How one LB behaves: the LB-level mode, the replica-level mode, policies and constants.

The original expressed the seven systems as environment booleans (``DO_PUSHING_ACROSS_LB``,
``DO_PUSHING_TO_REPLICA``, ``LB_PUSHING_ENABLE_LB``, ...). Here a system is data: an
:class:`LbMode` × a :class:`ReplicaMode` × two policy names × a placement, and every LB of a
system shares one frozen :class:`LbConfig` (identity, i.e. name and region, is passed separately).

=========================  ===========================  =========================
original system            ``lb_mode``                  ``replica_mode``
=========================  ===========================  =========================
1 sky_sgl_enhanced         ``GLOBAL`` (one LB)          ``PULL``
2 sky_pull_pull            ``STEAL_V1`` / ``STEAL_V2``  ``PULL``
3 sky_push_pull            ``PUSH``                     ``PULL``
4 sky_push_push            ``PUSH``                     ``PUSH``
5 sky_pull_pull_rate_limit ``RATE_LIMITED_PUSH``        ``PULL``
``sgl-router-sp-c-N``      ``GLOBAL`` (one LB)          ``CAP``
=========================  ===========================  =========================

The prefix-tree knobs (``cache_threshold``, ``balance_*_threshold``, ``least_load_fallback``,
eviction) apply to every prefix-tree policy instance of the LB, replica and meta level alike, as
the original's process-wide ``PrefixTreeConfig`` and ``DISABLE_LEAST_LOAD_IN_PREFIX`` did.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any

from .policies import PrefixTreeConfig

_PREFIX_DEFAULTS = PrefixTreeConfig()

__all__ = ["RATE_LIMIT_AVAILABILITY", "LbConfig", "LbMode", "ReplicaMode"]


class LbMode(str, enum.Enum):
    """What an LB does with requests beyond dispatching to its own replicas."""

    GLOBAL = "global"
    """A single LB over all replicas; no LB-level action (system 1)."""
    STEAL_V1 = "steal_v1"
    """Regional LBs; an under-loaded LB steals queued requests by fair share (system 2)."""
    STEAL_V2 = "steal_v2"
    """As ``STEAL_V1`` but steals small batches of 3 × available replicas."""
    PUSH = "push"
    """Every user request is first pushed to the LB the meta policy picks (systems 3, 4)."""
    RATE_LIMITED_PUSH = "rate_limited_push"
    """Push a request to another LB only when no local replica is free and that LB advertises
    spare capacity in its ``/conf`` (system 5)."""

    @property
    def pushes_user_requests(self) -> bool:
        """User requests always take an LB hop first (``DO_PUSHING_ACROSS_LB`` + enable-LB)."""
        return self is LbMode.PUSH

    @property
    def meta_load_balancing(self) -> bool:
        """Whether the meta (LB-level) prefix tree uses its imbalance fallback."""
        return self is LbMode.PUSH

    @property
    def steals(self) -> bool:
        """Whether this LB runs the stealing loop and serves ``/steal-request``."""
        return self in (LbMode.STEAL_V1, LbMode.STEAL_V2)

    @property
    def probes_peer_status(self) -> bool:
        """Whether this LB polls every peer's ``/conf`` (the rate-limited push)."""
        return self is LbMode.RATE_LIMITED_PUSH

    @property
    def uses_meta_policy(self) -> bool:
        """Whether the meta (LB-level) policy makes or ranks decisions in this mode."""
        return self is not LbMode.GLOBAL

    @property
    def meta_records_self(self) -> bool:
        """Whether requests served by this LB's own replicas are recorded in the meta tree under
        this LB's name. True only for the rate-limited push (the original's self hooks are
        guarded by ``not LB_PUSHING_ENABLE_LB``); in the stealing modes the meta tree learns only
        from requests handed to thieves. (``PUSH`` records self picks as the hop they replace.)"""
        return self is LbMode.RATE_LIMITED_PUSH


class ReplicaMode(str, enum.Enum):
    """When a replica counts as available for dispatch."""

    PULL = "pull"
    """Only replicas whose last ``/metrics`` probe showed ``sglang:num_queue_reqs == 0``."""
    PUSH = "push"
    """Every replica, always; the replica policy's imbalance fallback is enabled."""
    CAP = "cap"
    """Concurrency cap (LB-C ``USE_IE_QUEUE_INDICATOR=false``, the ``sp-c-N`` ablations): a
    replica is unavailable while this LB's in-flight count to it is ≥ ``max_concurrent_requests``.
    No engine probe; as in those ablations (``DO_PUSHING_TO_REPLICA=true``) the replica policy's
    imbalance fallback is enabled."""

    @property
    def probes_engine_queue(self) -> bool:
        """Whether the LB polls every replica's ``/metrics``."""
        return self is ReplicaMode.PULL

    @property
    def replica_load_balancing(self) -> bool:
        """Whether the replica policy's imbalance fallback is on (``DO_PUSHING_TO_REPLICA``)."""
        return self in (ReplicaMode.PUSH, ReplicaMode.CAP)

    @property
    def availability_rule(self) -> str:
        """Human-readable availability rule, recorded in the effective configuration."""
        return {
            ReplicaMode.PULL: "engine_queue_empty",
            ReplicaMode.PUSH: "always",
            ReplicaMode.CAP: "in_flight_below_max_concurrent_requests",
        }[self]


_POSITIVE_FLOATS = (
    "tick_s", "steal_interval_s", "probe_interval_s", "probe_timeout_s", "lb_probe_interval_s", "lb_rpc_timeout_s",
    "stream_timeout_s", "connect_timeout_s", "eviction_interval_s", "time_scale",
    "health_interval_s", "health_timeout_s",
)
LOOP_FLOORS_S: dict[str, float] = {
    "tick_s": 0.001, "steal_interval_s": 0.001, "probe_interval_s": 0.01, "lb_probe_interval_s": 0.01,
    "health_interval_s": 0.01,
}
"""The LB's loop periods (model seconds, the original's constants) and the shortest wall period
each runs at under ``time_scale``. 1 ms: uvloop's ``loop.time()`` has 1 ms resolution
(local-runtime-notes.md, event-loop table), so a shorter sleep is not a shorter period. 10 ms for
the probes: our choice, not measured (the floors the launcher applied before the LB scaled
itself), so that polling does not take the 2-core machine from the benchmark."""
_POSITIVE_INTS = ("latency_check_attempts", "max_concurrent_requests", "max_tree_size")
RATE_LIMIT_AVAILABILITY = ("probe", "dispatch")
"""Values of :attr:`LbConfig.rate_limit_availability` (the original's first)."""

_NON_NEGATIVE = ("pull_dispatches_per_probe", "steal_threshold", "steal_v2_batch_factor", "rate_limit_queue_threshold",
                 "cache_threshold", "balance_abs_threshold", "balance_rel_threshold")


@dataclass(frozen=True)
class LbConfig:
    """Effective configuration of one LB process; defaults are the original constants."""

    lb_mode: LbMode = LbMode.GLOBAL
    replica_mode: ReplicaMode = ReplicaMode.PULL
    policy: str = "prefix_tree"
    """Replica-level policy (the original ``--load-balancing-policy``)."""
    meta_policy: str = "prefix_tree"
    """LB-level policy (the original ``--meta-load-balancing-policy``)."""
    tick_s: float = 0.01
    """Queue-processor interval (``_QUEUE_PROCESSOR_SLEEP_TIME``)."""
    steal_interval_s: float = 0.01
    """Stealing-loop interval (the original ran it at the queue-processor tick). V1 reads every
    peer's ``/conf`` once per round while the preconditions hold, so an idle LB polls its peers
    at this rate."""
    probe_interval_s: float = 0.1
    """Engine-queue probe period (``_IE_QUEUE_PROBE_INTERVAL``)."""
    probe_timeout_s: float = 1.0
    """Per-probe HTTP timeout; the original had none (a hung replica stalled the probe loop)."""
    lb_probe_interval_s: float = 0.1
    """Peer ``/conf`` probe period of the rate-limited push (``_probe_lb_status``)."""
    lb_rpc_timeout_s: float = 1.0
    """Timeout of every LB↔LB control call: peer ``/conf`` reads, ``/steal-request`` and the
    ``/sky-lb-health`` latency check. The original had none."""
    latency_check_attempts: int = 3
    """Tries of the ``/sky-lb-health`` latency check of a new peer; the original retried forever.
    A peer that never answers is still a steal target, ordered last."""
    steal_threshold: int = 10
    """``_STEAL_TRIGGER_THRESHOLD``: steal only while the own queue holds at most this many."""
    steal_v2_batch_factor: int = 3
    """V2 steals ``factor × available local replicas`` requests per round."""
    rate_limit_queue_threshold: int = 10
    """Rate-limited push: a peer is available only if its ``queue_size`` is at most this (and at
    most ours, and it has an available replica)."""
    rate_limit_availability: str = "probe"
    """Rate-limited push: when a peer's availability is decided. ``"probe"`` (the original's,
    ``_probe_lb_status_one_lb`` of ``sky/serve/load_balancer.py``, LB-B/LB-C): once per peer
    ``/conf`` probe, comparing the peer's ``queue_size`` with *our* queue size at the start of
    that probe round; the verdict holds until the next probe. ``"dispatch"`` (our variant): at
    every push decision, from the peer's last ``/conf`` and our queue as it is at that moment
    (the popped head included)."""
    rate_limit_count_own_pushes: bool = False
    """Rate-limited push, our variant (off = the original): add our own pushes to a peer's
    last-seen ``queue_size`` until its next probe. The original's ``pre_execute_hook`` on the LB
    pool leaves LB availability alone (``use_ie_queue_indicator`` makes it return early), so a
    peer found available stays available for the whole probe period however much we push."""
    stream_timeout_s: float = 120.0
    """``LB_STREAM_TIMEOUT``; applied per read, as httpx applied the original's ``timeout=120``."""
    connect_timeout_s: float = 10.0
    """Upstream TCP connect timeout (fail fast with 502 instead of waiting the full stream timeout)."""
    health_interval_s: float = 1.0
    """Period of the health probe (``GET /health`` on every replica, ``GET /sky-lb-health`` on
    every peer LB): a target that fails it is taken out at once and put back when it answers.
    Our choice, not the original's: there the controller probed replicas every
    ``ENDPOINT_PROBE_INTERVAL = 10`` s and pushed the ready set to the LBs every
    ``LB_CONTROLLER_SYNC_INTERVAL = 20`` s (``sky/serve/constants.py``), and nothing probed peer
    LBs. Requests that fail before their first byte take a target out sooner (at once)."""
    health_timeout_s: float = 1.0
    """Per-probe timeout of the health probe (not scaled, like every timeout)."""
    retry_before_first_byte: bool = False
    """Our option (off = the original, which never retried: ``LB_MAX_RETRY`` was unused): a
    request whose upstream failed before streaming a byte is decided once more, without the
    target that failed."""
    max_concurrent_requests: int = 10
    """Per-replica in-flight cap of ``ReplicaMode.CAP``; reported in ``/conf`` in every mode."""
    dispatch_all_placeable: bool = False
    """Our variant of the queue processor (off = the original): each tick places every head entry
    that can be placed and stops at the first that cannot. The original's ``_queue_processor``
    pops exactly one entry per ``_QUEUE_PROCESSOR_SLEEP_TIME`` tick (~100 req/s per LB), and in
    ``PUSH`` mode a request the meta policy sends to this LB itself re-enters the queue at the
    tail (its HTTP self-hop) and is dispatched by a later tick."""
    pull_dispatches_per_probe: int = 0
    """``ReplicaMode.PULL``: dispatches a replica may take between two engine-queue probes;
    0 = unlimited, the original's rule and the default. The original never marked a replica busy
    on dispatch, but its one-pop-per-tick cap limited a burst to ~10 requests per 0.1 s probe
    window; with ``dispatch_all_placeable`` a burst lands on the replicas that last looked free and queues in
    their engines until the next probe. 1 makes "pull" mean "one request per empty-queue report"
    (an option, not a default: it also costs conversation affinity under concurrency)."""
    cache_threshold: float = _PREFIX_DEFAULTS.cache_threshold
    """Prefix tree: a match must cover more than this share of the text."""
    balance_abs_threshold: int = _PREFIX_DEFAULTS.balance_abs_threshold
    """Prefix tree imbalance fallback: ``max − min`` load must exceed this ..."""
    balance_rel_threshold: float = _PREFIX_DEFAULTS.balance_rel_threshold
    """... and ``max`` must exceed this × ``min``."""
    eviction_interval_s: float = _PREFIX_DEFAULTS.eviction_interval_s
    """Prefix tree LRU eviction period."""
    max_tree_size: int = _PREFIX_DEFAULTS.max_tree_size
    """Prefix tree: characters kept per target by eviction."""
    least_load_fallback: bool = _PREFIX_DEFAULTS.least_load_fallback
    """Prefix tree: fall back to least load when the match is too short. False = the later
    ``DISABLE_LEAST_LOAD_IN_PREFIX=true`` (CLI ``--no-least-load-fallback``)."""

    time_scale: float = 1.0
    """The run's ``--time-scale``. The loop periods above (:data:`LOOP_FLOORS_S`) are model
    seconds; the LB runs them at ``model × time_scale`` wall seconds (see
    :meth:`loop_interval_s`), as the simulated engines and links scale their own times, so a
    scaled run is the same model in less time. Timeouts are not scaled: they bound a hung peer
    or replica, they do not model anything."""

    def __post_init__(self) -> None:
        # Accept plain strings (CLI, JSON) and normalise them to the enums.
        object.__setattr__(self, "lb_mode", LbMode(self.lb_mode))
        object.__setattr__(self, "replica_mode", ReplicaMode(self.replica_mode))
        for name in _POSITIVE_FLOATS + _POSITIVE_INTS:
            if getattr(self, name) <= 0:
                raise ValueError(f"LbConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.rate_limit_availability not in RATE_LIMIT_AVAILABILITY:
            raise ValueError(
                f"LbConfig.rate_limit_availability must be one of {', '.join(RATE_LIMIT_AVAILABILITY)}, "
                f"got {self.rate_limit_availability!r}"
            )
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"LbConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    def loop_interval_s(self, name: str) -> float:
        """Wall seconds between two runs of the loop whose model period is the field ``name``
        (one of :data:`LOOP_FLOORS_S`): the period times :attr:`time_scale`, at least the floor."""
        if self.time_scale == 1.0:
            return float(getattr(self, name))
        return max(LOOP_FLOORS_S[name], float(getattr(self, name)) * self.time_scale)

    def prefix_tree_kwargs(self) -> dict[str, Any]:
        """Keyword configuration of a ``prefix_tree`` policy built for this LB."""
        # The LB exposes each PrefixTreeConfig field as its own flag; hand them all back.
        return {f.name: getattr(self, f.name) for f in fields(PrefixTreeConfig)}

    def policy_kwargs(self, policy: str) -> dict[str, Any]:
        """Keyword configuration for the policy registered as ``policy`` (only the prefix tree
        takes any)."""
        return self.prefix_tree_kwargs() if policy == "prefix_tree" else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON record of the configuration, including which deliberate fixes are active."""
        data = asdict(self)
        data["lb_mode"] = self.lb_mode.value
        data["replica_mode"] = self.replica_mode.value
        data["implementation"] = "pytest_lbbench.lb"
        # The original silently dropped requests that found no replica; ours always re-queues
        # them at the head. Recorded so results say which behaviour produced them.
        data["requeue_unscheduled"] = True
        data["dispatch_per_tick"] = "all_placeable" if self.dispatch_all_placeable else "one"
        data["replica_availability"] = self.replica_mode.availability_rule
        data["replica_load_balancing"] = self.replica_mode.replica_load_balancing
        data["meta_load_balancing"] = self.lb_mode.meta_load_balancing
        data["steals"] = self.lb_mode.steals
        data["meta_records_self"] = self.lb_mode.meta_records_self
        return data

    def to_argv(self) -> list[str]:
        """CLI flags for ``python -m pytest_lbbench.lb`` that reproduce this configuration."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                if f.default is True and not value:
                    argv.append("--no-" + f.name.replace("_", "-"))
                elif f.default is not True and value:
                    argv.append(flag)
            elif isinstance(value, enum.Enum):
                argv += [flag, str(value.value)]
            else:
                argv += [flag, str(value)]
        return argv
