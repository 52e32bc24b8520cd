"""How much the harness itself adds to TTFT, side by side in one run (issue 13).

Run with ``pytest benchmarks --lbbench-selfcheck -k harness`` (deselected unless asked for).

Three systems at two loads (the default, 50 users per client region, and the original's scale,
150): the real ``sglang-router`` (``sgl``), one of our LBs in its place (``sky_sgl_enhanced``:
one process, prefix-tree routing like the router's cache-aware policy: the like-for-like CPU
comparison) and our regional LBs (``sky_push_push``: one per replica region, pushing between
them). Each is an experiment on a fresh local deployment with two client regions (``us-east-2``, ``ap-northeast-1``) and four
replicas, at real time (``--time-scale 1``). For each it reports, from every request's TTFT
decomposition (:mod:`pytest_lbbench.report.ttft_parts`):

* the harness residual per request (TTFT minus every emulated delay, connection setup, LB
  queueing, engine queue and prefill) and per hop, p50 and p90;
* new connections per hop among the measured requests, and what every delay link accepted;
* the clients' event-loop lag p99 (a client-bound run measures its client, not the system);
* the balancers' CPU per request (our LBs summed over the regions, the router's whole process),
  measured over the client run, and their idle CPU (the same processes for 3 s before the
  clients start: probes and ticks, which the original LB runs too), so the per-request cost
  is also given without it.

A benchmark, not a timed test: it asserts only that the measurement is whole (no request lost,
every successful request decomposed). The goals (issue 13: residual p50 <= 2 ms and p90 <= 20 ms
at the default load, <= 5 / 50 ms at the original's scale; our LB's CPU per request <= the
router's) are printed beside the numbers, never asserted: this machine's load varies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment, LocalSettings
from pytest_lbbench.collect import NOTE_KEY
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.report.metrics import measured
from pytest_lbbench.report.ttft_parts import SEGMENTS, Topology, add_parts, summarize_parts
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.systems import SYSTEMS

REGIONS = ("us-east-2", "ap-northeast-1")
LOADS = {"default": 50, "original": 150}
GOALS_MS = {"default": (2.0, 20.0), "original": (5.0, 50.0)}
SYSTEMS_RUN = ("sgl", "sky_sgl_enhanced", "sky_push_push")
IDLE_S = 3.0
DURATION_S = 20.0
WARMUP_S = 5.0
WORKLOAD = "arena_syn"


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[name] = times.user + times.system
    return out


def _run(system: str, users: int, tmp: Path) -> dict[str, Any]:
    ledger = ProcessLedger(ledger_path(tmp))
    deployment = LocalDeployment(SYSTEMS[system], LocalSettings(
        replicas=4, replica_regions=DEFAULT_REPLICA_REGIONS, client_regions=REGIONS,
        log_dir=tmp / "logs", ledger=ledger, replica_seed=0,
    ))
    spec = ExperimentSpec(
        system=system, workload=WORKLOAD, exp_name=f"{WORKLOAD}_{system}_u{users}", client_regions=REGIONS,
        knobs=RunKnobs(duration_s=DURATION_S, warmup_s=WARMUP_S, num_users=users, seed=0, drain_timeout_s=60),
    )
    deployment.start()
    try:
        deployment.reset()
        description = deployment.describe()
        balancers = {b["name"] for b in description["balancers"]}
        pids = {name: pid for name, pid in deployment.process_ids().items() if name in balancers}
        assert set(pids) == balancers, f"no process for balancers {balancers - set(pids)}"
        idle_from = _cpu_s(pids)
        time.sleep(IDLE_S)
        cpu_before = _cpu_s(pids)
        idle_rate = sum(cpu_before.get(n, 0.0) - idle_from.get(n, 0.0) for n in pids) / IDLE_S
        started = time.monotonic()
        files = LocalClientLauncher(tmp / "logs", ledger).run(deployment, spec, tmp / "metric" / spec.exp_name)
        cpu_after = _cpu_s(pids)
        ran_s = time.monotonic() - started
        connections = deployment.connection_counts() or {}
    finally:
        deployment.stop()
    records: list[dict[str, Any]] = []
    loop_lag: dict[str, Any] = {}
    for region, path in files.items():
        data = json.loads(path.read_text())
        assert len(data["metrics"]) == data["sent"] > 0, "a request was lost"
        records += data["metrics"]
        loop_lag[region] = (data.get("client") or {}).get("loop_lag") or {}
    topo = Topology.from_description(description)
    assert topo is not None
    add_parts(records, topo)
    counted = measured(records)
    ok = [r for r in counted if not r["failed"] and r.get("ttft") is not None]
    assert all(r["ttft_parts"] is not None for r in ok), "a successful request has no decomposition"
    cpu = sum(cpu_after.get(n, 0.0) - cpu_before.get(n, 0.0) for n in pids)
    return {
        "requests": len(records), "measured": len(counted), "ok": len(ok),
        "parts": summarize_parts(counted),
        "link_connections": connections,
        "lag_p99_ms": max((float(v.get("lag_p99_ms") or 0.0) for v in loop_lag.values()), default=0.0),
        "client_bound": any(bool(v.get("client_bound")) for v in loop_lag.values()),
        "balancer_cpu_s": cpu,
        "idle_cpu_per_s": idle_rate,
        "cpu_ms_per_request": 1e3 * cpu / len(records) if records else None,
        "busy_cpu_ms_per_request": 1e3 * max(0.0, cpu - idle_rate * ran_s) / len(records) if records else None,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


@pytest.mark.lbbench_selfcheck
def test_harness_residual_connections_and_lb_cost(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    results: dict[str, dict[str, Any]] = {}
    for load, users in LOADS.items():
        for system in SYSTEMS_RUN:
            results[f"{system}@{load}"] = _run(system, users, tmp_path / f"{system}-{load}")
    lines = [f"{WORKLOAD}, {len(REGIONS)} client regions, 4 replicas, time scale 1, {WARMUP_S:.0f} s warm-up + "
             f"{DURATION_S:.0f} s; residual = TTFT minus emulated delays, connection setup, LB queue, "
             "engine queue and prefill (ms)"]
    header = (f"{'system@load':<22} {'users':>5} {'ok':>5} {'resid p50':>9} {'p90':>6} {'goal':>9}  "
              + " ".join(f"{s + ' p50/p90':>17}" for s in SEGMENTS)
              + f" {'new conns (hop: n)':<34} {'lag p99':>7} {'LB cpu ms/req':>13} {'w/o idle':>8} {'idle %':>6}")
    lines.append(header)
    for key, res in results.items():
        system, load = key.split("@")
        parts = res["parts"]
        residual = parts["parts"]["residual"]
        hops = " ".join(
            f"{_ms((parts['hop_residual'].get(s) or {}).get('p50')) + '/' + _ms((parts['hop_residual'].get(s) or {}).get('p90')):>17}"
            for s in SEGMENTS)
        new = ", ".join(f"{k}: {v}" for k, v in sorted(parts["new_connections"].items())) or "-"
        goal = GOALS_MS[load]
        met = (residual["p50"] or 0) * 1e3 <= goal[0] and (residual["p90"] or 0) * 1e3 <= goal[1]
        lines.append(
            f"{key:<22} {LOADS[load]:>5} {res['ok']:>5} {_ms(residual['p50']):>9} {_ms(residual['p90']):>6} "
            f"{f'{goal[0]:g}/{goal[1]:g}' + (' ok' if met else ' NO'):>9}  {hops} {new:<34} "
            f"{res['lag_p99_ms']:>6.1f}{'!' if res['client_bound'] else ' '} {res['cpu_ms_per_request'] or 0:>13.2f} "
            f"{res['busy_cpu_ms_per_request'] or 0:>8.2f} {100 * res['idle_cpu_per_s']:>6.1f}")
    for load in LOADS:
        router = results[f"sgl@{load}"]
        for system in SYSTEMS_RUN[1:]:
            ours = results[f"{system}@{load}"]
            if ours["cpu_ms_per_request"] and router["cpu_ms_per_request"]:
                lines.append(
                    f"{load} load: {system} CPU per request / sglang-router's = "
                    f"{ours['cpu_ms_per_request'] / router['cpu_ms_per_request']:.2f}x, without idle "
                    f"{(ours['busy_cpu_ms_per_request'] or 0) / (router['busy_cpu_ms_per_request'] or 1):.2f}x (goal <= 1)")
        lines.append(f"{load} load: delay links accepted " + ", ".join(
            f"{sum(results[f'{system}@{load}']['link_connections'].values())} connections for {system}'s "
            f"{results[f'{system}@{load}']['requests']} requests" for system in SYSTEMS_RUN) + " (warm-up included)")
    (tmp_path / "harness.json").write_text(json.dumps(results, indent=1, default=str))
    request.node.user_properties.append((NOTE_KEY, ("lbbench harness self-check", lines)))
    print("\n".join(lines))
    for res in results.values():
        assert res["ok"] > 0
