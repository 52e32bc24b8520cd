"""Region names, RTTs and the workload shard of each client region."""

from __future__ import annotations

from pytest_lbbench.client.planning import parse_args, region_index_of
from pytest_lbbench.regions import RttMatrix


def test_shard_index_is_the_originals_seed2idx() -> None:
    rtt = RttMatrix()
    assert [rtt.shard_index(r) for r in ("us-east-2", "ap-northeast-1", "eu-central-1")] == [0, 1, 2]
    assert rtt.shard_index("mars-1") == 0
    assert rtt.rtt("us-east-2", "ap-northeast-1") == rtt.rtt("ap-northeast-1", "us-east-2") == 158.27


def test_the_client_defaults_to_the_same_shard_as_the_launchers() -> None:
    args = parse_args(["--backend-url", "http://127.0.0.1:1", "--workload", "arena_syn",
                       "--region", "eu-central-1"])
    assert region_index_of(args) == RttMatrix().shard_index("eu-central-1") == 2
    args = parse_args(["--backend-url", "http://127.0.0.1:1", "--workload", "arena_syn",
                       "--region", "eu-central-1", "--region-index", "0"])
    assert region_index_of(args) == 0
