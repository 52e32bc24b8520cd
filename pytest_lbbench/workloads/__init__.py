"""Workload registry: one module per workload, looked up by name."""

from __future__ import annotations

from pytest_lbbench.workloads.arena import Arena
from pytest_lbbench.workloads.arena_1m import Arena1M
from pytest_lbbench.workloads.arena_syn import ArenaSyn
from pytest_lbbench.workloads.base import Workload
from pytest_lbbench.workloads.mixed_tree import MixedTree
from pytest_lbbench.workloads.tot import Tot
from pytest_lbbench.workloads.tot_single import TotSingle
from pytest_lbbench.workloads.wildchat import WildChat

WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (ArenaSyn(), Arena(), Arena1M(), WildChat(), Tot(), TotSingle(), MixedTree())
}


def get_workload(name: str) -> Workload:
    """The workload called ``name``; ``KeyError`` names the valid ones."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(
            f"unknown workload {name!r}; valid workloads: {', '.join(sorted(WORKLOADS))}"
        ) from None
