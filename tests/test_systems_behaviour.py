"""Each system, really started on loopback, shows its defining property (DESIGN §3).

These drive whole systems through the local backend without the pytest plugin: replicas, LBs,
routers, gateways and delay links are real processes; times are shrunk 20× (``time_scale``).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.client.planning import parse_region_args
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path, live_entries
from pytest_lbbench.backends.local import (
    LocalClientLauncher,
    LocalDeployment,
    LocalSettings,
    telemetry_recorder,
)
from pytest_lbbench.systems import SYSTEMS, BalancerKind, Placement

SCALE = 0.05


def run_system(
    name: str, tmp: Path, *, regions: tuple[str, ...] = ("us-east-2", "ap-northeast-1"),
    users: int = 3, replicas: int = 3, duration: float = 3.0, max_tokens: int = 12,
    region_to_args: dict[str, str] | None = None,
    replica_regions: tuple[str, ...] = ("us-east-2", "ap-northeast-1", "eu-central-1"),
    profile: str = "l4-llama3.1-8b",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Run ``name`` once; return (records, telemetry lines, deployment description)."""
    ledger = ProcessLedger(ledger_path(tmp))
    deployment = LocalDeployment(SYSTEMS[name], LocalSettings(
        replicas=replicas, replica_regions=replica_regions,
        client_regions=regions, log_dir=tmp / "logs", time_scale=SCALE, ledger=ledger, profile=profile,
    ))
    spec = ExperimentSpec(
        system=name, workload="arena_syn", exp_name=f"t_{name}", client_regions=regions,
        knobs=RunKnobs(duration_s=duration, num_users=users, seed=1, max_tokens=max_tokens,
                       drain_timeout_s=30),
        workload_options={"num_conv": 50},
        region_overrides={r: parse_region_args(a) for r, a in (region_to_args or {}).items()},
    )
    deployment.start()
    try:
        with telemetry_recorder(deployment.telemetry_targets(), tmp / "queue.txt", tmp / "logs", ledger):
            files = LocalClientLauncher(tmp / "logs", ledger).run(deployment, spec, tmp / "metric")
        description = deployment.describe()
    finally:
        deployment.stop()
    assert not live_entries(ledger_path(tmp))
    records = []
    for path in files.values():
        data = json.loads(path.read_text())
        assert len(data["metrics"]) == data["sent"] > 0, "a request was lost"
        records += data["metrics"]
    telemetry = [json.loads(line) for line in (tmp / "queue.txt").read_text().splitlines()]
    return records, telemetry, description


def replica_regions(description: dict[str, Any]) -> dict[str, str]:
    return {r["name"]: r["region"] for r in description["replicas"]}


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_every_system_serves_without_losing_requests_under_overload(name: str, tmp_path: Path) -> None:
    # 2 replicas, 12 users per region: queues build in the LBs or the engines.
    records, telemetry, _ = run_system(name, tmp_path, users=12, replicas=2, max_tokens=24)
    failed = [r for r in records if r["failed"]]
    assert len(failed) <= 0.01 * len(records), failed[:3]
    assert len(telemetry) >= 3


# Stealing systems are left out on purpose: an idle LB steals queued requests from a busy one
# by design, which moves conversations (tests/test_lb_modes.py covers stealing).
PREFIX_SYSTEMS = [n for n, s in SYSTEMS.items()
                  if s.policy == "prefix_tree" and not str(s.lb_mode).startswith("steal")]


def same_replica_share(records: list[dict[str, Any]]) -> tuple[float, int]:
    """Share of later turns served by the replica that served the conversation's first turn."""
    by_conv: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if not r["failed"]:
            by_conv[r["program_id"]].append(r)
    later = [(turns[0]["replica"], t["replica"]) for turns in by_conv.values()
             for t in sorted(turns, key=lambda t: t["turn_index"])[1:]]
    return sum(1 for first, other in later if first == other) / max(1, len(later)), len(later)


@pytest.mark.parametrize("name", PREFIX_SYSTEMS)
def test_prefix_systems_keep_a_conversation_on_one_replica(name: str, tmp_path: Path) -> None:
    records, _, _ = run_system(name, tmp_path, regions=("us-east-2",), users=3, replicas=4, duration=4.0)
    share, later = same_replica_share(records)
    assert later >= 5
    # Not 100 %: the original's prefix tree matches the JSON text of the messages and needs a
    # match rate above 0.5, so a second turn whose answer and new question outweigh the first
    # prompt falls back to least load; and replica pull skips a replica whose last probe saw a
    # waiting request. Measured here: 0.76-0.78, against 0.43 for round robin (test below).
    assert share >= 0.65, share
    hits = [r["cached_tokens"] / r["input_tokens"] for r in records if not r["failed"] and r["turn_index"] > 0]
    assert sum(hits) / len(hits) > 0.5  # later turns hit their history in the replica's cache


def test_round_robin_has_no_affinity_control(tmp_path: Path) -> None:
    # 4 replicas place 2 in us-east-2, so round robin alternates between them.
    records, _, _ = run_system("sky_round_robin", tmp_path, regions=("us-east-2",), users=3, replicas=4, duration=4.0)
    share, later = same_replica_share(records)
    assert later >= 5 and share < 0.6, share  # the control for the test above


PAPER_SINGLE_LB_BASELINES = ("sky_round_robin", "sky_least_load", "sky_consistent_hashing")


