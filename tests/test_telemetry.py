"""The 1 Hz poller against real components, and the Prometheus parser."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pytest_lbbench.procutil import launch, python_module_argv, spawn
from pytest_lbbench.prometheus import parse_samples


def test_parse_samples_takes_the_first_sample_of_each_family() -> None:
    text = """# HELP sglang:num_queue_reqs waiting
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 3
sglang:num_queue_reqs{model_name="other"} 9
sglang:token_usage 0.25
sglang:cache_hit_rate{a="1",b="x}y"} 0.5
broken_line
bad_value{} abc
"""
    assert parse_samples(text) == {
        "sglang:num_queue_reqs": 3.0, "sglang:token_usage": 0.25, "sglang:cache_hit_rate": 0.5,
    }


def test_poller_writes_one_line_per_second_with_every_target(tmp_path: Path) -> None:
    replica = spawn("r0", python_module_argv("pytest_lbbench.sim", "--port", "0", "--name", "r0"),
                    log_path=tmp_path / "r0.log")
    lb = spawn("lb", python_module_argv("pytest_lbbench.lb", "--port", "0", "--name", "lb-x",
                                        "--region", "us-east-2", "--lb-mode", "global"),
               log_path=tmp_path / "lb.log")
    out = tmp_path / "queue_size" / "exp_sys.txt"
    replica_url = f"http://127.0.0.1:{replica.info['port']}"
    lb_url = f"http://127.0.0.1:{lb.info['port']}"
    targets = [
        {"name": "lb-x", "url": lb_url, "kind": "sky_lb"},
        {"name": "r0", "url": replica_url, "kind": "replica"},
        {"name": "gone", "url": "http://127.0.0.1:9", "kind": "replica"},  # nothing listens
    ]
    poller = launch("telemetry", python_module_argv(
        "pytest_lbbench.telemetry", "--targets-json", json.dumps(targets), "--output", str(out),
    ), log_path=tmp_path / "telemetry.log")
    try:
        poller.wait_ready(30)
        time.sleep(3.5)
    finally:
        poller.stop()
        lb.stop()
        replica.stop()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert 3 <= len(lines) <= 5
    gaps = [b["time"] - a["time"] for a, b in zip(lines, lines[1:])]
    assert all(0.8 < g < 1.5 for g in gaps)
    first = lines[0]
    assert first[lb_url]["kind"] == "sky_lb" and first[lb_url]["raw_queue_size"] == first[lb_url]["queue_size"]
    assert {"num_queue_reqs", "num_running_reqs", "token_usage", "cache_hit_rate"} <= set(first[replica_url])
    assert "error" in first["http://127.0.0.1:9"]  # a dead target is recorded, not fatal


def test_bad_targets_exit_2(tmp_path: Path) -> None:
    proc = launch("telemetry", python_module_argv(
        "pytest_lbbench.telemetry", "--targets-json", '[{"name": "x", "url": "u", "kind": "toaster"}]',
        "--output", str(tmp_path / "o.txt"),
    ), log_path=tmp_path / "t.log", wait_ready_line=False)
    assert proc.popen.wait(timeout=30) == 2
    assert "unknown kind 'toaster'" in proc.log_tail()
