"""Isolated experiments: every experiment starts from the state of a fresh system.

Two experiments run on one deployment in both orders (A then B, B then A, each on its own
deployment); each experiment's requests must meet the same replicas with the same cache hits
whichever ran first. Without the reset between them the second experiment inherits the first's
warm prefix caches and the balancer's round-robin position, and the comparison fails.
Real processes on loopback, times shrunk 20×.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path, live_entries
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment, LocalSettings
from pytest_lbbench.systems import SYSTEMS

SCALE = 0.05
# One closed-loop user: its requests reach the balancer one at a time, in a fixed order, so
# round robin and the caches see the same sequence in every run.
EXPERIMENTS = {"A": 1, "B": 2}  # name → workload seed


def fingerprint(records: list[dict[str, Any]], n: int) -> list[tuple[Any, ...]]:
    """What a request met: (conversation, turn, replica, cached tokens, output tokens)."""
    ordered = sorted((r for r in records if not r["failed"]), key=lambda r: r["start"])
    return [(r["conv_index"], r["turn_index"], r["replica"], r["cached_tokens"], r["output_tokens"])
            for r in ordered[:n]]


def run_in_order(system: str, order: str, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    ledger = ProcessLedger(ledger_path(tmp))
    deployment = LocalDeployment(SYSTEMS[system], LocalSettings(
        replicas=3, replica_regions=("us-east-2",), client_regions=("us-east-2",),
        log_dir=tmp / "logs", time_scale=SCALE, ledger=ledger,
    ))
    out: dict[str, list[dict[str, Any]]] = {}
    deployment.start()
    try:
        for name in order:
            deployment.reset()
            spec = ExperimentSpec(
                system=system, workload="arena_syn", exp_name=f"iso_{name}", client_regions=("us-east-2",),
                knobs=RunKnobs(duration_s=2.5, num_users=1, seed=EXPERIMENTS[name], max_tokens=16,
                               drain_timeout_s=30),
                workload_options={"num_conv": 20},
            )
            files = LocalClientLauncher(tmp / "logs", ledger).run(deployment, spec, tmp / "metric" / name)
            data = json.loads(files["us-east-2"].read_text())
            assert len(data["metrics"]) == data["sent"] > 0
            out[name] = data["metrics"]
    finally:
        deployment.stop()
    assert not live_entries(ledger_path(tmp))
    return out


# Systems whose decisions depend only on the request sequence and the state (not on timing or
# on random tie-breaks: the real sglang-router breaks ties between empty trees in hash-map
# order, so a fresh router's first choice differs from process to process).
@pytest.mark.parametrize("system", ["sky_round_robin", "sky_consistent_hashing"])
def test_two_experiments_give_the_same_results_in_either_order(system: str, tmp_path: Path) -> None:
    first = run_in_order(system, "AB", tmp_path / "ab")
    second = run_in_order(system, "BA", tmp_path / "ba")
    for name in EXPERIMENTS:
        n = min(len(first[name]), len(second[name]))
        assert n >= 6, (name, n)
        assert fingerprint(first[name], n) == fingerprint(second[name], n), name


def test_reset_restarts_the_router_and_it_serves_again(tmp_path: Path) -> None:
    # The sglang-router has no endpoint that clears its radix tree, so a reset restarts it.
    ledger = ProcessLedger(ledger_path(tmp_path))
    deployment = LocalDeployment(SYSTEMS["sgl"], LocalSettings(
        replicas=2, replica_regions=("us-east-2",), client_regions=("us-east-2",),
        log_dir=tmp_path / "logs", time_scale=SCALE, ledger=ledger,
    ))
    deployment.start()
    try:
        before = {p.name: p.pid for p in deployment._procs}
        done = deployment.reset()
        after = {p.name: p.pid for p in deployment._procs}
        assert "sglang-router (restarted)" in done["components"]
        assert after["sglang-router"] != before["sglang-router"]
        assert {k: v for k, v in after.items() if k != "sglang-router"} == {
            k: v for k, v in before.items() if k != "sglang-router"}
        spec = ExperimentSpec(
            system="sgl", workload="arena_syn", exp_name="iso_router", client_regions=("us-east-2",),
            knobs=RunKnobs(duration_s=1.0, num_users=1, seed=0, max_tokens=8, drain_timeout_s=30),
            workload_options={"num_conv": 5},
        )
        files = LocalClientLauncher(tmp_path / "logs", ledger).run(deployment, spec, tmp_path / "metric")
        data = json.loads(files["us-east-2"].read_text())
        assert data["sent"] > 0 and not any(r["failed"] for r in data["metrics"])
    finally:
        deployment.stop()
    assert not live_entries(ledger_path(tmp_path))
