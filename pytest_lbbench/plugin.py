"""pytest-lbbench's pytest11 entry point: wiring only.

Options live in :mod:`.options`, the matrix in :mod:`.matrix`, fixtures in :mod:`.fixtures`,
controller-side aggregation in :mod:`.collect`.
"""

from __future__ import annotations

import sys

import pytest

from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path
from pytest_lbbench.backends.registry import BackendContext, BackendUnavailable
from pytest_lbbench.collect import LbbenchCollector
from pytest_lbbench.fixtures import (  # noqa: F401 - fixtures are registered by import
    lbbench_config,
    lbbench_deployment,
    lbbench_ledger,
    lbbench_run,
)
from pytest_lbbench.matrix import (  # noqa: F401 - hooks
    SELFCHECK_MARK,
    pytest_collection_modifyitems,
    pytest_generate_tests,
)
from pytest_lbbench.options import CONFIG_KEY, LbbenchConfig, build_config, get_config
from pytest_lbbench.options import pytest_addoption  # noqa: F401 - hook


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_lbbench import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--lbbench-plan`` / ``--lbbench-cleanup``: print or clean up and end the run here
    (``None``: run the tests)."""
    if not (config.getoption("lbbench_plan") or config.getoption("lbbench_cleanup")):
        return None
    cfg = build_config(config, run_preflight=False)
    try:
        return _plan_or_cleanup(config, cfg)
    finally:
        for error in cfg.backends.close_all():
            print(f"pytest-lbbench: {error}", file=sys.stderr)


def _plan_or_cleanup(config: pytest.Config, cfg: LbbenchConfig) -> int:
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


def pytest_configure(config: pytest.Config) -> None:
    config.stash[CONFIG_KEY] = build_config(config)
    config.addinivalue_line(
        "markers", "xdist_group(name): pytest-lbbench groups each system's tests on one worker"
    )
    config.addinivalue_line(
        "markers", f"{SELFCHECK_MARK}: a benchmark of pytest-lbbench itself; runs only with --lbbench-selfcheck"
    )
    # Only the controller (or a run without xdist) reports; workers just send their reports.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(LbbenchCollector(config), "lbbench-collector")


def pytest_unconfigure(config: pytest.Config) -> None:
    if CONFIG_KEY in config.stash:
        # Backends release what they hold for the run (sky: its client clusters).
        for error in config.stash[CONFIG_KEY].backends.close_all():
            print(f"pytest-lbbench: {error}", file=sys.stderr)


def pytest_report_header(config: pytest.Config) -> str:
    cfg = get_config(config)
    return (
        f"lbbench: backend={cfg.backend} systems={','.join(cfg.systems)} "
        f"workloads={','.join(cfg.workloads)} clients={','.join(cfg.regions)} "
        f"replicas={cfg.replicas} over {','.join(cfg.replica_regions)} "
        f"duration={cfg.knobs.duration_s:g}s users/region={cfg.knobs.num_users} seed={cfg.knobs.seed} "
        f"output={cfg.output_dir}"
        + (f"\nlbbench: {cfg.scenario_layout}" if cfg.scenario_layout else "")
    )
