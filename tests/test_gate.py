"""Regression gates against a saved run: parsing, direction, messages."""

from __future__ import annotations

import pytest

from pytest_lbbench.gate import Threshold, check, compare, parse_threshold


def test_parse_threshold() -> None:
    assert parse_threshold("ttft_p90_s:10%") == Threshold("ttft_p90_s", 10.0)
    assert parse_threshold("throughput_tpt_per_s:5") == Threshold("throughput_tpt_per_s", 5.0)
    assert parse_threshold("throughput_tpt_per_s:5").higher_is_better
    assert not parse_threshold("e2e_p99_s:2.5%").higher_is_better
    for bad in ("ttft_p90_s", "ttft_p90_s:-5%", "ttft_p90_s:ten%"):
        with pytest.raises(ValueError, match="expected METRIC:PCT%"):
            parse_threshold(bad)
    assert parse_threshold("goodput_requests_per_s:5%").higher_is_better
    assert parse_threshold("capacity:10%").higher_is_better


def test_a_misspelt_or_directionless_metric_is_refused_with_the_valid_names() -> None:
    # ttft_p90 (no _s) used to pass a prefix check and then never fire.
    with pytest.raises(ValueError, match="unknown metric 'ttft_p90'. Did you mean ttft_p90_s") as exc:
        parse_threshold("ttft_p90:10%")
    assert "Valid metrics: " in str(exc.value) and "goodput_requests_per_s" in str(exc.value)
    for bad in ("colour:5%", "requests:5%", "served_remote_share:5%"):
        with pytest.raises(ValueError, match="unknown metric"):
            parse_threshold(bad)


def test_goodput_may_not_drop_past_the_threshold() -> None:
    t = [parse_threshold("goodput_requests_per_s:20%")]
    assert check("s-w", {"goodput_requests_per_s": 0.9}, {"goodput_requests_per_s": 1.0}, t, "b") == []
    (msg,) = check("s-w", {"goodput_requests_per_s": 0.5}, {"goodput_requests_per_s": 1.0}, t, "b")
    assert "goodput_requests_per_s dropped from 1" in msg and "(-50.0%)" in msg


def test_with_repetitions_on_both_sides_only_a_change_past_the_noise_fails() -> None:
    t = [parse_threshold("throughput_tpt_per_s:5%")]
    noisy = {"n": 3, "sd": {"throughput_tpt_per_s": 150.0}}
    quiet = {"n": 3, "sd": {"throughput_tpt_per_s": 5.0}}
    base = {"throughput_tpt_per_s": 1000.0, "repeats": noisy}
    # 10 % down, but the runs scatter by 15 %: within the noise, no failure.
    rows = compare("s-w", {"throughput_tpt_per_s": 900.0, "repeats": noisy}, base, t)
    assert rows[0].worse_pct == pytest.approx(10.0) and rows[0].beyond_noise is False
    assert not rows[0].breached
    # The same drop with quiet runs on both sides is real.
    quiet_base = {"throughput_tpt_per_s": 1000.0, "repeats": quiet}
    assert check("s-w", {"throughput_tpt_per_s": 900.0, "repeats": quiet}, quiet_base, t, "b")
    # Repetitions on one side only: the threshold alone decides.
    assert compare("s-w", {"throughput_tpt_per_s": 900.0}, base, t)[0].breached


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
