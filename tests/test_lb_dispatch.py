"""The LB core's queue processor with scripted events: placement order, re-queueing, push
decisions, the decision and timing values it hands the shell.

These drive :class:`pytest_lbbench.lb.core.LbCore` directly (one ``tick()`` = one 10 ms tick)
on a fake clock, without sockets or an event loop, so every branch of the request path
(reference §2.2) is checked exactly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lbcore_support import FakeClock, apply, arrive, chat_info, make_core
from pytest_lbbench.lb.config import LbConfig, LbMode, ReplicaMode
from pytest_lbbench.lb.core import LbCore
from pytest_lbbench.lb.queue import Dispatch, Failure
from pytest_lbbench.protocol import FROM_LB_HEADER, QUEUE_SIZE_HEADER, HopTiming, LbDecision, ReplicaDecision

REPLICAS = {"replica-0": "http://127.0.0.1:9000", "replica-1": "http://127.0.0.1:9001"}
LBS = {"lb-a": "http://127.0.0.1:8000", "lb-b": "http://127.0.0.1:8001"}


def _lb(clock: FakeClock | None = None, **overrides: Any) -> LbCore:
    config = LbConfig(**{"lb_mode": LbMode.PUSH, "replica_mode": ReplicaMode.PUSH, **overrides})
    return make_core(config, clock=clock)


def _membership(lb: LbCore, replicas: dict[str, str] | None = None) -> None:
    apply(
        lb,
        {
            "self": "lb-a",
            "lbs": LBS,
            "replicas": REPLICAS if replicas is None else replicas,
            "regions": {"lb-a": "us-east-2", "lb-b": "ap-northeast-1", "replica-0": "us-east-2"},
        },
    )


def _tick(lb: LbCore) -> int:
    """One tick; how many requests it decided."""
    return len(lb.tick())


def test_requests_before_membership_wait_in_order() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    entries = [arrive(lb, f"q{i}") for i in range(3)]
    for _ in range(5):
        assert _tick(lb) == 0
    assert list(lb.queue) == entries
    assert not any((e.outcome is not None) for e in entries)
    _membership(lb)
    for i, entry in enumerate(entries):  # one pop per tick, in arrival order
        assert _tick(lb) == 1
        assert (entry.outcome is not None) and not any((e.outcome is not None) for e in entries[i + 1:])
    assert len(lb.queue) == 0
    assert all(isinstance(e.outcome, Dispatch) for e in entries)


def test_variant_tick_dispatches_every_placeable_head_request() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, policy="least_load", dispatch_all_placeable=True)
    assert lb.config.to_dict()["dispatch_per_tick"] == "all_placeable"
    _membership(lb)
    for i in range(50):
        arrive(lb, f"q{i}")
    assert _tick(lb) == 50
    assert lb.dispatched_total == 50
    # Each dispatch ran the pre hook before the next selection: least load alternates.
    assert lb.replicas.in_flight == {"replica-0": 25, "replica-1": 25}


def test_default_is_the_originals_one_dispatch_per_tick() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    assert lb.config.dispatch_all_placeable is False
    _membership(lb)
    for i in range(3):
        arrive(lb, f"q{i}")
    assert [_tick(lb) for _ in range(4)] == [1, 1, 1, 0]
    assert lb.config.to_dict()["dispatch_per_tick"] == "one"


def test_unplaceable_head_goes_back_to_the_head_and_blocks_fifo() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, replica_mode=ReplicaMode.PULL)
    assert lb.config.pull_dispatches_per_probe == 0  # unlimited by default, as the original
    _membership(lb)
    for name in REPLICAS:
        lb.on_engine_queue(name, 1)  # the probe saw a waiting request on each
    user, forwarded = arrive(lb, "user"), arrive(lb, "from another LB", from_lb=True)
    for _ in range(3):
        assert _tick(lb) == 0
        # Never dropped (the original lost both kinds here), order kept.
        assert list(lb.queue) == [user, forwarded]
    lb.on_engine_queue("replica-1", 0)
    assert [_tick(lb) for _ in range(3)] == [1, 1, 0]
    assert user.outcome.name == "replica-1"  # type: ignore[union-attr]
    assert forwarded.outcome.name == "replica-1"  # type: ignore[union-attr]


def test_pull_takes_one_dispatch_per_replica_per_probe_window() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, replica_mode=ReplicaMode.PULL, pull_dispatches_per_probe=1,
             dispatch_all_placeable=True)
    _membership(lb)
    for i in range(5):
        arrive(lb, f"q{i}")
    # A burst: each replica takes one request, the rest wait in the LB for the next probe.
    assert _tick(lb) == len(REPLICAS)
    assert _tick(lb) == 0
    assert len(lb.queue) == 5 - len(REPLICAS)
    first, second = list(REPLICAS)
    lb.on_engine_queue(first, 0)  # the probe found its engine queue empty
    assert _tick(lb) == 1
    lb.on_engine_queue(first, 1)  # the probe found a waiting request
    lb.on_engine_queue(second, 2)
    assert _tick(lb) == 0


def test_a_client_that_leaves_while_queued_is_never_placed() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    _membership(lb)
    gone, alive = arrive(lb, "gone"), arrive(lb, "alive")
    lb.leave(gone)
    assert list(lb.queue) == [alive] and gone.left and gone.settled
    assert lb.tick() == [alive]
    assert gone.outcome is None and not gone.holds
    assert lb.replicas.in_flight == {"replica-0": 1, "replica-1": 0}


def test_no_replicas_after_membership_fails_with_503() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    _membership(lb, replicas={})
    entry = arrive(lb, "hi")
    assert _tick(lb) == 1
    assert entry.outcome == Failure(503, "No ready replicas")


def test_push_forwards_user_requests_to_the_meta_policy_choice() -> None:
    clock = FakeClock()
    lb = _lb(clock)
    _membership(lb)
    # Teach the meta tree that this conversation lives on lb-b.
    seed = chat_info("conversation " * 50)
    lb.lbs.policy.pre_execute("lb-b", seed)
    lb.lbs.policy.post_execute("lb-b", seed)
    arrived = clock()
    entry = arrive(lb, "conversation " * 50)
    scheduled = clock.advance(0.01)
    assert lb.tick() == [entry]
    outcome = entry.outcome
    assert isinstance(outcome, Dispatch) and outcome.to_lb and outcome.name == "lb-b"
    headers = dict(outcome.extra_request_headers)
    assert headers == {FROM_LB_HEADER: "true", QUEUE_SIZE_HEADER: "-1"}
    assert outcome.decisions == (LbDecision("ap-northeast-1", "http://127.0.0.1:8001"),)
    assert outcome.timing == (HopTiming("second", arrived, scheduled),)
    assert entry.time_scheduled == scheduled
    assert lb.lbs.in_flight["lb-b"] == 1 and lb.forwarded_total == 1
    lb.leave(entry)  # the stream ended
    assert lb.lbs.in_flight["lb-b"] == 0 and not entry.left


@pytest.mark.parametrize("all_placeable", [False, True], ids=["original", "variant"])
def test_push_to_self_is_handled_locally_with_both_decisions(all_placeable: bool) -> None:
    clock = FakeClock()
    lb = _lb(clock, dispatch_all_placeable=all_placeable)
    _membership(lb)
    arrived = clock()
    entry = arrive(lb, "new conversation")
    self_decided = clock.advance(0.01)
    if not all_placeable:
        # The original's self-hop: back in our queue at the tail, dispatched by a later tick.
        assert lb.tick() == []
        later = arrive(lb, "later")
        assert entry.outcome is None and list(lb.queue) == [entry, later]
        assert lb.conf()["queue_size_actual"] == 1  # the hopped one counts as from an LB
        dispatched = clock.advance(0.01)
        assert lb.tick() == [entry]
    else:
        dispatched = self_decided
        assert lb.tick() == [entry]
    assert lb.self_pushed_total == 1 and lb.conf()["self_pushed_total"] == 1
    outcome = entry.outcome
    # Equal loads, no cached prefix: least load picks the first LB, which is us.
    assert isinstance(outcome, Dispatch) and not outcome.to_lb
    assert outcome.name == "replica-0"
    assert outcome.decisions == (
        ReplicaDecision(0, "http://127.0.0.1:9000"), LbDecision("us-east-2", "http://127.0.0.1:8000"),
    )
    # The replica hop starts when this LB's own LB-level decision was made; the hop to itself
    # crossed no connection (False).
    assert outcome.timing == (
        HopTiming("first", self_decided, dispatched, False), HopTiming("second", arrived, self_decided),
    )
    # Accounted like a hop: meta load on self and replica load, both released at the end.
    assert lb.lbs.in_flight["lb-a"] == 1 and lb.replicas.in_flight["replica-0"] == 1
    assert lb.forwarded_total == 0 and lb.dispatched_total == 1
    lb.leave(entry)
    assert lb.lbs.in_flight["lb-a"] == 0 and lb.replicas.in_flight["replica-0"] == 0


def test_self_pushed_request_waits_without_a_second_lb_decision() -> None:
    lb = _lb(replica_mode=ReplicaMode.PULL)
    _membership(lb)
    for name in REPLICAS:
        lb.on_engine_queue(name, 3)
    entry = arrive(lb, "conversation")
    assert lb.tick() == []  # the LB-level decision (self) used the tick
    assert entry.lb_hop is not None and not entry.is_user_request
    assert lb.conf()["queue_size"] == 1 and lb.conf()["queue_size_actual"] == 0
    assert lb.tick() == []
    assert lb.lbs.in_flight["lb-a"] == 1  # the meta decision was made once
    lb.on_engine_queue("replica-1", 0)
    assert lb.tick() == [entry]
    assert isinstance(entry.outcome, Dispatch) and entry.outcome.name == "replica-1"


def test_requests_from_other_lbs_are_not_pushed_again() -> None:
    clock = FakeClock()
    lb = _lb(clock)
    _membership(lb)
    seed = chat_info("conversation " * 50)
    lb.lbs.policy.pre_execute("lb-b", seed)
    entry = arrive(lb, "conversation " * 50, from_lb=True)
    assert _tick(lb) == 1
    outcome = entry.outcome
    assert isinstance(outcome, Dispatch) and not outcome.to_lb
    assert outcome.decisions == (ReplicaDecision(0, "http://127.0.0.1:9000"),)
    assert outcome.timing == (HopTiming("first", clock(), clock()),)
    assert outcome.extra_request_headers == ()


def test_replica_push_mode_enables_the_replica_imbalance_fallback() -> None:
    assert _lb(replica_mode=ReplicaMode.PUSH).replicas.policy.load_balancing_enabled
    assert not _lb(replica_mode=ReplicaMode.PULL).replicas.policy.load_balancing_enabled
    assert _lb(lb_mode=LbMode.PUSH).lbs.policy.load_balancing_enabled
    assert not _lb(lb_mode=LbMode.GLOBAL).lbs.policy.load_balancing_enabled


def test_conf_has_the_original_keys_and_ours() -> None:
    lb = _lb()
    _membership(lb)
    conf = lb.conf()
    original = {
        "queue_size", "queue_size_actual", "replica_queue", "num_replicas",
        "num_available_replicas", "max_concurrent_requests", "load_balancing_policy_name",
    }
    ours = {
        "time", "name", "region", "lb_mode", "replica_mode", "dispatched_total",
        "forwarded_total", "replica_names",
    }
    assert original | ours <= set(conf)
    assert conf["replica_queue"] == {url: 0 for url in REPLICAS.values()}
    assert conf["replica_names"] == {url: name for name, url in REPLICAS.items()}
    assert conf["num_replicas"] == 2 and conf["max_concurrent_requests"] == 10
    assert conf["load_balancing_policy_name"] == "prefix_tree"
    json.dumps(conf)


def test_membership_for_another_lb_is_rejected() -> None:
    lb = _lb()
    with pytest.raises(ValueError, match="'lb-b'.*'lb-a'"):
        apply(lb, {"self": "lb-b", "lbs": LBS, "replicas": REPLICAS})
    with pytest.raises(ValueError, match="replicas"):
        apply(lb, {"self": "lb-a", "lbs": LBS, "replicas": ["not", "a", "map"]})


def test_membership_removes_replicas_and_keeps_ids_stable() -> None:
    lb = _lb()
    _membership(lb)
    _membership(lb, replicas={"replica-1": REPLICAS["replica-1"], "replica-2": "http://127.0.0.1:9002"})
    assert lb.replicas.ids == {"replica-0": 0, "replica-1": 1, "replica-2": 2}
    assert set(lb.replicas.urls) == {"replica-1", "replica-2"}
    assert set(lb.replicas.available()) == {"replica-1", "replica-2"}


@pytest.mark.parametrize("mode", list(LbMode))
@pytest.mark.parametrize("replica_mode", list(ReplicaMode))
def test_every_mode_combination_starts_and_describes_itself(
    mode: LbMode, replica_mode: ReplicaMode
) -> None:
    lb = _lb(lb_mode=mode, replica_mode=replica_mode)
    described = lb.describe()
    assert described["lb_mode"] == mode.value and described["replica_mode"] == replica_mode.value
    assert described["steals"] is mode.steals
    json.dumps(described)


def test_same_prefix_burst_sticks_until_the_imbalance_threshold() -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, replica_mode=ReplicaMode.PUSH)
    _membership(lb)
    prompt = "shared system prompt " * 20
    for i in range(60):
        arrive(lb, f"{prompt} q{i}")
    assert sum(_tick(lb) for _ in range(61)) == 60
    first, second = lb.replicas.in_flight["replica-0"], lb.replicas.in_flight["replica-1"]
    # The prefix keeps everything on one replica until max − min > 32, then load spreads.
    assert first >= 33 and second > 0
    assert first - second <= 33
