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
=========================  ===========================  =========================
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["IMPLEMENTED_LB_MODES", "LbConfig", "LbMode", "ReplicaMode"]


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


class ReplicaMode(str, enum.Enum):
    """When a replica counts as available for dispatch."""

    PULL = "pull"
    """Only replicas whose last ``/metrics`` probe showed ``sglang:num_queue_reqs == 0``."""
    PUSH = "push"
    """Every replica, always; the replica policy's imbalance fallback is enabled."""

    @property
    def probes_engine_queue(self) -> bool:
        """Whether the LB polls every replica's ``/metrics``."""
        return self is ReplicaMode.PULL


# Modes whose LB-level action exists in this package; the others are accepted by the enum (so
# the systems catalog can name them) but refused when an LB is started. Stealing and the
# rate-limited push slot into ``server.LoadBalancer`` (see ``_try_rate_limited_push`` and the
# ``/steal-request`` handler).
IMPLEMENTED_LB_MODES: frozenset[LbMode] = frozenset({LbMode.GLOBAL, LbMode.PUSH})


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
    """Queue-processor interval (``_QUEUE_PROCESSOR_SLEEP_TIME``); also the steal-loop tick."""
    probe_interval_s: float = 0.1
    """Engine-queue probe period (``_IE_QUEUE_PROBE_INTERVAL``)."""
    probe_timeout_s: float = 1.0
    """Per-probe HTTP timeout; the original had none (a hung replica stalled the probe loop)."""
    lb_probe_interval_s: float = 0.1
    """Peer ``/conf`` probe period of the rate-limited push."""
    steal_threshold: int = 10
    """``_STEAL_TRIGGER_THRESHOLD``: steal only while the own queue holds at most this many."""
    steal_v2_batch_factor: int = 3
    """V2 steals ``factor × available local replicas`` requests per round."""
    stream_timeout_s: float = 120.0
    """``LB_STREAM_TIMEOUT``; applied as the total time of one upstream exchange."""
    connect_timeout_s: float = 10.0
    """Upstream TCP connect timeout (fail fast with 502 instead of waiting the full stream timeout)."""
    max_concurrent_requests: int = 10
    """Reported in ``/conf`` as in the original (the concurrency-cap mode is not used here)."""
    mimic_one_dispatch_per_tick: bool = False
    """Restore the original cap of one queue pop per tick (~100 req/s per LB); off by default."""

    def __post_init__(self) -> None:
        # Accept plain strings (CLI, JSON) and normalise them to the enums.
        object.__setattr__(self, "lb_mode", LbMode(self.lb_mode))
        object.__setattr__(self, "replica_mode", ReplicaMode(self.replica_mode))
        for name in ("tick_s", "probe_interval_s", "probe_timeout_s", "lb_probe_interval_s",
                     "stream_timeout_s", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LbConfig.{name} must be > 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON record of the configuration, including which deliberate fixes are active."""
        data = asdict(self)
        data["lb_mode"] = self.lb_mode.value
        data["replica_mode"] = self.replica_mode.value
        data["implementation"] = "pytest_lbbench.lb"
        # The original silently dropped requests that found no replica; ours always re-queues
        # them at the head. Recorded so results say which behaviour produced them.
        data["requeue_unscheduled"] = True
        data["dispatch_per_tick"] = "one" if self.mimic_one_dispatch_per_tick else "all_placeable"
        return data

    def to_argv(self) -> list[str]:
        """CLI flags for ``python -m pytest_lbbench.lb`` that reproduce this configuration."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    argv.append(flag)
            elif isinstance(value, enum.Enum):
                argv += [flag, str(value.value)]
            else:
                argv += [flag, str(value)]
        return argv
