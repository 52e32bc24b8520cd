"""``--lbbench-plan``: what a sky run creates and its hourly cost, offline."""

from __future__ import annotations

import socket

import pytest

from pytest_lbbench.backends.sky.plan import PRICES, build_plan, hourly_price, instance_type
from pytest_lbbench.backends.sky.render import SkySettings
from pytest_lbbench.systems import SYSTEMS

REGIONS = ["us-east-2", "ap-northeast-1", "eu-central-1"]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the plan must not touch the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_instance_types_of_the_original() -> None:
    assert instance_type("aws", "L4:1", "16+") == "g6.4xlarge"
    assert instance_type("aws", "", "2+") == "m6i.large"
    assert instance_type("aws", "", "8+") == "m6i.2xlarge"
    assert instance_type("aws", "H100:8", "16+") is None


def test_prices() -> None:
    assert hourly_price("aws", "g6.4xlarge", "us-east-2") == (PRICES["g6.4xlarge"], False)
    price, estimate = hourly_price("aws", "m6i.large", "ap-northeast-1")
    assert estimate and price == pytest.approx(0.124)
    assert hourly_price("aws", "m6i.large", "sa-east-1") == (None, True)


def test_plan_of_all_systems(no_network: None) -> None:
    plan = build_plan(list(SYSTEMS.values()), SkySettings(), replicas=4, replica_regions=REGIONS,
                      client_regions=["us-east-2", "ap-northeast-1"])
    text = plan.render()
    for name in SYSTEMS:
        assert f"[{name}]" in text
    assert "gke_gateway]\n  not provisioned: needs --gke-endpoint or --gke-contexts (GKE backend)" in text
    replicas = [i for i in plan.items if i.role == "replicas"]
    assert sum(i.count for i in replicas) == 4 * (len(SYSTEMS) - 1)
    assert all(i.instance_type == "g6.4xlarge" for i in replicas)
    clients = [i for i in plan.items if i.role == "client"]
    assert [i.region for i in clients] == ["us-east-2", "ap-northeast-1"]
    # Every system but gke_gateway × (4 replicas + LBs/router) + 2 clients + controller, priced.
    provisioned = len(SYSTEMS) - 1
    assert plan.total_usd_per_h == pytest.approx(sum(i.usd_per_h or 0 for i in plan.items))
    assert provisioned * 4 * 1.3 < plan.total_usd_per_h < provisioned * 4 * 2.0 + 10
    assert "Prices as of" in text and "sky serve up -n lbb-sgl-us-east-2" in text
    assert "python3 -m sglang_router" not in text  # the router starts later, by sky exec
    assert "python -m sglang.launch_server" in text


def test_endpoints_are_not_provisioned() -> None:
    plan = build_plan([SYSTEMS["sgl"], SYSTEMS["sky_push_pull"]], SkySettings(), replicas=2,
                      replica_regions=REGIONS, client_regions=["us-east-2"],
                      endpoints={"sgl": "*=http://1.2.3.4:9001"})
    assert {i.section for i in plan.items} == {"sky_push_pull", "clients", "skypilot"}
    assert "existing endpoint *=http://1.2.3.4:9001" in plan.render()


def test_plan_of_endpoints_only_has_no_controller() -> None:
    plan = build_plan([SYSTEMS["sgl"]], SkySettings(), replicas=2, replica_regions=REGIONS,
                      client_regions=["us-east-2"], endpoints={"sgl": "http://x"})
    assert {i.section for i in plan.items} == {"clients"}
