"""The system × workload matrix: parametrization, ids and xdist groups.

Any test that uses ``lbbench_system`` (directly or through ``lbbench_deployment``) is run once
per selected system, and any test that uses ``lbbench_workload`` once per selected workload.
Ids read ``<system>-<workload>`` so ``-k push_push`` selects as users expect. The system
parameter is session-scoped, so pytest runs one system's tests together and provisions each
system once per process; every system's parameter carries ``xdist_group(<system>)`` so that
``-n N --dist loadgroup`` keeps a system on one worker.
"""

from __future__ import annotations

import pytest

from pytest_lbbench.options import get_config


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = get_config(metafunc.config)
    if "lbbench_system" in metafunc.fixturenames:
        metafunc.parametrize(
            "lbbench_system",
            [
                pytest.param(name, id=name, marks=pytest.mark.xdist_group(name=name))
                for name in config.systems
            ],
            scope="session",
        )
    if "lbbench_workload" in metafunc.fixturenames:
        metafunc.parametrize(
            "lbbench_workload",
            [pytest.param(name, id=name) for name in config.workloads],
        )


SELFCHECK_MARK = "lbbench_selfcheck"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the harness's own benchmarks unless ``--lbbench-selfcheck`` asks for them.

    They load both cores (300 simulated users), so running them next to a system under test,
    for example in another xdist worker, would distort that system's numbers.
    """
    if config.getoption("lbbench_selfcheck"):
        return
    kept = [item for item in items if item.get_closest_marker(SELFCHECK_MARK) is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
