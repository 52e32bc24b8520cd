"""Every registered workload: reproducible from the seed, fast offline, in the registry."""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytest

from pytest_lbbench.workloads import WORKLOADS, get_workload
from pytest_lbbench.workloads.base import WorkloadPlan
from pytest_lbbench.workloads.base import WorkloadArgs
from workload_support import workload_args

ALL = ("arena", "arena_1m", "arena_syn", "mixed_tree", "tot", "tot_single", "wildchat")


def make_args(name: str, **overrides: Any) -> WorkloadArgs:
    values: dict[str, Any] = {
        "num_users": 8, "seed": 0, "duration": 120.0, "max_tokens": None,
        "dataset_source": "synthetic", "dataset_path": None,
    }
    values.update({o.dest: o.default for o in get_workload(name).options})
    values["num_conv"] = 200
    values.update(overrides)
    return workload_args(values)


def plan(name: str, region: str = "us-east-2", index: int = 0, **overrides: Any) -> WorkloadPlan:
    return get_workload(name).plan(make_args(name, **overrides), region, index)


def test_registry_has_every_original_workload() -> None:
    assert sorted(WORKLOADS) == sorted(ALL)
    with pytest.raises(KeyError, match="valid workloads: arena"):
        get_workload("sharegpt")
    for name, w in WORKLOADS.items():
        assert w.name == name and isinstance(w.options, tuple)
        assert w.hf_dataset and "/" in w.hf_dataset


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_plan_different_seed_different(name: str) -> None:
    a = plan(name, seed=3)
    assert a.request_sequence() == plan(name, seed=3).request_sequence()
    assert a.request_sequence() != plan(name, seed=4).request_sequence()
    assert WorkloadPlan.from_json(a.to_json()) == a


@pytest.mark.parametrize("name", ALL)
def test_plans_have_users_and_per_user_hash_keys(name: str) -> None:
    p = plan(name, num_users=5)
    assert len(p.users) == 5 and all(u.conversations for u in p.users)
    keys = {c.user_key for u in p.users for c in u.conversations}
    assert len(keys) >= 5 and "us-east-2" not in keys
    assert plan(name, max_tokens=7).settings.max_tokens == 7


@pytest.mark.parametrize("name", ALL)
def test_regions_get_different_conversations(name: str) -> None:
    a = {c.conv_id for u in plan(name, "us-east-2", 0).users for c in u.conversations}
    b = {c.conv_id for u in plan(name, "ap-northeast-1", 1).users for c in u.conversations}
    assert a and b and not (a & b)


@pytest.mark.parametrize("name", ALL)
def test_offline_generation_is_fast(name: str) -> None:
    start = time.perf_counter()
    p = plan(name, num_conv=1000, num_users=10)
    elapsed = time.perf_counter() - start
    assert p.users
    # "Well under a second" on a developer machine; the bound leaves room for slow CI.
    assert elapsed < 2.0, f"{name} took {elapsed:.2f}s"


@pytest.mark.parametrize("name", ALL)
def test_options_register_on_a_parser(name: str) -> None:
    parser = argparse.ArgumentParser()
    for option in get_workload(name).options:
        option.add_to(parser)
    args = parser.parse_args([])
    for option in get_workload(name).options:
        assert getattr(args, option.dest) == option.default


def test_unknown_dataset_source_is_an_error() -> None:
    with pytest.raises(ValueError, match="--dataset-source"):
        plan("arena_syn", dataset_source="kaggle")
