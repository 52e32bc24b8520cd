"""Fixtures: session-scoped deployments with guaranteed teardown, and the experiment runner.

| fixture | scope | what it gives |
|---|---|---|
| ``lbbench_system`` | session | a system's name: the test runs once per ``--systems`` entry |
| ``lbbench_workload`` | function | a workload's name: the test runs once per ``--workloads`` entry |
| ``lbbench_config`` | session | the run's validated :class:`~pytest_lbbench.runconfig.LbbenchConfig` |
| ``lbbench_ledger`` | session | the ledger of every process started (for ``--lbbench-cleanup``) |
| ``lbbench_deployment`` | session, per system | a started system; stopped at the end, always |
| ``lbbench_load`` | function | the load level of an axis (``--num-users 10,50``), else ``None`` |
| ``lbbench_repeat`` | function | which repetition this is (1-based; ``--lbbench-repeat N``) |
| ``lbbench_run`` | function | ``run(deployment, workload, load=None) -> ExperimentResult`` |
| ``lbbench_capacity`` | function | ``capacity(deployment, workload) -> Capacity`` (``--lbbench-sla``) |
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import pytest

if TYPE_CHECKING:
    from pytest_lbbench.backends.base import Deployment
    from pytest_lbbench.capacity import Capacity
    from pytest_lbbench.loads import Load
    from pytest_lbbench.backends.ledger import ProcessLedger
    from pytest_lbbench.backends.registry import BackendContext
    from pytest_lbbench.faults import FaultSpec
    from pytest_lbbench.report.results import ExperimentResult
    from pytest_lbbench.runconfig import LbbenchConfig

# The backends, the client and the report are imported inside the fixtures, when a test uses
# them: this module is loaded with the plugin by every pytest run, lbbench tests or not.

PROPERTY_KEY = "lbbench"
PROGRESS_INTERVAL_S = 5.0
BAR_WIDTH = 24


CAPACITY_KEY = "lbbench_capacity"  # user_properties entry of a capacity search
#: Per process: experiment key → the overall summaries of its repetitions so far.
_REPEATS = pytest.StashKey[dict[str, list[dict[str, Any]]]]()


class RunExperiment(Protocol):
    def __call__(self, deployment: Deployment, workload: str, load: Load | None = None) -> ExperimentResult: ...


class SearchCapacity(Protocol):
    def __call__(self, deployment: Deployment, workload: str) -> Capacity: ...


def _context(config: pytest.Config, cfg: LbbenchConfig, ledger: ProcessLedger) -> BackendContext:
    from pytest_lbbench import cloud_plugin
    from pytest_lbbench.backends.registry import BackendContext

    return BackendContext(cfg, ledger, progress=cloud_plugin.progress_writer(config))


@pytest.fixture(scope="session")
def lbbench_system(request: pytest.FixtureRequest) -> str:
    """The name of the system under test. A test that uses it (or ``lbbench_deployment``) runs
    once per selected system (``--systems``, default: all), with the system's name in its id."""
    return str(request.param)


@pytest.fixture
def lbbench_workload(request: pytest.FixtureRequest) -> str:
    """The name of the workload to drive. A test that uses it runs once per selected workload
    (``--workloads``, default: arena_syn), with the workload's name in its id."""
    return str(request.param)


@pytest.fixture
def lbbench_load(request: pytest.FixtureRequest) -> Load | None:
    """This test's load level when the load is an axis (``--num-users 10,50`` or
    ``--request-rate 1,2``: one test per level, ``u10``/``r1`` in its id), else ``None`` (the
    run's single ``--num-users`` / ``--request-rate``). ``lbbench_run`` uses it."""
    param: Load | None = getattr(request, "param", None)
    return param


@pytest.fixture
def lbbench_repeat(request: pytest.FixtureRequest) -> int:
    """Which repetition of its experiment this test is (1-based; ``--lbbench-repeat N`` runs N,
    ``rep<K>`` in the id). ``lbbench_run`` derives the seed from it."""
    return int(getattr(request, "param", 1))


@pytest.fixture(scope="session")
def lbbench_config(pytestconfig: pytest.Config) -> LbbenchConfig:
    """The validated configuration of this run (command line and ini options → one frozen
    :class:`~pytest_lbbench.runconfig.LbbenchConfig`): systems, workloads, regions, knobs."""
    from pytest_lbbench.runconfig import get_config

    return get_config(pytestconfig)


