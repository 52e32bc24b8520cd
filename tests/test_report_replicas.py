"""Each replica's share of requests and the outstanding-request spread: pure functions, then a
hand-made result directory through the summary files, the terminal table and index.html."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.report.build import build_report
from pytest_lbbench.report.queuelog import QueueLog
from pytest_lbbench.report.replicas import (
    format_shares,
    format_spread,
    mean_outstanding,
    replica_counts,
    replica_shares,
    spread,
    telemetry_spread,
)
from pytest_lbbench.report.resultdir import experiment_dict, load_result_dir
from pytest_lbbench.report.store import load_summary
from pytest_lbbench.report.table import summary_lines

R0, R1, R2 = "replica-0-us-east-2", "replica-1-ap-northeast-1", "replica-2-eu-central-1"


def rec(start: float, replica: str | None, region: str = "us-east-2", failed: str | None = None,
        warmup: bool = False) -> dict[str, Any]:
    return {
        "uid": region, "hash_key": "h", "program_id": "p", "client_region": region,
        "start": start, "response_start": start, "streaming_start": start + 0.1,
        "end": None if failed else start + 1.0, "ttft": None if failed else 0.1,
        "e2e_latency": None if failed else 1.0, "failed": failed, "input_tokens": 10,
        "output_tokens": 2, "cached_tokens": 0, "headers": {}, "itl": [], "replica": replica,
        "lbs": [], "warmup": warmup,
    }


def test_shares_count_measured_requests_with_a_known_replica() -> None:
    records = [rec(0, R0), rec(1, R0), rec(2, R1), rec(3, R0, failed="http 500"),
               rec(4, None, failed="timeout"), rec(5, R1, warmup=True)]
    # The warm-up request and the one that never reached a replica are left out; the failed
    # request that reached R0 was load on it and counts.
    assert replica_counts(records) == {R0: 3, R1: 1}
    assert replica_shares(records) == {R0: 0.75, R1: 0.25}
    assert replica_shares([rec(0, None)]) == {}
    assert format_shares({R1: 0.25, R0: 0.75}) == "0-us-east-2 75% 1-ap-northeast-1 25%"
    assert format_shares({}) == "-"


def test_spread_of_mean_running_plus_queued() -> None:
    log = QueueLog(
        replica_running={R0: [(0.0, 2.0), (1.0, 3.0)], R1: [(0.0, 1.0), (1.0, 1.0)]},
        replica_queue={R0: [(0.0, 0.0), (1.0, 1.0)], R1: [(1.0, 1.0)]},  # R1's t=0 gauge missing
    )
    means = mean_outstanding(log)
    assert means == {R0: pytest.approx(3.0), R1: pytest.approx(1.5)}
    assert spread(means) == pytest.approx(2.0)
    assert spread({R0: 1.0}) is None  # one replica: no spread
    assert spread({R0: 0.0, R1: 0.0}) is None  # nothing outstanding anywhere
    assert spread({R0: 2.0, R1: 0.0}) == math.inf
    assert (format_spread(2.0), format_spread(math.inf), format_spread(None)) == ("2.00x", "inf", "-")
    assert telemetry_spread(None) == ({}, None)


def build_dir(root: Path) -> Path:
    """sky_walker: us-east-2 clients served 2 × R0, 1 × R1; ap-northeast-1 clients 1 × R1,
    1 × R2. Telemetry: R0 means (4 + 2)/2 = 3, R1 (1 + 2)/2 = 1.5, R2 (1 + 1)/2 = 1 → spread 3."""
    deployment = {"backend": "local", "system": {"name": "sky_walker", "label": "SkyWalker"},
                  "replicas": [{"name": R0, "region": "us-east-2"},
                               {"name": R1, "region": "ap-northeast-1"},
                               {"name": R2, "region": "eu-central-1"}]}
    by_region = {
        "us-east-2": [rec(0, R0), rec(1, R0), rec(2, R1)],
        "ap-northeast-1": [rec(0, R1, "ap-northeast-1"), rec(1, R2, "ap-northeast-1")],
    }
    for region, records in by_region.items():
        path = root / "metric" / "arena_syn_sky_walker" / f"{region}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "workload": "arena_syn", "latency": 3.0, "metrics": records, "backend_url": "http://lb",
            "workload_args": {"workload": "arena_syn", "region": region, "num_users": 2},
            "schema_version": 1, "region": region, "sent": len(records), "recorded": len(records),
            "client": {"client_bound": False}, "deployment": deployment,
        }))
    ticks = [{R0: (4, 0), R1: (1, 0), R2: (1, 0)}, {R0: (1, 1), R1: (1, 1), R2: (1, 0)}]
    lines = [json.dumps({"time": 10.0 + i, **{f"http://{n}": {
        "num_running_reqs": run, "num_queue_reqs": q, "name": n, "kind": "replica"}
        for n, (run, q) in tick.items()}}) for i, tick in enumerate(ticks)]
    (root / "queue_size").mkdir(parents=True)
    (root / "queue_size" / "arena_syn_sky_walker.txt").write_text("\n".join(lines) + "\n")
    return root


def test_summary_table_and_page_report_shares_and_spread(tmp_path: Path) -> None:
    root = build_dir(tmp_path / "run")
    experiments = [experiment_dict(r, root) for r in load_result_dir(root)]
    build_report(root, experiments, {})
    summary = load_summary(root / "summary.json")
    rows = {r["client_region"]: r for r in summary["records"]}
    assert rows["all"]["replica_share"] == f"{R0}=0.400;{R1}=0.400;{R2}=0.200"
    assert rows["all"]["replica_spread"] == pytest.approx(3.0)
    assert rows["us-east-2"]["replica_share"] == f"{R0}=0.667;{R1}=0.333"
    assert rows["ap-northeast-1"]["replica_share"] == f"{R1}=0.500;{R2}=0.500"
    assert rows["us-east-2"]["replica_spread"] is None  # telemetry is per experiment, not per region
    replicas = summary["experiments"][0]["replicas"]
    assert replicas["requests"] == {R0: 2, R1: 2, R2: 1}
    assert replicas["share"] == {R0: 0.4, R1: 0.4, R2: 0.2}
    assert replicas["mean_outstanding"] == {R0: 3.0, R1: 1.5, R2: 1.0}
    assert replicas["spread"] == pytest.approx(3.0)
    with (root / "summary.csv").open(newline="") as fh:
        first = next(csv.DictReader(fh))
    assert first["replica_share"] == f"{R0}=0.400;{R1}=0.400;{R2}=0.200"
    assert float(first["replica_spread"]) == pytest.approx(3.0)

    # The end-of-run table: the collected experiments (properties) carry the shares.
    lines = summary_lines(experiments)
    assert any(line.startswith("replica share of requests") for line in lines)
    walker = next(line for line in lines if "us-east-2 " in line and line.startswith("  sky_walker"))
    assert "0-us-east-2 40% 1-ap-northeast-1 40% 2-eu-central-1 20%" in walker
    assert walker.rstrip().endswith("3.00x")

    page = (root / "index.html").read_text()
    assert "replica share of requests" in page and "0-us-east-2 40%" in page and "3.00x" in page
