"""The plugin end to end through pytester: options, ids, selection, errors, runs, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_lbbench.backends.ledger import ledger_path, live_entries
from pytest_lbbench.systems import SYSTEMS


# Fast settings for real runs: engine and WAN times shrunk 20×, short answers, few users.
FAST = ("--time-scale", "0.05", "--max-tokens", "12", "--num-users", "3", "--replicas", "3",
        "--duration", "3", "--drain-timeout", "20", "-p", "no:cacheprovider")


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*pytest-lbbench*"])
    for option in ("--backend", "--regions", "--region-to-args", "--systems", "--workloads",
                   "--duration", "--num-users", "--num-conv", "--seed", "--exp-name",
                   "--output-dir", "--replicas", "--max-tokens", "--time-scale"):
        result.stdout.fnmatch_lines([f"*{option}*"])


def test_ids_read_system_workload(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "test_bench.py::test_benchmark[[]sgl-arena_syn[]]",
        "test_bench.py::test_benchmark[[]sky_push_push-arena_syn[]]",
        f"{len(SYSTEMS)} tests collected*",
    ])


def test_k_selects_one_system(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--collect-only", "-q", "-k", "push_push")
    result.stdout.fnmatch_lines(["*[[]sky_push_push-arena_syn[]]", f"1/{len(SYSTEMS)} tests collected*"])
    assert "sgl-arena_syn" not in result.stdout.str()


def test_systems_option_and_comma_lists(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--collect-only", "-q", "--systems", "sgl",
                             "--regions", "us-east-2,ap-northeast-1")
    result.stdout.fnmatch_lines(["*[[]sgl-arena_syn[]]", "1 test collected*"])


HOOK_CONFTEST = """
from pytest_lbbench.systems import BalancerKind, Placement, SystemSpec

def pytest_lbbench_systems(config):
    return [SystemSpec(name=NAME, label="Push+Push [least load]", kind=BalancerKind.SKY_LB,
                       placement=Placement.REGIONAL, lb_mode="push", replica_mode="push",
                       policy="least_load", meta_policy="least_load")]
