"""Regions and the round-trip-time matrix between them.

Defaults are the measured AWS VPC-peering ICMP averages (reference/calibration.md §5.1).
Intra-region traffic (client to its regional entry point, LB to a replica in its own region)
pays ``INTRA_REGION_RTT_MS``, the upper end of the measured inter-AZ range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

INTRA_REGION_RTT_MS = 1.0

DEFAULT_RTT_MS: dict[frozenset[str], float] = {
    frozenset({"us-east-2", "eu-central-1"}): 96.97,
    frozenset({"us-east-2", "ap-northeast-1"}): 158.27,
    frozenset({"ap-northeast-1", "eu-central-1"}): 231.09,
}

# Replica placement order of the original service YAML (`resources.ordered`).
DEFAULT_REPLICA_REGIONS: tuple[str, ...] = ("us-east-2", "ap-northeast-1", "eu-central-1")


@dataclass(frozen=True)
class RttMatrix:
    """Symmetric RTTs in milliseconds between named regions."""

    rtt_ms: Mapping[frozenset[str], float] = field(default_factory=lambda: dict(DEFAULT_RTT_MS))
    intra_region_ms: float = INTRA_REGION_RTT_MS

    @property
    def regions(self) -> tuple[str, ...]:
        names: set[str] = set()
        for pair in self.rtt_ms:
            names |= pair
        ordered = [r for r in DEFAULT_REPLICA_REGIONS if r in names]
        return tuple(ordered + sorted(names - set(ordered)))

    def shard_index(self, region: str) -> int:
        """The workload shard of client region ``region``: its position in :attr:`regions`
        (the original's ``seed2idx``: us-east-2 → 0, ap-northeast-1 → 1, eu-central-1 → 2),
        0 for a region this matrix does not know."""
        regions = self.regions
        return regions.index(region) if region in regions else 0

    def rtt(self, a: str, b: str) -> float:
        """Round-trip time in ms between regions ``a`` and ``b``."""
        if a == b:
            return self.intra_region_ms
        try:
            return self.rtt_ms[frozenset({a, b})]
        except KeyError:
            raise KeyError(
                f"no RTT known between {a!r} and {b!r}; known regions: {', '.join(self.regions)}"
            ) from None

    def one_way_ms(self, a: str, b: str) -> float:
        return self.rtt(a, b) / 2.0

    def nearest(self, source: str, candidates: list[str]) -> str:
        """The candidate region with the lowest RTT from ``source`` (ties: first in the list)."""
        if not candidates:
            raise ValueError("no candidate regions")
        return min(candidates, key=lambda c: (self.rtt(source, c), candidates.index(c)))


def place_round_robin(num_replicas: int, regions: tuple[str, ...] | list[str]) -> list[str]:
    """Replica regions, round-robin over the ordered list (4 over 3 regions: 2, 1, 1)."""
    return [regions[i % len(regions)] for i in range(num_replicas)]
