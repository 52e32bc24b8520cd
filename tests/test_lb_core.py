"""The LB core as a state machine: scripted events on a fake clock, for every LB mode.

Each test plays one short story (requests arrive, ticks, probe results, peer replies, steal
requests, streams ending) against :class:`pytest_lbbench.lb.core.LbCore` and checks the actions
it returns: which request is decided when, to whom, with which decision and timing values, and
which peer calls a round asks for. No sockets, no event loop, no wall clock: the same core a
simulation would run on a virtual clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Generator
from typing import Any, TypeVar

import pytest

from lbcore_support import FakeClock, apply, arrive, chat_info, make_core
from pytest_lbbench.lb.config import LbConfig, LbMode, ReplicaMode
from pytest_lbbench.lb.core import (
    AskSteal,
    ConfReplies,
    FetchConfs,
    LbCore,
    PeerCall,
    PeerReply,
    StealReplies,
    UnknownPeer,
)
from pytest_lbbench.lb.queue import Dispatch, Failure
from pytest_lbbench.protocol import FROM_LB_HEADER, HopTiming, LbDecision, ReplicaDecision

T = TypeVar("T")

LBS = {"lb-a": "http://a", "lb-b": "http://b", "lb-c": "http://c"}
REGIONS = {"lb-a": "us", "lb-b": "ap", "lb-c": "eu"}


def _core(mode: LbMode, clock: FakeClock, *, replicas: int = 2, **overrides: Any) -> LbCore:
    config = LbConfig(**{"lb_mode": mode, "replica_mode": ReplicaMode.PULL, **overrides})
    core = make_core(config, region="us", clock=clock)
    apply(core, {"lbs": LBS, "regions": REGIONS,
                 "replicas": {f"r{i}": f"http://r{i}" for i in range(replicas)}})
    return core


def _conf(queue_size: int, actual: int, inflight: list[int], available: int = 0) -> dict[str, Any]:
    return {
        "queue_size": queue_size, "queue_size_actual": actual,
        "replica_queue": {f"http://x{i}": n for i, n in enumerate(inflight)},
        "num_replicas": len(inflight), "num_available_replicas": available,
    }


def _play(round_: Generator[PeerCall, PeerReply, T], *replies: PeerReply) -> tuple[list[PeerCall], T]:
    """Run a peer round, answering its calls with ``replies`` in order; return the calls and
    the round's result. Fails if the round asks for more or fewer calls than scripted."""
    calls: list[PeerCall] = []
    try:
        calls.append(next(round_))
        for reply in replies:
            calls.append(round_.send(reply))
    except StopIteration as done:
        assert len(calls) == len(replies), f"round ended after {len(calls)} call(s): {calls}"
        return calls, done.value
    raise AssertionError(f"round asked for more calls than scripted: {calls}")


def _no_calls(round_: Generator[PeerCall, PeerReply, T]) -> T:
    try:
        call = next(round_)
    except StopIteration as done:
        return done.value
    raise AssertionError(f"expected no peer call, got {call}")


# ---------------------------------------------------------------------------- GLOBAL


def test_global_holds_while_pull_finds_every_replica_busy_then_dispatches_in_order() -> None:
    clock = FakeClock()
    core = _core(LbMode.GLOBAL, clock)
    assert core.engine_probe_targets() == [("r0", "http://r0"), ("r1", "http://r1")]
    core.on_engine_queue("r0", 2)
    core.on_engine_queue("r1", 1)
    t0 = clock()
    first, second = arrive(core, "one"), arrive(core, "two")
    for _ in range(3):
        clock.advance(0.01)
        assert core.tick() == []  # held, never dropped
    assert core.conf()["num_available_replicas"] == 0
    core.on_engine_queue("r1", 0)  # a probe finds r1's queue empty
    t1 = clock.advance(0.01)
    assert core.tick() == [first]
    assert first.outcome == Dispatch(
        "r1", "http://r1", False, (), (HopTiming("first", t0, t1),), (ReplicaDecision(1, "http://r1"),),
    )
    t2 = clock.advance(0.01)
    assert core.tick() == [second]  # pull does not gate on our own dispatches (faithful)
    assert second.time_scheduled == t2 and core.dispatched_total == 2
    assert core.held_total == 2  # both were queued while ticks could not place the head
    clock.advance(0.01)
    third = arrive(core, "three")  # arrives after the holds: placed at its tick, never held
    assert core.tick() == [third] and core.conf()["held_total"] == 2
    assert core.replicas.in_flight == {"r0": 0, "r1": 3}
    for entry in (first, second, third):
        core.leave(entry)
    assert core.replicas.in_flight == {"r0": 0, "r1": 0} and core.busy() is None


