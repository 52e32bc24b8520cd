"""Can one client process drive 300 concurrent users on this machine without distorting TTFT?

Run with ``pytest benchmarks --lbbench-selfcheck -k client_capacity`` (it loads both cores, so
it is deselected unless asked for).

Side by side in one run: the client module against one simulated replica (big enough to run
every stream at once, so the load is 300 live streams, not a queue), first with 30 users, then
with 300. For each it reports the client's event-loop lag p99 and the gap between the TTFT
the client measured and the replica's own first-token time (``first_token − arrival`` from the
replica's clock): that gap is everything the client, the loopback and the replica's request
parsing add (bursts of requests queue in both Python event loops). The ratio of the two
runs shows what 10× the users costs. A benchmark, not a timed test: it asserts only that every
request was recorded and that the replica reported its timings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.collect import NOTE_KEY
from pytest_lbbench.procutil import launch, python_module_argv, spawn
from pytest_lbbench.stats import percentile

DURATION_S = 20
MAX_TOKENS = 256
# One replica that admits every stream at once: the L4 profile with room for 300 sequences.
WIDE_PROFILE = {"base": "l4-llama3.1-8b", "kv_capacity_tokens": 1_000_000, "max_running_requests": 1024}


def _run_client(tmp: Path, url: str, users: int) -> dict[str, Any]:
    out = tmp / f"client-{users}.json"
    argv = python_module_argv(
        "pytest_lbbench.client", "--backend-url", url, "--workload", "arena_syn",
        "--region", "us-east-2", "--num-users", str(users), "--duration", str(DURATION_S),
        "--max-tokens", str(MAX_TOKENS), "--output-file", str(out),
    )
    proc = launch(f"client-{users}", argv, log_path=tmp / f"client-{users}.log", wait_ready_line=False)
    try:
        proc.popen.wait(timeout=DURATION_S + 150)
    finally:
        proc.stop()
    assert proc.popen.returncode == 0, proc.log_tail()
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _gaps_ms(records: list[dict[str, Any]]) -> list[float]:
    gaps = []
    for r in records:
        timing = r.get("replica_timing") or {}
        if r.get("ttft") is not None and timing.get("first_token") and timing.get("arrival"):
            gaps.append((r["ttft"] - (timing["first_token"] - timing["arrival"])) * 1e3)
    return gaps


@pytest.mark.lbbench_selfcheck
def test_client_capacity_300_users(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    profile = tmp_path / "wide.json"
    profile.write_text(json.dumps(WIDE_PROFILE))
    replica = spawn(
        "replica-wide",
        python_module_argv("pytest_lbbench.sim", "--port", "0", "--name", "replica-wide",
                           "--profile", str(profile)),
        log_path=tmp_path / "replica.log",
    )
    try:
        url = f"http://127.0.0.1:{replica.info['port']}"
        results = {users: _run_client(tmp_path, url, users) for users in (30, 300)}
    finally:
        replica.stop()

    lines = [f"{'users':>6}  {'requests':>8}  {'chunks/s':>8}  {'loop lag p99 ms':>15}  "
             f"{'TTFT gap p50 ms':>15}  {'TTFT gap p99 ms':>15}  client-bound"]
    summary: dict[int, dict[str, float]] = {}
    for users, data in results.items():
        records = data["metrics"]
        assert len(records) == data["sent"] > 0
        gaps = _gaps_ms([r for r in records if not r["failed"]])
        assert gaps, "the replica reported no timings"
        chunks = sum(r["output_tokens"] for r in records)
        span = max(r["end"] for r in records if r["end"]) - min(r["start"] for r in records)
        lag = data["client"]["loop_lag"]
        summary[users] = {"lag": lag["lag_p99_ms"], "p50": percentile(gaps, 50) or 0.0,
                          "p99": percentile(gaps, 99) or 0.0}
        lines.append(
            f"{users:>6}  {len(records):>8}  {chunks / span:>8.0f}  {lag['lag_p99_ms']:>15.1f}  "
            f"{summary[users]['p50']:>15.1f}  {summary[users]['p99']:>15.1f}  {lag['client_bound']}"
        )
    ratio = summary[300]["p99"] / max(summary[30]["p99"], 1e-3)
    lines.append(f"TTFT gap p99 at 300 users / at 30 users: {ratio:.2f}x "
                 f"(gap = client TTFT - replica first-token time; threshold for client-bound: "
                 f"loop lag p99 > {results[300]['client']['loop_lag']['threshold_ms']:.0f} ms)")
    request.node.user_properties.append((NOTE_KEY, ("lbbench client capacity", lines)))
