"""The paper's experiments as presets: ``--scenario paper-fig8-arena`` and friends.

Each preset is the setup section 5 of the SkyWalker paper (EuroSys '26, arXiv 2505.24095) states
for one figure: where the clients are and how many, the replica layout, the workload and the
systems compared. One machine cannot run the paper's 12 L4 replicas and 240 clients in real time,
so a preset is scaled by ``--scenario-scale`` F: every region's client count and replica count is
multiplied by F and rounded half up (at least 1 where the paper has any). Clients per replica, the
quantity that decides how loaded the engines are, stays close to the paper's (each preset's
docstring line says what it becomes at its default scale). Engine timing, KV capacity and WAN
delays are never scaled: those are what make the systems differ.

No pytest import here; :mod:`pytest_lbbench.runconfig` applies a preset to the run's options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS, place_round_robin

US, ASIA, EU = "us-east-2", "ap-northeast-1", "eu-central-1"

#: The paper's Fig. 8 systems: SkyWalker (both variants), its single-LB baselines in the US and
#: the GKE gateway (one front end per region).
FIG8_SYSTEMS = (
    "sky_walker", "sky_walker_ch", "sky_round_robin", "sky_least_load",
    "sky_consistent_hashing", "sgl", "gke_gateway",
)


@dataclass(frozen=True)
class Scenario:
    """One figure's setup at the paper's full scale."""

    name: str
    figure: str
    #: What the paper states, with where (section of the paper).
    source: str
    workloads: tuple[str, ...]
    systems: tuple[str, ...]
    #: Clients (concurrent programs) per client region, as in the paper.
    clients: Mapping[str, int]
    #: Replicas per region, as in the paper.
    replicas: Mapping[str, int]
    #: Extra client arguments per region (e.g. a region's tree branching), never scaled.
    region_args: Mapping[str, str] = field(default_factory=dict)
    #: The scale that fits a 2-core machine in real time (see the module docstring).
    default_scale: float = 0.5

    def layout(self, scale: float | None = None) -> ScenarioLayout:
        """Clients and replicas per region at ``scale`` (default: the preset's own)."""
        factor = self.default_scale if scale is None else scale
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"--scenario-scale must be a positive number, got {factor!r}")
        clients = {r: _scaled(n, factor) for r, n in self.clients.items() if n > 0}
        replicas = {r: _scaled(n, factor) for r, n in self.replicas.items() if n > 0}
        # Placement is round-robin over an ordered region list (pytest_lbbench.regions); the
        # regions with more replicas go first, so round-robin gives exactly this layout when the
        # counts differ by at most one (true of every layout in the paper and of their scalings).
        order = tuple(sorted(replicas, key=lambda r: (-replicas[r], _canonical(r))))
        total = sum(replicas.values())
        placed = place_round_robin(total, order)
        if {r: placed.count(r) for r in order} != replicas:
            raise ValueError(
                f"scenario {self.name}: the layout {replicas} at scale {factor:g} cannot be placed "
                "round-robin; choose another --scenario-scale"
            )
        return ScenarioLayout(self, factor, clients, replicas, order)


@dataclass(frozen=True)
class ScenarioLayout:
    """A scenario at one scale: what the run's options become."""

    scenario: Scenario
    scale: float
    clients: dict[str, int]
    replicas: dict[str, int]
    replica_regions: tuple[str, ...]

    @property
    def client_regions(self) -> tuple[str, ...]:
        return tuple(sorted(self.clients, key=_canonical))

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas.values())

    def region_to_args(self) -> dict[str, str]:
        """Per-region client arguments: the region's user count, then its extra arguments."""
        out = {}
        for region in self.client_regions:
            extra = self.scenario.region_args.get(region, "")
            out[region] = f"--num-users {self.clients[region]} {extra}".strip()
        return out

    def describe(self) -> str:
        """One line for the run header."""
        clients = ", ".join(f"{r} {n}" for r, n in sorted(self.clients.items(), key=lambda i: _canonical(i[0])))
        replicas = ", ".join(f"{r} {n}" for r, n in sorted(self.replicas.items(), key=lambda i: _canonical(i[0])))
        full = self.scenario
        full_clients = sum(full.clients.values())
        full_replicas = sum(full.replicas.values())
        ratio = sum(self.clients.values()) / self.total_replicas
        return (
            f"scenario {full.name} ({full.figure}) at scale {self.scale:g}: clients {clients}; "
            f"replicas {replicas}; {ratio:.1f} clients per replica (paper: {full_clients} clients "
            f"on {full_replicas} replicas, {full_clients / full_replicas:.1f} per replica)"
        )


