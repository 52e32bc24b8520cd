"""The catalog of systems under test: data, not code paths.

A system is one load-balancing design: which balancer runs (the real ``sglang-router`` or our
Sky LB), its LB-level mode × replica-level mode × policies, and where it is placed. Backends
read these fields; no backend branches on a system's name. No pytest import here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class BalancerKind(str, Enum):
    """Which balancer software a system runs."""

    SGLANG_ROUTER = "sglang_router"  # the real Rust router from the sglang-router package
    SKY_LB = "sky_lb"  # our reimplementation of the SkyServe multi-region LB
    GATEWAY = "gateway"  # nearest-region L7 with capacity spillover, as the GKE Gateway
    CUSTOM = "custom"  # a user's balancer from a command template (pytest_lbbench.custom)


class Placement(str, Enum):
    """Where the system's balancers run."""

    REGIONAL = "regional"  # one LB per replica region; clients reach the nearest one
    GLOBAL = "global"  # one entry point in ``entry_region`` for every client
    EDGE = "edge"  # one front end in every client region (a global anycast L7's edge)


@dataclass(frozen=True)
class SystemSpec:
    """One row of the comparison (DESIGN §3)."""

    name: str
    label: str
    kind: BalancerKind
    placement: Placement
    entry_region: str = "us-east-2"
    lb_mode: str | None = None  # pytest_lbbench.lb.config.LbMode value, for SKY_LB
    replica_mode: str | None = None  # pytest_lbbench.lb.config.ReplicaMode value, for SKY_LB
    policy: str | None = None
    meta_policy: str | None = None
    balancer_args: tuple[str, ...] = field(default_factory=tuple)
    #: CUSTOM: the command template (see :mod:`pytest_lbbench.custom`).
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["placement"] = self.placement.value
        data["balancer_args"] = list(self.balancer_args)
        return data


# The cache-aware configuration the original benchmark's router (0.1.4) ran with; newer
# routers default to 0.3 / 64 / 1.5 / 2^26, so pass the original's values explicitly.
SGLANG_ROUTER_ORIGINAL_ARGS: tuple[str, ...] = (
    "--policy", "cache_aware",
    "--cache-threshold", "0.5",
    "--balance-abs-threshold", "32",
    "--balance-rel-threshold", "1.0001",
    "--eviction-interval-secs", "60",
    "--max-tree-size", str(2**24),
)

def _sky(
    name: str,
    label: str,
    lb_mode: str,
    replica_mode: str,
    policy: str = "prefix_tree",
    meta_policy: str | None = None,
    placement: Placement = Placement.REGIONAL,
    balancer_args: tuple[str, ...] = (),
) -> SystemSpec:
    return SystemSpec(
        name=name, label=label, kind=BalancerKind.SKY_LB, placement=placement,
        lb_mode=lb_mode, replica_mode=replica_mode, policy=policy,
        meta_policy=meta_policy or policy, balancer_args=balancer_args,
    )


# DESIGN §3, in the original's order, then the extra rows. "global" LB mode = no LB-level
# action: with GLOBAL placement it is the single global LB, with REGIONAL placement each LB
# only serves its own region's replicas (the region-local rows).
SYSTEMS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        SystemSpec(
            name="sgl",
            label="Baseline",
            kind=BalancerKind.SGLANG_ROUTER,
            placement=Placement.GLOBAL,
            entry_region="us-east-2",
            balancer_args=SGLANG_ROUTER_ORIGINAL_ARGS,
        ),
        _sky("sky_sgl_enhanced", "Baseline [Pull]", "global", "pull", placement=Placement.GLOBAL),
        _sky("sky_pull_pull", "Ours [Pull/Stealing+Pull]", "steal_v1", "pull"),
        _sky("sky_pull_pull_v2", "Ours [Pull/Stealing V2+Pull]", "steal_v2", "pull"),
        _sky("sky_push_pull", "Ours [Push+Pull]", "push", "pull"),
        _sky("sky_push_push", "Ours [Push+Push]", "push", "push"),
        _sky("sky_pull_pull_rate_limit", "Ours [Pull/RateLimit+Pull]", "rate_limited_push", "pull"),
        SystemSpec(
            name="gke_gateway",
            label="GKE Gateway",
            kind=BalancerKind.GATEWAY,
            placement=Placement.EDGE,
        ),
        # SkyWalker's final design (LB-C with ENABLE_SELECTIVE_PUSHING): rate-limited push between
        # LBs plus selective pushing to replicas, i.e. engine-queue gating. In LB-B terms that is
        # the configuration of system 5; it keeps its own row as the later paper's name.
        _sky("sky_walker", "Sky\nWalker", "rate_limited_push", "pull"),
        _sky("sky_walker_ch", "Sky\nWalker\nCH", "rate_limited_push", "pull", "consistent_hashing"),
        # Fig. 9's ablation (section 5.2): one LB in front of every replica of one region, prefix
        # tree, three ways to push to replicas. Blind pushing (BP, DISABLE_SELECTIVE_PUSHING), a
        # fixed outstanding-request cap (SP-O, the authors' sgl-router-sp-c-N with N = 50, the one
        # value one version of sky/lbbench/utils.py uses) and pending requests (SP-P) =
        # sky_sgl_enhanced above.
        _sky("sky_sgl_blind_push", "BP", "global", "push", placement=Placement.GLOBAL),
        _sky("sky_sgl_outstanding_cap", "SP-O", "global", "cap", placement=Placement.GLOBAL,
             balancer_args=("--max-concurrent-requests", "50")),
        # The paper's Fig. 8 baselines: ONE load balancer in the US in front of every replica
        # (SkyWalker, EuroSys '26, section 5: "RR, LL, CH and SGL ... a single load balancer in
        # the US"; the authors' sky/lbbench/utils.py launches round-robin, least-load and
        # consistent-hashing as single-LB clusters). Clients outside us-east-2 pay the WAN to it.
        _sky("sky_round_robin", "RR", "global", "push", "round_robin", placement=Placement.GLOBAL),
        _sky("sky_least_load", "LL", "global", "push", "least_load", placement=Placement.GLOBAL),
        _sky("sky_consistent_hashing", "CH", "global", "push", "consistent_hashing",
             placement=Placement.GLOBAL),
        # Fig. 10's "Region-Local" baseline: one LB per region over that region's replicas only;
        # a request never leaves its client's region.
        _sky("region_local_round_robin", "Region-Local\nRR", "global", "push", "round_robin"),
        _sky("region_local_least_load", "Region-Local\nLL", "global", "push", "least_load"),
        _sky("region_local_consistent_hashing", "Region-Local\nCH", "global", "push",
             "consistent_hashing"),
    )
}


def get_system(name: str) -> SystemSpec:
    """The system called ``name``; ``KeyError`` names the valid ones."""
    try:
        return SYSTEMS[name]
    except KeyError:
        raise KeyError(f"unknown system {name!r}; valid systems: {', '.join(SYSTEMS)}") from None
