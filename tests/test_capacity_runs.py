"""Load sweeps, capacity at SLO, repetitions, run directories and live progress, end to end:
real (small, time-scaled) runs of the shipped matrix through pytester."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

MATRIX = '''
from pytest_lbbench.benchmarks.test_systems import test_benchmark, test_capacity  # noqa: F401
'''
FAST = ("--time-scale", "0.05", "--max-tokens", "12", "--replicas", "2", "--regions", "us-east-2",
        "--duration", "3", "--drain-timeout", "20", "-p", "no:cacheprovider")


@pytest.fixture
def matrix(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_matrix=MATRIX)
    return pytester


def _summary(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "latest" / "summary.json").read_text())  # type: ignore[no-any-return]


def test_a_load_axis_gives_one_experiment_per_level_and_a_load_figure(matrix: pytest.Pytester) -> None:
    out = matrix.path / "results"
    result = matrix.runpytest_subprocess("--systems", "sgl,sky_push_push", "--num-users", "2,4",
                                         "--output-dir", str(out), "-v", *FAST, timeout=300)
    result.assert_outcomes(passed=4)  # 2 systems x 2 loads; test_capacity is not run
    result.stdout.fnmatch_lines(["*test_benchmark?sgl-arena_syn-u2? PASSED*",
                                 "*test_benchmark?sky_push_push-arena_syn-u4? PASSED*"])
    rows = [r for r in _summary(out)["records"] if r["client_region"] == "all"]
    assert sorted((r["system"], r["load"]) for r in rows) == [
        ("sgl", 2), ("sgl", 4), ("sky_push_push", 2), ("sky_push_push", 4)]
    assert {r["num_users"] for r in rows} == {2, 4}  # what the clients were really told
    assert (out / "latest" / "fig" / "arena_syn_load.png").stat().st_size > 10_000
    assert (out / "latest" / "metric" / "arena_syn-u4_sgl" / "us-east-2.json").exists()
    # The end-of-run table has a row per level, and the new columns.
    result.stdout.fnmatch_lines(["*TPOT p50 ms*ITL p50 ms*goodput req/s*", "*sgl u2*", "*sgl u4*"])


def test_the_sla_search_reports_a_capacity_per_system(matrix: pytest.Pytester) -> None:
    out = matrix.path / "results"
    # A target no request can meet (TTFT p50 <= 0): every probe misses, the capacity is
    # "below the range" after the two edge probes; and a target every request meets.
    result = matrix.runpytest_subprocess(
        "--systems", "sgl,sky_push_push", "--lbbench-sla", "ttft_p50_s=0", "--lbbench-sla-range", "1,4",
        "--output-dir", str(out), *FAST, timeout=300)
    result.assert_outcomes(passed=2)  # one capacity test per system, no single-load test
    result.stdout.fnmatch_lines(["*capacity at SLO, workload arena_syn (ttft_p50_s <= 0; users/region, range 1-4)*",
                                 "*sgl*-*1*2*below 1 users/region*"])
    caps = {c["system"]: c for c in _summary(out)["capacity"]}
    assert set(caps) == {"sgl", "sky_push_push"}
    assert all(c["capacity"] is None and [p["load"] for p in c["probes"]] == [4, 1] for c in caps.values())
    probes = [r for r in _summary(out)["records"] if r["client_region"] == "all"]
    assert all(r["probe"] for r in probes) and len(probes) == 4  # every probe is in the summary
    assert (out / "latest" / "fig" / "arena_syn_capacity.png").exists()
    assert "<h2>Capacity at SLO</h2>" in (out / "latest" / "index.html").read_text()

    met = matrix.runpytest_subprocess(
        "-k", "push_push", "--lbbench-sla", "ttft_p90_s=60,failure_rate=0.5", "--lbbench-sla-range", "1,3",
        "--output-dir", str(out), *FAST, timeout=300)
    met.assert_outcomes(passed=1)
    (cap,) = _summary(out)["capacity"]
    assert cap["capacity"] == 3 and cap["first_miss"] is None and len(cap["probes"]) == 1


def test_repetitions_give_means_and_intervals(matrix: pytest.Pytester) -> None:
    out = matrix.path / "results"
    result = matrix.runpytest_subprocess("-k", "push_push", "--num-users", "3", "--lbbench-repeat", "3",
                                         "--output-dir", str(out), "-v", *FAST, timeout=300)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*sky_push_push-arena_syn-rep3? PASSED*", "*sky_push_push (n=3)*±*"])
    (rep,) = _summary(out)["repetitions"]
    assert rep["key"] == "sky_push_push-arena_syn" and rep["overall"]["repeats"]["n"] == 3
    assert rep["overall"]["repeats"]["ci95"]["ttft_p50_s"] >= 0
    seeds = {json.loads(p.read_text())["workload_args"]["seed"]
             for p in (out / "latest" / "metric").glob("arena_syn-rep*_sky_push_push/us-east-2.json")}
    assert seeds == {0, 1, 2}  # derived from --seed 0
    assert (out / "latest" / "fig" / "arena_syn_repeats.png").stat().st_size > 10_000  # the spread
    assert "<h2>Repetitions (mean ± 95 % interval)</h2>" in (out / "latest" / "index.html").read_text()


def test_two_runs_into_one_output_directory_stay_apart(matrix: pytest.Pytester) -> None:
    out = matrix.path / "results"
    first = matrix.runpytest_subprocess("-k", "push_push", "--output-dir", str(out), "--num-users", "2",
                                        *FAST, "--regions", "us-east-2,ap-northeast-1", timeout=300)
    first.assert_outcomes(passed=1)
    second = matrix.runpytest_subprocess("-k", "push_push", "--output-dir", str(out), "--num-users", "2",
                                         *FAST, timeout=300)
    second.assert_outcomes(passed=1)
    runs = sorted(p for p in out.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    assert len(runs) == 2
    assert (out / "latest").resolve() == runs[1]
    # Redrawing the newer run shows only its own client region.
    redraw = subprocess.run([sys.executable, "-m", "pytest_lbbench.report", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert redraw.returncode == 0, redraw.stderr
    regions = {r["client_region"] for r in _summary(out)["records"]}
    assert regions == {"all", "us-east-2"}
    # The older run still has both; the per-request JSONL stayed after success.
    older = json.loads((runs[0] / "summary.json").read_text())
    assert {r["client_region"] for r in older["records"]} == {"all", "us-east-2", "ap-northeast-1"}
    assert (runs[1] / "metric" / "arena_syn_sky_push_push" / "us-east-2.jsonl").stat().st_size > 0
    # Both side by side in one new report.
    both = subprocess.run([sys.executable, "-m", "pytest_lbbench.report", str(runs[0]), str(runs[1]),
                           "--out", str(matrix.path / "both")], capture_output=True, text=True, timeout=300)
    assert both.returncode == 0, both.stderr
    systems = {r["system"] for r in json.loads((matrix.path / "both" / "summary.json").read_text())["records"]}
    assert systems == {f"sky_push_push@{runs[0].name}", f"sky_push_push@{runs[1].name}"}


def test_progress_lines_appear_under_xdist(matrix: pytest.Pytester) -> None:
    out = matrix.path / "results"
    result = matrix.runpytest_subprocess("-n", "2", "--systems", "sgl,sky_push_push", "--output-dir", str(out),
                                         "--num-users", "2", *FAST, "--duration", "7", timeout=300)
    result.assert_outcomes(passed=2)
    text = result.stdout.str()
    # Each worker reports every 5 s; the controller prints it (workers cannot).
    for system in ("sgl", "sky_push_push"):
        done = [int(n) for n in re.findall(rf"  {system}-arena_syn: +\d+/7 s \w+, (\d+) requests done, "
                                           r"\d+ failed, TTFT p50 \(last 200\) ", text)]
        assert len(done) >= 2 and max(done) > 0, text[-3000:]
