"""The comparison with the SkyWalker paper: published rows as data, our ratios from hand-made
result directories (real files in the real layout), "not run" rows, the scenario from run meta."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.report import paper
from pytest_lbbench.report.build import build_report
from pytest_lbbench.report.resultdir import experiment_dict, load_result_dir
from pytest_lbbench.report.store import load_summary
from pytest_lbbench.scenarios import SCENARIOS
from pytest_lbbench.systems import SYSTEMS

REPLICAS = [{"name": "replica-0-us-east-2", "region": "us-east-2"},
            {"name": "replica-1-ap-northeast-1", "region": "ap-northeast-1"}]
R0, R1 = "replica-0-us-east-2", "replica-1-ap-northeast-1"


def rec(start: float, ttft: float, e2e: float, inp: int, out: int, cached: int,
        replica: str | None) -> dict[str, Any]:
    """A successful request as our client records it."""
    return {
        "uid": "us-east-2", "hash_key": "h", "program_id": "p", "client_region": "us-east-2",
        "start": start, "response_start": start, "streaming_start": start + ttft,
        "end": start + e2e, "ttft": ttft, "e2e_latency": e2e, "failed": None,
        "input_tokens": inp, "output_tokens": out, "cached_tokens": cached,
        "headers": {}, "itl": [], "replica": replica, "lbs": [],
    }


# Hand-computed (percentiles are linear, as numpy's default):
# sky_walker: span 2 s, TPT (200 + 2·20) / 2 = 120, hit 100/200 = 0.5, TTFT p50 0.2, p90 0.28,
#             E2E p50 1.5; replicas 50/50; telemetry means r0 (2 + 4)/2 = 3, r1 (1 + 2)/2 = 1.5.
# sky_round_robin: span 4 s, TPT (300 + 60) / 4 = 90, hit 30/300 = 0.1, TTFT p50 0.4, p90 0.56,
#             E2E p50 3; replicas r0 2 of 3, r1 1 of 3.
# sgl: span 2 s, TPT 120 / 2 = 60, hit 0, TTFT 0.5, E2E 2; telemetry r1 idle throughout → inf.
# gke_gateway: span 5 s, TPT 120 / 5 = 24, hit 0.2, TTFT 1.0, E2E 5.
RECORDS: dict[str, list[dict[str, Any]]] = {
    "sky_walker": [rec(0.0, 0.1, 1.0, 100, 10, 50, R0), rec(0.0, 0.3, 2.0, 100, 10, 50, R1)],
    "sky_round_robin": [rec(0.0, 0.2, 2.0, 100, 10, 10, R0), rec(0.0, 0.6, 4.0, 100, 10, 10, R0),
                        rec(0.0, 0.4, 3.0, 100, 10, 10, R1)],
    "sgl": [rec(0.0, 0.5, 2.0, 100, 10, 0, R0)],
    "gke_gateway": [rec(0.0, 1.0, 5.0, 100, 10, 20, R1)],
}
TELEMETRY: dict[str, list[dict[str, tuple[float, float]]]] = {
    # per tick: replica → (running, queued)
    "sky_walker": [{R0: (2, 0), R1: (1, 0)}, {R0: (3, 1), R1: (1, 1)}],
    "sgl": [{R0: (2, 0), R1: (0, 0)}, {R0: (2, 0), R1: (0, 0)}],
}


def build_run(root: Path, workload: str = "arena_syn",
              records: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    for system, recs in (records or RECORDS).items():
        payload = {
            "workload": workload, "latency": 5.0, "metrics": recs, "backend_url": "http://lb",
            "workload_args": {"workload": workload, "region": "us-east-2", "num_users": 2},
            "schema_version": 1, "region": "us-east-2", "sent": len(recs), "recorded": len(recs),
            "client": {"loop_lag": {"lag_p99_ms": 1.0, "client_bound": False}, "client_bound": False},
            "deployment": {"backend": "local", "replicas": REPLICAS,
                           "system": {"name": system, "label": SYSTEMS[system].label}},
        }
        path = root / "metric" / f"{workload}_{system}" / "us-east-2.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
    for system, ticks in TELEMETRY.items():
        if system not in (records or RECORDS):
            continue
        lines = []
        for i, tick in enumerate(ticks):
            line: dict[str, Any] = {"time": 1000.0 + i}
            for name, (running, queued) in tick.items():
                line[f"http://{name}"] = {"num_running_reqs": running, "num_queue_reqs": queued,
                                          "name": name, "kind": "replica"}
            lines.append(json.dumps(line))
        qdir = root / "queue_size"
        qdir.mkdir(parents=True, exist_ok=True)
        (qdir / f"{workload}_{system}.txt").write_text("\n".join(lines) + "\n")
    return root


def report(root: Path, scenario: str | None) -> dict[str, Any]:
    experiments = [experiment_dict(r, root) for r in load_result_dir(root)]
    meta: dict[str, Any] = {"config": {"scenario": scenario}} if scenario else {}
    files = build_report(root, experiments, meta)
    assert not [w for w in files.warnings if "paper" in w], files.warnings
    summary = load_summary(root / "summary.json")
    return dict(summary)


def row(comparison: dict[str, Any], what: str) -> dict[str, Any]:
    return next(r for r in comparison["rows"] if r["what"] == what)


def ours(r: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """baseline (ratios) or system (values) → (value, verdict)."""
    return {o["baseline"] or o["system"]: (o["value"], o["verdict"]) for o in r["ours"]}


# ----------------------------------------------------------------------------- the data


def test_published_rows_name_their_source_and_known_systems() -> None:
    assert len(paper.PUBLISHED) >= 25
    for r in paper.PUBLISHED:
        assert "section 5" in r.source and "2505.24095" in r.source
        assert 0 < r.low <= r.high
        assert r.metric in paper.METRICS or (r.metric == "" and r.note)
        assert set(r.systems) | set(r.baselines) <= set(SYSTEMS), r.what
        assert set(r.scenarios) <= set(SCENARIOS), r.what
    # Fig. 9's systems are the ablation's rows of the catalog (SP-P, BP, SP-O).
    fig9 = {s for r in paper.PUBLISHED if r.figure == "9" for s in (*r.systems, *r.baselines)}
    assert fig9 == {"sky_sgl_enhanced", "sky_sgl_blind_push", "sky_sgl_outstanding_cap"}
    assert fig9 <= set(SCENARIOS["paper-fig9"].systems)
    # Every scenario preset has published rows.
    assert {s for r in paper.PUBLISHED for s in r.scenarios} == set(SCENARIOS)


def test_scenario_is_read_defensively() -> None:
    assert paper.scenario_of({}) is None
    assert paper.scenario_of({"run": {"config": {}}}) is None
    assert paper.scenario_of({"run": {"config": {"scenario": None}}}) is None
    assert paper.scenario_of({"run": {"config": {"scenario": "paper-fig9"}}}) == "paper-fig9"
    assert paper.scenario_of({"run": {"scenario": "paper-fig10"}}) == "paper-fig10"


# ----------------------------------------------------------------------------- ratios


def test_fig8_arena_ratios_from_a_hand_made_run(tmp_path: Path) -> None:
    summary = report(build_run(tmp_path / "run"), "paper-fig8-arena")
    comparison = summary["paper_comparison"]
    assert comparison["scenario"] == "paper-fig8-arena"
    # Exactly the rows of that scenario, tot/mixed-only rows left out.
    assert {r["what"] for r in comparison["rows"]} == {
        r.what for r in paper.PUBLISHED if "paper-fig8-arena" in r.scenarios}

    tput = row(comparison, "throughput SkyWalker / single-LB baselines")
    assert ours(tput) == {"sky_round_robin": (pytest.approx(120 / 90), "above"),
                          "sgl": (pytest.approx(120 / 60), "above")}
    assert tput["status"] == "compared"
    assert tput["reason"] == "0 of 2 within; not run: CH, LL"
    assert ours(row(comparison, "throughput SkyWalker / GKE gateway")) == {
        "gke_gateway": (pytest.approx(5.0), "above")}

    ttft = ours(row(comparison, "TTFT p50 SkyWalker / baselines"))
    assert ttft == {"sky_round_robin": (pytest.approx(0.5), "within"),
                    "sgl": (pytest.approx(0.4), "within"),
                    "gke_gateway": (pytest.approx(0.2), "within")}
    p90 = ours(row(comparison, "TTFT p90 SkyWalker / baselines"))
    assert p90["sky_round_robin"] == (pytest.approx(0.28 / 0.56), "above")
    e2e = ours(row(comparison, "E2E p50 baselines / SkyWalker"))
    assert e2e == {"sky_round_robin": (pytest.approx(2.0), "within"),
                   "sgl": (pytest.approx(2.0 / 1.5), "within"),
                   "gke_gateway": (pytest.approx(5.0 / 1.5), "above")}

    assert ours(row(comparison, "cache hit RR")) == {"sky_round_robin": (pytest.approx(0.1), "below")}
    assert ours(row(comparison, "cache hit GKE")) == {"gke_gateway": (pytest.approx(0.2), "within")}
    assert ours(row(comparison, "cache hit SkyWalker")) == {"sky_walker": (pytest.approx(0.5), "above")}
    # SGL's spread: replica 1 idle throughout → infinite (null in JSON, "inf" as shown).
    spread = row(comparison, "outstanding-request spread SGL")
    assert [(o["value"], o["text"], o["verdict"]) for o in spread["ours"]] == [(None, "inf", "above")]


def test_rows_whose_systems_did_not_run(tmp_path: Path) -> None:
    comparison = report(build_run(tmp_path / "run"), "paper-fig8-arena")["paper_comparison"]
    ll = row(comparison, "cache hit LL")
    assert (ll["status"], ll["reason"], ll["ours"]) == ("not run", "missing: LL", [])
    ch = row(comparison, "outstanding-request spread CH")
    assert ch["status"] == "not run"
    lines = paper.comparison_lines(comparison)
    assert lines[0].startswith("paper comparison") and "paper-fig8-arena" in lines[0]
    ll_line = next(line for line in lines if "cache hit LL" in line)
    assert "not run: missing: LL" in ll_line and "28.3-31.1%" in ll_line
    rr_line = next(line for line in lines if "cache hit RR" in line)
    assert "RR 10.0%" in rr_line and "0 of 1 within" in rr_line


def test_a_scenario_whose_workload_did_not_run_lists_every_row_as_not_run(tmp_path: Path) -> None:
    comparison = report(build_run(tmp_path / "run"), "paper-fig8-mixed-tree")["paper_comparison"]
    rows = comparison["rows"]
    assert rows and {r["status"] for r in rows} == {"not run"}
    assert {r["reason"] for r in rows} == {"no experiment of workload mixed_tree"} | {
        f"no experiment of workload {'/'.join(sorted(paper.FIG8_ALL))}"}
    assert not (tmp_path / "run" / "fig" / paper.FIGURE_NAME).exists()  # nothing to draw


def test_without_a_scenario_only_rows_touching_what_ran(tmp_path: Path) -> None:
    comparison = report(build_run(tmp_path / "run"), None)["paper_comparison"]
    assert comparison["scenario"] is None
    whats = {r["what"] for r in comparison["rows"]}
    assert "cache hit RR" in whats and "throughput SkyWalker / Region-Local" in whats
    assert "cache hit LL" not in whats  # neither LL nor anything else of that row ran
    assert "cache hit SP-P" not in whats and "cache hit LL and RR" not in whats  # tot / mixed rows
    assert "others left out" in comparison["note"]
    fig10 = row(comparison, "throughput SkyWalker / Region-Local")
    assert fig10["status"] == "not run" and fig10["reason"].startswith("missing: RL-CH")


def test_fig9_rows_map_to_the_ablation_systems() -> None:
    groups = {"tot": {
        "sky_sgl_enhanced": {"workload": "tot", "throughput_tpt_per_s": 127.0, "ttft_p90_s": 0.5,
                             "cache_hit_rate": 0.9},
        "sky_sgl_blind_push": {"workload": "tot", "throughput_tpt_per_s": 100.0, "ttft_p90_s": 9.0,
                               "cache_hit_rate": 0.7},
    }}
    by_what = {r.what: paper.compare_row(r, groups) for r in paper.PUBLISHED if r.figure == "9"}
    assert ours(by_what["throughput SP-P / BP"]) == {"sky_sgl_blind_push": (pytest.approx(1.27), "within")}
    lower = ours(by_what["TTFT p90 BP / SP-P (18.47x lower)"])
    assert lower == {"sky_sgl_blind_push": (pytest.approx(18.0), "below")}
    assert by_what["throughput SP-P / SP-O"]["status"] == "not run"
    assert by_what["throughput SP-P / SP-O"]["reason"] == "missing: SP-O"


# ----------------------------------------------------------------------------- outputs


def test_cli_redraw_prints_the_table_and_keeps_the_scenario(tmp_path: Path) -> None:
    root = build_run(tmp_path / "run")
    report(root, "paper-fig8-arena")
    (root / "fig" / paper.FIGURE_NAME).unlink()
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "pytest_lbbench.report", str(root)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "paper comparison" in proc.stdout and "scenario paper-fig8-arena" in proc.stdout
    assert "not run: missing: LL" in proc.stdout
    assert (root / "fig" / paper.FIGURE_NAME).stat().st_size > 10_000
    page = (root / "index.html").read_text()
    assert "Compared with the paper" in page and f'src="fig/{paper.FIGURE_NAME}"' in page
    assert page.count('class="notrun"') == sum(
        1 for r in load_summary(root / "summary.json")["paper_comparison"]["rows"]
        if r["status"] != "compared")
    # Redrawn into another directory, the scenario still comes from the run's own summary.
    elsewhere = subprocess.run([sys.executable, "-m", "pytest_lbbench.report", str(root),
                                "--out", str(tmp_path / "copy")],
                               capture_output=True, text=True, env=env, timeout=300)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert load_summary(tmp_path / "copy")["paper_comparison"]["scenario"] == "paper-fig8-arena"


def test_format_helpers() -> None:
    assert paper.format_value(1.2345, "x") == "1.23x"
    assert paper.format_value(0.3696, "%") == "37.0%"
    assert paper.format_value(math.inf, "x") == "inf" and paper.format_value(None, "%") == "-"
    assert paper.format_published({"published": {"low": 1.12, "high": 1.2, "unit": "x"}}) == "1.12-1.20x"
    assert paper.format_published({"published": {"low": 1.27, "high": 1.27, "unit": "x"}}) == "1.27x"
