"""Workload registry: one module per workload, looked up by name."""

from __future__ import annotations

from pytest_lbbench.workloads.arena_syn import ArenaSyn
from pytest_lbbench.workloads.base import Workload

WORKLOADS: dict[str, Workload] = {ArenaSyn.name: ArenaSyn()}


def get_workload(name: str) -> Workload:
    """The workload called ``name``; ``KeyError`` names the valid ones."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(
            f"unknown workload {name!r}; valid workloads: {', '.join(sorted(WORKLOADS))}"
        ) from None
