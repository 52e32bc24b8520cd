"""``POST /lbbench/reset`` gives an LB the state of a fresh process; ``/conf`` ``lag`` counts how
late its loops woke.

Without network: a reset LB and a fresh LB make the same decisions (round robin starts at
replica 0, empty trees, zero counters) and a busy LB refuses. Over loopback: a real LB process
in front of a real simulated replica answers the endpoint (409 while a request streams), and an
artificial event-loop stall shows up in the lag counters.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from control_support import HEADERS
from pytest_lbbench import procutil
from pytest_lbbench.lb.config import LbConfig, LbMode, ReplicaMode
from pytest_lbbench.lb.lag import PRECISION_S, LoopLag
from pytest_lbbench.lb.peers import PeerStatus
from pytest_lbbench.lb.policies import PrefixTreePolicy
from pytest_lbbench.lb.queue import Dispatch
from pytest_lbbench.lb.server import LoadBalancer, wait_for_next_tick

from lbcore_support import apply, arrive

pytestmark = pytest.mark.timeout(120)

REPLICAS = {f"replica-{i}": f"http://127.0.0.1:{9000 + i}" for i in range(3)}
LBS = {"lb-a": "http://127.0.0.1:8000", "lb-b": "http://127.0.0.1:8001"}


def _lb(**overrides: Any) -> LoadBalancer:
    """An LB shell (for its lag counters) whose core the tests drive with scripted events."""
    lb = LoadBalancer(LbConfig(**overrides), name="lb-a", region="us-east-2")
    apply(lb.core, {"self": "lb-a", "lbs": LBS, "replicas": REPLICAS})
    return lb


def _serve(lb: LoadBalancer, texts: list[str]) -> list[str]:
    """Dispatch one request per text (one tick each), finish them all, return the replicas."""
    core = lb.core
    entries = [arrive(core, t, hash_key=t) for t in texts]
    for _ in entries:
        core.tick()
    names = []
    for entry in entries:
        outcome = entry.outcome
        assert isinstance(outcome, Dispatch)
        names.append(outcome.name)
        core.leave(entry)
    return names


@pytest.mark.parametrize("policy", ["round_robin", "least_load", "prefix_tree", "consistent_hashing"])
def test_reset_lb_decides_like_a_fresh_one(policy: str) -> None:
    texts = [f"conversation {i} " + "words " * 40 for i in range(7)]
    used = _lb(policy=policy, replica_mode=ReplicaMode.PUSH)
    _serve(used, texts[3:] + texts[:2])  # history: positions, trees, counters move
    assert used.core.dispatched_total == 6
    reply = used.reset()
    assert reply["ok"] and reply["num_replicas"] == 3 and reply["num_lbs"] == 2
    fresh = _lb(policy=policy, replica_mode=ReplicaMode.PUSH)
    assert used.conf()["dispatched_total"] == 0 and used.conf()["lag"]["ticks"] == 0
    assert _serve(used, texts) == _serve(fresh, texts)


def test_reset_clears_trees_counters_positions_and_peer_state() -> None:
    lb = _lb(lb_mode=LbMode.RATE_LIMITED_PUSH, policy="round_robin", meta_policy="prefix_tree")
    assert _serve(lb, ["a " * 50, "b " * 50]) == ["replica-0", "replica-1"]
    core = lb.core
    meta = core.lbs.policy
    assert isinstance(meta, PrefixTreePolicy) and meta.tree.used_size_per_target().get("lb-a", 0) > 0
    core.peer_status = {"lb-b": PeerStatus(queue_size=0, num_available_replicas=1, pushed_since_probe=4)}
    core.peer_latency = {"lb-b": (LBS["lb-b"], 0.01)}
    core.on_engine_queue("replica-0", 2)
    core.pushed_total = core.upstream_errors_total = 3
    lb.lag.record("queue_tick", 0.5)
    lb.reset()
    new_meta = core.lbs.policy
    assert isinstance(new_meta, PrefixTreePolicy) and new_meta is not meta
    assert new_meta.tree.used_size_per_target().get("lb-a", 0) == 0
    conf = lb.conf()
    assert conf["pushed_total"] == conf["upstream_errors_total"] == conf["dispatched_total"] == 0
    assert conf["lb_status"] == {} and conf["lb_latency_s"] == {}
    assert conf["num_available_replicas"] == 3 and conf["queue_size"] == 0
    assert conf["lag"]["ticks"] == 0 and conf["lag"]["loops"] == {}
    assert core.replicas.ids == {"replica-0": 0, "replica-1": 1, "replica-2": 2}  # membership kept
    assert _serve(lb, ["c " * 50]) == ["replica-0"]  # round robin starts over


def test_reset_refuses_while_requests_are_queued_or_in_flight() -> None:
    lb = _lb(policy="round_robin")
    queued = arrive(lb.core, "waiting")
    with pytest.raises(RuntimeError, match=r"1 queued and 0 in-flight"):
        lb.reset()
    lb.core.tick()  # now streaming
    with pytest.raises(RuntimeError, match=r"0 queued and 1 in-flight.*between experiments"):
        lb.reset()
    lb.core.leave(queued)
    assert lb.reset()["ok"]


def test_loop_lag_counts_only_lateness_beyond_the_clock_precision() -> None:
    lag = LoopLag()
    lag.record("queue_tick", PRECISION_S / 2)  # asyncio's own rounding: not late
    lag.record("queue_tick", 0.0)
    lag.record("engine_probe", PRECISION_S + 0.004)
    lag.record("queue_tick", PRECISION_S + 0.020)
    snap = lag.snapshot()
    assert snap["ticks"] == 4 and snap["late_ticks"] == 2
    assert snap["tick_late_s_total"] == pytest.approx(0.024)
    assert snap["tick_late_max_s"] == pytest.approx(0.020)
    assert snap["loops"]["queue_tick"] == {
        "ticks": 3, "late_ticks": 1, "tick_late_s_total": pytest.approx(0.020),
        "tick_late_max_s": pytest.approx(0.020),
    }
    lag.reset()
    assert lag.snapshot()["ticks"] == 0


def test_lag_counters_move_under_an_event_loop_stall() -> None:
    """The real tick loop of an LB, ticking for a request it cannot place yet (no replica known):
    a 150 ms synchronous stall makes at least one tick late by about that much."""

    async def scenario() -> dict[str, Any]:
        lb = LoadBalancer(LbConfig(), name="lb-a", region="us-east-2")
        task = asyncio.ensure_future(lb._queue_loop())
        try:
            held = arrive(lb.core, "waits for a replica " * 5)
            await asyncio.sleep(0.1)
            assert held.outcome is None and len(lb.core.queue) == 1
            before = lb.lag.snapshot()
            time.sleep(0.15)  # the artificial stall: the event loop cannot run the tick
            await asyncio.sleep(0.05)
            after = lb.lag.snapshot()
        finally:
            task.cancel()
        assert before["ticks"] > 0
        return {"before": before, "after": after}

    result = asyncio.run(scenario())
    before, after = result["before"], result["after"]
    assert after["late_ticks"] > before["late_ticks"]
    assert after["tick_late_max_s"] >= 0.1
    assert after["tick_late_s_total"] - before["tick_late_s_total"] >= 0.1
    assert after["loops"]["queue_tick"]["ticks"] > before["loops"]["queue_tick"]["ticks"]


def test_the_tick_sleeps_while_the_queue_is_empty_and_resumes_for_an_arrival() -> None:
    """An idle LB does not tick (a tick of an empty queue places nothing); a request that
    arrives is still placed by the next tick of the schedule, one tick later."""

    async def scenario() -> tuple[int, int, Dispatch | None]:
        lb = _lb(replica_mode=ReplicaMode.PUSH)
        task = asyncio.ensure_future(lb._queue_loop())
        try:
            await asyncio.sleep(0.1)  # ten tick periods with nothing queued
            idle_ticks = lb.lag.snapshot()["ticks"]
            entry = arrive(lb.core, "hello " * 10)
            for _ in range(400):  # at most 2 s; a tick is due within 10 ms
                if entry.outcome is not None:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)  # the queue is empty again: no further ticks
            ticks = lb.lag.snapshot()["ticks"]
        finally:
            task.cancel()
        outcome = entry.outcome
        return idle_ticks, ticks, outcome if isinstance(outcome, Dispatch) else None

    idle_ticks, ticks, outcome = asyncio.run(scenario())
    assert idle_ticks == 0
    assert outcome is not None and outcome.name in REPLICAS
    assert ticks == 1


@pytest.mark.parametrize(("parked_for", "expected"), [(0.0, 0.01), (0.004, 0.006), (0.0351, 0.0049), (1.0025, 0.0075)])
def test_an_arrival_after_parking_waits_for_the_next_tick_of_the_old_schedule(
    parked_for: float, expected: float
) -> None:
    assert wait_for_next_tick(0.01, parked_for) == pytest.approx(expected, abs=1e-9)


# ============================================================================ over loopback


def _http(method: str, url: str, payload: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **HEADERS})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_reset_endpoint_of_a_real_lb(tmp_path: Path) -> None:
    procs: list[procutil.ManagedProcess] = []
    try:
        replica = procutil.spawn(
            "replica-0",
            procutil.python_module_argv("pytest_lbbench.sim", "--name", "replica-0", "--time-scale", "0.05"),
            log_path=tmp_path / "replica.log",
        )
        procs.append(replica)
        lb = procutil.spawn(
            "lb-a",
            procutil.python_module_argv("pytest_lbbench.lb", "--name", "lb-a", "--policy", "round_robin"),
            log_path=tmp_path / "lb.log",
        )
        procs.append(lb)
        lb_url = f"http://127.0.0.1:{lb.info['port']}"
        replica_url = f"http://127.0.0.1:{replica.info['port']}"
        status, _ = _http("POST", lb_url + "/lbbench/membership",
                          {"self": "lb-a", "lbs": {"lb-a": lb_url}, "replicas": {"replica-0": replica_url}})
        assert status == 200

        async def scenario() -> None:
            import aiohttp

            body = {"model": "m", "messages": [{"role": "user", "content": "hello " * 30}],
                    "stream": True, "max_tokens": 400}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.post(lb_url + "/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
                    await resp.content.readline()  # streaming now: the LB holds it
                    status, reply = await asyncio.to_thread(_http, "POST", lb_url + "/lbbench/reset", {})
                    assert status == 409 and "in-flight" in reply["error"]["message"]
                    await resp.read()
            deadline = time.monotonic() + 10
            while True:  # the post hook runs once the stream is closed
                status, reply = await asyncio.to_thread(_http, "POST", lb_url + "/lbbench/reset", {})
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert status == 200 and reply["ok"] and reply["num_replicas"] == 1

        asyncio.run(scenario())
        status, conf = _http("GET", lb_url + "/conf")
        assert conf["dispatched_total"] == 0 and conf["num_replicas"] == 1
        assert set(conf["lag"]) >= {"ticks", "late_ticks", "tick_late_s_total", "tick_late_max_s", "loops"}
    finally:
        for proc in reversed(procs):
            proc.stop()
