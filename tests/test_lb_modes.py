"""The LB-level modes (steal V1/V2, rate-limited push) and the replica modes (pull, push, cap).

Two halves:

* no network: the V1 fair-share arithmetic, the victim's ranking, the rate-limit availability
  rule and the concurrency cap, each against hand-computed values;
* real processes on loopback: two simulated replicas with a tiny engine (2 running requests,
  4000 KV tokens) shared by the module, and per test the LB processes of one mode. A replica is
  "saturated" by holding three long requests sent to it directly (2 run, 1 waits, so its
  ``sglang:num_queue_reqs`` is 1); releasing them (cancelling the client) frees it at once.
  Assertions follow the requests (``x-lbbench-replica``, ``/conf`` counters), never wall-clock
  thresholds; the waits only bound how long a test may take.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_support import HEADERS
from pytest_lbbench import procutil
from pytest_lbbench.lb.config import LbConfig, LbMode, ReplicaMode
from pytest_lbbench.lb.peers import (
    PeerLoad,
    PeerStatus,
    peer_accepts_push,
    plan_v1_steal,
    rank_steal_candidates,
)
from pytest_lbbench.lb.policies import PrefixTreePolicy, RequestInfo
from pytest_lbbench.lb.probe import parse_queue_length
from pytest_lbbench.lb.queue import Dispatch, RequestEntry
from pytest_lbbench.lb.core import LbCore
from pytest_lbbench.protocol import FROM_LB_HEADER, QUEUE_SIZE_HEADER

from lbcore_support import apply, entry_for, make_core

pytestmark = pytest.mark.timeout(120)

# ============================================================================ no network


def _entry(text: str, *, from_lb: bool = False) -> RequestEntry:
    return entry_for(text, from_lb=from_lb)


def _tick(lb: LbCore) -> int:
    """One tick; how many requests it decided."""
    return len(lb.tick())


def _conf(queue_size: int, actual: int, replica_queue: list[int], num_replicas: int) -> dict[str, Any]:
    return {
        "queue_size": queue_size,
        "queue_size_actual": actual,
        "replica_queue": {f"http://r{i}": n for i, n in enumerate(replica_queue)},
        "num_replicas": num_replicas,
        "num_available_replicas": 0,
    }


def test_v1_fair_share_takes_the_share_from_the_nearest_target_first() -> None:
    peers = [
        ("near", PeerLoad.from_conf(_conf(12, 10, [2, 2], 2))),
        ("mid", PeerLoad.from_conf(_conf(6, 6, [3], 1))),
        ("far", PeerLoad.from_conf(_conf(0, 0, [1], 1))),
    ]
    assert peers[0][1] == PeerLoad(queue_size=12, queue_size_actual=10, inflight=4, num_replicas=2)
    plan = plan_v1_steal(own_queue_size=0, own_inflight=2, own_num_replicas=2, peers=peers)
    # total = (12+4) + (6+3) + (0+1) + 0 + 2 = 28; R = 2+1+1+2 = 6; per_replica = 28 // 6 = 4
    # target_self = 4·2 = 8; remaining = 8 − 0 − 2 = 6
    # near: should = 12+4 − 4·2 = 8, n = min(6, 8, 10) = 6 → remaining 0
    # mid:  should = 6+3 − 4·1 = 5, n = min(0, 5, 6) = 0 → nothing; far: queue_size 0 → skipped
    assert (plan.total, plan.num_replicas, plan.per_replica, plan.target_self) == (28, 6, 4, 8)
    assert plan.steals == (("near", 6),)
    assert plan.remaining == 0


def test_v1_fair_share_is_capped_by_user_requests_and_spills_to_the_next_target() -> None:
    peers = [
        # 12 queued but only 3 from users (9 were forwarded to it and cannot be re-stolen).
        ("near", PeerLoad.from_conf(_conf(12, 3, [2, 2], 2))),
        ("mid", PeerLoad.from_conf(_conf(6, 6, [3], 1))),
    ]
    plan = plan_v1_steal(own_queue_size=0, own_inflight=2, own_num_replicas=2, peers=peers)
    # total = 16 + 9 + 0 + 2 = 27; R = 5; per_replica = 5; target_self = 10; remaining = 8
    # near: should = 16 − 10 = 6, n = min(8, 6, 3) = 3 → remaining 5
    # mid:  should = 9 − 5 = 4,  n = min(5, 4, 6) = 4 → remaining 1
    assert (plan.total, plan.num_replicas, plan.per_replica, plan.target_self) == (27, 5, 5, 10)
    assert plan.steals == (("near", 3), ("mid", 4))
    assert plan.remaining == 1


def test_v1_fair_share_steals_nothing_when_already_at_or_above_the_share() -> None:
    light = [("a", PeerLoad(queue_size=1, queue_size_actual=1, inflight=0, num_replicas=2))]
    # total = 1, R = 4, per_replica = 0 → target_self = 0: stop.
    plan = plan_v1_steal(own_queue_size=0, own_inflight=0, own_num_replicas=2, peers=light)
    assert plan.per_replica == 0 and plan.steals == ()
    busy = [("a", PeerLoad(queue_size=4, queue_size_actual=4, inflight=2, num_replicas=1))]
    # total = 6 + 3 + 9 = 18, R = 2, per_replica = 9, target_self = 9, remaining = 9 − 12 = −3.
    plan = plan_v1_steal(own_queue_size=3, own_inflight=9, own_num_replicas=1, peers=busy)
    assert plan.remaining == -3 and plan.steals == ()
    assert plan_v1_steal(own_queue_size=5, own_inflight=0, own_num_replicas=0, peers=[]).steals == ()


def test_peer_load_rejects_malformed_conf() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        PeerLoad.from_conf({"queue_size_actual": 0, "replica_queue": {}, "num_replicas": 1})
    with pytest.raises(ValueError, match="replica_queue"):
        PeerLoad.from_conf({"queue_size": 0, "queue_size_actual": 0, "replica_queue": [1]})


def test_victim_ranks_the_thiefs_prefixes_first_then_newest_first() -> None:
    meta = PrefixTreePolicy()
    lbs = ["victim", "thief", "other"]
    meta.set_targets(lbs)
    thief_text, other_text = "t" * 100, "o" * 100
    meta.pre_execute("thief", RequestInfo(text=thief_text))
    meta.pre_execute("other", RequestInfo(text=other_text))
    entries = [
        _entry(thief_text),  # e0: match 100/100 = 1.0 on thief
        _entry("unrelated 1"),  # e1: no match → least load (all 0) → first LB: victim
        _entry(thief_text + "x" * 60),  # e2: match 100/160 = 0.625 > 0.5 on thief
        _entry(other_text),  # e3: belongs to "other"
        _entry("unrelated 4"),  # e4: victim
        _entry(thief_text),  # e5: 1.0 on thief, queued after e0
    ]
    before = meta.tree.used_size_per_target()
    ranked = rank_steal_candidates(entries, meta, lbs, "thief")
    e0, e1, e2, e3, e4, e5 = entries
    assert ranked == [e0, e5, e2, e4, e3, e1]
    assert meta.tree.used_size_per_target() == before  # ranking inserts nothing
    assert meta.load("thief") == 1  # and runs no hooks


def _steal_lb(mode: LbMode = LbMode.STEAL_V1, **overrides: Any) -> LbCore:
    lb = make_core(
        LbConfig(lb_mode=mode, replica_mode=ReplicaMode.PULL, **overrides), name="lb-a", region="us"
    )
    apply(lb, 
        {
            "self": "lb-a",
            "lbs": {"lb-a": "http://127.0.0.1:8000", "lb-b": "http://127.0.0.1:8001/"},
            "replicas": {"r0": "http://127.0.0.1:9000"},
            "regions": {"lb-a": "us", "lb-b": "ap"},
        }
    )
    return lb


def test_hand_over_gives_user_requests_to_the_thief_as_from_lb_requests() -> None:
    lb = _steal_lb()
    forwarded = _entry("came from another LB", from_lb=True)
    users = [_entry(f"user {i}") for i in range(3)]
    lb.queue.append(forwarded)
    for entry in users:
        lb.queue.append(entry)
    assert lb.resolve_lb("lb-b") == lb.resolve_lb("http://127.0.0.1:8001") == "lb-b"
    assert lb.resolve_lb("http://elsewhere") is None

    assert len(lb.hand_over("lb-b", 2)) == 2
    # No prefix is known: least load picks lb-a for each, so the newest go first.
    given = [users[2], users[1]]
    assert list(lb.queue) == [forwarded, users[0]]
    for entry in given:
        outcome = entry.outcome
        assert isinstance(outcome, Dispatch) and outcome.to_lb and outcome.name == "lb-b"
        assert dict(outcome.extra_request_headers)[FROM_LB_HEADER] == "true"
        assert dict(outcome.extra_request_headers)[QUEUE_SIZE_HEADER] == "-1"
    assert lb.stolen_away_total == 2 and lb.forwarded_total == 2 and lb.pushed_total == 0
    assert lb.lbs.in_flight["lb-b"] == 2
    # The victim's meta tree now knows the thief serves these prefixes (pre hook, thief's name).
    assert lb.lbs.policy.select_with_match(users[2].info, ["lb-a", "lb-b"], touch=False) == ("lb-b", 1.0)

    # Only one user request is left; the from-LB entry is never handed over.
    assert len(lb.hand_over("lb-b", 5)) == 1
    assert list(lb.queue) == [forwarded] and not (forwarded.outcome is not None)
    assert lb.hand_over("lb-b", 5) == []
    assert lb.conf()["stolen_away_total"] == 3
    for entry in users:
        lb.leave(entry)
    assert lb.lbs.in_flight["lb-b"] == 0


def test_steal_precondition_and_targets_without_network() -> None:
    lb = _steal_lb(steal_threshold=1)
    # Not measured yet: still a target (the original's latency starts at inf), ordered last.
    assert lb.steal_targets() == ["lb-b"]
    lb.peer_latency["lb-b"] = ("http://127.0.0.1:8001/", 0.004)
    assert lb.steal_targets() == ["lb-b"]
    lb.peer_latency["lb-b"] = ("http://127.0.0.1:7777", 0.004)  # measured an old URL: inf again
    assert lb.steal_targets() == ["lb-b"]


RULE_CASES = [
    # (peer queue_size, peer available replicas, own queue_size, threshold) → available?
    (0, 1, 0, 10, True),
    (3, 1, 3, 10, True),  # equal to ours is fine
    (4, 1, 3, 10, False),  # longer than ours
    (10, 2, 20, 10, True),  # at the threshold
    (11, 2, 20, 10, False),  # above the threshold
    (0, 0, 5, 10, False),  # no available replica
]


@pytest.mark.parametrize(("peer_q", "peer_avail", "own_q", "threshold", "expected"), RULE_CASES)
def test_rate_limit_availability_rule(
    peer_q: int, peer_avail: int, own_q: int, threshold: int, expected: bool
) -> None:
    assert peer_accepts_push(
        peer_queue_size=peer_q, peer_available_replicas=peer_avail,
        own_queue_size=own_q, threshold=threshold,
    ) is expected


def _rlp_lb(**overrides: Any) -> LbCore:
    lb = make_core(
        LbConfig(**{"lb_mode": LbMode.RATE_LIMITED_PUSH, "replica_mode": ReplicaMode.PULL, **overrides}),
        name="lb-a", region="us",
    )
    apply(lb, 
        {
            "self": "lb-a",
            "lbs": {"lb-a": "http://a", "lb-b": "http://b", "lb-c": "http://c"},
            "replicas": {"r0": "http://r0"},
        }
    )
    return lb


@pytest.mark.parametrize(
    ("count_own", "pushed"), [(True, 3), (False, 5)], ids=["count-own", "own-not-counted"]
)
def test_variant_rate_limited_push_places_user_requests_on_available_peers_only(
    count_own: bool, pushed: int
) -> None:
    # Our variants: availability judged at each decision, all placeable heads per tick.
    lb = _rlp_lb(rate_limit_count_own_pushes=count_own, rate_limit_availability="dispatch",
                 dispatch_all_placeable=True)
    lb.replicas.set_available("r0", False)
    lb.peer_status = {
        "lb-a": PeerStatus(queue_size=0, num_available_replicas=9),  # self: never a candidate
        "lb-b": PeerStatus(queue_size=0, num_available_replicas=1),
        "lb-c": PeerStatus(queue_size=0, num_available_replicas=0),  # saturated: never
    }
    entries = [_entry(f"user {i}") for i in range(5)]
    for entry in entries:
        lb.queue.append(entry)
    # count_own: own queue (with the popped head) 5, 4, 3, 2 against lb-b's 0, 1, 2, 3 →
    # three pushes, then 3 > 2 stops the tick. Without counting, lb-b looks empty throughout.
    assert _tick(lb) == pushed
    assert len(lb.queue) == 5 - pushed
    for entry in entries[:pushed]:
        outcome = entry.outcome
        assert isinstance(outcome, Dispatch) and outcome.name == "lb-b" and outcome.to_lb
        assert dict(outcome.extra_request_headers)[QUEUE_SIZE_HEADER] == "0"
    assert lb.pushed_total == pushed and lb.conf()["pushed_total"] == pushed
    assert lb.lbs.in_flight == {"lb-a": 0, "lb-b": pushed, "lb-c": 0}


def test_rate_limited_push_by_default_decides_at_probe_time_and_ignores_own_pushes() -> None:
    """The original's ``_probe_lb_status_one_lb``: ``conf['queue_size'] <= self_qsize`` with
    ``self_qsize`` read when the probe round starts; the verdict stands until the next probe,
    whatever our queue does and however much we push (one push per 10 ms tick)."""
    lb = _rlp_lb()
    lb.replicas.set_available("r0", False)
    # Probed while our queue was empty: lb-b (queue 1) was busier than us, lb-c was empty.
    lb.peer_status = {
        "lb-b": PeerStatus(queue_size=1, num_available_replicas=1, own_queue_at_probe=0),
        "lb-c": PeerStatus(queue_size=0, num_available_replicas=1, own_queue_at_probe=0),
    }
    entries = [_entry(f"user {i}") for i in range(8)]
    for entry in entries:
        lb.queue.append(entry)
    # Our queue is now 8 > lb-b's 1, but lb-b stays unavailable until the next probe (the
    # variant "dispatch" would take it at once); lb-c takes one push per tick, never counted.
    assert lb.push_candidates(len(lb.queue)) == ["lb-c"]
    assert [_tick(lb) for _ in range(8)] == [1] * 8
    assert all(e.outcome.name == "lb-c" for e in entries)  # type: ignore[union-attr]
    assert lb.peer_status["lb-c"].pushed_since_probe == 8 and lb.pushed_total == 8
    variant = _rlp_lb(rate_limit_availability="dispatch")
    variant.peer_status = dict(lb.peer_status)
    # Judged against our queue now (8), lb-b is available too.
    assert variant.push_candidates(8) == ["lb-b", "lb-c"]
    counting = _rlp_lb(rate_limit_count_own_pushes=True)
    counting.peer_status = dict(lb.peer_status)  # lb-c: 0 + 8 pushes > our 0 at probe time
    assert counting.push_candidates(8) == []


def test_rate_limited_push_keeps_forwarded_requests_and_records_local_ones() -> None:
    lb = _rlp_lb()
    lb.replicas.set_available("r0", False)
    lb.peer_status = {"lb-b": PeerStatus(queue_size=0, num_available_replicas=1)}
    forwarded, user = _entry("forwarded", from_lb=True), _entry("user")
    lb.queue.append(forwarded)
    lb.queue.append(user)
    for _ in range(3):  # the from-LB head is never pushed again, and blocks the queue (FIFO)
        assert _tick(lb) == 0
        assert list(lb.queue) == [forwarded, user]
    lb.peer_status = {}  # peer unknown (its probe failed): not available either
    lb.replicas.set_available("r0", True)
    assert [_tick(lb) for _ in range(3)] == [1, 1, 0]
    # Served locally: recorded in the meta tree under this LB's own name (system 5).
    assert lb.lbs.in_flight["lb-a"] == 2 and lb.replicas.in_flight["r0"] == 2
    assert lb.lbs.policy.select_with_match(user.info, ["lb-a", "lb-b"], touch=False) == ("lb-a", 1.0)


def test_steal_modes_do_not_record_locally_served_requests() -> None:
    lb = _steal_lb()
    entry = _entry("served here")
    lb.queue.append(entry)
    assert _tick(lb) == 1
    assert entry.holds == [(lb.replicas, "r0")]
    meta = lb.lbs.policy
    assert isinstance(meta, PrefixTreePolicy)
    assert meta.tree.used_size_per_target().get("lb-a", 0) == 0


def test_concurrency_cap_makes_a_full_replica_unavailable() -> None:
    lb = make_core(
        LbConfig(lb_mode=LbMode.GLOBAL, replica_mode=ReplicaMode.CAP, policy="least_load",
                 max_concurrent_requests=2),
        name="lb", region="us",
    )
    apply(lb, {"self": "lb", "lbs": {}, "replicas": {"r0": "http://r0", "r1": "http://r1"}})
    assert lb.replicas.policy.load_balancing_enabled
    entries = [_entry(f"q{i}") for i in range(6)]
    for entry in entries:
        lb.queue.append(entry)
    assert [_tick(lb) for _ in range(5)] == [1, 1, 1, 1, 0]  # 2 per replica, then full
    assert lb.conf()["num_available_replicas"] == 0 and lb.conf()["queue_size"] == 2
    assert _tick(lb) == 0
    lb.leave(entries[0])  # one stream on r0 ends
    assert lb.replicas.available() == ["r0"] and lb.replicas.is_available("r0")
    assert _tick(lb) == 1
    assert entries[4].outcome.name == "r0"  # type: ignore[union-attr]
    assert lb.conf()["replica_queue"] == {"http://r0": 2, "http://r1": 2}


def test_original_constants_of_the_new_modes() -> None:
    config = LbConfig()
    assert (config.steal_threshold, config.steal_v2_batch_factor) == (10, 3)
    assert (config.lb_probe_interval_s, config.rate_limit_queue_threshold) == (0.1, 10)
    assert config.steal_interval_s == config.tick_s == 0.01
    assert (config.cache_threshold, config.balance_abs_threshold) == (0.5, 32)
    assert (config.balance_rel_threshold, config.max_tree_size) == (1.0001, 2**24)
    assert config.least_load_fallback and config.max_concurrent_requests == 10


# ============================================================================ processes

TIME_SCALE = "0.1"  # a decode step ≈ 7 ms, an 8-token answer ≈ 70 ms
TINY_PROFILE = {"base": "l4-llama3.1-8b", "max_running_requests": 2, "kv_capacity_tokens": 4000}
HOLD_TOKENS = 1500  # ≈ 10 s of decoding: far longer than any hold lasts
SHORT_TOKENS = 8
WAIT_S = 10.0  # upper bound of every poll; a healthy run needs a fraction of it


@dataclass
class Replicas:
    """The module's simulated replicas: name → URL."""

    urls: dict[str, str]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two tiny-engine replicas ``r0`` and ``r1``, shared by the process tests."""
    tmp = tmp_path_factory.mktemp("lb_modes_replicas")
    profile = tmp / "tiny.json"
    profile.write_text(json.dumps(TINY_PROFILE))
    procs = []
    try:
        for name in ("r0", "r1"):
            procs.append(procutil.launch(
                name,
                procutil.python_module_argv(
                    "pytest_lbbench.sim", "--port", "0", "--name", name,
                    "--time-scale", TIME_SCALE, "--profile", str(profile),
                ),
                log_path=tmp / f"{name}.log",
            ))
        urls = {p.name: f"http://127.0.0.1:{p.wait_ready(30)['port']}" for p in procs}
        yield Replicas(urls)
    finally:
        for proc in procs:
            proc.stop()


@dataclass
class Lbs:
    """LB processes of one test: name → URL."""

    urls: dict[str, str]
    procs: list[procutil.ManagedProcess] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def start_lbs(
    tmp_path: Path,
    replicas: Replicas,
    placement: dict[str, list[str]],
    lb_mode: str,
    replica_mode: str = "pull",
    extra: tuple[str, ...] = (),
) -> Lbs:
    """Start one LB per ``placement`` entry (name → its replicas) and push the membership."""
    lbs = Lbs({})
    try:
        for name in placement:
            lbs.procs.append(procutil.launch(
                name,
                procutil.python_module_argv(
                    "pytest_lbbench.lb", "--name", name, "--region", f"region-{name}",
                    "--lb-mode", lb_mode, "--replica-mode", replica_mode, *extra,
                ),
                log_path=tmp_path / f"{name}.log",
            ))
        for proc in lbs.procs:
            lbs.urls[proc.name] = f"http://127.0.0.1:{proc.wait_ready(30)['port']}"
        asyncio.run(_send_membership(lbs, replicas, placement))
    except BaseException:
        lbs.stop()
        raise
    return lbs


async def _send_membership(lbs: Lbs, replicas: Replicas, placement: dict[str, list[str]]) -> None:
    async with aiohttp.ClientSession() as session:
        for name, names in placement.items():
            body = {
                "self": name,
                "lbs": lbs.urls,
                "replicas": {r: replicas.urls[r] for r in names},
                "regions": {n: f"region-{n}" for n in lbs.urls},
            }
            async with session.post(lbs.urls[name] + "/lbbench/membership", json=body, headers=HEADERS) as resp:
                assert resp.status == 200, await resp.text()


@dataclass
class Reply:
    status: int
    replica: str | None
    done: bool
    lb_decision: str | None


async def chat(
    session: aiohttp.ClientSession, url: str, content: str, max_tokens: int = SHORT_TOKENS
) -> Reply:
    """One streaming chat completion read to the end."""
    body = {
        "model": "m", "messages": [{"role": "user", "content": content}], "stream": True,
        "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
    }
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        text = await resp.text()
        lb_decision = next((v for k, v in resp.headers.items() if k.lower().startswith("lb-decision")), None)
        return Reply(resp.status, resp.headers.get("x-lbbench-replica"), "data: [DONE]" in text, lb_decision)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def engine_state(session: aiohttp.ClientSession, replica_url: str) -> tuple[float, float]:
    """``(running, waiting)`` of a simulated replica."""
    async with session.get(replica_url + "/metrics") as resp:
        text = await resp.text()
    running = re.search(r"^sglang:num_running_reqs(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    waiting = parse_queue_length(text)
    assert running and waiting is not None, text
    return float(running.group(1)), waiting


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``check`` every 20 ms until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def saturated(session: aiohttp.ClientSession, replica_url: str) -> AsyncIterator[None]:
    """Hold three long requests on a replica sent straight to it (2 run, 1 waits), then cancel them."""
    body = {
        "model": "m", "messages": [{"role": "user", "content": "hold"}], "stream": False,
        "max_tokens": HOLD_TOKENS, "ignore_eos": True,
    }

    async def hold() -> None:
        async with session.post(replica_url + "/v1/chat/completions", json=body) as resp:
            await resp.read()

    holds = [asyncio.ensure_future(hold()) for _ in range(3)]

    async def full() -> bool:
        return await engine_state(session, replica_url) == (2.0, 1.0)

    try:
        await until(full, f"{replica_url} running 2, waiting 1")
        yield
        assert not any(t.done() for t in holds), "a hold ended early: the replica was not saturated"
    finally:
        for task in holds:
            task.cancel()
        await asyncio.gather(*holds, return_exceptions=True)


async def idle(session: aiohttp.ClientSession, replicas: Replicas) -> None:
    """Wait until every replica has nothing running or waiting (earlier tests cleaned up)."""

    async def check() -> bool:
        states = [await engine_state(session, url) for url in replicas.urls.values()]
        return all(s == (0.0, 0.0) for s in states)

    await until(check, "replicas idle")


def conf_equals(
    session: aiohttp.ClientSession, url: str, **expected: Any
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        conf = await get_json(session, url + "/conf")
        return all(conf[k] == v for k, v in expected.items())

    return check


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


# ---------------------------------------------------------------------------- pull gating


@pytest.mark.parametrize("lb_mode", ["global", "push", "steal_v1", "steal_v2", "rate_limited_push"])
def test_pull_holds_requests_while_the_replica_has_a_waiting_queue(
    tmp_path: Path, replicas: Replicas, lb_mode: str
) -> None:
    lbs = start_lbs(tmp_path, replicas, {"lb-a": ["r0"]}, lb_mode)
    lb, r0 = lbs.urls["lb-a"], replicas.urls["r0"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            await idle(session, replicas)
            async with saturated(session, r0):
                await until(conf_equals(session, lb, num_available_replicas=0),
                            "the LB's probe sees r0's waiting queue")
                jobs = [asyncio.ensure_future(chat(session, lb, f"gated {i}")) for i in range(5)]
                await until(conf_equals(session, lb, queue_size=5), "5 requests queued")
                await asyncio.sleep(0.5)  # five probe windows: nothing may leak to r0
                conf = await get_json(session, lb + "/conf")
                assert conf["queue_size"] == 5 and conf["dispatched_total"] == 0
                assert conf["replica_queue"] == {r0: 0}
                assert await engine_state(session, r0) == (2.0, 1.0)  # only the held ones
                assert not any(job.done() for job in jobs)
            replies = await asyncio.gather(*jobs)  # r0 frees: the queue drains to it
            assert all(r.status == 200 and r.done and r.replica == "r0" for r in replies), replies
            conf = await get_json(session, lb + "/conf")
            assert conf["dispatched_total"] == 5 and conf["queue_size"] == 0
            assert conf["stolen_total"] == conf["stolen_away_total"] == conf["pushed_total"] == 0

    try:
        run(scenario())
    finally:
        lbs.stop()


# ---------------------------------------------------------------------------- stealing


@pytest.mark.parametrize("lb_mode", ["steal_v1", "steal_v2"])
def test_idle_lb_steals_from_the_lb_that_has_all_users(
    tmp_path: Path, replicas: Replicas, lb_mode: str
) -> None:
    lbs = start_lbs(tmp_path, replicas, {"lb-a": ["r0"], "lb-b": ["r1"]}, lb_mode)
    lb_a, lb_b = lbs.urls["lb-a"], lbs.urls["lb-b"]
    n = 20

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            await idle(session, replicas)

            async def thief_ready() -> bool:
                return "lb-a" in (await get_json(session, lb_b + "/conf"))["lb_latency_s"]

            await until(thief_ready, "lb-b measured its latency to lb-a")
            async with saturated(session, replicas.urls["r0"]):
                await until(conf_equals(session, lb_a, num_available_replicas=0),
                            "lb-a sees r0 busy")
                jobs = [asyncio.ensure_future(chat(session, lb_a, f"user {i}")) for i in range(n)]

                async def stolen() -> bool:
                    return bool((await get_json(session, lb_b + "/conf"))["stolen_total"] > 0)

                await until(stolen, "lb-b stole from lb-a")
            # r0 is free again: what is still queued at lb-a is served there.
            replies = await asyncio.gather(*jobs)
            assert all(r.status == 200 and r.done for r in replies), replies
            conf_a = await get_json(session, lb_a + "/conf")
            conf_b = await get_json(session, lb_b + "/conf")
            remote = [r for r in replies if r.replica == "r1"]
            local = [r for r in replies if r.replica == "r0"]
            assert len(remote) + len(local) == n
            assert remote and all(r.lb_decision and lb_b in r.lb_decision for r in remote)
            # Every request served remotely was handed over by lb-a, and lb-b counted it.
            assert conf_a["stolen_away_total"] == len(remote) == conf_b["stolen_total"]
            assert conf_a["dispatched_total"] == len(local)
            assert conf_b["dispatched_total"] == len(remote)
            assert conf_a["stolen_total"] == conf_b["stolen_away_total"] == 0

    try:
        run(scenario())
    finally:
        lbs.stop()


# ---------------------------------------------------------------------------- rate-limited push


def test_rate_limited_push_waits_for_a_peer_with_capacity(tmp_path: Path, replicas: Replicas) -> None:
    lbs = start_lbs(tmp_path, replicas, {"lb-a": ["r0"], "lb-b": ["r1"]}, "rate_limited_push")
    lb_a, lb_b = lbs.urls["lb-a"], lbs.urls["lb-b"]
    n = 6

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            await idle(session, replicas)
            async with saturated(session, replicas.urls["r0"]):
                async with saturated(session, replicas.urls["r1"]):

                    async def a_sees_everything_busy() -> bool:
                        conf = await get_json(session, lb_a + "/conf")
                        peer = conf["lb_status"].get("lb-b", {})
                        return bool(
                            conf["num_available_replicas"] == 0
                            and peer.get("num_available_replicas") == 0
                        )

                    await until(a_sees_everything_busy, "lb-a sees r0 and lb-b's r1 busy")
                    jobs = [asyncio.ensure_future(chat(session, lb_a, f"user {i}")) for i in range(n)]
                    await until(conf_equals(session, lb_a, queue_size=n), f"{n} queued at lb-a")
                    await asyncio.sleep(0.5)  # five peer probes: the saturated peer gets nothing
                    conf_a = await get_json(session, lb_a + "/conf")
                    conf_b = await get_json(session, lb_b + "/conf")
                    assert conf_a["queue_size"] == n and conf_a["pushed_total"] == 0
                    assert conf_b["dispatched_total"] == 0 and conf_b["queue_size"] == 0
                # lb-b's replica is free (r0 still held): lb-a pushes its queue there.
                replies = await asyncio.gather(*jobs)
                assert all(r.status == 200 and r.done and r.replica == "r1" for r in replies), replies
                assert all(r.lb_decision and lb_b in r.lb_decision for r in replies)
                conf_a = await get_json(session, lb_a + "/conf")
                conf_b = await get_json(session, lb_b + "/conf")
                assert conf_a["pushed_total"] == n == conf_b["dispatched_total"]
                assert conf_a["dispatched_total"] == 0 and conf_b["pushed_total"] == 0

    try:
        run(scenario())
    finally:
        lbs.stop()


# ---------------------------------------------------------------------------- no loss


ALL_PLACEABLE = ("--dispatch-all-placeable",)
# With the original's one pop per tick (the default) a burst stays queued at the LBs and moves
# between them; our variant sends a whole burst to the replicas that looked free at the last
# probe, so queues (and with them stealing and pushing) start only after it.
LOSS_CASES = [
    ("global", "pull", ()),
    ("global", "cap", ("--max-concurrent-requests", "2")),
    ("push", "pull", ()),
    ("push", "push", ()),
    ("steal_v1", "pull", ()),
    ("steal_v1", "pull", ALL_PLACEABLE),
    ("steal_v2", "pull", ()),
    ("rate_limited_push", "pull", ()),
    ("rate_limited_push", "pull", ALL_PLACEABLE + ("--rate-limit-availability", "dispatch")),
]


@pytest.mark.parametrize(
    ("lb_mode", "replica_mode", "extra"), LOSS_CASES,
    ids=[f"{m}-{r}{'-' + x[0].strip('-') if x else ''}" for m, r, x in LOSS_CASES],
)
def test_overload_burst_loses_nothing(
    tmp_path: Path, replicas: Replicas, lb_mode: str, replica_mode: str, extra: tuple[str, ...]
) -> None:
    placement = (
        {"lb-global": ["r0", "r1"]} if lb_mode == "global" else {"lb-a": ["r0"], "lb-b": ["r1"]}
    )
    lbs = start_lbs(tmp_path, replicas, placement, lb_mode, replica_mode, extra)
    entries = list(lbs.urls.values())
    n = 60  # ~4 requests per replica slot: queues build at the LBs (pull) or replicas (push)

    async def scenario() -> None:
        timeout = aiohttp.ClientTimeout(total=45)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await idle(session, replicas)
            peak: dict[str, int] = {}
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    for url in entries:
                        for replica, n_in_flight in (await get_json(session, url + "/conf"))["replica_queue"].items():
                            peak[replica] = max(peak.get(replica, 0), n_in_flight)
                    await asyncio.sleep(0.02)

            sampler = asyncio.ensure_future(sample())
            # Skewed: three quarters of the users at the first LB.
            jobs = [
                chat(session, entries[0] if i % 4 or len(entries) == 1 else entries[-1],
                     f"burst {i} " + "words " * (i % 5 * 20), max_tokens=SHORT_TOKENS + i % 3 * 4)
                for i in range(n)
            ]
            replies = await asyncio.gather(*jobs, return_exceptions=True)
            done.set()
            await sampler
            completed = [r for r in replies if isinstance(r, Reply) and r.status == 200 and r.done]
            assert len(completed) == n, [r for r in replies if r not in completed][:3]
            assert {r.replica for r in completed} <= {"r0", "r1"}

            async def drained() -> bool:
                confs = [await get_json(session, url + "/conf") for url in entries]
                return all(c["queue_size"] == 0 and not any(c["replica_queue"].values()) for c in confs)

            await until(drained, "LB queues and streams drained")
            confs = [await get_json(session, url + "/conf") for url in entries]
            assert sum(c["dispatched_total"] for c in confs) == n  # each reached one replica once
            assert all(c["failed_total"] == c["upstream_errors_total"] == 0 for c in confs)
            moved = sum(c["pushed_total"] + c["stolen_away_total"] for c in confs)
            assert moved == sum(c["forwarded_total"] for c in confs)
            if replica_mode == "cap":
                assert max(peak.values()) <= 2, peak

    try:
        run(scenario())
    finally:
        lbs.stop()


def test_concurrency_cap_also_caps_requests_in_flight_to_each_lb() -> None:
    """The original's LB pool shares ``use_ie_queue_indicator`` with the replica pool, so with
    the cap its hooks make an LB unavailable at ``max_concurrent_requests`` in flight too."""
    lb = _rlp_lb(max_concurrent_requests=1, replica_mode=ReplicaMode.CAP)
    lb.replicas.in_flight["r0"] = 1  # our replica is full
    lb.peer_status = {
        "lb-b": PeerStatus(queue_size=0, num_available_replicas=1),
        "lb-c": PeerStatus(queue_size=0, num_available_replicas=1),
    }
    entries = [_entry(f"user {i}") for i in range(3)]
    for entry in entries:
        lb.queue.append(entry)
    assert [_tick(lb) for _ in range(3)] == [1, 1, 0]
    assert lb.lbs.in_flight == {"lb-a": 0, "lb-b": 1, "lb-c": 1}
    assert lb.push_candidates(len(lb.queue)) == []
