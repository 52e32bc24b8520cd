"""Regression gates against a saved run: parsing, direction, messages."""

from __future__ import annotations

import pytest

from pytest_lbbench.gate import Threshold, check, parse_threshold


def test_parse_threshold() -> None:
    assert parse_threshold("ttft_p90_s:10%") == Threshold("ttft_p90_s", 10.0)
    assert parse_threshold("throughput_tpt_per_s:5") == Threshold("throughput_tpt_per_s", 5.0)
    assert parse_threshold("throughput_tpt_per_s:5").higher_is_better
    assert not parse_threshold("e2e_p99_s:2.5%").higher_is_better
    for bad in ("ttft_p90_s", "ttft_p90_s:-5%", "colour:5%", "ttft_p90_s:ten%"):
        with pytest.raises(ValueError, match="expected METRIC:PCT%"):
            parse_threshold(bad)


def test_latency_may_not_grow_past_the_threshold() -> None:
    t = [parse_threshold("ttft_p90_s:10%")]
    assert check("s-w", {"ttft_p90_s": 0.109}, {"ttft_p90_s": 0.100}, t, "0001_base") == []
    (msg,) = check("s-w", {"ttft_p90_s": 0.120}, {"ttft_p90_s": 0.100}, t, "0001_base")
    assert msg == ("s-w: ttft_p90_s grew from 0.1 (baseline 0001_base) to 0.12 (+20.0%), "
                   "more than the allowed 10%")
    # Getting better is never a breach.
    assert check("s-w", {"ttft_p90_s": 0.01}, {"ttft_p90_s": 0.100}, t, "b") == []


def test_throughput_may_not_drop_past_the_threshold() -> None:
    t = [parse_threshold("throughput_tpt_per_s:5%")]
    assert check("s-w", {"throughput_tpt_per_s": 960.0}, {"throughput_tpt_per_s": 1000.0}, t, "b") == []
    (msg,) = check("s-w", {"throughput_tpt_per_s": 900.0}, {"throughput_tpt_per_s": 1000.0}, t, "b")
    assert "throughput_tpt_per_s dropped from 1000" in msg and "(-10.0%)" in msg


def test_missing_values_and_zero_baselines() -> None:
    t = [parse_threshold("failure_rate:0%")]
    assert check("s-w", {"failure_rate": None}, {"failure_rate": 0.0}, t, "b") == []
    assert check("s-w", {"failure_rate": 0.0}, {"failure_rate": 0.0}, t, "b") == []
    assert check("s-w", {"failure_rate": 0.01}, {"failure_rate": 0.0}, t, "b")
