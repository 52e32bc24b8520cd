"""The gateway's routing decision and CLI, without processes (a fake clock drives the windows)."""

from __future__ import annotations

import time

import pytest

from pytest_lbbench.gateway import Choice, Gateway, GatewayConfig, Router, SlidingWindowCounter
from pytest_lbbench.gateway.__main__ import build_parser, config_from_args
from pytest_lbbench.protocol import GatewayMembership
from pytest_lbbench.gateway.server import MembershipError

US, AP, EU = "us-east-2", "ap-northeast-1", "eu-central-1"
BACKENDS = {"us-0": "http://us0", "us-1": "http://us1", "ap-0": "http://ap0", "ap-1": "http://ap1"}
REGIONS = {"us-0": US, "us-1": US, "ap-0": AP, "ap-1": AP}


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_router(clock: Clock, *, rate: float = 1.0, window: float = 10.0,
                backends: dict[str, str] = BACKENDS, regions: dict[str, str] = REGIONS,
                order: tuple[str, ...] = (US, AP)) -> Router:
    router = Router(max_rate_per_endpoint=rate, window_s=window, clock=clock)
    router.set_membership(backends, regions, list(order))
    return router


def pick(router: Router) -> Choice:
    choice = router.choose()
    assert choice is not None
    return choice


def test_sliding_window_counts_only_the_last_window() -> None:
    counter = SlidingWindowCounter(2.0)
    for t in (0.0, 0.5, 1.0, 1.9):
        counter.add(t)
    assert counter.count(1.9) == 4
    assert counter.count(2.0) == 3  # the event at 0.0 left the window (now − 2, now]
    assert counter.rate(3.0) == pytest.approx(0.5)  # only 1.9 is in (1, 3]


def test_under_budget_stays_local_and_round_robins() -> None:
    clock = Clock()
    router = make_router(clock)  # budget 1 req/s × 2 local backends × 10 s = 20 per window
    picks = []
    for _ in range(20):
        choice = router.choose()
        assert choice is not None
        picks.append(choice)
        clock.now += 0.5  # 2 req/s = exactly the local budget
    assert {c.region for c in picks} == {US}
    assert not any(c.spill for c in picks)
    assert [c.backend for c in picks[:4]] == ["us-0", "us-1", "us-0", "us-1"]


def test_over_budget_spills_to_next_region_then_returns() -> None:
    clock = Clock()
    router = make_router(clock)
    choices = [router.choose() for _ in range(30)]  # a burst: 30 within one window
    assert all(c is not None for c in choices)
    local = [c for c in choices if c is not None and not c.spill]
    spilled = [c for c in choices if c is not None and c.spill]
    assert len(local) == 20 and len(spilled) == 10
    assert {c.region for c in spilled} == {AP} and {c.reason for c in spilled} == {"capacity"}
    assert router.stats.spill_by_reason == {"capacity": 10}
    clock.now += 10.0  # the window has passed: local capacity is back
    choice = router.choose()
    assert choice is not None and choice.region == US and not choice.spill


# Arrival steps are powers of two, so clock readings are exact and no arrival sits a rounding
# error inside or outside the window's edge.
@pytest.mark.parametrize("overload", [1.0, 2.0, 4.0])
def test_spill_share_is_the_excess_over_the_local_budget(overload: float) -> None:
    clock = Clock()
    # Remote capacity far above the offered load, so only the local budget binds.
    backends = {"us-0": "http://us0", **{f"ap-{i}": f"http://ap{i}" for i in range(8)}}
    regions = {"us-0": US, **{f"ap-{i}": AP for i in range(8)}}
    router = make_router(clock, rate=2.0, window=1.0, backends=backends, regions=regions)
    rate = 2.0 * overload
    n = int(rate * 30)  # 30 s of steady arrivals
    spilled = 0
    start = clock.now
    for i in range(n):
        clock.now = start + i / rate
        choice = router.choose()
        assert choice is not None
        spilled += choice.spill
    assert spilled / n == pytest.approx(1 - 1 / overload, abs=0.02)


def test_unhealthy_backends_need_the_threshold_and_recover() -> None:
    clock = Clock()
    router = make_router(clock)
    assert router.record_probe("us-0", False) is False  # one failure is not enough
    assert router.record_probe("us-0", False) is True
    assert not router.backends["us-0"].healthy
    # One healthy local backend left: the region is still eligible (half, not more than half).
    assert {pick(router).backend for _ in range(4)} == {"us-1"}
    assert router.record_probe("us-0", True) is False
    assert router.record_probe("us-0", True) is True
    assert router.backends["us-0"].healthy


def test_region_without_healthy_backends_spills_everything_for_health() -> None:
    clock = Clock()
    router = make_router(clock)
    for name in ("us-0", "us-1"):
        router.record_probe(name, False)
        router.record_probe(name, False)
    choices = [router.choose() for _ in range(6)]
    assert all(c is not None and c.region == AP and c.spill for c in choices)
    assert {c.reason for c in choices if c is not None} == {"health"}
    assert router.describe()["healthy_backends"] == ["ap-0", "ap-1"]


def test_region_with_most_backends_unhealthy_fails_over() -> None:
    clock = Clock()
    backends = {name: f"http://{name}" for name in ("us-0", "us-1", "us-2", "ap-0")}
    regions = {"us-0": US, "us-1": US, "us-2": US, "ap-0": AP}
    router = make_router(clock, backends=backends, regions=regions)
    for name in ("us-0", "us-1"):
        router.record_probe(name, False)
        router.record_probe(name, False)
    choice = router.choose()
    assert choice is not None and choice.region == AP and choice.reason == "health"


