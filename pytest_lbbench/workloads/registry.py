"""The workloads of one run: the built-ins plus those of the ``pytest_lbbench_workloads`` hook.

A run's catalog is a plain mapping built once (by the plugin, from the hook) and carried in its
configuration; the built-in :data:`~pytest_lbbench.workloads.WORKLOADS` is never changed, so
nothing has to be undone after a run and two runs in one process cannot see each other's
workloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pytest_lbbench.workloads import WORKLOADS
from pytest_lbbench.workloads.base import Workload

_WORKLOAD_ATTRIBUTES = ("name", "options", "hf_dataset", "plan")


def check_new_workload(workload: object, taken: Mapping[str, object]) -> None:
    """``ValueError`` saying why ``workload`` cannot join a catalog holding ``taken``: it is not
    a workload, its name is not an identifier, or the name is taken."""
    missing = [a for a in _WORKLOAD_ATTRIBUTES if not hasattr(workload, a)]
    if missing:
        raise ValueError(
            f"{workload!r} lacks {', '.join(missing)}; return objects with name, options, "
            "hf_dataset and plan(args, region, region_index) (see pytest_lbbench.workloads.base.Workload)"
        )
    name = getattr(workload, "name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"workload name {name!r} must be an identifier (letters, digits, underscores), "
            "so it can appear in test ids and result paths"
        )
    if name in taken:
        raise ValueError(
            f"a workload named {name!r} already exists; pick another name "
            f"(taken: {', '.join(sorted(taken))})"
        )


def workload_catalog(extra: Iterable[Workload] = ()) -> dict[str, Workload]:
    """The built-in workloads and ``extra``, by name (a new mapping; ``ValueError`` from
    :func:`check_new_workload` for the first extra that cannot join)."""
    catalog: dict[str, Workload] = dict(WORKLOADS)
    for workload in extra:
        check_new_workload(workload, catalog)
        catalog[workload.name] = workload
    return catalog
