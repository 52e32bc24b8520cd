"""The plugin in other people's test runs: nothing heavy without lbbench tests, every option in
the ini file, list options that never swallow test paths, a plain ``-n`` that keeps a system on
one worker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from pytest_lbbench.options import DECLARED

# What a run without lbbench tests must not load: the run's config, the backends (aiohttp), the
# report (matplotlib) and the cloud plumbing.
HEAVY = ("aiohttp", "matplotlib", "numpy", "pytest_lbbench.runconfig", "pytest_lbbench.backends.local",
         "pytest_lbbench.cloud_plugin", "pytest_lbbench.report.build", "pytest_lbbench.control")

PROBE = """
import sys, pytest
rc = pytest.main(sys.argv[1:])
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy), "RC=" + str(int(rc)))
"""


def _probe(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: this one has imported everything already.
    return subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=project,
                          capture_output=True, text=True, timeout=120)


def test_an_unrelated_project_gets_no_header_and_loads_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    run = _probe(pytester.path, "-p", "no:cacheprovider", "test_plain.py")
    assert "RC=0" in run.stdout and "HEAVY= " in run.stdout, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if not line.startswith(("plugins:", "HEAVY="))]
    assert not [line for line in lines if "lbbench" in line], run.stdout
    helped = _probe(pytester.path, "--help")
    assert "HEAVY= " in helped.stdout and "--systems" in helped.stdout, helped.stdout[-2000:]


def test_an_lbbench_test_gets_the_header_after_collection(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--collect-only", "--systems", "sgl", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["collected 1 item", "lbbench: backend=local systems=sgl workloads=arena_syn*"])


def test_an_lbbench_option_is_checked_at_start_up_even_without_lbbench_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest("--systems", "sky_nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--systems: unknown system 'sky_nope'. Valid systems: sgl,*"])


def test_every_option_has_an_ini_twin(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    assert len(DECLARED) > 60
    for option in DECLARED.values():
        config.getini(option.ini)  # raises ValueError for an ini key nobody declared


def test_the_ini_sets_options_and_the_command_line_wins(bench: pytest.Pytester) -> None:
    bench.makeini("""
        [pytest]
        lbbench_systems = sgl, sky_walker
        lbbench_regions = us-east-2
        lbbench_duration = 7
        lbbench_max_failure_rate = 0.2
        lbbench_selfcheck = true
        lbbench_fault =
            crash:replica-0-us-east-2@3s
            restart:replica-0-us-east-2@5s
        lbbench_num_conv = 12
        lbbench_engine_metrics = live
    """)
    from pytest_lbbench.runconfig import get_config

    cfg = get_config(bench.parseconfigure())
    assert cfg.systems == ("sgl", "sky_walker") and cfg.regions == ("us-east-2",)
    assert cfg.knobs.duration_s == 7 and cfg.max_failure_rate == 0.2 and cfg.engine_metrics == "live"
    assert [f.text for f in cfg.faults] == ["crash:replica-0-us-east-2@3s", "restart:replica-0-us-east-2@5s"]
    assert cfg.workload_options["num_conv"] == 12
    cli = get_config(bench.parseconfigure("--systems", "sky_push_push", "--duration", "60"))
    assert cli.systems == ("sky_push_push",) and cli.knobs.duration_s == 60  # 60 is the default: given wins
    result = bench.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*[[]sgl-arena_syn[]]", "*[[]sky_walker-arena_syn[]]", "2 tests collected*"])


@pytest.mark.parametrize(("line", "says"), [
    ("lbbench_duration = soon", "*ini option lbbench_duration = 'soon' is not a valid value for --duration*"),
    ("lbbench_engine_metrics = psychic", "*lbbench_engine_metrics = 'psychic': --engine-metrics takes one of sglang, live*"),
    ("lbbench_systems = sgl, sky_nope", "*--systems: unknown system 'sky_nope'*"),
])
def test_a_bad_ini_value_is_a_usage_error_naming_the_key(bench: pytest.Pytester, line: str, says: str) -> None:
    bench.makeini(f"[pytest]\n{line}\n")
    result = bench.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([says])


def test_list_options_take_commas_or_repeats_and_never_swallow_test_paths(pytester: pytest.Pytester) -> None:
    from conftest import BENCH

    pytester.mkdir("suite")
    (pytester.path / "suite" / "test_bench.py").write_text(BENCH)
    pytester.makepyfile(test_other="def test_other():\n    pass\n")  # outside suite/: not selected
    for args in (("--systems", "sgl,sky_walker"), ("--systems", "sgl", "--systems", "sky_walker")):
        result = pytester.runpytest("--collect-only", "-q", *args, "suite/", "-p", "no:cacheprovider")
        assert result.ret == 0, result.stderr.str()
        result.stdout.fnmatch_lines(["suite/test_bench.py::test_benchmark[[]sgl-arena_syn[]]",
                                     "suite/test_bench.py::test_benchmark[[]sky_walker-arena_syn[]]",
                                     "2 tests collected*"])
    old_form = pytester.runpytest("--collect-only", "--systems", "sgl", "sky_walker", "suite/")
    assert old_form.ret == pytest.ExitCode.USAGE_ERROR
    old_form.stderr.fnmatch_lines(["*'sky_walker' is not a test path but a name for --systems*--systems a,sky_walker*"])


WHERE_TEST = """
import json, os
import pytest

@pytest.mark.parametrize("i", range(3))
def test_where(lbbench_system, i, tmp_path_factory):
    line = json.dumps([lbbench_system, os.environ.get("PYTEST_XDIST_WORKER", "main")])
    with open(os.environ["WHERE_LOG"], "a") as f:
        f.write(line + "\\n")

def test_plain_one():
    pass

def test_plain_two():
    pass
"""


def test_a_plain_n_keeps_each_system_on_one_worker(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    log = pytester.path / "where.log"
    monkeypatch.setenv("WHERE_LOG", str(log))
    pytester.makepyfile(test_where=WHERE_TEST)
    result = pytester.runpytest_subprocess("-n", "2", "--systems", "sgl,sky_walker,sky_push_push,sky_pull_pull",
                                           "-p", "no:cacheprovider", timeout=180)
    result.assert_outcomes(passed=14)
    workers: dict[str, set[str]] = defaultdict(set)
    for line in log.read_text().splitlines():
        system, worker = json.loads(line)
        workers[system].add(worker)
    assert len(workers) == 4 and all(len(w) == 1 for w in workers.values()), dict(workers)
    assert {w for ws in workers.values() for w in ws} <= {"gw0", "gw1"}


def test_work_units_follow_the_system_in_the_id() -> None:
    from pytest_lbbench.xdist_schedule import system_of, work_unit

    systems = ("sgl", "sky_walker", "sky_walker_ch")
    assert system_of("b/test_x.py::test_benchmark[sky_walker_ch-arena_syn]", systems) == "sky_walker_ch"
    assert system_of("test_x.py::test_t[3-sgl]", systems) == "sgl"
    assert system_of("test_x.py::test_t[sgl_like-3]", systems) is None
    assert system_of("test_x.py::test_plain", systems) is None
    assert work_unit("test_x.py::test_t[sgl-0]", systems) == work_unit("test_y.py::test_u[sgl-tot]", systems)
    assert work_unit("test_x.py::test_plain", systems) == "test_x.py::test_plain"
    assert work_unit("test_x.py::test_t[1]@db", systems) == "group:db"
