"""The LB's queue processor without a network: placement order, re-queueing, push decisions.

These drive ``LoadBalancer.process_queue`` directly (one call = one 10 ms tick) with entries
built by hand, so every branch of the request path (reference §2.2) is checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_lbbench.lb.config import LbConfig, LbMode, ReplicaMode
from pytest_lbbench.lb.policies import RequestInfo
from pytest_lbbench.lb.queue import Dispatch, Failure, RequestEntry
from pytest_lbbench.lb.server import FROM_LB_HEADER, QUEUE_SIZE_HEADER, LoadBalancer

REPLICAS = {"replica-0": "http://127.0.0.1:9000", "replica-1": "http://127.0.0.1:9001"}
LBS = {"lb-a": "http://127.0.0.1:8000", "lb-b": "http://127.0.0.1:8001"}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop to own the entries' futures (nothing runs on it)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _lb(**overrides: Any) -> LoadBalancer:
    config = LbConfig(**{"lb_mode": LbMode.PUSH, "replica_mode": ReplicaMode.PUSH, **overrides})
    return LoadBalancer(config, name="lb-a", region="us-east-2")


def _membership(lb: LoadBalancer, replicas: dict[str, str] | None = None) -> None:
    lb.apply_membership(
        {
            "self": "lb-a",
            "lbs": LBS,
            "replicas": REPLICAS if replicas is None else replicas,
            "regions": {"lb-a": "us-east-2", "lb-b": "ap-northeast-1", "replica-0": "us-east-2"},
        }
    )


def _entry_factory(loop: asyncio.AbstractEventLoop) -> Callable[..., RequestEntry]:
    def make(content: str = "hi", *, from_lb: bool = False, hash_key: str | None = None) -> RequestEntry:
        messages = [{"role": "user", "content": content}]
        return RequestEntry(
            method="POST",
            path_qs="/v1/chat/completions",
            headers=(),
            body=json.dumps({"messages": messages}).encode(),
            info=RequestInfo(text=json.dumps(messages), hash_key=hash_key),
            from_lb=from_lb,
            time_arrive=time.time(),
            outcome=loop.create_future(),
        )

    return make


def _enqueue(lb: LoadBalancer, *entries: RequestEntry) -> None:
    for entry in entries:
        lb.queue.append(entry)


def test_requests_before_membership_wait_in_order(loop: asyncio.AbstractEventLoop) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    make = _entry_factory(loop)
    entries = [make(f"q{i}") for i in range(3)]
    _enqueue(lb, *entries)
    for _ in range(5):
        assert lb.process_queue() == 0
    assert list(lb.queue) == entries
    assert not any(e.outcome.done() for e in entries)
    _membership(lb)
    for i, entry in enumerate(entries):  # one pop per tick, in arrival order
        assert lb.process_queue() == 1
        assert entry.outcome.done() and not any(e.outcome.done() for e in entries[i + 1:])
    assert len(lb.queue) == 0
    assert all(isinstance(e.outcome.result(), Dispatch) for e in entries)


def test_variant_tick_dispatches_every_placeable_head_request(loop: asyncio.AbstractEventLoop) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, policy="least_load", dispatch_all_placeable=True)
    assert lb.config.to_dict()["dispatch_per_tick"] == "all_placeable"
    _membership(lb)
    make = _entry_factory(loop)
    _enqueue(lb, *(make(f"q{i}") for i in range(50)))
    assert lb.process_queue() == 50
    assert lb.dispatched_total == 50
    # Each dispatch ran the pre hook before the next selection: least load alternates.
    assert lb.replicas.in_flight == {"replica-0": 25, "replica-1": 25}


def test_default_is_the_originals_one_dispatch_per_tick(loop: asyncio.AbstractEventLoop) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    assert lb.config.dispatch_all_placeable is False
    _membership(lb)
    make = _entry_factory(loop)
    _enqueue(lb, *(make(f"q{i}") for i in range(3)))
    assert [lb.process_queue() for _ in range(4)] == [1, 1, 1, 0]
    assert lb.config.to_dict()["dispatch_per_tick"] == "one"


def test_unplaceable_head_goes_back_to_the_head_and_blocks_fifo(
    loop: asyncio.AbstractEventLoop,
) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, replica_mode=ReplicaMode.PULL)
    assert lb.config.pull_dispatches_per_probe == 0  # unlimited by default, as the original
    _membership(lb)
    for name in REPLICAS:
        lb.replicas.set_available(name, False)
    make = _entry_factory(loop)
    user, forwarded = make("user"), make("from another LB", from_lb=True)
    _enqueue(lb, user, forwarded)
    for _ in range(3):
        assert lb.process_queue() == 0
        # Never dropped (the original lost both kinds here), order kept.
        assert list(lb.queue) == [user, forwarded]
    lb.replicas.set_available("replica-1", True)
    assert [lb.process_queue() for _ in range(3)] == [1, 1, 0]
    assert user.outcome.result().name == "replica-1"  # type: ignore[union-attr]
    assert forwarded.outcome.result().name == "replica-1"  # type: ignore[union-attr]


def test_pull_takes_one_dispatch_per_replica_per_probe_window(
    loop: asyncio.AbstractEventLoop,
) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, replica_mode=ReplicaMode.PULL, pull_dispatches_per_probe=1,
             dispatch_all_placeable=True)
    _membership(lb)
    make = _entry_factory(loop)
    _enqueue(lb, *(make(f"q{i}") for i in range(5)))
    # A burst: each replica takes one request, the rest wait in the LB for the next probe.
    assert lb.process_queue() == len(REPLICAS)
    assert lb.process_queue() == 0
    assert len(lb.queue) == 5 - len(REPLICAS)
    first, second = list(REPLICAS)
    lb.replicas.set_available(first, True)  # the probe found its engine queue empty
    assert lb.process_queue() == 1
    lb.replicas.set_available(first, False)  # the probe found a waiting request
    lb.replicas.set_available(second, False)
    assert lb.process_queue() == 0


def test_abandoned_entries_are_skipped(loop: asyncio.AbstractEventLoop) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    _membership(lb)
    make = _entry_factory(loop)
    gone, alive = make("gone"), make("alive")
    _enqueue(lb, gone, alive)
    gone.outcome.cancel()
    assert lb.process_queue() == 1
    assert alive.outcome.done() and not gone.holds
    assert lb.replicas.in_flight == {"replica-0": 1, "replica-1": 0}


def test_no_replicas_after_membership_fails_with_503(loop: asyncio.AbstractEventLoop) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL)
    _membership(lb, replicas={})
    entry = _entry_factory(loop)()
    _enqueue(lb, entry)
    assert lb.process_queue() == 1
    assert entry.outcome.result() == Failure(503, "No ready replicas")


def test_push_forwards_user_requests_to_the_meta_policy_choice(
    loop: asyncio.AbstractEventLoop,
) -> None:
    lb = _lb()
    _membership(lb)
    make = _entry_factory(loop)
    # Teach the meta tree that this conversation lives on lb-b.
    seed = make("conversation " * 50)
    lb.lbs.policy.pre_execute("lb-b", seed.info)
    lb.lbs.policy.post_execute("lb-b", seed.info)
    entry = make("conversation " * 50)
    _enqueue(lb, entry)
    assert lb.process_queue() == 1
    outcome = entry.outcome.result()
    assert isinstance(outcome, Dispatch) and outcome.to_lb and outcome.name == "lb-b"
    headers = dict(outcome.extra_request_headers)
    assert headers == {FROM_LB_HEADER: "true", QUEUE_SIZE_HEADER: "-1"}
    assert dict(outcome.decision_headers) == {
        "lb-decision": "Select LB in region ap-northeast-1 (http://127.0.0.1:8001)"
    }
    assert {k for k, _ in outcome.timing_headers} == {
        "second-hop-sky-time-arrive",
        "second-hop-sky-time-scheduled",
    }
    assert lb.lbs.in_flight["lb-b"] == 1 and lb.forwarded_total == 1
    entry.release_all()
    assert lb.lbs.in_flight["lb-b"] == 0


@pytest.mark.parametrize("all_placeable", [False, True], ids=["original", "variant"])
def test_push_to_self_is_handled_locally_with_both_decisions(
    loop: asyncio.AbstractEventLoop, all_placeable: bool
) -> None:
    lb = _lb(dispatch_all_placeable=all_placeable)
    _membership(lb)
    entry, later = _entry_factory(loop)("new conversation"), _entry_factory(loop)("later")
    _enqueue(lb, entry)
    assert lb.process_queue() == 1
    assert lb.self_pushed_total == 1 and lb.conf()["self_pushed_total"] == 1
    if not all_placeable:
        # The original's self-hop: back in our queue at the tail, dispatched by a later tick.
        _enqueue(lb, later)
        assert not entry.outcome.done() and list(lb.queue) == [entry, later]
        assert lb.conf()["queue_size_actual"] == 1  # the hopped one counts as from an LB
        assert lb.process_queue() == 1
    outcome = entry.outcome.result()
    # Equal loads, no cached prefix: least load picks the first LB, which is us.
    assert isinstance(outcome, Dispatch) and not outcome.to_lb
    assert outcome.name == "replica-0"
    assert [k for k, _ in outcome.decision_headers] == ["replica-decision", "lb-decision"]
    assert dict(outcome.decision_headers)["replica-decision"] == (
        "Select Replica with id 0 (http://127.0.0.1:9000)"
    )
    assert "second-hop-sky-time-arrive" in dict(outcome.timing_headers)
    # Accounted like a hop: meta load on self and replica load, both released at the end.
    assert lb.lbs.in_flight["lb-a"] == 1 and lb.replicas.in_flight["replica-0"] == 1
    assert lb.forwarded_total == 0 and lb.dispatched_total == 1
    entry.release_all()
    assert lb.lbs.in_flight["lb-a"] == 0 and lb.replicas.in_flight["replica-0"] == 0


def test_self_pushed_request_waits_without_a_second_lb_decision(
    loop: asyncio.AbstractEventLoop,
) -> None:
    lb = _lb(replica_mode=ReplicaMode.PULL)
    _membership(lb)
    for name in REPLICAS:
        lb.replicas.set_available(name, False)
    entry = _entry_factory(loop)("conversation")
    _enqueue(lb, entry)
    assert lb.process_queue() == 1  # the LB-level decision (self) used the tick
    assert entry.lb_hop is not None and not entry.is_user_request
    assert lb.conf()["queue_size"] == 1 and lb.conf()["queue_size_actual"] == 0
    assert lb.process_queue() == 0
    assert lb.lbs.in_flight["lb-a"] == 1  # the meta decision was made once
    lb.replicas.set_available("replica-1", True)
    assert lb.process_queue() == 1
    assert entry.outcome.result().name == "replica-1"  # type: ignore[union-attr]


def test_requests_from_other_lbs_are_not_pushed_again(loop: asyncio.AbstractEventLoop) -> None:
    lb = _lb()
    _membership(lb)
    seed = _entry_factory(loop)("conversation " * 50)
    lb.lbs.policy.pre_execute("lb-b", seed.info)
    entry = _entry_factory(loop)("conversation " * 50, from_lb=True)
    _enqueue(lb, entry)
    assert lb.process_queue() == 1
    outcome = entry.outcome.result()
    assert isinstance(outcome, Dispatch) and not outcome.to_lb
    assert [k for k, _ in outcome.decision_headers] == ["replica-decision"]


def test_replica_push_mode_enables_the_replica_imbalance_fallback() -> None:
    assert _lb(replica_mode=ReplicaMode.PUSH).replicas.policy.load_balancing_enabled
    assert not _lb(replica_mode=ReplicaMode.PULL).replicas.policy.load_balancing_enabled
    assert _lb(lb_mode=LbMode.PUSH).lbs.policy.load_balancing_enabled
    assert not _lb(lb_mode=LbMode.GLOBAL).lbs.policy.load_balancing_enabled


def test_conf_has_the_original_keys_and_ours(loop: asyncio.AbstractEventLoop) -> None:
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
        lb.apply_membership({"self": "lb-b", "lbs": LBS, "replicas": REPLICAS})
    with pytest.raises(ValueError, match="replicas"):
        lb.apply_membership({"self": "lb-a", "lbs": LBS, "replicas": ["not", "a", "map"]})


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


def test_same_prefix_burst_sticks_until_the_imbalance_threshold(
    loop: asyncio.AbstractEventLoop,
) -> None:
    lb = _lb(lb_mode=LbMode.GLOBAL, replica_mode=ReplicaMode.PUSH)
    _membership(lb)
    make = _entry_factory(loop)
    prompt = "shared system prompt " * 20
    _enqueue(lb, *(make(f"{prompt} q{i}") for i in range(60)))
    assert sum(lb.process_queue() for _ in range(61)) == 60
    first, second = lb.replicas.in_flight["replica-0"], lb.replicas.in_flight["replica-1"]
    # The prefix keeps everything on one replica until max − min > 32, then load spreads.
    assert first >= 33 and second > 0
    assert first - second <= 33