@pytest.mark.parametrize("name", PAPER_SINGLE_LB_BASELINES)
def test_paper_baselines_are_one_lb_in_the_us_over_every_replica(name: str) -> None:
    spec = SYSTEMS[name]
    assert spec.placement is Placement.GLOBAL and spec.entry_region == "us-east-2"
    twin = SYSTEMS["region_local_" + name.removeprefix("sky_")]
    assert twin.placement is Placement.REGIONAL and twin.policy == spec.policy


def test_round_robin_serves_a_far_region_from_every_region(tmp_path: Path) -> None:
    # The paper's RR: one LB in us-east-2 in front of every replica, so ap-northeast-1's users
    # are served in all three regions (Fig. 8), unlike the region-local row below.
    records, _, description = run_system("sky_round_robin", tmp_path, regions=("ap-northeast-1",), users=4)
    assert [b["region"] for b in description["balancers"]] == ["us-east-2"]
    regions = replica_regions(description)
    served = [regions[r["replica"]] for r in records if not r["failed"]]
    remote = sum(1 for region in served if region != "ap-northeast-1")
    assert set(served) == {"us-east-2", "ap-northeast-1", "eu-central-1"}, served
    assert remote / len(served) > 0.5


REGION_LOCAL = [n for n, s in SYSTEMS.items()
                if s.kind is BalancerKind.SKY_LB and s.lb_mode == "global" and s.placement is Placement.REGIONAL]


@pytest.mark.parametrize("name", REGION_LOCAL)
def test_region_local_rows_never_leave_their_region(name: str, tmp_path: Path) -> None:
    records, _, description = run_system(name, tmp_path, users=6)
    regions = replica_regions(description)
    served = [(r["client_region"], regions[r["replica"]]) for r in records if not r["failed"]]
    assert served and all(client == replica for client, replica in served)


def lb_waits(records: list[dict[str, Any]]) -> list[float]:
    """Seconds each request waited in an LB queue, from the LBs' timing headers."""
    waits = []
    for r in records:
        h = {k.lower(): v for k, v in (r["headers"] or {}).items()}
        for hop in ("first-hop", "second-hop"):
            if f"{hop}-sky-time-arrive" in h:
                waits.append(float(h[f"{hop}-sky-time-scheduled"]) - float(h[f"{hop}-sky-time-arrive"]))
    return waits


def lb_counter(telemetry: list[dict[str, Any]], key: str) -> int:
    """The largest value of an LB ``/conf`` counter over the telemetry samples, summed over LBs."""
    highest: dict[str, int] = {}
    for sample in telemetry:
        for target, conf in sample.items():
            if isinstance(conf, dict) and conf.get("kind") == "sky_lb":
                highest[target] = max(highest.get(target, 0), int(conf[key]))
    return sum(highest.values())


def test_push_push_holds_nothing_in_lb_queues_while_pull_does(tmp_path: Path) -> None:
    # The same overload on both systems: 2 small replicas (4 sequences each) and 20 users, all in
    # one region, so there is one LB and the timing headers measure its queue alone (no LB-to-LB
    # transit in them).
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"base": "l4-llama3.1-8b", "max_running_requests": 4}))
    one_region: dict[str, Any] = {"regions": ("us-east-2",), "replica_regions": ("us-east-2",),
                                  "profile": str(small)}
    push, push_conf, _ = run_system("sky_push_push", tmp_path / "push", users=20, replicas=2,
                                    max_tokens=48, **one_region)
    pull, pull_conf, _ = run_system("sky_push_pull", tmp_path / "pull", users=20, replicas=2,
                                    max_tokens=48, **one_region)
    # What the LB's policy held, from its own counter: a request counts when a tick found it at
    # the head of the queue and could not place it. Push places every request at its tick (the
    # replica policy always returns a replica); pull holds until a probe finds an empty engine
    # queue. Counted by the LB, not timed, so a loaded machine cannot blur it.
    # Each LB runs its own clocks at the run's time scale (it was given the factor, not periods).
    assert {conf["time_scale"] for sample in push_conf + pull_conf for conf in sample.values()
            if isinstance(conf, dict) and conf.get("kind") == "sky_lb"} == {SCALE}
    push_held, pull_held = lb_counter(push_conf, "held_total"), lb_counter(pull_conf, "held_total")
    assert push_held == 0, push_held
    assert pull_held > 0.25 * len(pull), (pull_held, len(pull))
    # And the clients see it in the LBs' timing headers: time in the LB queue. Push's waits are
    # ticks (one pop per 1 ms tick, two for a self-push) plus event-loop lateness; pull's are
    # probe-bound holds. Medians, not a count above a fixed threshold: loop lateness on a busy
    # 2-core machine moves push's tail, not its middle (measured: 1.4-6.4 ms against 16-43 ms).
    push_waits, pull_waits = lb_waits(push), lb_waits(pull)
    assert push_waits and pull_waits
    assert statistics.median(pull_waits) > 2 * statistics.median(push_waits), (
        statistics.median(push_waits), statistics.median(pull_waits))


def test_skewed_load_shows_who_serves_outside_the_region(tmp_path: Path) -> None:
    skew = {"us-east-2": "--num-users 12", "ap-northeast-1": "--num-users 1"}
    records, _, description = run_system("sky_push_push", tmp_path, replicas=3, max_tokens=24,
                                         region_to_args=skew)
    regions = replica_regions(description)
    us = [r for r in records if r["client_region"] == "us-east-2" and not r["failed"]]
    ap = [r for r in records if r["client_region"] == "ap-northeast-1"]
    assert len(us) > 4 * len(ap)  # the per-region user counts took effect
    remote = sum(1 for r in us if regions[r["replica"]] != "us-east-2")
    assert 0 < remote < len(us)  # push spreads us-east-2 work across regions, not all of it
