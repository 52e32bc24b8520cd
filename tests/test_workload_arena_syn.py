"""arena_syn: reproducible from the seed, honours --num-conv, groups users as the original."""

from __future__ import annotations

import statistics

import pytest

from pytest_lbbench.workloads.arena_syn import (
    PROMPT_TOKENS_MEDIAN,
    TURNS_MAX,
    TURNS_MIN,
    ArenaSyn,
    generate_dataset,
)
from pytest_lbbench.workloads.base import Conversation, WorkloadPlan, group_into_users
from workload_support import workload_args


def plan(seed: int = 0, num_users: int = 10, num_conv: int = 200, region: str = "us-east-2",
         index: int = 0, max_tokens: int | None = None) -> WorkloadPlan:
    args = workload_args(dict(
        num_users=num_users, seed=seed, duration=120.0, max_tokens=max_tokens,
        dataset_source="synthetic", dataset_path=None, num_conv=num_conv,
    ))
    return ArenaSyn().plan(args, region, index)


def flatten(p: WorkloadPlan) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(u.user_index, c.conv_id, c.user_turns) for u in p.users for c in u.conversations]


def test_same_seed_same_requests_different_seed_different() -> None:
    assert flatten(plan(seed=7)) == flatten(plan(seed=7))
    assert flatten(plan(seed=7)) != flatten(plan(seed=8))


def test_num_conv_is_honoured_per_region() -> None:
    for n in (1, 37, 300):
        p = plan(num_conv=n)
        assert sum(len(u.conversations) for u in p.users) == n


def test_regions_get_disjoint_shards() -> None:
    a = {c for _, c, _ in flatten(plan(region="us-east-2", index=0))}
    b = {c for _, c, _ in flatten(plan(region="ap-northeast-1", index=1))}
    assert a and b and not (a & b)


def test_num_users_groups_and_defaults() -> None:
    p = plan(num_users=7)
    assert len(p.users) == 7
    assert p.settings.max_tokens == 512 and p.settings.temperature == 0.0
    assert plan(max_tokens=16).settings.max_tokens == 16
    assert p.arrival.kind == "closed" and p.tree is None


def test_grouping_is_greedy_by_bucket_size() -> None:
    convs = [Conversation(f"c{i}", key, float(i), ("hi",))
             for i, key in enumerate(["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"])]
    groups = group_into_users(convs, 2)
    keys = [sorted({c.user_key for c in g}) for g in groups]
    # a (5) → group 0; b (3) → group 1; c (2) → group 1 (3 < 5); d (1) → group 0 (5 = 5, lower index)
    assert keys == [["a", "d"], ["b", "c"]]
    assert all(g == sorted(g, key=lambda c: c.timestamp) for g in groups)
    with pytest.raises(ValueError):
        group_into_users(convs, 0)


def test_dataset_statistics_match_the_docstring() -> None:
    data = generate_dataset(seed=1, num_conversations=3000)
    turns = [len(c.user_turns) for c in data]
    assert min(turns) >= TURNS_MIN and max(turns) <= TURNS_MAX
    assert 2.5 <= statistics.mean(turns) <= 3.1
    words = [len(t.split()) for c in data for t in c.user_turns]
    assert 0.8 * PROMPT_TOKENS_MEDIAN <= statistics.median(words) <= 1.3 * PROMPT_TOKENS_MEDIAN
    owners: dict[str, int] = {}
    for c in data:
        owners[c.user_key] = owners.get(c.user_key, 0) + 1
    counts = sorted(owners.values(), reverse=True)
    # Heavy-tailed judges: the busiest owns far more than the median one.
    assert counts[0] >= 10 * statistics.median(counts)


def test_bad_num_conv_is_an_error() -> None:
    args = workload_args(dict(num_conv=0, num_users=1, seed=0, max_tokens=None))
    with pytest.raises(ValueError, match="--num-conv"):
        ArenaSyn().plan(args, "us-east-2", 0)