"""


def test_a_conftest_adds_a_system_through_the_hook(bench: pytest.Pytester) -> None:
    bench.makeconftest("NAME = 'sky_push_push_ll'\n" + HOOK_CONFTEST)
    out = bench.path / "results"
    junit = bench.path / "junit.xml"
    result = bench.runpytest("-k", "push_push_ll", "--regions", "us-east-2", "--output-dir", str(out),
                             f"--junitxml={junit}", *FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["sky_push_push_ll*all*"])
    data = json.loads((out / "latest" / "metric" / "arena_syn_sky_push_push_ll" / "us-east-2.json").read_text())
    assert data["deployment"]["system"]["policy"] == "least_load"
    # JUnit XML gets flat scalars (for CI dashboards), not a repr of the summary and its samples.
    import xml.etree.ElementTree as ET

    props = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")}
    assert props["lbbench.system"] == "sky_push_push_ll" and props["lbbench.workload"] == "arena_syn"
    assert float(props["lbbench.ttft_p90_s"]) > 0 and float(props["lbbench.throughput_tpt_per_s"]) > 0
    assert "lbbench.cache_hit_rate" in props and int(props["lbbench.recorded"]) > 0
    assert all(len(v or "") < 200 and not (v or "").startswith(("{", "[")) for v in props.values()), props


def test_the_hook_refuses_a_taken_name(bench: pytest.Pytester) -> None:
    bench.makeconftest("NAME = 'sgl'\n" + HOOK_CONFTEST)
    result = bench.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*a system named 'sgl' already exists*"])


def test_selfcheck_benchmarks_run_only_when_asked(bench: pytest.Pytester) -> None:
    bench.makepyfile(test_self="""
        import pytest

        @pytest.mark.lbbench_selfcheck
        def test_capacity():
            pass
    """)
    n = len(SYSTEMS)
    result = bench.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([f"{n}/{n + 1} tests collected (1 deselected)*"])
    result = bench.runpytest("--collect-only", "-q", "--lbbench-selfcheck")
    result.stdout.fnmatch_lines(["test_self.py::test_capacity", f"{n + 1} tests collected*"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--regions", "us-east-2,mars-1"),
         "*--regions: unknown region 'mars-1'. Valid regions: us-east-2, ap-northeast-1, eu-central-1.*"),
        (("--systems", "sky_nope"), "*unknown system 'sky_nope'. Valid systems: sgl, sky_sgl_enhanced, *"),
        (("--workloads", "sharegpt"), "*unknown workload 'sharegpt'. Valid workloads: arena, arena_1m, arena_syn, mixed_tree, tot*"),
        (("--region-to-args", "{us-east-2: 1}"), "*--region-to-args is not valid JSON*Expected an object*"),
        (("--region-to-args", '["us-east-2"]'), "*--region-to-args must be a JSON object*"),
        (("--region-to-args", '{"moon": "--num-users 1"}'), "*unknown region 'moon'*"),
        (("--num-users", "0"), "*--num-users must be positive, got 0*"),
        (("--engine-profile", "h100-dreams"), "*--engine-profile: *h100-dreams*l4-llama3.1-8b*"),
    ],
)
def test_bad_input_exits_4_with_what_is_valid(bench: pytest.Pytester, args: tuple[str, ...],
                                              expected: str) -> None:
    result = bench.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_both_systems_in_parallel_workers(bench: pytest.Pytester) -> None:
    out = bench.path / "results"
    result = bench.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "--systems", "sgl,sky_push_push",
        "--regions", "us-east-2,ap-northeast-1", "--output-dir", str(out), *FAST, timeout=300,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*lbbench results*",
        "workload arena_syn*",
        "system*clients*TTFT p50 ms*",
        "sgl*all*", "*ap-northeast-1*", "*us-east-2*",
        "sky_push_push*all*",
    ])
    for system in ("sgl", "sky_push_push"):
        for region in ("us-east-2", "ap-northeast-1"):
            data = json.loads((out / "latest" / "metric" / f"arena_syn_{system}" / f"{region}.json").read_text())
            assert set(data) >= {"workload", "latency", "metrics", "backend_url", "workload_args"}
            assert data["metrics"] and len(data["metrics"]) == data["sent"]
            assert all(m["client_region"] == region for m in data["metrics"])
            assert data["deployment"]["system"]["name"] == system
        telemetry = (out / "latest" / "queue_size" / f"arena_syn_{system}.txt").read_text().splitlines()
        assert len(telemetry) >= 3  # one line per second of a >= 3 s run
        assert all("time" in json.loads(line) for line in telemetry)
    sgl = json.loads((out / "latest" / "metric" / "arena_syn_sgl" / "us-east-2.json").read_text())
    assert sgl["deployment"]["versions"]["sglang_router"]
    assert not live_entries(ledger_path(out)), "processes left running after the run"

    # The report: one summary row per system (plus per client region), every figure, a page.
    rows = (out / "latest" / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3  # header; per system: all + 2 client regions
    figures = sorted(p.name for p in (out / "latest" / "fig").glob("*.png"))
    for kind in ("throughput", "ttft_box", "e2e_box", "ttft_cdf", "cache_hit", "region_latency"):
        assert f"arena_syn_{kind}.png" in figures
    assert {"queue_arena_syn_sgl.png", "queue_arena_syn_sky_push_push.png"} <= set(figures)
    screenshot = _screenshot(out / "latest" / "index.html", bench.path / "index.png")
    assert screenshot.stat().st_size > 50_000  # a page with a table and figures, not a blank one

    # Redrawing from the stored files alone gives the same figures.
    copy = bench.path / "copy"
    shutil.copytree(out / "latest", copy)
    shutil.rmtree(copy / "fig")
    redraw = subprocess.run([sys.executable, "-m", "pytest_lbbench.report", str(copy)],
                            capture_output=True, text=True, timeout=300)
    assert redraw.returncode == 0, redraw.stderr
    assert sorted(p.name for p in (copy / "fig").glob("*.png")) == figures


def _screenshot(page: Path, png: Path) -> Path:
    """Open ``page`` in headless Chromium and save what it shows."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={png.parent / 'chromium-profile'}", "--window-size=1280,2400",
         f"--screenshot={png}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    return png


