"""The wire contract: every header and payload is written and read by the same code."""

from __future__ import annotations

import pytest

from pytest_lbbench.protocol import (
    GatewayDecision,
    GatewayMembership,
    HopTiming,
    LbDecision,
    LbMembership,
    MembershipError,
    ReplicaDecision,
    number_decisions,
    parse_decisions,
    served_by,
)


def test_decisions_round_trip_through_their_headers_in_hop_order() -> None:
    # The LB next to the replica writes first (replica-decision-0, lb-decision-1 for its own
    # region); the LB that pushed adds its hop after the upstream's headers.
    first = number_decisions(["content-type", "x-lbbench-replica"], [
        ReplicaDecision(3, "http://127.0.0.1:9/"), LbDecision("ap-northeast-1", "http://127.0.0.1:8"),
    ])
    assert [k for k, _ in first] == ["replica-decision-0", "lb-decision-1"]
    second = number_decisions([k for k, _ in first], [LbDecision("us-east-2", "http://127.0.0.1:7")])
    assert second == [("lb-decision-2", "Select LB in region us-east-2 (http://127.0.0.1:7)")]
    headers = dict(first + second)
    assert parse_decisions(headers) == [
        ReplicaDecision(3, "http://127.0.0.1:9/"),
        LbDecision("ap-northeast-1", "http://127.0.0.1:8"),
        LbDecision("us-east-2", "http://127.0.0.1:7"),
    ]


def test_served_by_reads_the_replica_and_every_balancer_region_nearest_first() -> None:
    headers = {
        "X-Lbbench-Replica": "replica-1-ap-northeast-1",
        **dict(number_decisions([], [ReplicaDecision(1, "u"), LbDecision("ap-northeast-1", "u")])),
    }
    headers.update(number_decisions(headers, [LbDecision("us-east-2", "v")]))
    assert served_by(headers) == ("replica-1-ap-northeast-1", ["ap-northeast-1", "us-east-2"])
    gateway = dict(number_decisions([], [GatewayDecision("replica-2", "eu-central-1", spill=True)]))
    assert gateway == {"gateway-decision-0": "Select backend replica-2 in region eu-central-1 (spill: yes)"}
    assert served_by(gateway) == (None, ["eu-central-1"])
    assert parse_decisions(gateway) == [GatewayDecision("replica-2", "eu-central-1", True)]


def test_numbering_counts_beyond_ten_hops_in_number_order() -> None:
    items = number_decisions([], [LbDecision(f"r{i}", "u") for i in range(12)])
    assert served_by(dict(reversed(items)))[1] == [f"r{i}" for i in range(12)]


def test_foreign_decision_values_are_skipped_not_misread() -> None:
    assert parse_decisions({"lb-decision-0": "something else", "other-decision-1": "x"}) == []


def test_hop_timing_round_trips() -> None:
    timing = HopTiming("second", 1.25, 1.5)
    assert dict(timing.headers()) == {"second-hop-sky-time-arrive": "1.25", "second-hop-sky-time-scheduled": "1.5"}
    assert HopTiming.parse(dict(timing.headers()), "second") == timing
    assert HopTiming.parse(dict(timing.headers()), "first") is None


def test_lb_membership_round_trips_and_accepts_the_old_region_key() -> None:
    m = LbMembership("lb-a", lbs={"lb-a": "http://a", "lb-b": "http://b"}, replicas={"r": "http://r"},
                     regions={"lb-a": "us-east-2"})
    assert LbMembership.from_json(m.to_json(), "lb-a") == m
    old = {"lbs": {}, "lb_regions": {"lb-b": "eu"}}
    assert LbMembership.from_json(old, "lb-a").regions == {"lb-b": "eu"}


@pytest.mark.parametrize("payload, message", [
    ([], "must be a JSON object"),
    ({"self": "lb-b"}, "membership is for 'lb-b', but this LB is 'lb-a'"),
    ({"replicas": {"r": 1}}, "'replicas' must be an object of name → string"),
])
def test_lb_membership_errors_say_what_is_wrong(payload: object, message: str) -> None:
    with pytest.raises(MembershipError, match=message):
        LbMembership.from_json(payload, "lb-a")


def test_gateway_membership_round_trips_and_checks_the_region_order() -> None:
    m = GatewayMembership("gke-us", backends={"r": "http://r"}, regions={"r": "us"}, region_order=("us", "eu"))
    assert GatewayMembership.from_json(m.to_json(), "gke-us") == m
    assert "region_order" not in GatewayMembership("gke-us").to_json()
    with pytest.raises(MembershipError, match="'region_order' must be a list of region names"):
        GatewayMembership.from_json({"region_order": "us"}, "gke-us")
