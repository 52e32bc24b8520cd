"""pytest-lbbench's pytest11 entry point: wiring only.

Options live in :mod:`.options`, the run's validated config in :mod:`.runconfig`, the matrix in
:mod:`.matrix`, fixtures in :mod:`.fixtures`, controller-side aggregation in :mod:`.collect`.

A good citizen in other projects' test runs: this module and what it imports at start-up are
light (names, defaults, help text). The config is built, and the backends, the simulator's
client, aiohttp and the report are imported, only when lbbench tests are collected or an
lbbench option was given; a run without lbbench tests gets no header line and no plan.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench import interrupts
from pytest_lbbench.collect import LbbenchCollector
from pytest_lbbench.fixtures import (  # noqa: F401 - fixtures are registered by import
    lbbench_capacity,
    lbbench_config,
    lbbench_deployment,
    lbbench_ledger,
    lbbench_load,
    lbbench_repeat,
    lbbench_run,
    lbbench_system,
    lbbench_workload,
)
from pytest_lbbench.matrix import (  # noqa: F401 - hooks
    SELFCHECK_MARK,
    is_lbbench_item,
    pytest_collection_modifyitems,
    pytest_generate_tests,
)
from pytest_lbbench.options import CONFIG_KEY, DECLARED, apply_ini, given_flags
from pytest_lbbench.options import pytest_addoption  # noqa: F401 - hook

#: Whether this run's configure put :mod:`~pytest_lbbench.interrupts`' SIGINT handler in place.
_OWNS_SIGINT = pytest.StashKey[bool]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_lbbench import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--lbbench-plan`` / ``--lbbench-cleanup``: print or clean up and end the run here
    (``None``: run the tests)."""
    apply_ini(config)
    if not (config.getoption("lbbench_plan") or config.getoption("lbbench_cleanup")):
        return None
    from pytest_lbbench.runconfig import build_config

    cfg = build_config(config, run_preflight=False)
    try:
        return _plan_or_cleanup(config, cfg)
    finally:
        for error in cfg.backends.close_all():
            print(f"pytest-lbbench: {error}", file=sys.stderr)


def _plan_or_cleanup(config: pytest.Config, cfg: Any) -> int:
    from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path
    from pytest_lbbench.backends.registry import BackendContext, BackendUnavailable

    ctx = BackendContext(cfg, ProcessLedger(ledger_path(cfg.output_dir)))
    if config.getoption("lbbench_plan"):
        text = cfg.backends.get(cfg.backend).plan(ctx)
        if text is None:  # the backend's own answer: nothing to provision
            raise pytest.UsageError(
                f"--lbbench-plan describes a cloud run, but --backend is {cfg.backend!r}, which "
                "provisions nothing. Add --backend sky to see what a SkyPilot run would create.")
        print(text)
        return 0
    failed = False
    for backend in cfg.backends:
        try:
            lines, backend_failed = backend.cleanup(ctx)
        except BackendUnavailable as exc:
            raise pytest.UsageError(f"--lbbench-cleanup: {exc}") from None
        for line in lines:
            print(line)
        failed = failed or backend_failed
    return 1 if failed else 0


def _lbbench_options_given(config: pytest.Config) -> list[str]:
    """The lbbench options this run set away from their defaults (command line or ini)."""
    return [o.flag for o in DECLARED.values() if getattr(config.option, o.dest, o.default) != o.default]


def pytest_configure(config: pytest.Config) -> None:
    apply_ini(config)
    # Every Ctrl-C counted, so one whose KeyboardInterrupt a finalizer dropped still stops the run.
    # An in-process inner run (pytester) finds the handler in place and leaves it to its owner.
    if interrupts.install():
        interrupts.forget()
        config.stash[_OWNS_SIGINT] = True
    _refuse_swallowed_names(config)
    if _lbbench_options_given(config):
        # The user asked for lbbench: check every option now, so a typo is a usage error at
        # start-up (exit 4) rather than a collection error.
        from pytest_lbbench.runconfig import get_config

        get_config(config)
    config.addinivalue_line(
        "markers", "xdist_group(name): pytest-lbbench groups each system's tests on one worker"
    )
    config.addinivalue_line(
        "markers", f"{SELFCHECK_MARK}: a benchmark of pytest-lbbench itself; runs only with --lbbench-selfcheck"
    )
    # Only the controller (or a run without xdist) reports; workers just send their reports.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(LbbenchCollector(config), "lbbench-collector")