@pytest.fixture(scope="session")
def lbbench_ledger(lbbench_config: LbbenchConfig) -> ProcessLedger:
    """The ledger every started process is written to (``<output-dir>/.lbbench/``), which
    ``--lbbench-cleanup`` reads after a crash."""
    from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path

    return ProcessLedger(ledger_path(lbbench_config.output_dir))


@pytest.fixture(scope="session")
def lbbench_deployment(
    request: pytest.FixtureRequest, lbbench_system: str, lbbench_config: LbbenchConfig,
    lbbench_ledger: ProcessLedger,
) -> Iterator[Deployment]:
    """The system ``lbbench_system``, started once per process and always stopped.

    ``--backend`` supplies it (local processes by default), unless an existing endpoint
    (``--endpoint``, ``--service-names``, ``--gke-endpoint``) or ``--gke-contexts`` does (see
    :func:`pytest_lbbench.cloud_plugin.deployment_for`). A backend that cannot run the system
    skips its tests with the reason.
    """
    from pytest_lbbench import cloud_plugin
    from pytest_lbbench.backends.registry import BackendUnavailable

    ctx = _context(request.config, lbbench_config, lbbench_ledger)
    try:
        deployment = cloud_plugin.deployment_for(ctx, lbbench_config.system(lbbench_system))
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def lbbench_run(
    request: pytest.FixtureRequest, lbbench_config: LbbenchConfig, lbbench_ledger: ProcessLedger,
    lbbench_load: Load | None, lbbench_repeat: int,
) -> RunExperiment:
    """Run one experiment (every client region in parallel) and record its summary.

    ``run(deployment, workload)`` runs at this test's load (``lbbench_load``; ``load=`` sets
    another) and repetition (``lbbench_repeat``). Results land in
    ``<output-dir>/<run-id>/metric/<exp>_<system>/<client-region>.json``, the 1 Hz telemetry
    in ``<output-dir>/<run-id>/queue_size/<exp>_<system>.txt``; the summary goes to the test's
    ``user_properties`` so the controller can report it, under xdist too. Gates
    (``--lbbench-fail``) are checked here; with repetitions, at the last one, on their means.
    """
    return _experiment_runner(request, lbbench_config, lbbench_ledger, lbbench_load, lbbench_repeat)


@pytest.fixture
def lbbench_capacity(
    request: pytest.FixtureRequest, lbbench_config: LbbenchConfig, lbbench_ledger: ProcessLedger,
) -> SearchCapacity:
    """``capacity(deployment, workload)``: the highest load at which the system meets every
    ``--lbbench-sla`` target, found by bisection within ``--lbbench-sla-range`` (each probe a
    full experiment, reported like any other). The result goes to the run's capacity table
    and bar chart; ``--lbbench-fail capacity:PCT%`` gates it against the baseline."""
    from pytest_lbbench.capacity import search
    from pytest_lbbench.gate import check

    cfg = lbbench_config
    if not cfg.sla:
        pytest.skip("lbbench_capacity needs --lbbench-sla METRIC=BOUND (e.g. ttft_p90_s=1.0)")
    run = _experiment_runner(request, cfg, lbbench_ledger, None, 1, gate=False)

    def capacity(deployment: Deployment, workload: str) -> Capacity:
        system = deployment.system.name

        def probe(load: Load) -> tuple[bool, tuple[str, ...]]:
            overall = run(deployment, workload, load).reported["overall"]
            missed = tuple(t.text for t in cfg.sla if not t.met(overall))
            # Failures past --lbbench-max-failure-rate miss the SLA (they do not fail the test:
            # overloading a system is what a capacity search does).
            rate = overall.get("failure_rate")
            if rate is not None and rate > cfg.max_failure_rate:
                missed += (f"failure_rate <= {cfg.max_failure_rate:g}",)
            return not missed, missed

        found = search(probe, cfg.sla_kind, *cfg.sla_range, max_probes=cfg.sla_probes)
        key = cfg.experiment_key(system, workload)
        summary = {"key": key, "system": system, "workload": workload,
                   "targets": [t.text for t in cfg.sla], **found.to_dict(),
                   "text": found.describe()}
        request.node.user_properties.append((CAPACITY_KEY, summary))
        gates = [t for t in cfg.thresholds if t.metric == "capacity"]
        if gates:
            base = cfg.baseline.get(key)
            if base is None or base.get("capacity") is None:
                request.node.warn(pytest.PytestWarning(
                    f"{key} has no capacity in baseline {cfg.baseline_name}; nothing to compare"))
            else:
                breaches = check(key, {"capacity": found.capacity}, base, gates, cfg.baseline_name or "?")
                if breaches:
                    pytest.fail("\n".join(breaches), pytrace=False)
        return found

    return capacity


