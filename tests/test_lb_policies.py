"""Unit tests of the load-balancing policies (pytest_lbbench.lb.policies)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from pytest_lbbench.lb.hashing import xxh64_intdigest
from pytest_lbbench.lb.policies import (
    POLICIES,
    ConsistentHashingPolicy,
    LeastLoadPolicy,
    Policy,
    PrefixTreeConfig,
    PrefixTreePolicy,
    RequestInfo,
    RoundRobinPolicy,
    make_policy,
    request_text,
)

TARGETS = ["r0", "r1", "r2"]


def _chat(*contents: str) -> RequestInfo:
    messages = [{"role": "user", "content": c} for c in contents]
    return RequestInfo(text=json.dumps(messages))


def _load(policy: Policy, target: str, n: int) -> None:
    for _ in range(n):
        policy.pre_execute(target, RequestInfo())


# --------------------------------------------------------------------------- request_text


def test_request_text_chat_uses_json_dumps_of_messages() -> None:
    messages = [{"role": "user", "content": "héllo"}]
    body = json.dumps({"model": "m", "messages": messages, "stream": True}).encode()
    assert request_text("/v1/chat/completions", body) == json.dumps(messages)


def test_request_text_completions_uses_prompt() -> None:
    assert request_text("/v1/completions", b'{"prompt": "once upon"}') == "once upon"
    assert request_text("/v1/completions", {"prompt": ["a", "b"]}) is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/chat/completions", b'{"messages": []}'),
        ("POST", "/v1/models", b"{}"),
        ("POST", "/v1/chat/completions", b"not json"),
        ("POST", "/v1/chat/completions", b"[1, 2]"),
        ("POST", "/v1/chat/completions", b'{"model": "m"}'),
        ("POST", "/v1/chat/completions", None),
    ],
)
def test_request_text_is_none_for_everything_else(method: str, path: str, body: bytes | None) -> None:
    assert request_text(path, body, method) is None


# --------------------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert set(POLICIES) == {"round_robin", "least_load", "prefix_tree", "consistent_hashing"}
    for name in POLICIES:
        assert make_policy(name).name == name


def test_make_policy_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="'bogus'.*consistent_hashing, least_load, prefix_tree, round_robin"):
        make_policy("bogus")


def test_make_policy_passes_config_and_rejects_unknown_keys() -> None:
    policy = make_policy("prefix_tree", cache_threshold=0.9)
    assert isinstance(policy, PrefixTreePolicy)
    assert policy.config.cache_threshold == 0.9
    assert policy.config.balance_abs_threshold == 32
    with pytest.raises(ValueError, match="least_load"):
        make_policy("least_load", nonsense=1)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_none_without_available_targets(name: str) -> None:
    policy = make_policy(name)
    policy.set_targets(TARGETS)
    assert policy.select(_chat("x"), []) is None
    assert policy.select_with_match(_chat("x"), []) == (None, 0.0)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_picks_only_available_targets(name: str) -> None:
    policy = make_policy(name)
    policy.set_targets(TARGETS)
    for i in range(20):
        info = RequestInfo(text=f"text {i}", hash_key=f"user-{i}")
        choice = policy.select(info, ["r1"])
        assert choice == "r1"
        policy.pre_execute(choice, info)


# --------------------------------------------------------------------------- load bookkeeping


def test_pre_and_post_execute_track_in_flight_load() -> None:
    policy = LeastLoadPolicy()
    policy.set_targets(TARGETS)
    info = RequestInfo()
    policy.pre_execute("r0", info)
    policy.pre_execute("r0", info)
    policy.pre_execute("r1", info)
    assert [policy.load(t) for t in TARGETS] == [2, 1, 0]
    policy.post_execute("r0", info)
    assert policy.load("r0") == 1
    policy.post_execute("r2", info)  # never below zero
    assert policy.load("r2") == 0


def test_removed_target_keeps_its_counter_until_streams_close() -> None:
    policy = LeastLoadPolicy()
    policy.set_targets(TARGETS)
    _load(policy, "r2", 2)
    policy.set_targets(["r0", "r1"])
    assert policy.load("r2") == 2
    policy.post_execute("r2", RequestInfo())
    policy.post_execute("r2", RequestInfo())
    assert policy.load("r2") == 0


# --------------------------------------------------------------------------- round robin


def test_round_robin_rotates_over_available_targets() -> None:
    policy = RoundRobinPolicy(seed=1)
    policy.set_targets(TARGETS)
    picks = [policy.select(RequestInfo(), TARGETS) for _ in range(9)]
    assert Counter(picks) == {"r0": 3, "r1": 3, "r2": 3}
    assert picks[:3] == picks[3:6] == picks[6:]


def test_round_robin_follows_the_available_order_and_restarts_when_targets_change() -> None:
    """The original selects through ``select_replica_from_subset``: ``ready_replicas`` becomes
    the pool's available list for the call, so its shuffle never decides; the rotation is in
    the order given and restarts at the first target when the set changes."""
    policy = RoundRobinPolicy(seed=1)
    policy.set_targets(TARGETS)
    assert [policy.select(RequestInfo(), TARGETS) for _ in range(4)] == ["r0", "r1", "r2", "r0"]
    policy.set_targets(TARGETS + ["r3"])
    picks = [policy.select(RequestInfo(), TARGETS + ["r3"]) for _ in range(4)]
    assert picks == ["r0", "r1", "r2", "r3"]
    # A replica that comes back is re-appended at the end of the pool's available list.
    assert policy.select(RequestInfo(), ["r1", "r2", "r0"]) == "r1"


# --------------------------------------------------------------------------- least load


def test_least_load_picks_the_minimum_first_on_ties() -> None:
    policy = LeastLoadPolicy()
    policy.set_targets(TARGETS)
    assert policy.select(RequestInfo(), TARGETS) == "r0"
    _load(policy, "r0", 2)
    _load(policy, "r1", 1)
    assert policy.select(RequestInfo(), TARGETS) == "r2"
    assert policy.select(RequestInfo(), ["r0", "r1"]) == "r1"


# --------------------------------------------------------------------------- prefix tree


def _tree_policy(**overrides: Any) -> PrefixTreePolicy:
    policy = PrefixTreePolicy(**overrides)
    policy.set_targets(TARGETS)
    return policy


def test_prefix_tree_defaults_are_the_original_constants() -> None:
    assert PrefixTreeConfig() == PrefixTreeConfig(
        cache_threshold=0.5,
        balance_abs_threshold=32,
        balance_rel_threshold=1.0001,
        eviction_interval_s=60,
        max_tree_size=2**24,
        least_load_fallback=True,
    )
    policy = PrefixTreePolicy()
    assert policy.eviction_interval_s == 60
    assert not policy.load_balancing_enabled


def test_prefix_tree_same_prefix_goes_to_the_same_target() -> None:
    policy = _tree_policy()
    first = _chat("a long shared system prompt " * 20, "question one")
    target = policy.select(first, TARGETS)
    assert target is not None
    policy.pre_execute(target, first)
    # Make the cached target the busiest: the prefix still wins while balanced.
    _load(policy, target, 5)
    follow_up = _chat("a long shared system prompt " * 20, "question one", "question two")
    choice, rate = policy.select_with_match(follow_up, TARGETS)
    assert choice == target
    assert 0.5 < rate < 1.0


def test_prefix_tree_low_match_falls_back_to_least_load() -> None:
    policy = _tree_policy()
    cached = _chat("short")
    policy.pre_execute("r1", cached)
    _load(policy, "r0", 1)
    other = _chat("something entirely different " * 10)
    choice, rate = policy.select_with_match(other, TARGETS)
    assert rate <= 0.5
    assert choice == "r2"  # least loaded (r0 has 1, r1 has 1 from the pre hook)


def test_prefix_tree_without_least_load_fallback_takes_any_match() -> None:
    policy = _tree_policy(least_load_fallback=False)
    policy.pre_execute("r1", _chat("short"))
    _load(policy, "r0", 1)
    choice, rate = policy.select_with_match(_chat("something entirely different " * 10), TARGETS)
    assert rate <= 0.5 and choice == "r1"  # the (weak) match wins over least load (r2)


def test_prefix_tree_without_text_uses_least_load() -> None:
    policy = _tree_policy()
    _load(policy, "r0", 1)
    assert policy.select_with_match(RequestInfo(text=None), TARGETS) == ("r1", 0.0)
    assert policy.select_with_match(RequestInfo(text=""), TARGETS) == ("r1", 0.0)


def test_prefix_tree_imbalance_needs_both_thresholds_and_load_balancing() -> None:
    policy = _tree_policy()
    info = _chat("cached conversation " * 30)
    policy.pre_execute("r0", info)
    _load(policy, "r0", 40)  # r0 load 41, others 0: abs 41 > 32 and 41 > 1.0001 × 0
    # Load balancing disabled (replica pull / LB pull): the prefix wins regardless.
    assert policy.select(info, TARGETS) == "r0"
    policy.enable_load_balancing()
    assert policy.is_imbalanced(TARGETS)
    assert policy.select_with_match(info, TARGETS) == ("r1", 0.0)
    # Only the available subset counts: without the idle targets there is no imbalance.
    assert policy.select(info, ["r0"]) == "r0"


def test_prefix_tree_imbalance_abs_threshold_is_strict() -> None:
    policy = _tree_policy()
    policy.enable_load_balancing()
    info = _chat("cached conversation " * 30)
    policy.pre_execute("r0", info)
    _load(policy, "r0", 31)  # 32 − 0 is not > 32
    assert not policy.is_imbalanced(TARGETS)
    assert policy.select(info, TARGETS) == "r0"
    _load(policy, "r0", 1)  # 33 − 0 > 32
    assert policy.select(info, TARGETS) == "r1"


def test_prefix_tree_imbalance_rel_threshold() -> None:
    policy = _tree_policy(balance_abs_threshold=2, balance_rel_threshold=2.0)
    policy.enable_load_balancing()
    info = _chat("cached conversation " * 30)
    policy.pre_execute("r0", info)  # r0: 1
    _load(policy, "r0", 5)  # r0: 6
    for t in ("r1", "r2"):
        _load(policy, t, 3)  # max 6 − min 3 = 3 > 2, but 6 > 2.0 × 3 is false
    assert not policy.is_imbalanced(TARGETS)
    assert policy.select(info, TARGETS) == "r0"
    _load(policy, "r0", 1)  # 7 > 6
    assert policy.is_imbalanced(TARGETS)
    assert policy.select(info, TARGETS) == "r1"


def test_prefix_tree_match_considers_only_available_targets() -> None:
    policy = _tree_policy()
    info = _chat("cached on r0 " * 30)
    policy.pre_execute("r0", info)
    policy.post_execute("r0", info)
    choice, rate = policy.select_with_match(info, ["r1", "r2"])
    assert choice in ("r1", "r2")
    assert rate == 0.0


def test_prefix_tree_read_only_scan_does_not_touch() -> None:
    policy = _tree_policy()
    info = _chat("x" * 100)
    policy.pre_execute("r0", info)
    node = policy.tree.root.children["["]
    stamp = node.access["r0"]
    node.access["r0"] = stamp - 10_000
    policy.select_with_match(info, TARGETS, touch=False)
    assert node.access["r0"] == stamp - 10_000
    policy.select_with_match(info, TARGETS)
    assert node.access["r0"] > stamp - 10_000


def test_prefix_tree_removed_target_leaves_the_tree() -> None:
    policy = _tree_policy()
    info = _chat("cached on r2 " * 30)
    policy.pre_execute("r2", info)
    policy.set_targets(["r0", "r1"])
    assert "r2" not in policy.tree.targets()
    assert policy.select(info, ["r0", "r1"]) in ("r0", "r1")


def test_prefix_tree_eviction_uses_max_tree_size() -> None:
    policy = _tree_policy(max_tree_size=100)
    for i in range(10):
        info = RequestInfo(text=f"{i} " + "y" * 50)
        policy.pre_execute("r0", info)
    assert policy.tree.size("r0") > 100
    policy.evict()
    assert policy.tree.size("r0") <= 100


def test_prefix_tree_state_size_reports_characters_per_target() -> None:
    policy = _tree_policy()
    policy.set_targets(["r0", "r1"])
    policy.pre_execute("r0", RequestInfo(text="a" * 40))
    assert policy.state_size() == {"r0": 40, "r1": 0}
    assert RoundRobinPolicy().state_size() == {}


def test_prefix_tree_memory_stops_growing_once_eviction_holds_it_at_max_tree_size() -> None:
    # What the soak relies on: under a stream of new conversations the tree's memory plateaus
    # at the size eviction keeps, instead of growing with every request (a leak in split
    # nodes, access stamps or parents would show here in a second, not after hours).
    import tracemalloc

    policy = _tree_policy(max_tree_size=20_000)
    policy.set_targets(["r0", "r1"])
    traced: list[int] = []
    tracemalloc.start()
    try:
        for round_ in range(40):
            for i in range(60):
                info = RequestInfo(text="system prompt " * 5 + f"conversation {round_}-{i}: " + f"turn {i} " * 25)
                policy.pre_execute("r0" if i % 2 else "r1", info)
                policy.post_execute("r0" if i % 2 else "r1", info)
            policy.evict()
            traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert max(policy.state_size().values()) <= 20_000
    settled, end = traced[9], traced[-1]
    assert end <= 1.10 * settled + 64 * 1024, f"tree memory kept growing: {settled} -> {end} bytes"


# --------------------------------------------------------------------------- consistent hashing


def test_xxh64_matches_reference_vectors() -> None:
    # Reference XXH64 digests (seed 0) of the xxHash test suite.
    assert xxh64_intdigest("") == 0xEF46DB3751D8E999
    assert xxh64_intdigest("abc") == 0x44BC2CF5AD770999


def test_hashing_matches_the_xxhash_package() -> None:
    import xxhash

    for key in ["", "r0", "http://127.0.0.1:8081" + "7", "ü" * 40, "k" * 100, "x" * 1000]:
        expected = xxhash.xxh64(key.encode(), seed=0).intdigest()
        assert xxh64_intdigest(key) == expected


def test_ring_has_at_least_1024_points_split_equally() -> None:
    policy = ConsistentHashingPolicy()
    policy.set_targets(TARGETS)
    assert policy.ring_size >= 1024
    assert Counter(policy._ring_targets) == {t: 342 for t in TARGETS}


def test_consistent_hashing_is_stable_per_key() -> None:
    policy = ConsistentHashingPolicy()
    policy.set_targets(TARGETS)
    keys = [f"user-{i}" for i in range(200)]
    first = {k: policy.select(RequestInfo(hash_key=k), TARGETS) for k in keys}
    # Load does not matter for keyed requests.
    _load(policy, "r0", 100)
    again = {k: policy.select(RequestInfo(hash_key=k), TARGETS) for k in keys}
    assert first == again
    assert set(first.values()) == set(TARGETS)  # 200 keys spread over all targets
    # A fresh policy with the same targets (another LB process) agrees.
    other = ConsistentHashingPolicy()
    other.set_targets(list(reversed(TARGETS)))
    assert {k: other.select(RequestInfo(hash_key=k), TARGETS) for k in keys} == first


def test_consistent_hashing_moves_only_keys_of_a_leaving_target() -> None:
    policy = ConsistentHashingPolicy()
    policy.set_targets(TARGETS)
    keys = [f"user-{i}" for i in range(300)]
    before = {k: policy.select(RequestInfo(hash_key=k), TARGETS) for k in keys}
    # r2 unavailable (busy, or not probed free): exactly its keys move, to the next ring owner.
    during = {k: policy.select(RequestInfo(hash_key=k), ["r0", "r1"]) for k in keys}
    for k in keys:
        if before[k] == "r2":
            assert during[k] in ("r0", "r1")
        else:
            assert during[k] == before[k]
    # r2 back: every key returns to its owner.
    assert {k: policy.select(RequestInfo(hash_key=k), TARGETS) for k in keys} == before


def test_consistent_hashing_membership_change_keeps_most_keys() -> None:
    policy = ConsistentHashingPolicy()
    policy.set_targets(TARGETS)
    keys = [f"user-{i}" for i in range(600)]
    before = {k: policy.select(RequestInfo(hash_key=k), TARGETS) for k in keys}
    policy.set_targets(["r0", "r1"])
    after = {k: policy.select(RequestInfo(hash_key=k), ["r0", "r1"]) for k in keys}
    # The rebuilt ring gives each remaining target ceil(1024 / 2) points instead of 342
    # (Envoy's scale rule), so a minority of the survivors' keys move too; most stay.
    survivors = [k for k in keys if before[k] != "r2"]
    kept = sum(after[k] == before[k] for k in survivors)
    assert kept >= 0.7 * len(survivors)


def test_consistent_hashing_without_key_uses_least_load() -> None:
    policy = ConsistentHashingPolicy()
    policy.set_targets(TARGETS)
    _load(policy, "r0", 1)
    _load(policy, "r1", 1)
    assert policy.select(RequestInfo(hash_key=None), TARGETS) == "r2"


def test_consistent_hashing_with_targets_missing_from_the_ring_still_selects() -> None:
    policy = ConsistentHashingPolicy()
    policy.set_targets(["r0"])
    assert policy.select(RequestInfo(hash_key="k"), ["new"]) == "new"
