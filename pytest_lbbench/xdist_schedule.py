"""pytest-xdist scheduling that keeps each system's tests on one worker.

A system is started once per worker that runs its tests; two workers starting the same system
would double its processes on the machine and measure neither. xdist's ``--dist loadgroup``
was meant to do this through the ``xdist_group`` marks the matrix sets, but pytest-xdist 3.8
renames node ids through ``item._nodeid``, which pytest 9 no longer reads, so under pytest 9 the
marks group nothing. This scheduler groups by the system in the test's parameter id instead
(the matrix puts it there: ``test_benchmark[sgl-arena_syn]``), and by an ``@group`` suffix where
xdist did add one; every other test is its own unit, spread as "load" spreads them.
"""

from __future__ import annotations

from typing import Any, Iterable


def system_of(nodeid: str, systems: Iterable[str]) -> str | None:
    """The system named in a test's parameter id (``a.py::t[sgl-arena_syn]`` → ``sgl``), or
    None. Ids join parameters with ``-``; system names use ``_``, so a part is a whole name."""
    start, end = nodeid.find("["), nodeid.rfind("]")
    if start < 0 or end < start:
        return None
    known = set(systems)
    return next((part for part in nodeid[start + 1:end].split("-") if part in known), None)


def work_unit(nodeid: str, systems: Iterable[str]) -> str:
    """The scheduling unit of a test: its ``@group``, else its system, else itself."""
    if "@" in nodeid:
        return "group:" + nodeid.rsplit("@", 1)[-1]
    system = system_of(nodeid, systems)
    return nodeid if system is None else "system:" + system


def system_scheduler(config: Any, log: Any, systems: Iterable[str]) -> Any:
    """An xdist scheduler (a ``LoadScopeScheduling``) whose units are :func:`work_unit`."""
    from xdist.scheduler import LoadScopeScheduling

    names = frozenset(systems)

    class SystemScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, names)

    return SystemScheduling(config, log)