def _experiment_runner(
    request: pytest.FixtureRequest, lbbench_config: LbbenchConfig, lbbench_ledger: ProcessLedger,
    default_load: Load | None, repeat: int, gate: bool = True,
) -> RunExperiment:
    from pytest_lbbench import cloud_plugin
    from pytest_lbbench.backends.local import telemetry_recorder
    from pytest_lbbench.faults import FaultDriller, classify_failures, undone_at_s
    from pytest_lbbench.gate import check
    from pytest_lbbench.hostlag import judge as judge_host_lag
    from pytest_lbbench.report.faults import fault_timeline, recovery
    from pytest_lbbench.report.repeats import repeated_summary
    from pytest_lbbench.report.rundirs import ensure_run_dir
    from pytest_lbbench.report.results import ExperimentResult

    cfg = lbbench_config

    def run(deployment: Deployment, workload: str, load: Load | None = None) -> ExperimentResult:
        system = deployment.system.name
        load = load if load is not None else default_load
        spec = cfg.experiment_spec(system, workload, load, repeat)
        exp_name = spec.exp_name
        key = cfg.experiment_key(system, workload, load)
        run_dir = ensure_run_dir(cfg.output_dir, cfg.run_id)
        metric_dir: Path = run_dir / "metric" / exp_name
        log_dir = run_dir / "logs" / system
        launcher = cloud_plugin.client_launcher_for(
            _context(request.config, cfg, lbbench_ledger), deployment.system)
        queue_file = run_dir / "queue_size" / f"{exp_name}.txt"
        drill_target = _drill_target(deployment, system, cfg.faults) if cfg.faults else None
        # Every experiment starts from the state of a fresh system, so test order never matters.
        isolation = deployment.reset()
        label = key + (f"-rep{repeat}" if cfg.repeat > 1 else "")
        progress = progress_printer(request.config, label, cfg.knobs.warmup_s + cfg.knobs.duration_s,
                                    [metric_dir / f"{r}.json" for r in spec.client_regions], run_dir)
        drill: FaultDriller | None = None

        def on_progress(elapsed_s: float, recorded: int) -> None:
            if drill is not None:
                drill.step()
            if progress is not None:
                progress(elapsed_s, recorded)

        with telemetry_recorder(deployment.telemetry_targets(), queue_file, log_dir, lbbench_ledger):
            if drill_target is not None:
                drill = FaultDriller(drill_target, cfg.faults, grace_s=cfg.fault_grace_s)
            try:
                files = launcher.run(deployment, spec, metric_dir,
                                     on_progress=on_progress if drill or progress else None)
            finally:
                if drill is not None:
                    drill.finish()  # the next experiment starts from the whole system
        host_lag = deployment.host_lag()
        connections = deployment.connection_counts()
        result = ExperimentResult.load(system, workload, exp_name, files)
        description = deployment.describe()
        result.add_ttft_parts(description)  # written with the deployment, just below
        result.attach("deployment", description)
        result.attach("connections", connections)
        result.attach("isolation", isolation)
        if drill is not None:
            windows = drill.windows(end_of_run=time.time())
            counts = classify_failures(result.records, windows)
            timeline = fault_timeline(result.records, drill.t0, cfg.knobs.warmup_s + cfg.knobs.duration_s)
            result.attach("faults", {
                "drill": [spec.text for spec in cfg.faults], "grace_s": cfg.fault_grace_s,
                "t0": drill.t0, "events": drill.log, "counts": counts, "timeline": timeline,
                "recovery": [
                    {"spec": e["spec"], "action": e["action"], "target": e["target"],
                     **recovery(timeline, e["at"] - drill.t0, fault_end_s=undone_at_s(drill.log, e, drill.t0))}
                    for e in drill.log if e["action"] in ("crash", "partition", "slow") and not e["undo_at_end"]
                ],
                "windows": [{"spec": w.spec, "start": w.start, "end": w.end,
                             "client_regions": sorted(w.client_regions) if w.client_regions else None}
                            for w in windows],
            })
        lag_verdict = None if host_lag is None else judge_host_lag(
            host_lag, cfg.host_lag_threshold_ms, cfg.time_scale)
        result.attach("host_lag", lag_verdict)
        identity = {"key": key, "load": load.to_dict() if load else None, "repeat": repeat,
                    "repeats": cfg.repeat, "probe": not gate}
        result.attach("experiment", identity)
        properties = result.properties(slo=cfg.slo)
        properties.update(identity)
        result.reported = properties
        request.node.user_properties.append((PROPERTY_KEY, properties))
        verdict = failure_verdict(result.records, cfg.max_failure_rate, label)
        if verdict is not None and gate:  # a capacity probe counts failures as a missed target
            pytest.fail(verdict, pytrace=False)
        # With repetitions, the gate judges their mean at the last one (earlier ones wait).
        runs = request.config.stash.setdefault(_REPEATS, {}).setdefault(key, [])
        runs.append(properties["overall"])
        gates = [t for t in cfg.thresholds if t.metric != "capacity"]
        if gate and gates and repeat == cfg.repeat:
            base = cfg.baseline.get(key)
            if base is None:
                request.node.warn(pytest.PytestWarning(
                    f"{key} is not in baseline {cfg.baseline_name}; nothing to compare"))
            else:
                breaches = check(key, repeated_summary(runs), base, gates, cfg.baseline_name or "?")
                if breaches:
                    pytest.fail("\n".join(breaches), pytrace=False)
        return result

    return run


