"""Where TTFT goes: the decomposition of one request's TTFT into emulated delays, connection
setup, LB queueing, engine queue, prefill and the harness residual.

The shapes of a path (pushed between LBs, one LB, a balancer that stamps nothing) are checked
on hand-made records whose every stamp is known; ``test_ttft_parts_run.py`` checks the same on
real runs."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_lbbench.protocol import HopTiming
from pytest_lbbench.report.ttft_parts import PARTS, Topology, decompose, summarize_parts

MS = 1e-3
DESCRIPTION: dict[str, Any] = {
    "time_scale": 1.0,
    "entry_points": {"us-east-2": "lb-us-east-2"},
    "balancers": [{"name": "lb-us-east-2", "region": "us-east-2", "kind": "sky_lb"},
                  {"name": "lb-eu-central-1", "region": "eu-central-1", "kind": "sky_lb"}],
    "links": [
        {"name": "client@us-east-2>entry", "target": "lb-us-east-2", "one_way_ms": 0.5},
        {"name": "lb-us-east-2>lb-eu-central-1", "target": "lb-eu-central-1", "one_way_ms": 50.0},
        {"name": "lb-eu-central-1>r1", "target": "r1", "one_way_ms": 0.5},
        {"name": "lb-us-east-2>r0", "target": "r0", "one_way_ms": 0.5},
    ],
}


def _record(headers: dict[str, str], replica: str, lbs: list[str], ttft: float, **timing: Any) -> dict[str, Any]:
    return {"start": 1000.0, "ttft": ttft, "failed": None, "client_region": "us-east-2",
            "replica": replica, "lbs": lbs, "headers": headers, "new_connection": False,
            "replica_timing": timing}


def _headers(*hops: HopTiming) -> dict[str, str]:
    return dict(item for hop in hops for item in hop.headers())


def test_a_pushed_request_splits_into_every_hop_and_its_parts_add_up() -> None:
    topo = Topology.from_description(DESCRIPTION)
    assert topo is not None
    t0 = 1000.0
    # client -> entry LB 0.5 ms + 1 ms of harness; queued 3 ms; pushed over 50 ms on a new
    # connection (+100 ms handshake) + 2 ms; queued 4 ms; to the replica 0.5 ms + 1 ms; intake
    # 1 ms; engine queue 10 ms; prefill 20 ms; back over 0.5 + 50 + 0.5 ms + 3 ms.
    a2, s2 = t0 + 1.5 * MS, t0 + 4.5 * MS
    a1 = s2 + 152 * MS
    s1 = a1 + 4 * MS
    received = s1 + 1.5 * MS
    arrival, scheduled = received + 1 * MS, received + 11 * MS
    first_token = scheduled + 20 * MS
    ttft = first_token + 54 * MS - t0
    headers = _headers(HopTiming("first", a1, s1, True), HopTiming("second", a2, s2, False))
    parts = decompose(_record(headers, "r1", ["eu-central-1", "us-east-2"], ttft, received=received,
                              arrival=arrival, scheduled=scheduled, first_token=first_token,
                              new_connection=False), topo)
    assert parts is not None
    p = parts["parts"]
    assert sum(p[name] for name in PARTS) == pytest.approx(ttft, abs=1e-6)
    assert p["wan"] == pytest.approx((0.5 + 50 + 0.5) * 2 * MS, abs=1e-6)
    assert p["connect"] == pytest.approx(100 * MS, abs=1e-6)  # the push opened its connection
    assert p["lb_queue"] == pytest.approx(7 * MS, abs=1e-6)
    assert p["engine_queue"] == pytest.approx(10 * MS, abs=1e-6)
    assert p["prefill"] == pytest.approx(20 * MS, abs=1e-6)
    assert p["residual"] == pytest.approx((1 + 2 + 1 + 1 + 3) * MS, abs=1e-6)
    hops = parts["hops"]
    assert {k: round(v["residual"] / MS, 3) for k, v in hops.items()} == {
        "to_entry": 1.0, "lb_to_lb": 2.0, "to_replica": 1.0, "intake": 1.0, "back": 3.0}
    assert parts["new_connections"] == {"to_entry": 0, "lb_to_lb": 1, "to_replica": 0}


def test_behind_a_balancer_that_stamps_nothing_its_time_is_in_the_residual() -> None:
    description = {**DESCRIPTION, "entry_points": {"us-east-2": "router"},
                   "balancers": [{"name": "router", "region": "us-east-2", "kind": "sglang_router"}],
                   "links": [{"name": "client@us-east-2>entry", "target": "router", "one_way_ms": 0.5},
                             {"name": "router>r0", "target": "r0", "one_way_ms": 40.0}]}
    topo = Topology.from_description(description)
    assert topo is not None
    t0 = 1000.0
    received = t0 + (0.5 + 40 + 3) * MS  # 3 ms in the router and the harness
    first_token = received + 5 * MS
    ttft = first_token + (40 + 0.5 + 1) * MS - t0
    record = _record({}, "r0", [], ttft, received=received, arrival=received, scheduled=received,
                     first_token=first_token, new_connection=True)
    record["new_connection"] = True  # the client opened its connection for this request too
    parts = decompose(record, topo)
    assert parts is not None
    assert parts["parts"]["connect"] == pytest.approx(2 * (0.5 + 40) * MS, abs=1e-6)
    assert parts["parts"]["residual"] == pytest.approx((3 - 2 * 40.5 + 1) * MS, abs=1e-6)
    assert parts["new_connections"] == {"to_replica": 2}


def test_failed_requests_and_replicas_without_stamps_have_no_parts() -> None:
    topo = Topology.from_description(DESCRIPTION)
    assert topo is not None
    ok = _record({}, "r0", [], 0.1, arrival=1000.01, scheduled=1000.02, first_token=1000.05)
    assert decompose({**ok, "failed": "timeout"}, topo) is None
    assert decompose({**ok, "replica_timing": None}, topo) is None  # an external engine
    assert Topology.from_description({"links": []}) is None  # a cloud: no emulated links
    summary = summarize_parts([{"ttft_parts": None}])
    assert summary["requests"] == 0 and summary["parts"]["residual"]["p50"] is None
