"""Workload options, the workload hook, arrival options and dataset errors, through pytester."""

from __future__ import annotations

import json

import pytest

from pytest_lbbench.workloads import WORKLOADS


FAST = ("--time-scale", "0.05", "--max-tokens", "8", "--num-users", "2", "--replicas", "2",
        "--duration", "2", "--drain-timeout", "20", "--regions", "us-east-2",
        "-p", "no:cacheprovider")

SUPPORT_CONFTEST = '''
from pytest_lbbench.workloads.base import (
    Conversation, RequestSettings, WorkloadPlan, group_into_users, users_from_groups)

class SupportChats:
    name = "support"
    options = ()
    hf_dataset = None

    def plan(self, args, region, region_index):
        convs = [Conversation(f"c{i}", f"customer{i % 7}", float(i),
                              ("My order is late.", "It was order 12345."))
                 for i in range(100)]
        return WorkloadPlan(
            name=self.name,
            users=users_from_groups(group_into_users(convs, args.num_users)),
            settings=RequestSettings(max_tokens=args.max_tokens or 128, temperature=0.0),
        )

def pytest_lbbench_workloads(config):
    return [SupportChats()]
'''


def test_help_lists_workload_and_arrival_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    for option in ("--warmup", "--request-rate", "--burstiness", "--open-loop-threshold",
                   "--dataset-source", "--dataset-path", "--num-conv", "--num-branches",
                   "--start-index", "--disable-parallel"):
        result.stdout.fnmatch_lines([f"*{option}*"])
    # A shared option names every workload that takes it.
    result.stdout.fnmatch_lines(["*--num-conv=INT*[[]arena_syn, arena, arena_1m, wildchat[]]*"])


def test_every_workload_is_a_column_of_the_matrix(bench: pytest.Pytester) -> None:
    names = "arena,arena_syn,arena_1m,wildchat,tot,tot_single"
    result = bench.runpytest("--collect-only", "-q", "--systems", "sky_push_push", "--workloads", names)
    result.stdout.fnmatch_lines([f"*[[]sky_push_push-{n}[]]" for n in names.split(",")] + ["6 tests collected*"])
    result = bench.runpytest("--collect-only", "-q", "--workloads", names, "-k", "sky_push_push and tot_single")
    result.stdout.fnmatch_lines(["*[[]sky_push_push-tot_single[]]", "1/*"])


def test_a_conftest_adds_a_workload_through_the_hook(bench: pytest.Pytester) -> None:
    bench.makeconftest(SUPPORT_CONFTEST)
    out = bench.path / "results"
    result = bench.runpytest("-k", "sky_push_push", "--workloads", "support", "--output-dir", str(out), *FAST)
    result.assert_outcomes(passed=1)
    data = json.loads((out / "latest" / "metric" / "support_sky_push_push" / "us-east-2.json").read_text())
    assert data["workload"] == "support"
    assert data["metrics"] and {r["hash_key"] for r in data["metrics"]} <= {f"customer{i}" for i in range(7)}
    # The client ran the plan built in the pytest process: it cannot import the conftest.
    assert (out / "latest" / "plans" / "support_sky_push_push" / "us-east-2.json").exists()


CUSTOMERS_CONFTEST = SUPPORT_CONFTEST.replace(
    "    options = ()\n",
    "    options = (WorkloadOption('--customers', 'int', 7, 'distinct customers'),)\n",
).replace("from pytest_lbbench.workloads.base import (", "from pytest_lbbench.workloads.base import (WorkloadOption, ")


def test_a_hook_workload_lives_in_the_run_and_takes_region_options(bench: pytest.Pytester) -> None:
    # Its options are known to --region-to-args of this run (typed: a bad value is refused at
    # start-up), and the built-in registry is never changed, so nothing outlives the run.
    bench.makeconftest(CUSTOMERS_CONFTEST)
    ok = bench.runpytest("--collect-only", "-q", "--workloads", "support", "--systems", "sgl",
                         "--region-to-args", json.dumps({"us-east-2": "--customers 3"}))
    assert ok.ret == 0, ok.stderr.str()
    bad = bench.runpytest("--collect-only", "--workloads", "support",
                          "--region-to-args", json.dumps({"us-east-2": "--customers many"}))
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--region-to-args*--customers*"])
    assert "support" not in WORKLOADS


def test_the_workload_hook_refuses_a_taken_name(bench: pytest.Pytester) -> None:
    bench.makeconftest(SUPPORT_CONFTEST.replace('name = "support"', 'name = "arena_syn"'))
    result = bench.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*a workload named 'arena_syn' already exists*"])


def test_hf_without_a_token_fails_at_start_up(bench: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(bench.path / "hf-home"))  # no token saved by `hf auth login`
    result = bench.runpytest("--dataset-source", "hf", "--workloads", "arena")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dataset-source hf*HF_TOKEN*"])
    assert "collected" not in result.stdout.str()  # nothing was started


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--workloads", "tot", "--request-rate", "5"), "*--request-rate drives chat workloads*"),
        (("--request-rate", "-1"), "*--request-rate must be positive*"),
        (("--workloads", "arena_syn", "--num-conv", "0"), "*--workloads arena_syn*num-conv*"),
        (("--dataset-source", "s3"), "*--dataset-source: unknown source 's3'. Valid sources: synthetic, hf*"),
        (("--warmup", "-2"), "*--warmup must be >= 0*"),
        (("--workloads", "arena", "--open-loop-threshold", "5"), "*--open-loop-threshold*replay*"),
    ],
)
def test_bad_workload_options_exit_4(bench: pytest.Pytester, args: tuple[str, ...], expected: str) -> None:
    result = bench.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_warmup_requests_are_kept_but_not_counted(bench: pytest.Pytester) -> None:
    out = bench.path / "results"
    result = bench.runpytest("-k", "sky_push_push", "--warmup", "1.5", "--output-dir", str(out), *FAST)
    result.assert_outcomes(passed=1)
    data = json.loads((out / "latest" / "metric" / "arena_syn_sky_push_push" / "us-east-2.json").read_text())
    warm = [r for r in data["metrics"] if r["warmup"]]
    assert warm and len(warm) < len(data["metrics"]) == data["sent"]
    summary = json.loads((out / "latest" / "summary.json").read_text())
    row = next(r for r in summary["records"] if r["client_region"] == "all")
    assert row["requests"] == len(data["metrics"]) - len(warm)
    assert row["warmup"] == 1.5


def test_a_tree_workload_runs_end_to_end(bench: pytest.Pytester) -> None:
    out = bench.path / "results"
    result = bench.runpytest("-k", "sky_push_push", "--workloads", "tot", "--output-dir", str(out), *FAST)
    result.assert_outcomes(passed=1)
    data = json.loads((out / "latest" / "metric" / "tot_sky_push_push" / "us-east-2.json").read_text())
    assert {r["turn_index"] for r in data["metrics"]} >= {0, 1}
    assert all(r["branch"] for r in data["metrics"])
    assert data["workload_args"]["num_branches"] == 2
