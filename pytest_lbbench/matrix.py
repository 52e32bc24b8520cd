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
