"""The original LB's timing against our variant, side by side in one run (issue 11 part 3).

Run with ``pytest benchmarks --lbbench-selfcheck -k lb_timing`` (it loads both cores, so it is
deselected unless asked for); ``-k "lb_timing and sky_walker"`` for one system.

For each system (``sky_walker``: rate-limited push + replica pull, the paper's SkyWalker;
``sky_push_pull``: push by the meta policy + replica pull) the same experiment runs twice on
freshly started deployments, identical except for the LB flags:

* **original** (no flags; the defaults of ``python -m pytest_lbbench.lb``): one queue pop per
  10 ms tick (``_QUEUE_PROCESSOR_SLEEP_TIME``), a peer's availability decided at probe time
  against our queue size then, own pushes not counted (``_probe_lb_status``);
* **variant**: ``--dispatch-all-placeable --rate-limit-availability dispatch
  --rate-limit-count-own-pushes`` (the flags that do not apply to a mode change nothing there).

The variant rows are built with ``dataclasses.replace`` on the catalog's ``SystemSpec``
(``balancer_args``), so ``pytest_lbbench.systems`` is untouched. The report: throughput
(Σ(input + 2·output) / span), TTFT p50/p90, cache hit, pushes between LBs, the LB queue (sum
over LBs, sampled every 0.5 s from ``/conf``: peak and mean) and the LBs' tick lag. A
benchmark, not a timed test: it asserts only that the measurement is whole (no request lost).

``LBBENCH_TIMING_PROFILE`` names another engine profile (a registered name or a JSON file, as
``--profile`` of ``python -m pytest_lbbench.sim``), e.g. to repeat fidelity.md §3's quick
experiment with a profile whose engine queues form; default: the local backend's default.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment, LocalSettings
from pytest_lbbench.collect import NOTE_KEY
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.report.metrics import summarize
from pytest_lbbench.systems import SYSTEMS

# fidelity.md §3's quick experiment: two client regions, 50 users each, 4 replicas, arena_syn.
REGIONS = ("us-east-2", "ap-northeast-1")
USERS = 50
DURATION_S = 30.0
WORKLOAD = "arena_syn"
SETTINGS: dict[str, tuple[str, ...]] = {
    "original": (),
    "variant": ("--dispatch-all-placeable", "--rate-limit-availability", "dispatch",
                "--rate-limit-count-own-pushes"),
}
SAMPLE_EVERY_S = 0.5
PROFILE = os.environ.get("LBBENCH_TIMING_PROFILE", LocalSettings.profile)


def _conf(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/conf", timeout=2) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (OSError, ValueError):
        return None


def _run(system: str, setting: str, tmp: Path) -> dict[str, Any]:
    """One experiment of ``system`` with the LB flags of ``setting`` on a fresh deployment."""
    base = SYSTEMS[system]
    spec_row = replace(base, balancer_args=base.balancer_args + SETTINGS[setting])
    ledger = ProcessLedger(ledger_path(tmp))
    deployment = LocalDeployment(spec_row, LocalSettings(
        replicas=4, replica_regions=DEFAULT_REPLICA_REGIONS, client_regions=REGIONS,
        log_dir=tmp / "logs", ledger=ledger, replica_seed=0, profile=PROFILE,
    ))
    spec = ExperimentSpec(
        system=system, workload=WORKLOAD, exp_name=f"{WORKLOAD}_{system}_{setting}", client_regions=REGIONS,
        knobs=RunKnobs(duration_s=DURATION_S, num_users=USERS, seed=0, drain_timeout_s=60),
    )
    queue_samples: list[int] = []
    stop = threading.Event()

    def sample(urls: list[str]) -> None:
        while not stop.wait(SAMPLE_EVERY_S):
            confs = [_conf(u) for u in urls]
            queue_samples.append(sum(int(c["queue_size"]) for c in confs if c))

    deployment.start()
    try:
        urls = [c.url for c in deployment.lbs]
        sampler = threading.Thread(target=sample, args=(urls,), daemon=True)
        sampler.start()
        try:
            files = LocalClientLauncher(tmp / "logs", ledger).run(deployment, spec, tmp / "metric" / spec.exp_name)
        finally:
            stop.set()
            sampler.join(timeout=5)
        confs = [c for c in (_conf(u) for u in urls) if c]
    finally:
        deployment.stop()
    records: list[dict[str, Any]] = []
    for path in files.values():
        data = json.loads(path.read_text())
        assert len(data["metrics"]) == data["sent"] > 0, "a request was lost"
        records += data["metrics"]
    summary = summarize(records)
    return {
        "summary": summary,
        "pushed": sum(int(c.get("pushed_total", 0)) for c in confs),
        "self_pushed": sum(int(c.get("self_pushed_total", 0)) for c in confs),
        "lb_queue_peak": max(queue_samples, default=0),
        "lb_queue_mean": sum(queue_samples) / len(queue_samples) if queue_samples else 0.0,
        "tick_late_max_s": max((float(c.get("lag", {}).get("tick_late_max_s", 0.0)) for c in confs), default=0.0),
        "late_ticks": sum(int(c.get("lag", {}).get("late_ticks", 0)) for c in confs),
        "ticks": sum(int(c.get("lag", {}).get("ticks", 0)) for c in confs),
        "tick_late_s_total": sum(float(c.get("lag", {}).get("tick_late_s_total", 0.0)) for c in confs),
        "lb_args": list(spec_row.balancer_args),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


@pytest.mark.lbbench_selfcheck
@pytest.mark.parametrize("system", ["sky_walker", "sky_push_pull"])
def test_lb_timing_original_vs_variant(system: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    results = {setting: _run(system, setting, tmp_path / setting) for setting in SETTINGS}
    header = (f"{'setting':<9} {'requests':>8} {'failed':>6} {'tok/s':>7} {'TTFT p50 ms':>11} "
              f"{'TTFT p90 ms':>11} {'hit':>6} {'pushes':>6} {'self':>5} {'LBq peak':>8} "
              f"{'LBq mean':>8} {'late/ticks':>12} {'late max ms':>11}")
    lines = [f"{system}, {WORKLOAD}, {USERS} users x {len(REGIONS)} regions, {DURATION_S:.0f} s, 4 replicas, "
             f"profile {PROFILE}",
             header]
    for setting, res in results.items():
        s = res["summary"]
        hit = s["cache_hit_rate"]
        lines.append(
            f"{setting:<9} {s['requests']:>8} {s['failed']:>6} {s['throughput_tpt_per_s'] or 0:>7.0f} "
            f"{_ms(s['ttft_p50_s']):>11} {_ms(s['ttft_p90_s']):>11} "
            f"{'-' if hit is None else f'{hit:.1%}':>6} {res['pushed']:>6} {res['self_pushed']:>5} "
            f"{res['lb_queue_peak']:>8} {res['lb_queue_mean']:>8.1f} "
            f"{str(res['late_ticks']) + '/' + str(res['ticks']):>12} {res['tick_late_max_s'] * 1e3:>11.0f}"
        )
    orig, var = results["original"]["summary"], results["variant"]["summary"]
    if orig["throughput_tpt_per_s"] and var["throughput_tpt_per_s"]:
        lines.append(
            f"variant / original: throughput {var['throughput_tpt_per_s'] / orig['throughput_tpt_per_s']:.3f}x"
            + (f", TTFT p50 {var['ttft_p50_s'] / orig['ttft_p50_s']:.2f}x" if orig["ttft_p50_s"] and var["ttft_p50_s"] else "")
            + (f", TTFT p90 {var['ttft_p90_s'] / orig['ttft_p90_s']:.2f}x" if orig["ttft_p90_s"] and var["ttft_p90_s"] else "")
        )
    lines.append("variant flags: " + " ".join(SETTINGS["variant"]))
    (tmp_path / "lb_timing.json").write_text(json.dumps(results, indent=1, default=str))
    request.node.user_properties.append((NOTE_KEY, (f"lbbench LB timing: {system}", lines)))
    print("\n".join(lines))
    for res in results.values():
        assert res["summary"]["requests"] > 0
