"""The report layer: hand-built result directories (ours and the original tooling's) →
``python -m pytest_lbbench.report`` → summary.csv/json with hand-computed values, every
figure, index.html; plus the goodput/SLO pure function and the schema-version guard."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.report import plots, queuelog
from pytest_lbbench.report.__main__ import main
from pytest_lbbench.report.build import build_report
from pytest_lbbench.report.metrics import goodput, meets_slo, validate_slo
from pytest_lbbench.report.results import ExperimentResult
from pytest_lbbench.report.resultdir import client_region_from_stem, system_from_exp_name
from pytest_lbbench.report.store import (
    SummarySchemaError,
    git_commit,
    load_summary,
    write_summary,
)

SLO = {"ttft_s": 1.0, "e2e_s": 30.0, "tpot_s": 0.1}


def group_figures(group: str) -> set[str]:
    return {f"{group}_{suffix}.png" for suffix in plots.GROUP_FIGURES}


# ----------------------------------------------------------------------------- builders


def ours(start: float, ttft: float | None, e2e: float | None, inp: int | None, out: int,
         cached: int | None, region: str, replica: str | None = None,
         failed: str | None = None) -> dict[str, Any]:
    """A record as our client writes it."""
    return {
        "uid": region, "hash_key": "h", "program_id": "p", "client_region": region,
        "start": start, "response_start": start, "streaming_start": start,
        "end": None if e2e is None else start + e2e, "ttft": ttft, "e2e_latency": e2e,
        "failed": failed, "input_tokens": inp, "output_tokens": out, "cached_tokens": cached,
        "headers": {}, "itl": [], "replica": replica, "lbs": [],
    }


def original(start: float, ttft: float | None, e2e: float | None, inp: int | None, out: int,
             cached: int | None, failed: str | None = None) -> dict[str, Any]:
    """A record with only the original ``sky.lbbench`` Metric fields."""
    return {
        "uid": "seed", "start": start, "response_start": start, "streaming_start": start,
        "end": None if e2e is None else start + e2e, "ttft": ttft, "e2e_latency": e2e,
        "failed": failed, "input_tokens": inp, "output_tokens": out, "cached_tokens": cached,
        "headers": {}, "hash_key": None, "program_id": None,
    }


DEPLOYMENT = {
    "backend": "local",
    "system": {"name": "sky_push_push", "label": "Ours [Push+Push]"},
    "replicas": [{"name": "replica-0-us-east-2", "region": "us-east-2"},
                 {"name": "replica-1-ap-northeast-1", "region": "ap-northeast-1"}],
    "versions": {"pytest_lbbench": "0.1.0"},
}


def our_payload(region: str, records: list[dict[str, Any]], num_users: int,
                deployment: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "workload": "arena_syn", "latency": 5.0, "metrics": records, "backend_url": "http://lb",
        "workload_args": {"workload": "arena_syn", "region": region, "num_users": num_users,
                          "seed": 0, "duration": 5.0},
        "schema_version": 1, "region": region, "sent": len(records), "recorded": len(records),
        "client": {"loop_lag": {"lag_p99_ms": 1.5, "client_bound": False}, "client_bound": False},
        "deployment": deployment or DEPLOYMENT,
    }


def write(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


# sky_push_push, hand-computed below:
#   us-east-2: r1 start 100 ttft .2 e2e 1 (in 100, out 11, cached 50, local replica)
#              r2 start 101 ttft .4 e2e 2 (in 200, out 21, cached 100, remote replica)
#   ap-northeast-1: r3 start 100.5 ttft 1.5 e2e 3 (in 100, out 11, cached 0, local) — misses TTFT SLO
#                   r4 start 102, failed "timeout"
PUSH_US = [
    ours(100.0, 0.2, 1.0, 100, 11, 50, "us-east-2", "replica-0-us-east-2"),
    ours(101.0, 0.4, 2.0, 200, 21, 100, "us-east-2", "replica-1-ap-northeast-1"),
]
PUSH_AP = [
    ours(100.5, 1.5, 3.0, 100, 11, 0, "ap-northeast-1", "replica-1-ap-northeast-1"),
    ours(102.0, None, None, None, 0, None, "ap-northeast-1", failed="timeout"),
]
SGL_US = [
    ours(200.0, 0.1, 0.5, 10, 5, 0, "us-east-2"),
    ours(200.5, 0.3, 1.5, 30, 5, 30, "us-east-2"),
]


def build_our_dir(root: Path) -> Path:
    write(root / "metric/arena_syn_sky_push_push/us-east-2.json", our_payload("us-east-2", PUSH_US, 4))
    write(root / "metric/arena_syn_sky_push_push/ap-northeast-1.json",
          our_payload("ap-northeast-1", PUSH_AP, 8))  # region_to_args gave Asia 8 users
    sgl = {**DEPLOYMENT, "system": {"name": "sgl", "label": "Baseline"},
           "versions": {"pytest_lbbench": "0.1.0", "sglang_router": "0.3.2"}}
    write(root / "metric/arena_syn_sgl/us-east-2.json", our_payload("us-east-2", SGL_US, 4, sgl))
    lines = [
        {"time": 1000.0,
         "http://lb1": {"queue_size": 0, "raw_queue_size": 0, "name": "lb-us-east-2", "kind": "sky_lb"},
         "http://r0": {"num_queue_reqs": 0.0, "num_running_reqs": 1.0, "name": "replica-0-us-east-2",
                       "kind": "replica"}},
        {"time": 1001.0,
         "http://lb1": {"queue_size": 3, "raw_queue_size": 3, "name": "lb-us-east-2", "kind": "sky_lb"},
         "http://r0": {"error": "TimeoutError: ", "name": "replica-0-us-east-2", "kind": "replica"}},
    ]
    qdir = root / "queue_size"
    qdir.mkdir(parents=True, exist_ok=True)
    (qdir / "arena_syn_sky_push_push.txt").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"time": 1002.0, "http://lb1": {"queu')
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "pytest_lbbench.report", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def rows_by_key(summary: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["system"], r["client_region"]): r for r in summary["records"]}


# ----------------------------------------------------------------------------- goodput


def test_goodput_against_hand_computed_values() -> None:
    records = PUSH_US + PUSH_AP
    # r1, r2 meet everything (TPOT 0.8/10 and 1.6/20 = 0.08 s); r3 misses TTFT; r4 failed.
    # Span: first start 100.0, last end 103.5 (r3) → 3.5 s.
    g = goodput(records, SLO)
    assert g["slo_met_requests"] == 2
    assert g["slo_attainment"] == pytest.approx(2 / 4)
    assert g["goodput_requests_per_s"] == pytest.approx(2 / 3.5)
    # Tighter E2E: only r1 (1.0 s) stays within 1.5 s.
    assert goodput(records, {"e2e_s": 1.5})["goodput_requests_per_s"] == pytest.approx(1 / 3.5)
    # TPOT 0.07 s: r1 and r2 (0.08 s) miss; r3 (0.15 s) misses anyway.
    assert goodput(records, {"tpot_s": 0.07})["slo_met_requests"] == 0
    assert goodput([], SLO) == {"slo_met_requests": 0, "slo_attainment": None,
                                "goodput_requests_per_s": None}


def test_meets_slo_edges() -> None:
    one_token = ours(0.0, 0.5, 5.0, 10, 1, 0, "r")
    assert meets_slo(one_token, {"tpot_s": 0.01})  # no decode phase: TPOT does not apply
    assert meets_slo(ours(0.0, 1.0, 2.0, 10, 2, 0, "r"), {"ttft_s": 1.0, "e2e_s": 2.0})  # inclusive
    assert not meets_slo(ours(0.0, None, 2.0, 10, 2, 0, "r"), {"ttft_s": 1.0})  # unknown TTFT
    assert not meets_slo(ours(0.0, 0.1, 0.2, 10, 2, 0, "r", failed="http 500"), {})
    with pytest.raises(ValueError, match="unknown SLO threshold 'p99'"):
        validate_slo({"p99": 1.0})
    with pytest.raises(ValueError, match="positive"):
        validate_slo({"ttft_s": 0})


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(("exp", "system"), [
    ("arena_syn_sky_push_push", "sky_push_push"),
    ("arena_syn_sky_sgl_enhanced", "sky_sgl_enhanced"),
    ("arena_syn_sgl", "sgl"),
    ("wildchat_gke_gateway", "gke_gateway"),
    ("tot_sky_pull_pull_rate_limit", "sky_pull_pull_rate_limit"),
    ("mystery", "mystery"),
])
def test_system_from_exp_name(exp: str, system: str) -> None:
    assert system_from_exp_name(exp) == system


def test_longest_system_id_wins() -> None:
    assert system_from_exp_name("x_sky_push_push", ["push_push", "sky_push_push"]) == "sky_push_push"
    assert client_region_from_stem("llmc-us-east-2") == "us-east-2"
    assert client_region_from_stem("ap-northeast-1") == "ap-northeast-1"


# ----------------------------------------------------------------------------- CLI, our layout


def test_cli_on_our_layout_writes_summary_figures_and_index(tmp_path: Path) -> None:
    root = build_our_dir(tmp_path / "run")
    proc = run_cli(str(root), "--slo", "ttft_s=1,e2e_s=30,tpot_s=0.1")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr

    text = (root / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = load_summary(root / "summary.json")
    assert summary["schema_version"] == 1 and summary["pytest_lbbench"]
    assert summary["versions"] == {"pytest_lbbench": "0.1.0", "sglang_router": "0.3.2"}
    assert summary["slo"] == SLO and summary["run_id"]
    rows = rows_by_key(summary)
    assert list(rows) == [  # catalog order: Baseline first; overall before its regions
        ("sgl", "all"), ("sgl", "us-east-2"),
        ("sky_push_push", "all"), ("sky_push_push", "ap-northeast-1"), ("sky_push_push", "us-east-2"),
    ]
    push = rows[("sky_push_push", "all")]
    assert (push["label"], push["workload"], push["exp_name"]) == (
        "Ours [Push+Push]", "arena_syn", "arena_syn_sky_push_push")
    assert (push["requests"], push["requests_succeeded"], push["requests_failed"]) == (4, 3, 1)
    assert push["failure_rate"] == pytest.approx(0.25)
    assert push["span_s"] == pytest.approx(3.5)
    assert push["throughput_tpt_per_s"] == pytest.approx((400 + 2 * 43) / 3.5)
    assert push["output_tokens_per_s"] == pytest.approx(43 / 3.5)
    assert push["requests_per_s"] == pytest.approx(3 / 3.5)
    assert push["cache_hit_rate"] == pytest.approx(150 / 400)
    assert push["served_remote_share"] == pytest.approx(1 / 3)  # r2 crossed to Asia
    assert push["ttft_p50_s"] == pytest.approx(0.4)
    assert push["goodput_requests_per_s"] == pytest.approx(2 / 3.5)
    assert push["slo_attainment"] == pytest.approx(0.5)
    assert (push["seed"], push["duration"]) == (0, 5.0)
    assert push["num_users"] == "ap-northeast-1=8;us-east-2=4"  # differs per region: both kept
    assert push["client_bound"] is False and push["client_lag_p99_ms"] == pytest.approx(1.5)
    assert push["host_bound"] is False and push["host_lag_ms"] is None  # no host_lag in the files
    assert push["schema_version"] == 1 and push["slo_ttft_s"] == 1.0
    us = rows[("sky_push_push", "us-east-2")]
    assert us["num_users"] == 4 and us["requests"] == 2
    assert us["goodput_requests_per_s"] == pytest.approx(2 / 3.0)  # span 100 → 103
    assert us["slo_attainment"] == pytest.approx(1.0)
    ap = rows[("sky_push_push", "ap-northeast-1")]
    assert ap["goodput_requests_per_s"] == pytest.approx(0.0) and ap["slo_attainment"] == 0.0
    sgl = rows[("sgl", "all")]
    assert sgl["label"] == "Baseline" and sgl["cache_hit_rate"] == pytest.approx(30 / 40)
    assert sgl["served_remote_share"] is None  # no record names its replica: unknown, not 0

    # The CSV holds the same rows and columns; missing values are empty cells.
    with (root / "summary.csv").open(newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [(r["system"], r["client_region"]) for r in csv_rows] == list(rows)
    assert list(csv_rows[0]) == summary["columns"]
    assert csv_rows[0]["served_remote_share"] == "" and csv_rows[0]["schema_version"] == "1"
    assert load_summary(root / "summary.csv")["records"][2]["ttft_p50_s"] == pytest.approx(0.4)

    expected = group_figures("arena_syn") | {"queue_arena_syn_sky_push_push.png"}
    assert {p.name for p in (root / "fig").iterdir()} == expected
    html = (root / "index.html").read_text()
    for name in expected:
        assert f'src="fig/{name}"' in html
    assert "Ours [Push+Push]" in html and 'class="num best"' in html
    assert "file://" not in html and "http" not in html.split("<body>")[1].split("summary.csv")[0]

    # Redraw from the stored files alone: the same file names come back.
    for png in (root / "fig").iterdir():
        png.unlink()
    (root / "fig").rmdir()
    again = run_cli(str(root))
    assert again.returncode == 0, again.stderr
    assert {p.name for p in (root / "fig").iterdir()} == expected
    # Without --slo the redraw keeps the previous summary's SLO and run id.
    redone = load_summary(root / "summary.json")
    assert redone["slo"] == SLO and redone["run_id"] == summary["run_id"]


# ----------------------------------------------------------------------------- original layout


@pytest.mark.parametrize("under", ["", "result"])
def test_cli_on_original_layout(tmp_path: Path, under: str) -> None:
    root = tmp_path / "orig"
    metric = root / under / "metric"

    def payload(records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"workload": "wildchat", "latency": 4.2, "metrics": records,
                "backend_url": "http://34.117.239.237:80", "workload_args": {"num_conv": 100}}

    write(metric / "wildchat_gke_gateway/llmc-us-east-2.json", payload([
        original(10.0, 0.5, 2.0, 100, 10, None),
        original(11.0, 0.3, 1.0, 50, 0, None),  # zero output tokens, no cache report
    ]))
    write(metric / "wildchat_gke_gateway/llmc-ap-northeast-1.json", payload([
        original(10.5, 1.0, 3.0, 80, 20, 40),
        original(12.0, None, None, None, 0, None, failed="Connection reset by peer"),
    ]))
    write(metric / "wildchat_sky_push_push/llmc-us-east-2.json", payload([
        original(10.0, 0.2, 1.0, 100, 10, 100),
    ]))
    qdir = root / under / "queue_size"
    qdir.mkdir(parents=True)
    (qdir / "wildchat_sky_push_push.txt").write_text("".join(
        json.dumps({"time": 50.0 + i, "http://a.aws.cblmemo.net:8000": {"queue_size": i, "raw_queue_size": i}})
        + "\n" for i in range(3)))

    proc = run_cli(str(root))
    assert proc.returncode == 0, proc.stderr
    summary = load_summary(root / "summary.json")
    rows = rows_by_key(summary)
    assert set(rows) == {("sky_push_push", "all"), ("sky_push_push", "us-east-2"),
                         ("gke_gateway", "all"), ("gke_gateway", "us-east-2"),
                         ("gke_gateway", "ap-northeast-1")}
    gke = rows[("gke_gateway", "all")]
    assert (gke["label"], gke["workload"], gke["exp_group"]) == ("GKE Gateway", "wildchat", "wildchat")
    assert (gke["requests"], gke["requests_failed"]) == (4, 1)
    assert gke["span_s"] == pytest.approx(3.5)  # 10.0 → 13.5
    assert gke["throughput_tpt_per_s"] == pytest.approx((230 + 2 * 30) / 3.5)
    assert gke["cache_hit_rate"] == pytest.approx(40 / 80)  # only the request that reports one
    assert gke["ttft_p50_s"] == pytest.approx(0.5)
    assert gke["served_remote_share"] is None and gke["num_conv"] == 100
    assert gke["requests_sent"] == 4  # the original has no "sent": every record was sent
    assert rows[("sky_push_push", "all")]["label"] == "Ours [Push+Push]"
    # GKE's cache hit is a published Fig. 8 row (18.08-24.30 %): compared, so the paper figure
    # is drawn; ours (40/80) is above the range.
    gke_hit = next(r for r in summary["paper_comparison"]["rows"] if r["what"] == "cache hit GKE")
    assert gke_hit["status"] == "compared"
    assert [(o["value"], o["verdict"]) for o in gke_hit["ours"]] == [(pytest.approx(0.5), "above")]
    expected = group_figures("wildchat") | {"queue_wildchat_sky_push_push.png", "paper_comparison.png"}
    assert {p.name for p in (root / "fig").iterdir()} == expected
    assert (root / "index.html").is_file()


# ----------------------------------------------------------------------------- failures


def test_bad_directories_exit_2_with_a_message(tmp_path: Path) -> None:
    missing = run_cli(str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli(str(tmp_path / "empty"))
    assert empty.returncode == 2 and "no metric/ directory" in empty.stderr
    write(tmp_path / "junk/metric/exp_sgl/us-east-2.json", {"not": "results"})
    junk = run_cli(str(tmp_path / "junk"))
    assert junk.returncode == 2 and "not a result file" in junk.stderr
    assert not (tmp_path / "junk/summary.csv").exists()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"schema_version": 99, "records": []}))
    with pytest.raises(SummarySchemaError, match=r"schema_version 99 .* reads 1\).*regenerate"):
        load_summary(tmp_path / "summary.json")
    with pytest.raises(SummarySchemaError, match="python -m pytest_lbbench.report"):
        load_summary(tmp_path)  # a directory means its summary.json
    (tmp_path / "summary.csv").write_text("schema_version,system\n2,sgl\n")
    with pytest.raises(SummarySchemaError, match="schema_version 2"):
        load_summary(tmp_path / "summary.csv")
    (tmp_path / "summary.json").write_text(json.dumps({"records": []}))
    with pytest.raises(SummarySchemaError, match="schema_version None"):
        load_summary(tmp_path / "summary.json")


def test_a_failing_figure_becomes_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build_our_dir(tmp_path / "run")

    def boom(group: plots.Group, path: Path) -> None:
        raise RuntimeError("font cache on fire")

    monkeypatch.setitem(plots.GROUP_FIGURES, "ttft_cdf", boom)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    assert main([str(root)]) == 0
    err = capsys.readouterr().err
    assert "warning: figure arena_syn_ttft_cdf.png not drawn: RuntimeError: font cache on fire" in err
    names = {p.name for p in (root / "fig").iterdir()}
    assert "arena_syn_ttft_cdf.png" not in names
    assert names == (group_figures("arena_syn") - {"arena_syn_ttft_cdf.png"}) | {
        "queue_arena_syn_sky_push_push.png"}
    assert (root / "summary.csv").is_file() and (root / "summary.json").is_file()
    html = (root / "index.html").read_text()
    assert "font cache on fire" in html and 'src="fig/arena_syn_ttft_cdf.png"' not in html


# ----------------------------------------------------------------------------- the plugin's path


def test_write_summary_from_collected_properties(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the plugin calls at session end: the properties() dicts, outside any git checkout."""
    root = build_our_dir(tmp_path / "run")
    exp_dir = root / "metric/arena_syn_sky_push_push"
    result = ExperimentResult.load("sky_push_push", "arena_syn", "arena_syn_sky_push_push",
                                   {r: exp_dir / f"{r}.json" for r in ("us-east-2", "ap-northeast-1")})
    props = result.properties()
    props["overall"]["ttft_mean_s"] = float("nan")  # a non-finite value must become null
    props["overall"]["itl_p99_s"] = float("inf")
    monkeypatch.chdir(tmp_path)  # not a git checkout
    config = {"backend": "local", "replicas": 2, "duration_s": 5.0, "num_users": 4, "seed": 0,
              "replica_regions": ["us-east-2", "ap-northeast-1"]}
    csv_path, json_path = write_summary(root / "out", [props], {"run_id": "r-1", "config": config})
    text = json_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = load_summary(json_path)
    overall = summary["records"][0]
    assert overall["ttft_mean_s"] is None and overall["itl_p99_s"] is None
    assert summary["git_commit"] is None and summary["run_id"] == overall["run_id"] == "r-1"
    assert overall["backend"] == "local" and overall["replicas"] == 2
    assert overall["replica_regions"] == "us-east-2,ap-northeast-1"
    assert overall["goodput_requests_per_s"] == pytest.approx(2 / 3.5)  # default SLO = SLO
    assert summary["experiments"][0]["files"]["us-east-2"] == "../metric/arena_syn_sky_push_push/us-east-2.json"
    assert summary["run"]["config"]["num_users"] == 4
    assert summary["experiments"][0]["queue_size"] == "../queue_size/arena_syn_sky_push_push.txt"
    assert "nan" not in csv_path.read_text().lower()


