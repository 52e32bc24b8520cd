"""The terminal summary: one table per workload, best value per column marked."""

from __future__ import annotations

from typing import Any

from pytest_lbbench.report.table import summary_lines


def exp(system: str, workload: str, ttft: float, tpt: float, fail: float) -> dict[str, Any]:
    overall = {"ttft_p50_s": ttft, "throughput_tpt_per_s": tpt, "failure_rate": fail, "requests": 10}
    return {"system": system, "workload": workload, "overall": overall,
            "regions": {"us-east-2": overall}, "client_bound": system == "slow",
            "host_bound": system == "b"}


def test_one_table_per_workload_with_best_marked() -> None:
    lines = summary_lines([
        exp("a", "arena_syn", 0.100, 1000.0, 0.0),
        exp("b", "arena_syn", 0.200, 2000.0, 0.0),
        exp("slow", "tot", 0.300, 10.0, 0.5),
    ])
    text = "\n".join(lines)
    assert lines[0].startswith("workload arena_syn")
    assert "workload tot" in text
    row_a = next(line for line in lines if line.startswith("a "))
    row_b = next(line for line in lines if line.startswith("b "))
    assert "100*" in row_a and "2,000*" in row_b          # lower TTFT, higher throughput
    assert "1,000*" not in row_a and "200*" not in row_b
    assert "0.0%*" not in row_a and "0.0%*" not in row_b  # all equal: nothing to mark
    # A workload with one system marks nothing, and a client-bound run says so.
    slow = next(line for line in lines if line.startswith("slow"))
    assert "*" not in slow and "(client-bound!)" in slow
    assert "(host-bound!)" in row_b and "(host-bound!)" not in row_a
