"""Dataset sources: the preflight's messages and loading local copies through ``datasets``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from pytest_lbbench.workloads.sources import (
    TextSynth,
    geometric_count,
    hub,
    jsonable,
    lognormal_int,
    take_shard,
)
from pytest_lbbench.workloads.sources.hub import DatasetUnavailable, load_rows, preflight

DATA = Path(__file__).parent / "data"
ARENA = "lmsys/chatbot_arena_conversations"


def test_preflight_without_token_explains_the_fix() -> None:
    pytest.importorskip("datasets")
    with pytest.raises(DatasetUnavailable) as info:
        preflight(ARENA, None, {})
    text = str(info.value)
    assert "HF_TOKEN" in text and f"https://huggingface.co/datasets/{ARENA}" in text
    assert "pytest-lbbench[hf]" in text and "--dataset-path" in text
    assert "\n" not in text  # one paragraph
    preflight(ARENA, None, {"HF_TOKEN": "hf_dummy"})
    preflight("openai/gsm8k", None, {})  # not gated: anonymous access works
    preflight(ARENA, str(DATA / "chatbot_arena_conversations.jsonl"), {})  # local: no token


def test_preflight_without_datasets_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # find_spec → None: "not installed"
    with pytest.raises(DatasetUnavailable, match=r"pip install 'pytest-lbbench\[hf\]'"):
        preflight(ARENA, None, {"HF_TOKEN": "hf_dummy"})
    with pytest.raises(DatasetUnavailable, match="not installed"):
        preflight(ARENA, str(DATA / "chatbot_arena_conversations.jsonl"), {})


def test_preflight_rejects_a_missing_path(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        preflight(ARENA, str(tmp_path / "nope.jsonl"), {})


def test_dataset_unavailable_is_a_usage_error() -> None:
    assert issubclass(DatasetUnavailable, ValueError)


def test_load_a_local_jsonl_file_with_a_sliced_split() -> None:
    pytest.importorskip("datasets")
    rows = list(load_rows("openai/gsm8k", split="train[:5]",
                          dataset_path=str(DATA / "gsm8k_train.jsonl"), environ={}))
    assert len(rows) == 5 and set(rows[0]) == {"question", "answer"}
    assert rows[0]["answer"].rsplit("####", 1)[1].strip().isdigit()


def test_load_a_local_directory_and_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    repo = tmp_path / "gsm8k"
    (repo / "main").mkdir(parents=True)
    shutil.copy(DATA / "gsm8k_train.jsonl", repo / "main" / "train.jsonl")
    rows = list(load_rows("openai/gsm8k", dataset_path=str(repo), environ={}))
    assert len(rows) == 30
    parquet = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    assert list(load_rows("openai/gsm8k", dataset_path=str(parquet), environ={})) == rows


def test_unknown_suffix_and_loader_errors_become_dataset_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    datasets = pytest.importorskip("datasets")
    odd = tmp_path / "rows.txt"
    odd.write_text("{}\n")
    with pytest.raises(DatasetUnavailable, match="suffix"):
        load_rows(ARENA, dataset_path=str(odd), environ={})

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("403 Forbidden: gated")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    secret = "hf_do_not_print_me"
    with pytest.raises(DatasetUnavailable) as info:
        load_rows(ARENA, environ={"HF_TOKEN": secret})
    assert "403" in str(info.value) and "accept its terms" in str(info.value)
    assert secret not in str(info.value)


def test_text_and_sampling_helpers_are_reproducible() -> None:
    import random

    a, b = TextSynth(random.Random(1)), TextSynth(random.Random(1))
    r1, r2 = random.Random(2), random.Random(2)
    assert a.message(r1, 30) == b.message(r2, 30)
    assert 31 <= len(a.message(r1, 30).split()) <= 33  # opener (1–3 words) + 30 words
    assert 80 <= len(a.answer(r1, 100).split()) <= 120
    rng = random.Random(3)
    assert all(2 <= geometric_count(rng, 2, 0.5, 6) <= 6 for _ in range(200))
    assert all(3 <= lognormal_int(rng, 40, 2.0, 3, 50) <= 50 for _ in range(200))
    assert take_shard(range(20), 1, 3) == [1, 4, 7]
    assert take_shard(range(20), 4, None) == [4, 9, 14, 19]  # a fifth region: five shards
    assert hub.GATED_DATASETS >= {ARENA, "lmsys/lmsys-chat-1m"}
    from datetime import datetime, timezone

    assert jsonable({"t": [datetime(2023, 4, 9, tzinfo=timezone.utc)]}) == {"t": ["2023-04-09T00:00:00+00:00"]}