def test_save_then_gate_against_the_saved_run(bench: pytest.Pytester) -> None:
    out, storage = bench.path / "results", bench.path / "store"
    common = ("-k", "push_push", "--regions", "us-east-2", "--output-dir", str(out),
              "--lbbench-storage", str(storage), *FAST)
    first = bench.runpytest_subprocess(*common, "--lbbench-save", "base", timeout=300)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["saved run: *0001_base.json*"])
    # pytest-benchmark's own CLI lists and compares the stored run.
    cli = Path(sys.executable).with_name("pytest-benchmark")
    listed = subprocess.run([str(cli), "--storage", str(storage), "compare", "0001"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "sky_push_push-arena_syn[ttft]" in listed.stdout
    # Every engine and WAN time doubled: TTFT p50 must grow well past 10 % and the gate says so.
    slower = [a if a != "0.05" else "0.1" for a in common]
    # Under xdist too: each worker reads the baseline and fails its own test.
    second = bench.runpytest_subprocess(*slower, "-n", "2", "--lbbench-compare", "base",
                                        "--lbbench-fail", "ttft_p50_s:10%", timeout=300)
    second.assert_outcomes(failed=1)
    second.stdout.fnmatch_lines(["*sky_push_push-arena_syn: ttft_p50_s grew from * (baseline 0001_base.json) to *"])
    # Within a generous threshold the same comparison passes.
    third = bench.runpytest_subprocess(*slower, "--lbbench-compare", "0001",
                                       "--lbbench-fail", "ttft_p50_s:1000%", timeout=300)
    third.assert_outcomes(passed=1)
    # Goodput is in every experiment's summary, so it can be gated: under an SLO no request
    # can meet (TTFT <= 1 ms) it drops to zero, and the gate fails the test. The run ends with
    # the table of each gated metric, baseline against now.
    fourth = bench.runpytest_subprocess(*common, "--lbbench-compare", "base", "--slo", "ttft_s=0.001",
                                        "--lbbench-fail", "goodput_requests_per_s:20%", timeout=300)
    fourth.assert_outcomes(failed=1)
    fourth.stdout.fnmatch_lines([
        "*sky_push_push-arena_syn: goodput_requests_per_s dropped from * (baseline 0001_base.json) to 0 (-100.0%)*",
        "*against baseline 0001_base.json*",
        "*experiment*metric*baseline*now*change*allowed*verdict*",
        "*sky_push_push-arena_syn*goodput_requests_per_s*-100.0%*20% worse*FAIL*",
    ])


def test_gate_options_are_validated(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--lbbench-fail", "ttft_p90_s:10%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lbbench-fail needs a baseline*"])
    # A misspelt metric would be a gate that never fires: refused, naming the valid ones.
    result = bench.runpytest("--lbbench-fail", "ttft_p90:10%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown metric 'ttft_p90'. Did you mean ttft_p90_s*Valid metrics: "
                                 "throughput_tpt_per_s, *goodput_requests_per_s, slo_attainment, capacity*"])
    for bad, why in ((["--lbbench-sla", "ttft_p99=1"], "*--lbbench-sla: unknown metric 'ttft_p99'*"),
                     (["--lbbench-sla-range", "1,5"], "*--lbbench-sla-range needs --lbbench-sla*"),
                     (["--num-users", "5,x"], "*--num-users: 'x' is not a number*"),
                     (["--lbbench-repeat", "0"], "*--lbbench-repeat must be at least 1*"),
                     (["--num-users", "2,4", "--lbbench-sla", "ttft_p90_s=1"], "*--lbbench-sla searches the load itself*")):
        result = bench.runpytest(*bad)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, bad
        result.stderr.fnmatch_lines([why])
    result = bench.runpytest("--lbbench-compare", "nope", "--lbbench-storage", str(bench.path / "s"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no saved run matches 'nope'*Save one with --lbbench-save NAME*"])


CRASHING_BENCH = '''
import os, pathlib, signal

def test_benchmark(lbbench_deployment, lbbench_workload, lbbench_run):
    flag = pathlib.Path("killed-once")
    if lbbench_deployment.system.name == "sgl" and not flag.exists():
        flag.touch()
        os.kill(os.getpid(), signal.SIGKILL)  # this worker dies mid-experiment, once
    result = lbbench_run(lbbench_deployment, lbbench_workload)
    assert result.recorded == result.sent > 0
'''


def test_a_killed_worker_loses_only_its_experiment(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=CRASHING_BENCH)
    out = pytester.path / "results"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "--systems", "sgl,sky_push_push",
        "--regions", "us-east-2", "--output-dir", str(out), *FAST, timeout=300,
    )
    # xdist replaces the dead worker and runs the test again; the crashed attempt stays failed.
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*lbbench results*", "sgl*all*", "sky_push_push*all*",
        "*experiments lost to crashed workers*",
        "LOST test_bench.py::test_benchmark[[]sgl-arena_syn[]]*crashed while running*",
        "crashed workers: gw*",
    ])
    assert (out / "latest" / "metric" / "arena_syn_sky_push_push" / "us-east-2.json").exists()
    # The dead worker's replicas, router and links went with it (parent-death signal).
    deadline = time.monotonic() + 15
    while live_entries(ledger_path(out)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live_entries(ledger_path(out))