def test_push_replicas_place_every_request_at_its_tick_and_hold_none() -> None:
    clock = FakeClock()
    core = _core(LbMode.GLOBAL, clock, replica_mode=ReplicaMode.PUSH)
    core.on_engine_queue("r0", 5)  # busy engines do not matter to push
    entries = [arrive(core, f"req {i}") for i in range(4)]
    decided = []
    for _ in range(4):
        clock.advance(0.001)
        decided += core.tick()  # one pop per tick, as the original
    assert decided == entries and core.held_total == 0


def test_global_answers_503_without_replicas_and_waits_before_membership() -> None:
    clock = FakeClock()
    core = make_core(LbConfig(lb_mode=LbMode.GLOBAL), clock=clock)
    waiting = arrive(core, "early")
    assert core.tick() == [] and core.busy() is not None
    apply(core, {"lbs": {"lb-a": "http://a"}, "replicas": {}})
    assert core.tick() == [waiting] and waiting.outcome == Failure(503, "No ready replicas")
    assert core.conf()["failed_total"] == 1


def test_eviction_ticks_trim_the_prefix_trees_of_the_pools_that_evict() -> None:
    clock = FakeClock()
    core = _core(LbMode.PUSH, clock, replica_mode=ReplicaMode.PUSH, max_tree_size=10)
    assert core.eviction_intervals() == {"replica": 60.0, "lb": 60.0}
    entry = arrive(core, "x" * 200, from_lb=True)
    assert core.tick() == [entry]
    tree = core.replicas.policy.tree  # type: ignore[attr-defined]
    assert tree.size("r0") > 10
    core.evict("replica")
    assert tree.size("r0") <= 10
    assert _core(LbMode.GLOBAL, clock, policy="round_robin").eviction_intervals() == {}


def test_prefix_tree_stamps_come_from_the_core_clock() -> None:
    clock = FakeClock(start=500.0)
    core = _core(LbMode.GLOBAL, clock, replica_mode=ReplicaMode.PUSH)
    entry = arrive(core, "stamp me")
    core.tick()
    tree = core.replicas.policy.tree  # type: ignore[attr-defined]
    assert tree.root.access[entry.outcome.name] == 500_000.0  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- PUSH


def test_push_forwards_to_the_peer_that_holds_the_prefix_and_records_the_hold() -> None:
    clock = FakeClock()
    core = _core(LbMode.PUSH, clock, replica_mode=ReplicaMode.PUSH)
    core.lbs.acquire("lb-c", chat_info("long conversation " * 30))  # lb-c serves it already
    t0 = clock()
    entry = arrive(core, "long conversation " * 30)
    t1 = clock.advance(0.01)
    assert core.tick() == [entry]
    outcome = entry.outcome
    assert isinstance(outcome, Dispatch) and outcome.to_lb and outcome.name == "lb-c"
    assert outcome.decisions == (LbDecision("eu", "http://c"),)
    assert outcome.timing == (HopTiming("second", t0, t1),)
    assert dict(outcome.extra_request_headers)[FROM_LB_HEADER] == "true"
    assert core.lbs.in_flight["lb-c"] == 2 and core.pushed_total == core.forwarded_total == 1
    core.leave(entry)
    assert core.lbs.in_flight["lb-c"] == 1


# ---------------------------------------------------------------------------- RATE_LIMITED_PUSH


def test_rate_limited_push_probe_round_then_push_to_the_peer_with_capacity() -> None:
    clock = FakeClock()
    core = _core(LbMode.RATE_LIMITED_PUSH, clock, replicas=1)
    core.on_engine_queue("r0", 4)  # our only replica is busy
    queued = [arrive(core, f"user {i}") for i in range(3)]
    calls, _ = _play(core.peer_probe_round(), ConfReplies({
        "lb-b": _conf(queue_size=5, actual=5, inflight=[1], available=1),  # busier than our 3
        "lb-c": _conf(queue_size=0, actual=0, inflight=[0], available=1),
    }))
    assert calls == [FetchConfs((("lb-b", "http://b"), ("lb-c", "http://c")))]
    seen_at = clock()
    status = core.conf()["lb_status"]
    assert status["lb-b"]["own_queue_at_probe"] == 3 and not status["lb-b"]["available"]
    assert status["lb-c"]["available"] and status["lb-c"]["age_s"] == 0.0
    clock.advance(0.25)
    assert core.conf()["lb_status"]["lb-c"]["age_s"] == 0.25
    assert core.tick() == [queued[0]]
    assert isinstance(queued[0].outcome, Dispatch) and queued[0].outcome.name == "lb-c"
    assert core.peer_status["lb-c"].pushed_since_probe == 1 and core.peer_status["lb-c"].seen_at == seen_at
    # The next round: lb-b does not answer and becomes unknown, so unavailable.
    _play(core.peer_probe_round(), ConfReplies({"lb-b": None, "lb-c": _conf(9, 9, [2], 0)}))
    assert set(core.peer_status) == {"lb-c"} and core.push_candidates(len(core.queue)) == []
    assert core.tick() == []  # held at the head
    with pytest.raises(TypeError, match="ConfReplies"):
        _play(core.peer_probe_round(), StealReplies({}))