def _scaled(count: int, factor: float) -> int:
    # Half up, not Python's banker's rounding: 1.5 replicas become 2, as a reader expects.
    return max(1, math.floor(count * factor + 0.5))


def _canonical(region: str) -> tuple[int, str]:
    order = list(DEFAULT_REPLICA_REGIONS)
    return (order.index(region) if region in order else len(order), region)


_SEC51 = "SkyWalker (EuroSys '26) section 5.1, 'Experiment setup'"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="paper-fig8-arena",
            figure="Fig. 8a/8e/8i",
            source=f"{_SEC51}: ChatBot Arena, 80 ongoing conversations per region, clients in the "
                   "US, Asia and Europe; the unbalanced layout 3 US / 3 Asia / 2 EU (section 5.1, "
                   "'Replica distribution'); RR, LL, CH, SGL one LB in the US",
            workloads=("arena_syn",),
            systems=FIG8_SYSTEMS,
            clients={US: 80, ASIA: 80, EU: 80},
            replicas={US: 3, ASIA: 3, EU: 2},
        ),
        Scenario(
            name="paper-fig8-wildchat",
            figure="Fig. 8b/8f/8j",
            source=f"{_SEC51}: WildChat, 40 clients in the US, 30 in Europe, 30 in Asia, each region "
                   "sending its own region's conversations; layout 3 US / 3 Asia / 2 EU",
            workloads=("wildchat",),
            systems=FIG8_SYSTEMS,
            clients={US: 40, ASIA: 30, EU: 30},
            replicas={US: 3, ASIA: 3, EU: 2},
        ),
        Scenario(
            name="paper-fig8-tot",
            figure="Fig. 8c/8g/8k",
            source=f"{_SEC51}: Tree of Thoughts on GSM8K, 2-branch trees of depth 4, 12 replicas "
                   "(four per region), 40 clients in the US and 20 in Europe and Asia",
            workloads=("tot",),
            systems=FIG8_SYSTEMS,
            clients={US: 40, ASIA: 20, EU: 20},
            replicas={US: 4, ASIA: 4, EU: 4},
            region_args={US: "--num-branches 2", ASIA: "--num-branches 2", EU: "--num-branches 2"},
        ),
        Scenario(
            name="paper-fig8-mixed-tree",
            figure="Fig. 8d/8h/8l",
            source=f"{_SEC51}: Mixed Tree, the US runs 4-branch trees with two clients, Europe and "
                   "Asia 2-branch trees with 20 clients each; 12 replicas, four per region",
            workloads=("mixed_tree",),
            systems=FIG8_SYSTEMS,
            clients={US: 2, ASIA: 20, EU: 20},
            replicas={US: 4, ASIA: 4, EU: 4},
        ),
        Scenario(
            name="paper-fig9",
            figure="Fig. 9",
            source="SkyWalker (EuroSys '26) section 5.2, 'Selective pushing by checking pending "
                   "requests': one region, 4 replicas, 30 clients, ToT with 2 branches; blind "
                   "pushing (BP) vs a fixed outstanding-request cap (SP-O) vs pending requests (SP-P)",
            workloads=("tot",),
            systems=("sgl", "sky_sgl_blind_push", "sky_sgl_outstanding_cap", "sky_sgl_enhanced"),
            clients={US: 30},
            replicas={US: 4},
            region_args={US: "--num-branches 2"},
            default_scale=1.0,
        ),
        Scenario(
            name="paper-fig10",
            figure="Fig. 10",
            source="SkyWalker (EuroSys '26) section 5.2, 'Diurnal pattern': 120 clients in the US, "
                   "40 in Asia and 40 in Europe, replicas evenly over the three regions (the paper "
                   "varies 3-18; 9 is its 25 % cost point); SkyWalker vs a region-local "
                   "deployment. The paper does not name the workload; we use arena_syn",
            workloads=("arena_syn",),
            systems=("sky_walker", "region_local_round_robin", "region_local_least_load",
                     "region_local_consistent_hashing"),
            clients={US: 120, ASIA: 40, EU: 40},
            replicas={US: 3, ASIA: 3, EU: 3},
            default_scale=0.5,
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    """The preset called ``name``; ``KeyError`` lists the valid ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; valid scenarios: {', '.join(SCENARIOS)}") from None
