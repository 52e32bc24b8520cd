"""Fault drills (``--fault``): parsing, impact windows, and a real drill on real processes.

The drill test starts ``sky_push_push`` on this machine (two replicas, one regional LB, real
links), kills a replica with SIGKILL while a client runs, and checks what a user relies on: the
LB takes the dead replica out (``/conf`` says why), the requests after the crash succeed on the
other replica, the failures are the ones the crash explains, and ``restart`` brings the replica
back into use. Partition and slow use the same real endpoints.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path, live_entries
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment, LocalSettings
from pytest_lbbench.faults import (
    FaultDriller,
    FaultError,
    ImpactWindow,
    check_targets,
    classify_failures,
    expand,
    parse_fault,
    parse_faults,
)
from pytest_lbbench.fixtures import failure_verdict
from pytest_lbbench.report.faults import fault_timeline, recovery
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.systems import SYSTEMS

US = "us-east-2"


def test_parse_fault_forms() -> None:
    crash = parse_fault("crash:replica-0-us-east-2@15s")
    assert (crash.action, crash.target, crash.at_s, crash.duration_s) == ("crash", "replica-0-us-east-2", 15.0, None)
    timed = parse_fault("crash:lb-us-east-2@30s+10s")
    assert timed.end_s == 40.0
    slow = parse_fault("slow:replica-1-ap-northeast-1@10s+20s*3")
    assert (slow.factor, slow.duration_s) == (3.0, 20.0)
    assert [e.action for e in expand([timed, slow])] == ["slow", "crash", "unslow", "restart"]
    both = parse_faults(["partition:ap-northeast-1@20s+30s,restart:replica-0-us-east-2@5s"])
    assert [s.action for s in both] == ["restart", "partition"]  # time order


@pytest.mark.parametrize("text, says", [
    ("crash:replica-0@15", "ACTION:TARGET@<seconds>s"),
    ("explode:replica-0@15s", "unknown action 'explode'"),
    ("slow:replica-0@15s", "needs a factor above 1"),
    ("slow:replica-0@15s*1", "needs a factor above 1"),
    ("partition:us-east-2@15s", "needs a duration"),
    ("restart:replica-0@15s+5s", "takes no duration"),
    ("crash:replica-0@15s*2", "only slow takes"),
])
def test_parse_fault_errors_say_how_to_fix(text: str, says: str) -> None:
    with pytest.raises(FaultError, match=says.replace("*", r"\*").replace("(", r"\(")):
        parse_fault(text)


def test_impact_windows_explain_only_the_failures_near_a_fault() -> None:
    windows = [ImpactWindow("crash:r@5s", 100.0, 102.0),
               ImpactWindow("crash:lb@5s", 100.0, 200.0, frozenset({"eu-central-1"}))]
    records: list[dict[str, Any]] = [
        {"start": 99.0, "failed_at": 100.1, "failed": "reset", "client_region": US},  # in flight
        {"start": 101.5, "failed_at": 101.6, "failed": "502", "client_region": US},  # within grace
        {"start": 110.0, "failed_at": 110.1, "failed": "502", "client_region": US},  # too late
        {"start": 150.0, "failed_at": 150.1, "failed": "502", "client_region": "eu-central-1"},  # no way round
        {"start": 110.0, "end": 111.0, "failed": None, "client_region": US},
    ]
    assert classify_failures(records, windows) == {"failed": 4, "fault_hit": 3, "unexplained": 1}
    assert [r.get("fault") for r in records[:4]] == ["crash:r@5s", "crash:r@5s", None, "crash:lb@5s"]
    verdict = failure_verdict(records, 0.01, "sys-w")
    assert verdict is not None and "1 of 5 requests failed (20.0%)" in verdict
    assert "3 more were hit by drilled faults" in verdict
    assert failure_verdict(records, 0.25, "sys-w") is None


def test_timeline_and_recovery_by_hand() -> None:
    t0 = 1000.0
    # 100 output tokens finish every second, except during 10-20 s (nothing) and 20-25 s (half).
    records: list[dict[str, Any]] = []
    for second in range(30):
        tokens = 0 if 10 <= second < 20 else 50 if 20 <= second < 25 else 100
        if tokens:
            records.append({"start": t0 + second, "end": t0 + second + 0.5, "ttft": 0.1 * (second % 3 + 1),
                            "output_tokens": tokens, "failed": None})
    records.append({"start": t0 + 10.2, "failed_at": t0 + 10.3, "failed": "502"})
    line = fault_timeline(records, t0, traffic_s=30.0)
    assert line["t_s"] == [0, 5, 10, 15, 20, 25]
    assert line["throughput_tok_s"] == [100, 100, 0, 0, 50, 100]
    assert line["failures"] == [0, 0, 1, 0, 0, 0]
    assert line["ttft_p90_s"][0] == pytest.approx(0.3) and line["ttft_p90_s"][2] is None
    rec = recovery(line, fault_s=10.0)
    # Before: the 5-10 s bin (0-5 s is ramp-up); back within 20 % in the 25-30 s bin: 20 s later.
    assert rec == {"fault_s": 10.0, "baseline_tok_s": 100.0, "lowest_tok_s": 0, "recovered_after_s": 20.0}
    assert recovery(line, fault_s=26.0)["recovered_after_s"] == 0.0  # never dropped after it
    # A fall that comes a bin after the fault counts (a partition's cut streams end later) ...
    late = {**line, "throughput_tok_s": [100, 100, 95, 10, 100, 100]}
    assert recovery(late, fault_s=10.0)["recovered_after_s"] == 15.0
    # ... but not one after the fault ended and a bin passed: that is the bins' own noise.
    assert recovery(late, fault_s=5.0, fault_end_s=7.0)["recovered_after_s"] == 0.0
    assert recovery(fault_timeline(records[:5], t0, 30.0), fault_s=10.0)["recovered_after_s"] is None


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


def _wait(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_the_timeline_marks_the_drill_but_not_the_restart_after_the_traffic() -> None:
    from pytest_lbbench.report.plots import fault_marks

    faults = {
        "t0": 100.0, "timeline": {"bin_s": 5.0, "t_s": [0.0, 5.0, 10.0, 15.0]},
        "events": [
            {"action": "crash", "target": "replica-0-us-east-2", "at": 108.0, "undo_at_end": False},
            {"action": "restart", "target": "replica-0-us-east-2", "at": 112.5, "undo_at_end": False},
            # Undone at the end of the experiment, during the drain: not part of the drill.
            {"action": "restart", "target": "lb-us-east-2", "at": 176.0, "undo_at_end": True},
            {"action": "heal", "target": "ap-northeast-1", "at": 131.0, "undo_at_end": False},
        ],
    }
    assert fault_marks(faults) == [(8.0, "crash", "replica-0-us-east-2"), (12.5, "restart", "replica-0-us-east-2")]
    assert fault_marks({"events": faults["events"]}) == []  # no traffic start: nothing to place


def test_a_real_crash_drill_ejects_the_replica_and_restart_brings_it_back(tmp_path: Path) -> None:
    ledger = ProcessLedger(ledger_path(tmp_path))
    deployment = LocalDeployment(SYSTEMS["sky_push_push"], LocalSettings(
        replicas=2, replica_regions=(US,), client_regions=(US,), log_dir=tmp_path / "logs",
        time_scale=0.05, ledger=ledger, control_token="drill-secret",
    ))
    deployment.start()
    try:
        lb = deployment.lbs[0]
        with pytest.raises(FaultError, match="has no 'replica-9'.*replica-0-us-east-2, replica-1-us-east-2"):
            check_targets(parse_faults(["crash:replica-9@1s"]), deployment, "sky_push_push")
        specs = parse_faults(["crash:replica-0-us-east-2@1.5s", "restart:replica-0-us-east-2@4s"])
        check_targets(specs, deployment, "sky_push_push")
        deployment.reset()
        spec = ExperimentSpec(
            system="sky_push_push", workload="arena_syn", exp_name="drill", client_regions=(US,),
            knobs=RunKnobs(duration_s=6.0, num_users=4, seed=3, max_tokens=16, drain_timeout_s=30),
            workload_options={"num_conv": 40},
        )
        drill = FaultDriller(deployment, specs, grace_s=1.0)
        seen: dict[str, Any] = {}

        def during(elapsed: float, recorded: int) -> None:
            drill.step()
            if 3.0 < elapsed < 4.0 and "down" not in seen:
                seen["down"] = _get(lb.url + "/conf")["replica_health"]["replica-0-us-east-2"]

        files = LocalClientLauncher(tmp_path / "logs", ledger).run(deployment, spec, tmp_path / "metric",
                                                                  on_progress=during)
        log = drill.finish()
        assert [(e["action"], e.get("error")) for e in log] == [("crash", None), ("restart", None)]
        # Between crash and restart the LB had the replica out, and said why.
        assert seen["down"]["healthy"] is False and seen["down"]["ejections"] == 1, seen
        records = json.loads(files[US].read_text())["metrics"]
        # The window ends when the restart *began*: the restarted replica answers its probe (every
        # 50 ms at this time scale) before the drill's restart returns, and may serve at once.
        crash_at, restart_began, restart_done = log[0]["at"], log[1]["at"], log[1]["done"]
        counts = classify_failures(records, drill.windows())
        assert counts["unexplained"] == 0, [r["failed"] for r in records if r["failed"] and not r.get("fault")]
        later = [r for r in records if crash_at + 1.0 < r["start"] < restart_began]
        assert later
        assert all(not r["failed"] and r["replica"] == "replica-1-us-east-2" for r in later), [
            (round(r["start"] - crash_at, 3), r["failed"], r["replica"]) for r in later]
        # Back in use: healthy again at the LB, and serving.
        assert _wait(lambda: _get(lb.url + "/conf")["replica_health"]["replica-0-us-east-2"]["healthy"])
        after = [r for r in records if r["start"] > restart_done + 0.5 and not r["failed"]]
        assert any(r["replica"] == "replica-0-us-east-2" for r in after), [r["replica"] for r in after]

        # Partition: the only inter-region links of this layout are none for us-east-2's own
        # traffic, so check the links' own answer; slow: the replica reports its factor.
        reply = deployment.apply_fault("slow", "replica-1-us-east-2", 3.0)
        assert reply["slowdown"] == 3.0
        assert deployment.apply_fault("unslow", "replica-1-us-east-2")["slowdown"] == 1.0
        assert deployment.apply_fault("partition", "ap-northeast-1")["links"] == 0
    finally:
        deployment.stop()
    assert not live_entries(ledger_path(tmp_path))
    # The secret reached the processes through their environment only.
    for path in (tmp_path / "logs").rglob("*"):
        if path.is_file():
            assert "drill-secret" not in path.read_text(errors="replace"), path


# ---------------------------------------------------------------------------- through the plugin

FAST = ("--time-scale", "0.05", "--max-tokens", "12", "--num-users", "3", "--replicas", "2",
        "--replica-regions", US, "--regions", US, "--drain-timeout", "20", "-p", "no:cacheprovider")


def test_a_system_whose_every_request_fails_fails_its_test_naming_the_rate(bench: pytest.Pytester) -> None:
    # A client timeout no answer can meet: every request really fails (timeout), end to end.
    result = bench.runpytest("-k", "sky_push_push", "--duration", "2", "--request-timeout", "0.001", *FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*sky_push_push-arena_syn: * of * requests failed (100.0%), over "
                                 "--lbbench-max-failure-rate 0.01 (1.0%)*timeout*"])


def test_a_drill_through_the_plugin_reports_what_the_fault_hit(bench: pytest.Pytester) -> None:
    out = bench.path / "results"
    # A subprocess: figures need matplotlib, whose numpy cannot be imported twice in one process.
    result = bench.runpytest_subprocess("-k", "sky_push_push", "--duration", "4", "--output-dir", str(out),
                                        "--fault", "crash:replica-0-us-east-2@1s+2s", *FAST)
    result.assert_outcomes(passed=1)
    data = json.loads((out / "latest" / "metric" / "arena_syn_sky_push_push" / f"{US}.json").read_text())
    faults = data["faults"]
    assert faults["drill"] == ["crash:replica-0-us-east-2@1s+2s"]
    assert [e["action"] for e in faults["events"]] == ["crash", "restart"]
    assert faults["counts"]["unexplained"] == 0
    hit = [r for r in data["metrics"] if r.get("fault")]
    assert len(hit) == faults["counts"]["fault_hit"]
    assert faults["timeline"]["bin_s"] == 5.0 and [r["action"] for r in faults["recovery"]] == ["crash"]
    assert (out / "latest" / "fig" / "arena_syn_faults.png").stat().st_size > 0
    result.stdout.fnmatch_lines(["fault drills*", "*sky_push_push-arena_syn*crash:replica-0-us-east-2@1s+2s*"])


def test_a_fault_naming_a_missing_component_fails_with_the_valid_names(bench: pytest.Pytester) -> None:
    result = bench.runpytest("-k", "sky_push_push", "--duration", "2", "--fault", "crash:replica-7@1s", *FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*sky_push_push has no 'replica-7'; its components are: replica-0-us-east-2*"])


def test_a_malformed_fault_is_a_usage_error(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--collect-only", "--fault", "crash:replica-0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fault 'crash:replica-0': expected ACTION:TARGET@<seconds>s*"])