# ---------------------------------------------------------------------------- STEAL_V1


def test_steal_v1_round_reads_confs_then_asks_the_planned_victims() -> None:
    clock = FakeClock()
    core = _core(LbMode.STEAL_V1, clock)
    assert core.peers_to_measure() == [("lb-b", "http://b"), ("lb-c", "http://c")]
    assert core.peers_to_measure() == []  # being measured
    core.on_peer_latency("lb-c", "http://c", 0.002)
    core.on_peer_latency("lb-b", "http://b", 0.150)
    assert core.steal_targets() == ["lb-c", "lb-b"]  # nearest first
    calls, stolen = _play(
        core.steal_round(),
        ConfReplies({"lb-c": _conf(12, 10, [2, 2]), "lb-b": None}),
        StealReplies({"lb-c": 1}),  # the victim had one fewer to give
    )
    # total = 16 + 0 + 0 = 16 over 4 replicas → 4 each; we should hold 8: steal min(8, 12−4·2, 10) = 8
    assert calls == [
        FetchConfs((("lb-c", "http://c"), ("lb-b", "http://b"))),
        AskSteal((("lb-c", "http://c", 8),), "lb-a"),
    ]
    assert stolen == 7 and core.conf()["stolen_total"] == 7


def test_steal_v1_does_not_steal_with_a_long_own_queue_or_no_free_replica() -> None:
    clock = FakeClock()
    core = _core(LbMode.STEAL_V1, clock, steal_threshold=1)
    arrive(core, "a", from_lb=True)
    arrive(core, "b", from_lb=True)
    core.on_engine_queue("r0", 1)
    core.on_engine_queue("r1", 1)
    assert _no_calls(core.steal_round()) == 0  # queue 2 > threshold 1
    assert core.tick() == [] and len(core.queue) == 2  # no replica free: held
    core.leave(core.queue.pop_head())  # type: ignore[arg-type]
    assert _no_calls(core.steal_round()) == 0  # queue 1 ≤ 1, but no free replica either
    core.on_engine_queue("r1", 0)
    calls, _ = _play(core.steal_round(), ConfReplies({}))  # now it asks (no peer answered)
    assert len(calls) == 1 and isinstance(calls[0], FetchConfs)


def test_victim_hands_over_newest_user_requests_and_refuses_strangers() -> None:
    clock = FakeClock()
    core = _core(LbMode.STEAL_V1, clock)
    core.on_engine_queue("r0", 1)
    core.on_engine_queue("r1", 1)
    forwarded = arrive(core, "from a peer", from_lb=True)
    users = [arrive(core, f"user {i}") for i in range(3)]
    t = clock.advance(0.5)
    handed = core.hand_over("http://b/", 2)  # named by URL, as the original thief does
    assert handed == [users[2], users[1]]
    for entry in handed:
        assert entry.outcome == Dispatch(
            "lb-b", "http://b", True, ((FROM_LB_HEADER, "true"), ("X-Sky-Serve-Queue-Size", "-1")),
            (HopTiming("second", entry.time_arrive, t),), (LbDecision("ap", "http://b"),),
        )
    assert list(core.queue) == [forwarded, users[0]]
    with pytest.raises(UnknownPeer, match="unknown LB 'http://evil'"):
        core.hand_over("http://evil", 1)
    with pytest.raises(UnknownPeer):
        core.hand_over("lb-a", 1)  # ourselves
    assert core.hand_over("lb-b", 0) == []
    core.leave(users[0])  # its client left: no longer stealable
    assert core.hand_over("lb-b", 5) == [] and users[0].left


# ---------------------------------------------------------------------------- STEAL_V2