def test_build_report_is_the_session_end_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_our_dir(tmp_path / "run")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    experiments = [
        ExperimentResult.load(system, "arena_syn", f"arena_syn_{system}",
                              {p.stem: p for p in (root / f"metric/arena_syn_{system}").glob("*.json")}
                              ).properties()
        for system in ("sky_push_push", "sgl")
    ]
    report = build_report(root, experiments, {"config": {"backend": "local"}}, slo={"e2e_s": 1.5})
    assert report.warnings == []
    assert report.index_html == root / "index.html" and report.index_html.is_file()
    assert {p.name for p in report.figures} == group_figures("arena_syn") | {
        "queue_arena_syn_sky_push_push.png"}
    assert all(p.is_file() for p in report.figures)
    rows = rows_by_key(load_summary(report.summary_json))
    assert rows[("sky_push_push", "all")]["slo_attainment"] == pytest.approx(1 / 4)
    assert rows[("sgl", "all")]["label"] == "Baseline"  # from the files' deployment


def test_git_commit_never_fails_without_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary at all
    assert git_commit(tmp_path) is None


def test_read_queue_log_both_formats(tmp_path: Path) -> None:
    root = build_our_dir(tmp_path / "run")
    log = queuelog.read_queue_log(root / "queue_size/arena_syn_sky_push_push.txt")
    assert log.lbs == {"lb-us-east-2": [(0.0, 0.0), (1.0, 3.0)]}  # truncated last line skipped
    assert log.replica_running == {"replica-0-us-east-2": [(0.0, 1.0)]}  # failed poll: a gap
    path = tmp_path / "orig.txt"
    path.write_text(json.dumps({"time": 5.0, "http://lb:8000": {"queue_size": 2, "raw_queue_size": 2},
                                "http://router:9001": {"kind": "sglang_router", "name": "router",
                                                       "workers": {"workers": [{"load": 1}, {"load": 2}]}}}))
    log = queuelog.read_queue_log(path)
    assert log.lbs == {"http://lb:8000": [(0.0, 2.0)], "router (in flight)": [(0.0, 3.0)]}


def test_the_soak_figure_draws_every_process_and_refuses_no_samples(tmp_path: Path) -> None:
    samples = {
        "replica-0-us-east-2": [[0.0, 60.0, 20], [30.0, 70.0, 22]],
        "lb-us-east-2": [[0.0, 45.0, 30], [30.0, 48.0, 31]],
        "client-us-east-2": [[0.0, 80.0, 60], [30.0, 82.0, 60]],
    }
    (tmp_path / "soak.json").write_text(json.dumps(samples))
    # A subprocess: matplotlib's numpy must not be imported into a process that pytester reloads.
    code = ("import json, sys; from pathlib import Path; from pytest_lbbench.report.plots import "
            "plot_process_resources as plot; d = Path(sys.argv[1]); "
            "plot(json.loads((d / 'soak.json').read_text()), 'soak', d / 'soak.png')\n"
            "try:\n    plot({}, 'soak', d / 'empty.png')\nexcept ValueError as e:\n    print('refused:', e)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "refused: no process was sampled" in done.stdout and not (tmp_path / "empty.png").exists()