def _refuse_swallowed_names(config: pytest.Config) -> None:
    """A system, workload or region name among the test paths was meant for a list option
    (``--systems sgl sky_walker``, the old space-separated form): say how to write it."""
    from pytest_lbbench.regions import RttMatrix
    from pytest_lbbench.systems import SYSTEMS
    from pytest_lbbench.workloads import WORKLOADS

    kinds = {**{n: "--regions" for n in RttMatrix().regions}, **{n: "--workloads" for n in WORKLOADS},
             **{n: "--systems" for n in SYSTEMS}}
    for arg in config.args:
        name = str(arg).split("::")[0]
        if name in kinds and not (config.invocation_params.dir / name).exists() and not Path(name).exists():
            raise pytest.UsageError(
                f"{name!r} is not a test path but a name for {kinds[name]}: list options take one "
                f"word each, comma-separated or repeated, e.g. {kinds[name]} a,{name} or "
                f"{kinds[name]} a {kinds[name]} {name}.")


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_OWNS_SIGINT, False):
        interrupts.uninstall()
    cfg = config.stash.get(CONFIG_KEY, None)  # built only if the run needed it
    if cfg is not None:
        # Backends release what they hold for the run (sky: its client clusters).
        for error in cfg.backends.close_all():
            print(f"pytest-lbbench: {error}", file=sys.stderr)


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """A Ctrl-C pressed during the test just run whose KeyboardInterrupt was dropped (raised
    inside a finalizer) stops the run here, before the next test starts."""
    interrupts.raise_if_pressed()


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> str | None:
    """The run's lbbench line, under "collected N items", only when lbbench tests are there."""
    if not any(is_lbbench_item(item) for item in items):
        return None
    from pytest_lbbench.runconfig import get_config

    cfg = get_config(config)
    return (
        f"lbbench: backend={cfg.backend} systems={','.join(cfg.systems)} "
        f"workloads={','.join(cfg.workloads)} clients={','.join(cfg.regions)} "
        f"replicas={cfg.replicas} over {','.join(cfg.replica_regions)} "
        f"duration={cfg.knobs.duration_s:g}s users/region={cfg.knobs.num_users} seed={cfg.knobs.seed} "
        f"output={cfg.run_dir}"
        + (f"\nlbbench: {cfg.scenario_layout}" if cfg.scenario_layout else "")
    )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker writes into the controller's run directory."""
    from pytest_lbbench.runconfig import RUN_ID_INPUT, current_run_id

    node.workerinput[RUN_ID_INPUT] = current_run_id(node.config)


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own DSession picks one
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """A plain ``-n N`` (xdist's implied "load") and ``--dist loadgroup`` keep each system's
    tests on one worker (see :mod:`pytest_lbbench.xdist_schedule`); tests of no system are
    spread one by one, as "load" does. An explicit ``--dist load`` (or any other mode) is
    left to xdist."""
    dist = config.getoption("dist", None)
    if dist != "loadgroup" and (dist != "load" or "--dist" in given_flags(config)):
        return None
    from pytest_lbbench.custom import parse_custom_system
    from pytest_lbbench.systems import SYSTEMS
    from pytest_lbbench.xdist_schedule import system_scheduler

    # A --custom-system was checked at start-up (an lbbench option builds the config then).
    added = [spec.name for extra in config.hook.pytest_lbbench_systems(config=config) for spec in extra or []]
    added += [parse_custom_system(text).name for text in config.getoption("custom_system")]
    return system_scheduler(config, log, [*SYSTEMS, *added])
