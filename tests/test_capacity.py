"""Capacity at SLO: the SLA targets, and the bisection on scripted results (no experiment runs)."""

from __future__ import annotations

import pytest

from pytest_lbbench.capacity import Capacity, parse_range, parse_sla, search
from pytest_lbbench.loads import Load, parse_levels


def scripted(capacity: float) -> tuple[list[float], object]:
    """A system that meets its targets up to ``capacity`` and misses them above it."""
    tried: list[float] = []

    def probe(load: Load) -> tuple[bool, tuple[str, ...]]:
        tried.append(load.value)
        return (True, ()) if load.value <= capacity else (False, ("ttft_p90_s <= 1",))

    return tried, probe


@pytest.mark.parametrize("true_capacity", [1, 2, 7, 37, 38, 99, 150, 199])
def test_users_search_returns_the_highest_passing_load_within_its_tolerance(true_capacity: int) -> None:
    tried, probe = scripted(true_capacity)
    found = search(probe, "users", 1, 200, max_probes=12, tolerance=0.1)  # type: ignore[arg-type]
    assert found.capacity is not None and found.capacity <= true_capacity  # it passed there
    assert found.first_miss is not None and found.first_miss > true_capacity  # it missed there
    # Within the tolerance of the passing load, or adjacent user counts.
    assert found.first_miss - found.capacity <= max(1.0, 0.1 * found.capacity)
    assert found.converged and len(tried) == len(found.probes) <= 12
    assert tried[:2] == [200, 1]  # the top first, then the bottom


def test_rate_search_and_the_probe_budget() -> None:
    tried, probe = scripted(3.3)
    found = search(probe, "rate", 0.25, 32, max_probes=20, tolerance=0.05)  # type: ignore[arg-type]
    assert found.capacity is not None and 3.3 * 0.95 <= found.capacity <= 3.3 < found.first_miss  # type: ignore[operator]
    few = search(scripted(3.3)[1], "rate", 0.25, 32, max_probes=4, tolerance=0.01)  # type: ignore[arg-type]
    assert len(few.probes) == 4 and not few.converged  # out of probes: says so
    assert few.capacity is not None and few.capacity <= 3.3


def test_the_edges_of_the_range() -> None:
    above = search(scripted(500)[1], "users", 1, 200)  # type: ignore[arg-type]
    assert above.capacity == 200 and above.first_miss is None and len(above.probes) == 1
    assert ">= 200" in above.describe()
    below = search(scripted(0.5)[1], "users", 1, 200)  # type: ignore[arg-type]
    assert below.capacity is None and below.first_miss == 1 and len(below.probes) == 2
    assert "below 1" in below.describe()
    assert isinstance(above, Capacity) and above.to_dict()["probes"][0] == {
        "load": 200, "met": True, "missed": []}


def test_sla_targets() -> None:
    targets = parse_sla("ttft_p90_s=1.0, e2e_p90_s=30,slo_attainment=0.9")
    assert [t.text for t in targets] == ["ttft_p90_s <= 1", "e2e_p90_s <= 30", "slo_attainment >= 0.9"]
    summary = {"ttft_p90_s": 0.8, "e2e_p90_s": 31.0, "slo_attainment": 0.95}
    assert [t.met(summary) for t in targets] == [True, False, True]
    assert not targets[0].met({"ttft_p90_s": None})  # nothing measured: not met
    with pytest.raises(ValueError, match="unknown metric 'ttft_p90'.*Valid metrics"):
        parse_sla("ttft_p90=1")
    for bad, why in (("ttft_p90_s", "not METRIC=BOUND"), ("ttft_p90_s=x", "must be a number"),
                     ("capacity=3", "what the search finds"), ("ttft_p90_s=1,ttft_p90_s=2", "twice"),
                     ("", "no target")):
        with pytest.raises(ValueError, match=why):
            parse_sla(bad)
    assert parse_range("1,200", "users") == (1.0, 200.0)
    for bad in ("200,1", "0,5", "1", "a,b"):
        with pytest.raises(ValueError):
            parse_range(bad, "users")


def test_load_levels() -> None:
    assert parse_levels("10,40", "users") == (10.0, 40.0)
    assert Load("users", 40).id == "u40" and Load("rate", 0.5).id == "r0.5"
    for bad, why in (("10,10", "twice"), ("0", "positive"), ("2.5", "whole number"), ("x", "not a number")):
        with pytest.raises(ValueError, match=why):
            parse_levels(bad, "users")
