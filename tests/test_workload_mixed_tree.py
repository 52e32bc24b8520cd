"""mixed_tree: tot's GSM8K trees with a branch factor per client region (the paper's mixed trees)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_lbbench.workloads import WORKLOADS, get_workload
from pytest_lbbench.workloads.base import WorkloadPlan
from pytest_lbbench.workloads.mixed_tree import (
    DEFAULT_BRANCHES_BY_REGION,
    MixedTree,
    branches_for,
    parse_branches_by_region,
    requests_per_tree,
)
from pytest_lbbench.workloads.registry import workload_catalog
from pytest_lbbench.workloads.tot import STAGE_PROMPTS, Tot
from pytest_lbbench.workloads.base import WorkloadArgs
from workload_support import workload_args


def args(**overrides: Any) -> WorkloadArgs:
    values: dict[str, Any] = {
        "num_users": 2, "seed": 0, "duration": 120.0, "max_tokens": None,
        "dataset_source": "synthetic", "dataset_path": None, "data_path": None,
        "branches_by_region": DEFAULT_BRANCHES_BY_REGION, "num_branches": 2,
    }
    values.update(overrides)
    return workload_args(values)


def plan(region: str, index: int, **overrides: Any) -> WorkloadPlan:
    return MixedTree().plan(args(**overrides), region, index)


def test_registered_with_its_options() -> None:
    w = get_workload("mixed_tree")
    assert isinstance(w, MixedTree) and WORKLOADS["mixed_tree"] is w
    assert [o.flag for o in w.options] == ["--branches-by-region", "--data-path"]
    assert w.options[0].default == "us-east-2=4,default=2"
    with pytest.raises(ValueError, match="already exists"):
        workload_catalog([MixedTree()])


def test_paper_defaults_four_branches_in_the_us_two_elsewhere() -> None:
    us, asia, eu = plan("us-east-2", 0), plan("ap-northeast-1", 1), plan("eu-central-1", 2)
    assert us.tree is not None and us.tree.num_branches == 4 and us.tree.parallel
    assert asia.tree is not None and asia.tree.num_branches == 2
    assert eu.tree is not None and eu.tree.num_branches == 2
    # The paper's counts (1 + b + b² + b³) and ours (b + … + b⁴), both recorded in the plan.
    assert us.args["paper_requests_per_tree"] == 85 and us.args["requests_per_tree"] == 340
    assert eu.args["paper_requests_per_tree"] == 15 and eu.args["requests_per_tree"] == 30
    assert us.settings.max_tokens == 256 and us.settings.temperature == 0.001
    assert us.arrival.kind == "closed"


def test_same_questions_and_prompts_as_tot() -> None:
    """Only the branching differs from tot: same users, same questions, same stage prompts."""
    for region, index in (("us-east-2", 0), ("eu-central-1", 2)):
        mixed = plan(region, index, num_users=3)
        tot = Tot().plan(args(num_users=3), region, index)
        assert mixed.request_sequence() == tot.request_sequence()
    conv = plan("us-east-2", 0).users[1].conversations[0]
    assert conv.user_key == conv.conv_id  # the question id, as tot (the paper's CH key)
    assert conv.user_turns[1:] == STAGE_PROMPTS[1:] and "Problem:" in conv.user_turns[0]


def test_users_per_region_come_from_num_users() -> None:
    assert len(plan("us-east-2", 0, num_users=2).users) == 2
    assert len(plan("ap-northeast-1", 1, num_users=20).users) == 20


def test_branches_spec_parsing_and_errors() -> None:
    assert parse_branches_by_region(" us-east-2=3 , default=1 ,") == {"us-east-2": 3, "default": 1}
    assert branches_for("eu-central-1=5,default=2", "eu-central-1") == 5
    assert branches_for("eu-central-1=5,default=2", "us-east-2") == 2
    custom = plan("ap-northeast-1", 1, branches_by_region="ap-northeast-1=3,default=2")
    assert custom.tree is not None and custom.tree.num_branches == 3
    for bad, message in (("us-east-2", "REGION=BRANCHES"), ("us-east-2=x", "whole number"),
                         ("us-east-2=0", ">= 1"), ("a=2,a=3", "twice"), ("", "empty")):
        with pytest.raises(ValueError, match=message):
            parse_branches_by_region(bad)
    with pytest.raises(ValueError, match="no entry for client region 'eu-central-1'"):
        plan("eu-central-1", 2, branches_by_region="us-east-2=4")


def test_requests_per_tree() -> None:
    assert [requests_per_tree(b) for b in (1, 2, 4)] == [4, 30, 340]
    assert [requests_per_tree(b, root_once=True) for b in (1, 2, 4)] == [4, 15, 85]


def test_plan_from_client_arguments_round_trips() -> None:
    from pytest_lbbench.client.job import ClientJob, job_from_args
    from pytest_lbbench.client.planning import parse_args

    job = job_from_args(parse_args(["--workload", "mixed_tree", "--backend-url", "http://127.0.0.1:9",
                                    "--region", "us-east-2",
                                    "--num-users", "2",
                                    "--branches-by-region", "us-east-2=3,default=2"]))
    p = job.plan
    assert p.tree is not None and p.tree.num_branches == 3
    assert WorkloadPlan.from_json(p.to_json()) == p
    assert ClientJob.from_json(job.to_json()) == job
