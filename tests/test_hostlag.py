"""Host lag: reading each component's counters into one shape and judging a run by them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment, LocalSettings
from pytest_lbbench.hostlag import balancer_lag, judge, link_lag, replica_lag
from pytest_lbbench.systems import SYSTEMS


def calm(events: int = 1000) -> dict[str, float]:
    return {"events": events, "late_events": 2, "lateness_total_s": 0.2, "lateness_max_s": 0.004, "resyncs": 0}


def test_a_calm_run_is_not_host_bound() -> None:
    verdict = judge({"replica-0": calm(), "lb-us-east-2": calm(), "netem": calm()})
    assert verdict["host_bound"] is False and verdict["reasons"] == []
    assert verdict["worst_mean_lateness_ms"] == 0.2


def test_mean_lateness_and_resyncs_each_flag_a_run() -> None:
    late = dict(calm(), lateness_total_s=8.0)  # 8 ms per event
    assert judge({"replica-0": late})["reasons"][0].startswith("replica-0 ran 8.0 ms")
    often = dict(calm(), late_events=300)  # often a little late: contention, not falling behind
    assert not judge({"lb-us-east-2": often})["host_bound"]
    resynced = dict(calm(), resyncs=3)
    assert judge({"replica-1": resynced})["host_bound"]


def test_lateness_is_judged_in_model_time() -> None:
    # 0.5 ms per event of wall time is 10 ms of model time at --time-scale 0.05.
    half_ms = dict(calm(), lateness_total_s=0.5)
    assert not judge({"replica-0": half_ms})["host_bound"]
    assert judge({"replica-0": half_ms}, time_scale=0.05)["host_bound"]


def test_unreadable_components_are_kept_but_not_judged() -> None:
    verdict = judge({"replica-0": {"error": "ConnectionRefusedError"}, "lb": calm()})
    assert not verdict["host_bound"] and verdict["components"]["replica-0"]["error"]


def test_each_components_counters_are_read_into_one_shape() -> None:
    metrics = "\n".join([
        "lbbench:engine_iterations_total 500", "lbbench:engine_late_iterations_total 7",
        "lbbench:engine_lag_seconds_total 0.25", "lbbench:engine_lag_max_seconds 0.02",
        "lbbench:engine_clock_resyncs_total 1", "",
    ])
    assert replica_lag(metrics) == {"events": 500, "late_events": 7, "lateness_total_s": 0.25,
                                    "lateness_max_s": 0.02, "resyncs": 1}
    conf = {"lag": {"ticks": 90, "late_ticks": 3, "tick_late_s_total": 0.1, "tick_late_max_s": 0.05}}
    assert balancer_lag(conf)["late_events"] == 3 and balancer_lag({})["events"] == 0
    links = {"a": {"releases": 10, "late_releases": 1, "lateness_total_s": 0.01, "lateness_max_s": 0.004},
             "b": {"releases": 5, "late_releases": 0, "lateness_total_s": 0.0, "lateness_max_s": 0.009}}
    assert link_lag(links) == {"events": 15, "late_events": 1, "lateness_total_s": 0.01,
                               "lateness_max_s": 0.009, "resyncs": 0}


# -- real processes --------------------------------------------------------------------------------

def run_and_judge(tmp: Path, *, time_scale: float, users: int, max_tokens: int) -> dict[str, Any]:
    ledger = ProcessLedger(ledger_path(tmp))
    deployment = LocalDeployment(SYSTEMS["sky_round_robin"], LocalSettings(
        replicas=1, replica_regions=("us-east-2",), client_regions=("us-east-2",),
        log_dir=tmp / "logs", time_scale=time_scale, ledger=ledger,
    ))
    deployment.start()
    try:
        deployment.reset()
        spec = ExperimentSpec(
            system="sky_round_robin", workload="arena_syn", exp_name="lag", client_regions=("us-east-2",),
            knobs=RunKnobs(duration_s=2.0, num_users=users, seed=0, max_tokens=max_tokens,
                           drain_timeout_s=30),
            workload_options={"num_conv": 40},
        )
        files = LocalClientLauncher(tmp / "logs", ledger).run(deployment, spec, tmp / "metric")
        assert json.loads(files["us-east-2"].read_text())["sent"] > 0
        lag = deployment.host_lag()
    finally:
        deployment.stop()
    assert set(lag) == {"replica-0-us-east-2", "lb-global", "netem"}
    assert all("error" not in v for v in lag.values()), lag
    return judge(lag, time_scale=time_scale)


def test_an_overloaded_run_is_flagged_and_a_calm_one_is_not(tmp_path: Path) -> None:
    # Overloaded on purpose: at --time-scale 0.002 a decode step is due every ~0.15 ms, faster
    # than Python can run one, so the engine falls ever further behind its model clock.
    overloaded = run_and_judge(tmp_path / "hot", time_scale=0.002, users=8, max_tokens=64)
    assert overloaded["host_bound"], overloaded
    replica = overloaded["components"]["replica-0-us-east-2"]
    assert replica["lateness_total_s"] > 0
    calm = run_and_judge(tmp_path / "calm", time_scale=1.0, users=1, max_tokens=4)
    assert not calm["host_bound"], calm
