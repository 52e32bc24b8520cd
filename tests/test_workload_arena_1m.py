"""arena_1m: no user or time field in LMSYS-Chat-1M, so each chat is its own user; lazy data."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.workloads.arena_1m import Arena1M
from pytest_lbbench.workloads.base import WorkloadPlan
from pytest_lbbench.workloads.sources import lmsys_chat_1m as lm
from pytest_lbbench.workloads.base import WorkloadArgs
from workload_support import workload_args

DATA = Path(__file__).parent / "data" / "lmsys_chat_1m.jsonl"
ROW_KEYS = {"conversation_id", "model", "conversation", "turn", "language", "openai_moderation", "redacted"}


def args(**overrides: Any) -> WorkloadArgs:
    values: dict[str, Any] = {
        "num_users": 5, "seed": 0, "duration": 120.0, "max_tokens": None,
        "dataset_source": "synthetic", "dataset_path": None, "num_conv": 100,
    }
    values.update(overrides)
    return workload_args(values)


def plan1m(index: int = 0, **overrides: Any) -> WorkloadPlan:
    return Arena1M().plan(args(**overrides), "us-east-2", index)


def test_importing_the_workloads_loads_no_data() -> None:
    code = (
        "import sys, pytest_lbbench.workloads as w; "
        "assert 'datasets' not in sys.modules, 'datasets imported'; print(sorted(w.WORKLOADS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "arena_1m" in out.stdout


def test_each_chat_is_its_own_user_in_shuffled_order() -> None:
    p = plan1m()
    assert p.settings.max_tokens == 256 and p.arrival.kind == "closed"
    convs = [c for u in p.users for c in u.conversations]
    assert len(convs) == 100 and all(c.user_key == c.conv_id for c in convs)
    assert all(len(c.user_turns) >= 2 for c in convs)
    assert sorted(len(u.conversations) for u in p.users) == [20] * 5  # greedy dealing is even
    for u in p.users:
        stamps = [c.timestamp for c in u.conversations]
        assert stamps == sorted(stamps)


def test_synthetic_rows_format_and_statistics() -> None:
    rows = list(lm.synthetic_rows(4, 4000))
    for r in rows[:50]:
        assert set(r) == ROW_KEYS and len(r["conversation"]) == 2 * r["turn"]
        assert len(r["openai_moderation"]) == len(r["conversation"])
        json.dumps(r)
    single = sum(r["turn"] == 1 for r in rows) / len(rows)
    assert abs(single - lm.SINGLE_TURN_FRACTION) < 0.03
    multi = [r["turn"] for r in lm.multi_turn(rows)]
    assert 2.8 <= statistics.mean(multi) <= 3.2 and max(multi) <= lm.TURNS_MAX
    words = sorted(len(m["content"].split()) for r in rows for m in r["conversation"] if m["role"] == "user")
    assert 42 <= statistics.median(words) <= 58
    assert words[int(0.95 * len(words))] > 5 * statistics.median(words)
    assert sum(r["language"] == "English" for r in rows) / len(rows) > 0.7


def test_hf_path_reads_a_local_copy_through_datasets() -> None:
    pytest.importorskip("datasets")
    expected = [json.loads(line) for line in DATA.read_text().splitlines()]
    multi = {r["conversation_id"]: r for r in expected if r["turn"] > 1}
    seen: set[str] = set()
    for index in range(3):
        p = plan1m(index, dataset_source="hf", dataset_path=str(DATA), num_users=2)
        ids = {c.conv_id for u in p.users for c in u.conversations}
        assert not (ids & seen)
        seen |= ids
        conv = p.users[0].conversations[0]
        assert conv.user_turns == tuple(
            m["content"] for m in multi[conv.conv_id]["conversation"] if m["role"] == "user")
    assert seen == set(multi)
