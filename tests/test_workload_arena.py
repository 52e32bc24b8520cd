"""arena (timestamp replay) and the shared Arena rows: format, statistics, real-data path."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.workloads.arena import Arena, default_user_stagger
from pytest_lbbench.workloads.arena_syn import ArenaSyn
from pytest_lbbench.workloads.base import WorkloadPlan
from pytest_lbbench.workloads.sources import arena_conversations as ac
from pytest_lbbench.workloads.base import WorkloadArgs
from workload_support import workload_args

DATA = Path(__file__).parent / "data" / "chatbot_arena_conversations.jsonl"
ROW_KEYS = {"question_id", "model_a", "model_b", "winner", "judge", "conversation_a",
            "conversation_b", "turn", "anony", "language", "tstamp", "openai_moderation",
            "toxic_chat_tag"}


def args(**overrides: Any) -> WorkloadArgs:
    values: dict[str, Any] = {
        "num_users": 10, "seed": 0, "duration": 120.0, "max_tokens": None,
        "dataset_source": "synthetic", "dataset_path": None, "num_conv": 200,
        "run_seconds": None, "user_stagger": None,
    }
    values.update(overrides)
    return workload_args(values)


def arena_plan(**overrides: Any) -> WorkloadPlan:
    return Arena().plan(args(**overrides), "us-east-2", 0)


def test_replay_arrival_defaults() -> None:
    p = arena_plan(duration=120.0, num_users=4)
    assert p.arrival.kind == "replay"
    assert p.arrival.replay_span_s == 120.0
    assert p.arrival.user_stagger_s == 10.0  # the original's 10 s fits: 4 users × 10 s < 60 s
    assert p.settings.max_tokens == 256 and p.settings.temperature == 0.0


def test_stagger_is_capped_so_every_user_starts_in_the_first_half() -> None:
    p = arena_plan(duration=100.0, num_users=50)
    assert p.arrival.user_stagger_s == pytest.approx(1.0)
    assert default_user_stagger(600.0, 150) * 149 <= 300.0
    assert arena_plan(user_stagger=3.5, run_seconds=40.0).arrival.user_stagger_s == 3.5
    assert arena_plan(run_seconds=40.0).arrival.replay_span_s == 40.0
    with pytest.raises(ValueError, match="--run-seconds"):
        arena_plan(run_seconds=0.0)


def test_hash_key_is_the_judge_and_users_are_grouped_by_judge() -> None:
    p = arena_plan(num_users=6)
    for u in p.users:
        assert all(c.user_key.startswith("arena_user_") for c in u.conversations)
        stamps = [c.timestamp for c in u.conversations]
        assert stamps == sorted(stamps)
    judges = [{c.user_key for c in u.conversations} for u in p.users]
    # Every judge's conversations stay with one simulated user.
    for i, a in enumerate(judges):
        for b in judges[i + 1:]:
            assert not (a & b)


def test_arena_and_arena_syn_share_data_and_differ_in_arrival() -> None:
    a, s = arena_plan(), ArenaSyn().plan(args(), "us-east-2", 0)
    assert a.request_sequence() == s.request_sequence()
    assert s.arrival.kind == "closed" and s.settings.max_tokens == 512


def test_synthetic_rows_are_in_the_hub_format() -> None:
    rows = list(ac.synthetic_rows(seed=2, num_multi_turn=50))
    assert sum(r["turn"] > 1 for r in rows) == 50
    assert any(r["turn"] == 1 for r in rows)  # single-turn battles exist, and are filtered
    for r in rows:
        assert set(r) == ROW_KEYS
        assert len(r["conversation_a"]) == 2 * r["turn"] == len(r["conversation_b"])
        assert [m["role"] for m in r["conversation_a"][:2]] == ["user", "assistant"]
        assert isinstance(r["tstamp"], float) and r["model_a"] != r["model_b"]
        json.dumps(r)
    convs = list(ac.multi_turn_conversations(rows))
    assert len(convs) == 50 and all(len(c.user_turns) >= 2 for c in convs)


def test_synthetic_statistics_match_the_docstring() -> None:
    rows = list(ac.synthetic_rows(seed=5, num_multi_turn=3000))
    single = sum(r["turn"] == 1 for r in rows) / len(rows)
    assert abs(single - ac.SINGLE_TURN_FRACTION) < 0.03
    convs = list(ac.multi_turn_conversations(rows))
    turns = [len(c.user_turns) for c in convs]
    assert 2.6 <= statistics.mean(turns) <= 3.0 and max(turns) <= ac.TURNS_MAX
    span = max(c.timestamp for c in convs) - min(c.timestamp for c in convs)
    assert 0.95 * ac.DATASET_SPAN_S <= span <= ac.DATASET_SPAN_S
    firsts = [c.user_turns[0] for c in convs]
    shared = sum(1 for f in firsts if firsts.count(f) > 1) / len(firsts)
    assert 0.05 <= shared <= 0.15  # ~10 % open with a popular prompt
    words = sorted(len(t.split()) for c in convs for t in c.user_turns[1:])
    assert 32 <= statistics.median(words) <= 48
    assert words[int(0.95 * len(words))] > 4 * statistics.median(words)  # long tail


def test_hf_path_reads_a_local_copy_through_datasets() -> None:
    pytest.importorskip("datasets")
    real = args(dataset_source="hf", dataset_path=str(DATA), num_conv=1000, num_users=2)
    plans = [Arena().plan(real, r, i) for i, r in enumerate(("us-east-2", "ap-northeast-1", "eu-central-1"))]
    ids = [[c.conv_id for u in p.users for c in u.conversations] for p in plans]
    expected = [json.loads(line) for line in DATA.read_text().splitlines()]
    multi = [r["question_id"] for r in expected if r["turn"] > 1]
    # Running index over multi-turn battles, i % 3 → region index: the original's sharding.
    for k in range(3):
        assert sorted(ids[k]) == sorted(multi[k::3])
    first = next(c for u in plans[0].users for c in u.conversations if c.conv_id == multi[0])
    row = next(r for r in expected if r["question_id"] == multi[0])
    assert first.user_key == row["judge"] and first.timestamp == row["tstamp"]
    assert list(first.user_turns) == [m["content"] for m in row["conversation_a"] if m["role"] == "user"]
    # --dataset-path alone (default source) reads the same file.
    assert Arena().plan(args(dataset_path=str(DATA), num_users=2), "us-east-2", 0) == Arena().plan(
        args(dataset_source="hf", dataset_path=str(DATA), num_users=2), "us-east-2", 0)