def test_all_regions_full_balances_by_utilisation_and_never_rejects() -> None:
    clock = Clock()
    # Budget 1 req/s × 10 s: us 20 per window (2 backends), ap 20 per window.
    router = make_router(clock)
    choices = [router.choose() for _ in range(80)]
    assert all(c is not None for c in choices)
    by_region = {US: 0, AP: 0}
    for c in choices:
        assert c is not None
        by_region[c.region] += 1
    assert by_region == {US: 40, AP: 40}  # equal capacities → equal shares of the excess
    assert router.stats.over_capacity_total == 40
    assert {c.reason for c in choices[40:] if c is not None and c.spill} == {"overflow"}


def test_no_healthy_backend_anywhere_gives_none() -> None:
    clock = Clock()
    router = make_router(clock)
    for name in BACKENDS:
        router.record_probe(name, False)
        router.record_probe(name, False)
    assert router.choose() is None


def test_membership_validation_order_and_kept_state() -> None:
    clock = Clock()
    router = Router(max_rate_per_endpoint=1.0, window_s=10.0, clock=clock)
    with pytest.raises(ValueError, match="no region given for backend"):
        router.set_membership({"x": "http://x"}, {}, [US])
    appended = router.set_membership(BACKENDS, REGIONS, [EU, US])
    assert appended == [AP]
    assert router.region_order == [EU, US, AP]
    assert router.home_region == US  # EU has no backends: US traffic is not a spill
    router.record_probe("us-0", False)
    router.record_probe("us-0", False)
    router.set_membership(BACKENDS, REGIONS, [US, AP])
    assert not router.backends["us-0"].healthy  # same name and URL: state kept
    router.set_membership({**BACKENDS, "us-0": "http://moved"}, REGIONS, [US, AP])
    assert router.backends["us-0"].healthy  # a new URL is a new backend


def test_gateway_measures_rates_on_the_model_clock() -> None:
    # 1 req/s per replica over 10 model s = 10 requests per window; at time scale 0.1 the
    # window lasts 1 wall second. (Only lower bounds on wall time: sleeps, never deadlines.)
    gateway = Gateway(GatewayConfig(time_scale=0.1), name="gke-us", region=US)
    gateway.apply_membership(GatewayMembership.from_json({
        "self": "gke-us",
        "backends": {"us-0": "http://us0", "ap-0": "http://ap0"},
        "regions": {"us-0": US, "ap-0": AP},
        "region_order": [US, AP],
    }, "gke-us"))
    choices = [pick(gateway.router) for _ in range(11)]
    assert [c.spill for c in choices] == [False] * 10 + [True]
    regions = gateway.conf()["regions"]
    assert regions[US]["budget_rps"] == 1.0 and regions[US]["rate_rps"] <= 1.0
    time.sleep(1.1)
    assert not pick(gateway.router).spill


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"self": "someone-else"}, "is for 'someone-else'"),
        ({"backends": {"x": 1}}, "'backends' must be an object"),
        ({"backends": {"x": "http://x"}, "regions": {}}, "no region given for backend"),
        ({"region_order": "us-east-2"}, "'region_order' must be a list"),
    ],
)
def test_gateway_rejects_bad_membership(payload: dict[str, object], message: str) -> None:
    gateway = Gateway(GatewayConfig(), name="gke-us", region=US)
    with pytest.raises(MembershipError, match=message):
        gateway.apply_membership(GatewayMembership.from_json(payload, gateway.name))
    assert not gateway.has_membership


def test_cli_defaults_and_validation() -> None:
    args = build_parser().parse_args(["--name", "gke-us-east-2", "--region", US])
    config = config_from_args(args)
    assert config == GatewayConfig()
    assert config.probe_timeout_s == 5.0
    args = build_parser().parse_args(["--health-interval-s", "0.2", "--max-rate-per-endpoint", "3"])
    config = config_from_args(args)
    assert config.probe_timeout_s == 0.2 and config.max_rate_per_endpoint == 3.0
    assert config_from_args(build_parser().parse_args(["--time-scale", "0.05"])).time_scale == 0.05
    for bad in (["--max-rate-per-endpoint", "0"], ["--rate-window-s", "-1"],
                ["--unhealthy-threshold", "0"], ["--health-interval-s", "soon"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
    with pytest.raises(ValueError, match="health_path"):
        GatewayConfig(health_path="health")


def test_outlier_detection_ejects_after_consecutive_errors_and_health_checks_readmit() -> None:
    now = [0.0]
    router = Router(max_rate_per_endpoint=100.0, window_s=10.0, consecutive_errors=3,
                    base_ejection_time_s=30.0, max_ejection_percent=50.0, clock=lambda: now[0])
    router.set_membership({"a": "http://a", "b": "http://b"}, {"a": US, "b": US}, [US])
    assert not router.record_request("a", ok=False) and not router.record_request("a", ok=False)
    assert router.record_request("a", ok=True) is False  # a success resets the count
    assert [router.record_request("a", ok=False) for _ in range(3)] == [False, False, True]
    picks = {router.choose().backend for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"b"}
    health = router.describe()["backend_health"]["a"]
    assert health["healthy"] is False and health["ejected_for_s"] == 30.0 and health["ejections"] == 1
    # At most 50 % ejected: b's failures cannot eject it too.
    assert not any(router.record_request("b", ok=False) for _ in range(5))
    # Two passing health checks after the ejection put it back before the 30 s are over.
    router.record_probe("a", True)
    router.record_probe("a", True)
    now[0] = 1.0
    assert {router.choose().backend for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]