def _drill_target(deployment: Deployment, system: str, faults: tuple[FaultSpec, ...]) -> Any:
    """The deployment, checked to run this run's drill (the test fails with the reason)."""
    from pytest_lbbench.faults import FaultError, check_targets

    needed = ("apply_fault", "fault_targets", "entry_components", "partition_cuts_clients")
    if not all(callable(getattr(deployment, name, None)) for name in needed):
        pytest.fail(f"--fault: the {type(deployment).__name__} of {system} cannot run fault drills "
                    "(only the local backend's deployments can)", pytrace=False)
    try:
        check_targets(faults, deployment, system)  # type: ignore[arg-type]
    except FaultError as exc:
        pytest.fail(str(exc), pytrace=False)
    return deployment


def failure_verdict(records: list[dict[str, Any]], max_rate: float, label: str) -> str | None:
    """Why the test fails for its failed requests (None when within ``max_rate``). Requests
    marked as hit by a drilled fault (``fault``) are left out of the rate and named apart."""
    if not records:
        return None
    failed = [r for r in records if r.get("failed")]
    hit = sum(1 for r in failed if r.get("fault"))
    counted = len(failed) - hit
    rate = counted / len(records)
    if rate <= max_rate:
        return None
    reasons: dict[str, int] = {}
    for record in failed:
        if not record.get("fault"):
            reason = str(record["failed"])[:120]
            reasons[reason] = reasons.get(reason, 0) + 1
    top = "; ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    apart = f" ({hit} more were hit by drilled faults and are not counted)" if hit else ""
    return (f"{label}: {counted} of {len(records)} requests failed ({rate:.1%}), over "
            f"--lbbench-max-failure-rate {max_rate:g} ({max_rate:.1%}){apart}. Most frequent: {top}")


def progress_printer(
    config: pytest.Config, label: str, duration_s: float, result_files: list[Path], run_dir: Path,
) -> Callable[[float, int], None] | None:
    """Every few seconds, the experiment's progress: requests done, failures and a rolling
    TTFT p50 (read from the clients' partial JSONL files).

    Without xdist it is a line on the terminal (lines, not carriage returns, so CI logs stay
    readable; none under -q -q); on an xdist worker, an event in ``<run-dir>/.progress/`` that
    the controller prints (see :class:`pytest_lbbench.collect.LiveProgress`)."""
    from pytest_lbbench.report.live import ProgressTracker, format_line, progress_event, progress_file

    worker = getattr(config, "workerinput", {}).get("workerid")
    tracker = ProgressTracker(result_files)
    last = [float("-inf")]
    if worker is not None:
        events = progress_file(run_dir, str(worker))

        def send(elapsed_s: float, recorded: int) -> None:
            if elapsed_s - last[0] < PROGRESS_INTERVAL_S:
                return
            last[0] = elapsed_s
            progress_event(events, label, elapsed_s, duration_s, tracker.poll())

        return send
    if config.get_verbosity() < 0:
        return None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return None

    def show(elapsed_s: float, recorded: int) -> None:
        if elapsed_s - last[0] < PROGRESS_INTERVAL_S:
            return
        last[0] = elapsed_s
        filled = min(BAR_WIDTH, int(BAR_WIDTH * elapsed_s / duration_s)) if duration_s else BAR_WIDTH
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                                + format_line(label, elapsed_s, duration_s, tracker.poll()))

    return show