def test_steal_v2_asks_peers_in_turn_for_what_is_still_wanted() -> None:
    clock = FakeClock()
    core = _core(LbMode.STEAL_V2, clock)  # 2 free replicas × batch factor 3 = 6 wanted
    core.on_peer_latency("lb-b", "http://b", 0.001)
    core.on_peer_latency("lb-c", "http://c", 0.002)
    calls, stolen = _play(
        core.steal_round(),
        StealReplies({"lb-b": 2}),  # gave 4 of 6
        StealReplies({"lb-c": None}),  # failed: nothing counted
    )
    assert calls == [
        AskSteal((("lb-b", "http://b", 6),), "lb-a"),
        AskSteal((("lb-c", "http://c", 2),), "lb-a"),
    ]
    assert stolen == 4 and core.stolen_total == 4
    _, again = _play(core.steal_round(), StealReplies({"lb-b": 0}))  # all 6 at once: done
    assert again == 6


def test_a_core_not_in_its_own_lb_list_never_steals() -> None:
    clock = FakeClock()
    core = make_core(LbConfig(lb_mode=LbMode.STEAL_V2), clock=clock)
    apply(core, {"lbs": {"lb-b": "http://b"}, "replicas": {"r0": "http://r0"}})
    assert _no_calls(core.steal_round()) == 0


# ---------------------------------------------------------------------------- every mode


@pytest.mark.parametrize("mode", list(LbMode))
def test_every_mode_serves_a_scripted_burst_and_ends_idle(mode: LbMode) -> None:
    """A burst of 6 user and 2 forwarded requests over ticks, probes and peer rounds: every
    request is decided exactly once, holds are released when streams end, counters add up."""
    clock = FakeClock()
    core = _core(mode, clock, replica_mode=ReplicaMode.CAP, max_concurrent_requests=2)
    if mode.probes_peer_status:
        _play(core.peer_probe_round(), ConfReplies({n: _conf(0, 0, [0], 1) for n in ("lb-b", "lb-c")}))
    entries = [arrive(core, f"user {i} " * 20) for i in range(6)]
    entries += [arrive(core, f"peer {i}", from_lb=True) for i in range(2)]
    decided: list[Any] = []
    for step in range(40):
        clock.advance(0.01)
        decided += core.tick()
        if step % 3 == 2 and decided:
            core.leave(decided[0])  # a stream ends now and then, freeing capacity
    assert len(set(map(id, decided))) == len(decided)  # never decided twice
    assert all(e.outcome is not None for e in decided)
    # Nothing is dropped: what is not decided is still queued (steal modes keep user requests
    # for thieves once the local replicas are full; here nobody steals).
    assert {id(e) for e in entries} == {id(e) for e in decided} | {id(e) for e in core.queue}
    handed = core.hand_over("lb-b", 100) if mode.steals else []
    assert all(e.outcome is not None for e in handed)
    decided += handed
    moved = core.pushed_total + core.stolen_away_total
    assert core.forwarded_total == moved
    assert core.dispatched_total + core.forwarded_total + core.failed_total == len(decided)
    for entry in entries:
        core.leave(entry)
    assert core.busy() is None
    assert sum(core.replicas.in_flight.values()) == sum(core.lbs.in_flight.values()) == 0
    json.dumps(core.conf())


