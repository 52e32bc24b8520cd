"""Do the workloads deliver what they promise? Side-by-side measurements, one run each.

Run with ``pytest benchmarks --lbbench-selfcheck -k workload_fidelity`` (they load both cores,
so they are deselected unless asked for). Each prints a table at the end of the run.

* ``test_open_loop_rate_at_the_replicas``: open-loop Poisson arrivals at a fixed rate, 60 s,
  two client regions, through ``sky_round_robin``; the rate is measured from the replicas' own
  arrival timestamps and compared with the rate asked for (within 5 %).
* ``test_prefix_aware_routing_on_trees``: ``tot`` and ``tot_single`` (trees whose siblings share
  their whole prompt) on ``sky_round_robin`` and on two prefix-aware systems, same settings,
  all four replicas and the clients in one region; the KV-cache hit rate of each, side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment, LocalSettings
from pytest_lbbench.collect import NOTE_KEY
from pytest_lbbench.report.metrics import cache_hit_rate
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.systems import SYSTEMS

REGIONS = ("us-east-2", "ap-northeast-1")


def _run(system: str, workload: str, tmp: Path, *, duration: float, users: int, seed: int,
         time_scale: float, workload_options: dict[str, Any], max_tokens: int | None = None,
         regions: tuple[str, ...] = REGIONS, replica_regions: tuple[str, ...] = DEFAULT_REPLICA_REGIONS,
         ) -> list[dict[str, Any]]:
    """Start ``system`` on the local backend, run ``workload`` once, stop; return the records."""
    ledger = ProcessLedger(ledger_path(tmp))
    deployment = LocalDeployment(SYSTEMS[system], LocalSettings(
        replicas=4, replica_regions=replica_regions, client_regions=regions, log_dir=tmp / "logs", time_scale=time_scale,
        ledger=ledger, replica_seed=seed,
    ))
    spec = ExperimentSpec(
        system=system, workload=workload, exp_name=f"{workload}_{system}", client_regions=regions,
        knobs=RunKnobs(duration_s=duration, num_users=users, seed=seed, max_tokens=max_tokens,
                       drain_timeout_s=60),
        workload_options=workload_options,
    )
    deployment.start()
    try:
        files = LocalClientLauncher(tmp / "logs", ledger).run(deployment, spec, tmp / "metric" / spec.exp_name)
    finally:
        deployment.stop()
    records: list[dict[str, Any]] = []
    for path in files.values():
        data = json.loads(path.read_text())
        assert len(data["metrics"]) == data["sent"] > 0, "a request was lost"
        records += data["metrics"]
    return records


RATE_PER_REGION = 10.0  # requests/s from each client region: 20 requests/s at the replicas
RATE_DURATION_S = 60.0


@pytest.mark.lbbench_selfcheck
def test_open_loop_rate_at_the_replicas(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    records = _run(
        "sky_round_robin", "arena_syn", tmp_path, duration=RATE_DURATION_S, users=50, seed=0,
        time_scale=1.0, max_tokens=32,
        workload_options={"request_rate": RATE_PER_REGION},
    )
    arrivals = sorted(
        r["replica_timing"]["arrival"] for r in records if (r.get("replica_timing") or {}).get("arrival")
    )
    starts = sorted(r["start"] for r in records)
    target = RATE_PER_REGION * len(REGIONS)
    at_replicas = len(arrivals) / RATE_DURATION_S
    sent = len(records) / RATE_DURATION_S
    failed = sum(1 for r in records if r["failed"])
    # Arrivals per 10 s window, from the first request sent: a flat profile means the client
    # kept the rate all along instead of falling behind and catching up.
    t0 = starts[0]
    bins = [sum(1 for a in arrivals if k * 10 <= a - t0 < (k + 1) * 10) / 10 for k in range(6)]
    lines = [
        f"target {target:.1f} req/s (Poisson, {RATE_PER_REGION:g}/s from each of {len(REGIONS)} "
        f"client regions, {RATE_DURATION_S:.0f} s, sky_round_robin, 4 replicas)",
        f"sent by the clients:       {sent:6.2f} req/s  ({sent / target:.3f} of target)",
        f"arrived at the replicas:   {at_replicas:6.2f} req/s  ({at_replicas / target:.3f} of target)",
        "per 10 s window at the replicas: " + "  ".join(f"{b:.1f}" for b in bins),
        f"failed requests: {failed} of {len(records)}",
    ]
    request.node.user_properties.append((NOTE_KEY, ("lbbench open-loop rate", lines)))
    assert failed == 0
    assert abs(at_replicas / target - 1) <= 0.05, "\n".join(lines)


TREE_SYSTEMS = ("sky_round_robin", "sky_sgl_enhanced", "sgl")
# One region holding all 4 replicas and the clients: every system chooses among the same 4
# replicas (with the default placement a region-local round robin in ap-northeast-1 has a
# single replica, which trivially "keeps" every prefix). Users: few enough that the trees in
# flight fit the KV caches (a 4-stage tree of b = 2 holds ~13k tokens at its widest; each
# replica holds 22k), so the hit rate shows where requests were routed, not what was evicted.
TREE_REGION = "us-east-2"
TREE_USERS = 4


@pytest.mark.lbbench_selfcheck
def test_prefix_aware_routing_on_trees(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    hit: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], int] = {}
    for workload in ("tot", "tot_single"):
        for system in TREE_SYSTEMS:
            records = _run(system, workload, tmp_path / f"{workload}-{system}", duration=20.0,
                           users=TREE_USERS, seed=0, time_scale=0.05, workload_options={},
                           regions=(TREE_REGION,), replica_regions=(TREE_REGION,))
            rate = cache_hit_rate(records)
            assert rate is not None
            hit[(workload, system)] = rate
            counts[(workload, system)] = len(records)
    lines = [f"{'workload':<11}" + "".join(f"{s:>18}" for s in TREE_SYSTEMS) + "   (KV-cache hit rate, requests)"]
    for workload in ("tot", "tot_single"):
        lines.append(f"{workload:<11}" + "".join(
            f"{hit[(workload, s)]:>10.1%} ({counts[(workload, s)]:>4})" for s in TREE_SYSTEMS))
    request.node.user_properties.append((NOTE_KEY, ("lbbench prefix sharing on trees", lines)))
    for workload in ("tot", "tot_single"):
        rr = hit[(workload, "sky_round_robin")]
        for system in TREE_SYSTEMS[1:]:
            assert hit[(workload, system)] >= rr + 0.10, "\n".join(lines)
