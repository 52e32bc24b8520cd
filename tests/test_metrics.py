"""Metrics are pure functions: hand-built records against hand-computed values."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_lbbench.report.metrics import cache_hit_rate, span_seconds, summarize, tpot_values
from pytest_lbbench.stats import percentile


def record(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "start": 100.0, "end": 101.0, "ttft": 0.2, "e2e_latency": 1.0, "failed": None,
        "input_tokens": 100, "output_tokens": 11, "cached_tokens": 0, "itl": [],
    }
    base.update(kw)
    return base


RECORDS = [
    record(start=100.0, end=102.0, ttft=0.1, e2e_latency=2.0, input_tokens=100, output_tokens=11,
           cached_tokens=40, itl=[0.1, 0.2]),
    record(start=101.0, end=104.0, ttft=0.3, e2e_latency=3.0, input_tokens=200, output_tokens=21,
           cached_tokens=250, itl=[0.3]),  # cached > input: counts as input (min)
    record(start=102.0, end=103.0, ttft=0.5, e2e_latency=1.0, input_tokens=50, output_tokens=1,
           cached_tokens=None),  # no cache report: left out of the hit rate
    record(start=103.0, end=None, ttft=None, e2e_latency=None, failed="timeout",
           input_tokens=None, output_tokens=0, cached_tokens=None),
    record(start=104.0, end=None, ttft=0.4, e2e_latency=None, failed="http 503: no replica",
           input_tokens=None, output_tokens=0),
]


def test_counts_and_failure_rate() -> None:
    s = summarize(RECORDS)
    assert (s["requests"], s["succeeded"], s["failed"]) == (5, 3, 2)
    assert s["failure_rate"] == pytest.approx(0.4)


def test_span_uses_successful_requests_only() -> None:
    # first start 100.0, last end 104.0 (the failures have no end)
    assert span_seconds(RECORDS) == pytest.approx(4.0)


def test_throughput_definitions() -> None:
    s = summarize(RECORDS)
    tokens_in = 100 + 200 + 50
    tokens_out = 11 + 21 + 1
    assert s["throughput_tpt_per_s"] == pytest.approx((tokens_in + 2 * tokens_out) / 4.0)
    assert s["output_tokens_per_s"] == pytest.approx(tokens_out / 4.0)
    assert s["requests_per_s"] == pytest.approx(3 / 4.0)


def test_cache_hit_rate_caps_cached_at_input_and_skips_missing_reports() -> None:
    assert cache_hit_rate(RECORDS) == pytest.approx((40 + 200) / (100 + 200))


def test_latency_percentiles_over_successes() -> None:
    s = summarize(RECORDS)
    assert s["ttft_p50_s"] == pytest.approx(0.3)
    assert s["ttft_mean_s"] == pytest.approx(0.3)
    assert s["e2e_p50_s"] == pytest.approx(2.0)
    # numpy-style linear interpolation: p90 of [1, 2, 3] = 2.8
    assert s["e2e_p90_s"] == pytest.approx(2.8)
    assert s["e2e_p99_s"] == pytest.approx(2.98)


def test_tpot_and_itl() -> None:
    # (2.0-0.1)/10 and (3.0-0.3)/20; the 1-token request has no TPOT
    assert tpot_values(RECORDS) == pytest.approx([0.19, 0.135])
    s = summarize(RECORDS)
    assert s["itl_p50_s"] == pytest.approx(0.2)
    assert s["itl_mean_s"] == pytest.approx(0.2)


def test_empty_and_all_failed() -> None:
    empty = summarize([])
    assert empty["requests"] == 0 and empty["failure_rate"] is None
    assert empty["ttft_p50_s"] is None and empty["throughput_tpt_per_s"] is None
    failed = summarize(RECORDS[3:])
    assert failed["failure_rate"] == 1.0
    assert failed["cache_hit_rate"] is None and failed["span_s"] is None


def test_percentile_matches_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    values = [0.5, 3.0, 1.25, 9.0, 2.0, 7.5, 4.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_served_remote_share_counts_known_replicas_of_successes() -> None:
    regions = {"r-us": "us-east-2", "r-ap": "ap-northeast-1"}
    records = [
        record(client_region="us-east-2", replica="r-us"),
        record(client_region="us-east-2", replica="r-ap"),
        record(client_region="us-east-2", replica="r-ap"),
        record(client_region="us-east-2", replica="unknown"),  # not in the map: left out
        record(client_region="us-east-2", replica="r-ap", failed="timeout", e2e_latency=None),
    ]
    assert summarize(records, regions)["served_remote_share"] == pytest.approx(2 / 3)
    assert summarize(records)["served_remote_share"] is None


def test_confidence_intervals_and_welch() -> None:
    from pytest_lbbench.stats import mean_ci95, t_critical_95, welch_differs

    m, half = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and half == pytest.approx(4.303 / 3 ** 0.5)  # t(0.975, 2) · s / √n, s = 1
    assert mean_ci95([5.0]) == (5.0, None) and mean_ci95([]) == (None, None)
    assert t_critical_95(35) == 2.042 and t_critical_95(1000) == 1.980
    assert welch_differs(10.0, 1.0, 5, 20.0, 1.0, 5)
    assert not welch_differs(10.0, 5.0, 3, 11.0, 5.0, 3)
