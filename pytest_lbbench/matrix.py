"""The system × workload matrix: parametrization, ids and xdist groups.

Any test that uses ``lbbench_system`` (directly or through ``lbbench_deployment``) is run once
per selected system, and any test that uses ``lbbench_workload`` once per selected workload;
a test that runs experiments (``lbbench_run``) also once per load level when the load is an
axis (``--num-users 10,50``) and once per repetition (``--lbbench-repeat N``).
Ids read ``<system>-<workload>[-u<N>][-rep<K>]`` so ``-k push_push`` selects as users expect. The system
parameter is session-scoped, so pytest runs one system's tests together and provisions each
system once per process; every system's parameter carries ``xdist_group(<system>)``, and a plain ``-n N`` schedules by
those groups (see :mod:`pytest_lbbench.xdist_schedule`), so a system stays
on one worker. ``lbbench_system`` and ``lbbench_workload`` are fixtures (indirect parameters), so
``pytest --fixtures`` lists them with their docstrings.
"""

from __future__ import annotations

import pytest

SELFCHECK_MARK = "lbbench_selfcheck"
#: The fixtures that make a test an lbbench test (the matrix's and the run's).
LBBENCH_FIXTURES = frozenset({"lbbench_system", "lbbench_workload", "lbbench_deployment",
                              "lbbench_run", "lbbench_capacity", "lbbench_config", "lbbench_ledger"})
_CONFIG_ERROR = pytest.StashKey[pytest.UsageError]()


def is_lbbench_item(item: pytest.Item) -> bool:
    """Whether ``item`` is an lbbench test: it uses an lbbench fixture or is a selfcheck."""
    names = getattr(item, "fixturenames", ())
    return bool(LBBENCH_FIXTURES.intersection(names)) or item.get_closest_marker(SELFCHECK_MARK) is not None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wants = {"lbbench_system", "lbbench_workload"}.intersection(metafunc.fixturenames)
    if not wants:
        return  # not an lbbench test: build nothing
    from pytest_lbbench.runconfig import get_config

    try:
        config = get_config(metafunc.config)
    except pytest.UsageError as exc:
        # Raised here it would be a collection error with a traceback; raised from
        # pytest_collection_modifyitems it is a plain usage error (exit code 4).
        metafunc.config.stash[_CONFIG_ERROR] = exc
        return
    if "lbbench_system" in wants:
        metafunc.parametrize(
            "lbbench_system",
            [
                pytest.param(name, id=name, marks=pytest.mark.xdist_group(name=name))
                for name in config.systems
            ],
            scope="session", indirect=True,
        )
    if "lbbench_workload" in wants:
        metafunc.parametrize(
            "lbbench_workload",
            [pytest.param(name, id=name) for name in config.workloads],
            indirect=True,
        )
    if "lbbench_load" in metafunc.fixturenames and config.load_axis:
        metafunc.parametrize("lbbench_load", [pytest.param(load, id=load.id) for load in config.loads],
                             indirect=True)
    if "lbbench_repeat" in metafunc.fixturenames and config.repeat > 1:
        metafunc.parametrize("lbbench_repeat", [pytest.param(k, id=f"rep{k}") for k in range(1, config.repeat + 1)],
                             indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the harness's own benchmarks unless ``--lbbench-selfcheck`` asks for them.

    They load both cores (300 simulated users), so running them next to a system under test,
    for example in another xdist worker, would distort that system's numbers.
    """
    if _CONFIG_ERROR in config.stash:
        raise config.stash[_CONFIG_ERROR]
    kept = items
    if not config.getoption("lbbench_selfcheck"):
        kept = [item for item in kept if item.get_closest_marker(SELFCHECK_MARK) is None]
    # --lbbench-sla asks for capacities: the tests that search one (lbbench_capacity) run, and
    # the single-load experiments (lbbench_run only) do not; without it, the other way round.
    sla = bool(config.getoption("lbbench_sla"))
    kept = [item for item in kept if _runs_with_sla(item) in (None, sla)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def _runs_with_sla(item: pytest.Item) -> bool | None:
    """True: a capacity test; False: a single-load experiment; None: neither."""
    names = getattr(item, "fixturenames", ())
    if "lbbench_capacity" in names:
        return True
    return False if "lbbench_run" in names else None
