"""Adding and removing workloads at run time (the ``pytest_lbbench_workloads`` hook).

The built-in workloads are listed in :data:`pytest_lbbench.workloads.WORKLOADS`; these two
functions change that same mapping, so every lookup sees hook workloads too.
"""

from __future__ import annotations

from pytest_lbbench.workloads import WORKLOADS
from pytest_lbbench.workloads.base import Workload


def register_workload(workload: Workload) -> None:
    """Make ``workload`` selectable by name; ``ValueError`` if the name is taken or invalid."""
    name = workload.name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"workload name {name!r} must be an identifier (letters, digits, underscores), "
            "so it can appear in test ids and result paths"
        )
    if name in WORKLOADS:
        raise ValueError(
            f"a workload named {name!r} already exists; pick another name "
            f"(taken: {', '.join(sorted(WORKLOADS))})"
        )
    WORKLOADS[name] = workload


def unregister_workload(name: str) -> None:
    """Remove a workload added with :func:`register_workload` (no error if absent)."""
    WORKLOADS.pop(name, None)

