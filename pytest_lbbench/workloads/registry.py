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


def _register_builtin_mixed_tree() -> None:
    """``mixed_tree`` (issue 11 part 6) joins the built-in workloads.

    Registered here rather than in :data:`~pytest_lbbench.workloads.WORKLOADS`'s literal; a
    process that never imports this module (the client run on its own) does not see it,
    which is why the plugin's ``--plan-file`` path is the one that runs it.
    """
    from pytest_lbbench.workloads.mixed_tree import MixedTree

    if MixedTree.name not in WORKLOADS:
        register_workload(MixedTree())


_register_builtin_mixed_tree()
