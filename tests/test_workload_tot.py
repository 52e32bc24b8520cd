"""tot and tot_single: GSM8K questions as trees of four stage prompts, per-user hash keys."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.workloads.base import WorkloadPlan
from pytest_lbbench.workloads.sources import gsm8k
from pytest_lbbench.workloads.tot import QUESTIONS_PER_USER, STAGE_PROMPTS, Tot
from pytest_lbbench.workloads.tot_single import TotSingle
from pytest_lbbench.workloads.base import WorkloadArgs
from workload_support import workload_args

DATA = Path(__file__).parent / "data" / "gsm8k_train.jsonl"


def args(**overrides: Any) -> WorkloadArgs:
    values: dict[str, Any] = {
        "num_users": 3, "seed": 0, "duration": 120.0, "max_tokens": None,
        "dataset_source": "synthetic", "dataset_path": None, "num_branches": 2,
        "data_path": None, "disable_parallel": False,
    }
    values.update(overrides)
    return workload_args(values)


def tot(region: str = "us-east-2", index: int = 0, single: bool = False, **overrides: Any) -> WorkloadPlan:
    return (TotSingle() if single else Tot()).plan(args(**overrides), region, index)


def test_tree_settings_and_prompts() -> None:
    p = tot()
    assert p.tree is not None and p.tree.num_branches == 2 and p.tree.parallel
    assert p.settings.max_tokens == 256 and p.settings.temperature == 0.001
    assert p.arrival.kind == "closed"
    conv = p.users[0].conversations[0]
    assert len(conv.user_turns) == 4
    assert "80 words" in conv.user_turns[0] and "Problem:" in conv.user_turns[0]
    assert conv.user_turns[1:] == STAGE_PROMPTS[1:]
    assert "1" in conv.user_turns[2] and "5" in conv.user_turns[2]
    assert tot(num_branches=4).tree == type(p.tree)(num_branches=4, parallel=True)
    with pytest.raises(ValueError, match="num_branches"):
        tot(num_branches=0)


def test_tot_single_settings() -> None:
    p = tot(single=True)
    assert p.settings.max_tokens == 512 and p.tree is not None and p.tree.parallel
    q = tot(single=True, disable_parallel=True)
    assert q.tree is not None and not q.tree.parallel
    assert p.request_sequence() == tot().request_sequence()  # same data and prompts


def test_questions_dealt_round_robin_and_capped() -> None:
    p = tot(num_users=4)
    counts = [len(u.conversations) for u in p.users]
    assert counts == [QUESTIONS_PER_USER] * 4
    ids = [int(c.conv_id.split("-")[1]) for c in p.users[0].conversations]
    assert all(i % 3 == 0 for i in ids) and ids == sorted(ids)
    assert ids[1] - ids[0] == 3 * 4  # user 0 gets every 4th question of the shard
    for u in p.users:
        # The paper's consistent-hashing key for ToT is the question id (section 5.1).
        assert all(c.user_key == c.conv_id for c in u.conversations)
    b = tot("eu-central-1", 2, num_users=4)
    assert all(int(c.conv_id.split("-")[1]) % 3 == 2 for u in b.users for c in u.conversations)
    # A big region is limited by the data, as on real GSM8K (7,473 rows, ~2,491 per shard).
    big = tot(num_users=40)
    assert sum(len(u.conversations) for u in big.users) == len(range(0, gsm8k.TRAIN_ROWS, 3))


def test_gsm8k_statistics_match_the_docstring() -> None:
    rows = list(gsm8k.synthetic_rows(1))
    assert len(rows) == gsm8k.TRAIN_ROWS
    words = sorted(len(r["question"].split()) for r in rows)
    assert 40 <= statistics.median(words) <= 50
    assert 25 <= words[len(words) // 20] and words[-len(words) // 20] <= 70
    assert 15 <= words[0] and words[-1] <= 80
    for r in rows[:200]:
        assert set(r) == {"question", "answer"}
        steps = r["answer"].split("\n")
        assert 3 <= len(steps) <= 4 and steps[-1].startswith("#### ")
        assert gsm8k.final_answer(r).isdigit()
        for step in steps[:-1]:
            expr, value = step.split("<<")[1].split(">>")[0].split("=")
            assert eval(expr) == int(value)  # noqa: S307 - our own arithmetic
    assert len({r["question"] for r in rows}) > 0.99 * len(rows)
    assert gsm8k.synthetic_row(1, 10) == rows[10]


def test_data_path_alias_reads_the_local_file() -> None:
    pytest.importorskip("datasets")
    expected = [json.loads(line) for line in DATA.read_text().splitlines()]
    p = tot(data_path=str(DATA), num_users=2)
    convs = [c for u in p.users for c in u.conversations]
    assert len(convs) == 10  # rows 0, 3, …, 27 of 30
    assert convs[0].user_turns[0].endswith(expected[0]["question"].strip())
    same = tot(dataset_source="hf", dataset_path=str(DATA), num_users=2)
    assert same.request_sequence() == p.request_sequence()
    with pytest.raises(ValueError, match="alias"):
        tot(data_path=str(DATA), dataset_path="/elsewhere.jsonl")
    with pytest.raises(ValueError, match="fewer than --num-users"):
        tot(data_path=str(DATA), num_users=11)