def test_the_core_module_imports_no_io() -> None:
    """The core must run without sockets, an event loop or a wall clock of its own: importing
    it loads neither asyncio nor the HTTP stack (``socket`` itself comes with the standard
    library's ``importlib.metadata``, so the source is checked for it instead)."""
    code = (
        "import sys; import pytest_lbbench.lb.core as core; "
        "bad = sorted(m for m in ('asyncio', 'aiohttp', 'multidict', 'yarl') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"pytest_lbbench.lb.core pulls in {out.stdout.strip()}"
    import inspect

    import pytest_lbbench.lb.core as core_module

    source = inspect.getsource(core_module)
    for forbidden in ("import time", "import socket", "import asyncio", "monotonic"):
        assert forbidden not in source, forbidden


# ---------------------------------------------------------------------------- health


def test_a_replica_that_fails_before_its_first_byte_is_out_until_its_probe_answers() -> None:
    clock = FakeClock()
    core = _core(LbMode.GLOBAL, clock, replica_mode=ReplicaMode.PUSH, policy="round_robin")
    first = arrive(core, "a")
    assert core.tick() == [first]
    assert isinstance(first.outcome, Dispatch)
    dead = first.outcome.name
    assert core.on_start_failure(first, "ClientConnectorError: refused") is False  # no retry by default
    core.leave(first)
    conf = core.conf()
    assert conf["replica_health"][dead]["healthy"] is False
    assert "before its first byte" in conf["replica_health"][dead]["reason"]
    assert conf["num_replicas"] == 1 and conf["num_available_replicas"] == 1
    for text in ("b", "c", "d"):  # every later request goes to the other replica
        entry = arrive(core, text)
        core.tick()
        assert isinstance(entry.outcome, Dispatch) and entry.outcome.name != dead
        core.leave(entry)
    core.on_health_probe("replica", dead, ok=False, reason="HTTP 500")  # still down
    assert not core.conf()["replica_health"][dead]["healthy"]
    core.on_health_probe("replica", dead, ok=True)
    assert core.conf()["replica_health"][dead] == {"healthy": True, "reason": None, "for_s": None, "ejections": 1}
    chosen = set()
    for text in ("e", "f"):
        entry = arrive(core, text)
        core.tick()
        assert isinstance(entry.outcome, Dispatch)
        chosen.add(entry.outcome.name)
        core.leave(entry)
    assert dead in chosen


def test_retry_before_first_byte_decides_once_more_elsewhere() -> None:
    clock = FakeClock()
    core = _core(LbMode.GLOBAL, clock, replica_mode=ReplicaMode.PUSH, policy="round_robin",
                 retry_before_first_byte=True)
    entry = arrive(core, "a")
    core.tick()
    assert isinstance(entry.outcome, Dispatch)
    failed = entry.outcome.name
    assert core.on_start_failure(entry, "refused") is True
    core.retry(entry)
    assert entry.outcome is None and core.replicas.in_flight[failed] == 0
    assert core.tick() == [entry]
    assert isinstance(entry.outcome, Dispatch) and entry.outcome.name != failed
    assert core.on_start_failure(entry, "refused again") is False  # one retry, no more
    assert core.conf()["retried_total"] == 1


def test_every_replica_down_answers_503_in_global_mode() -> None:
    clock = FakeClock()
    core = _core(LbMode.GLOBAL, clock, replica_mode=ReplicaMode.PUSH)
    for name in ("r0", "r1"):
        core.on_health_probe("replica", name, ok=False, reason="Connection refused")
    entry = arrive(core, "a")
    assert core.tick() == [entry]
    assert isinstance(entry.outcome, Failure) and entry.outcome.status == 503
    assert "No healthy replicas" in entry.outcome.message and "Connection refused" in entry.outcome.message


def test_push_sends_to_a_peer_when_every_own_replica_is_down_and_skips_dead_peers() -> None:
    clock = FakeClock()
    core = _core(LbMode.PUSH, clock, replica_mode=ReplicaMode.PUSH)
    core.on_health_probe("lb", "lb-b", ok=False, reason="no answer within 1.0 s")
    for name in ("r0", "r1"):
        core.on_health_probe("replica", name, ok=False, reason="refused")
    assert core.conf()["lb_health"]["lb-a"]["reason"] == "every replica of this LB is ejected"
    for text in ("x", "y", "z"):
        entry = arrive(core, text)
        assert core.tick() == [entry]
        assert isinstance(entry.outcome, Dispatch) and entry.outcome.to_lb and entry.outcome.name == "lb-c"
        core.leave(entry)
    # A request a peer pushed here is not pushed on: it fails at once instead of waiting.
    pushed = arrive(core, "from b", from_lb=True)
    core.tick()
    assert isinstance(pushed.outcome, Failure) and pushed.outcome.status == 503
    core.on_health_probe("replica", "r0", ok=True)
    assert core.conf()["lb_health"]["lb-a"]["healthy"] is True


def test_steal_modes_hold_for_thieves_when_their_replicas_are_down_and_skip_dead_victims() -> None:
    clock = FakeClock()
    core = _core(LbMode.STEAL_V2, clock, replica_mode=ReplicaMode.PUSH)
    for name in ("r0", "r1"):
        core.on_health_probe("replica", name, ok=False, reason="refused")
    entry = arrive(core, "x")
    assert core.tick() == [] and entry.outcome is None  # held: a healthy peer may steal it
    handed = core.hand_over("lb-b", 1)
    assert handed == [entry] and isinstance(entry.outcome, Dispatch) and entry.outcome.name == "lb-b"
    core.on_health_probe("lb", "lb-b", ok=False, reason="refused")
    assert "lb-b" not in core.steal_targets()
