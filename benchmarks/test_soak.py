"""Soak: does every process stay bounded in memory and open files over a long run?

Run with ``pytest benchmarks --lbbench-selfcheck -k soak`` (30 minutes by default;
``LBBENCH_SOAK_MINUTES`` changes it, ``LBBENCH_SOAK_SYSTEM`` the system, ``sky_walker`` by
default: regional LBs with prefix trees, peer probes and pushes, the most state we keep).

One experiment at the default load (the plugin's defaults: 50 users in each of the two default
client regions, 4 replicas over the three default regions) runs for the whole time on this
machine. Every 30 s the benchmark reads each process's resident memory (``VmRSS``) and open file
descriptors from ``/proc``: replicas, LBs, the delay links and the clients. It reports, per
process, the value at the start, after the first five minutes (caches and trees filled), at the
end, and the peak (and writes every sample to ``soak.json`` and a plot of them to ``soak.png`` beside
``soak.txt``), and fails when a process keeps growing after it settled (see :func:`kept_growing`).
The numbers go to the README (section Faults).

The LBs' prefix trees are bounded by ``--max-tree-size`` characters per target (2^24, the
original's sglang-router value), which at this load is not reached within 30 minutes: a tree
still filling towards its bound would look like a leak. So the soak runs our LBs with
``LBBENCH_SOAK_MAX_TREE_SIZE`` characters per target (2^18 by default: a 6-minute soak measured
~0.4 million characters a minute into lb-us-east-2's trees, over its replica and peer targets, so
2^18 is reached in the first minutes and then held there by the 60 s eviction) and samples every LB's ``GET /conf``
``prefix_tree_chars`` beside its memory; growth that remains once the trees are held at their
bound is a leak. ``LBBENCH_SOAK_MAX_TREE_SIZE=16777216`` soaks with the original bound.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path, live_entries
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment, LocalSettings
from pytest_lbbench.collect import NOTE_KEY
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.report.plots import plot_process_resources
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.systems import SYSTEMS, BalancerKind

MINUTES = float(os.environ.get("LBBENCH_SOAK_MINUTES", "30"))
SYSTEM = os.environ.get("LBBENCH_SOAK_SYSTEM", "sky_walker")
CLIENT_REGIONS = ("us-east-2", "ap-northeast-1")
SAMPLE_EVERY_S = 30.0
SETTLED_S = min(300.0, MINUTES * 60 / 3)  # "after warm-up": 5 min, or a third of a short soak
MAX_TREE_SIZE = int(os.environ.get("LBBENCH_SOAK_MAX_TREE_SIZE", str(2**18)))


def _proc_stats(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open fds) of ``pid``, None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0, fds
    return None


def _tree_chars(lb_url: str) -> int | None:
    """Characters in all prefix trees of one LB (both levels, every target), None when its
    ``/conf`` does not answer within 2 s."""
    try:
        with urllib.request.urlopen(lb_url + "/conf", timeout=2.0) as response:
            trees = json.loads(response.read())["prefix_tree_chars"]
    except (OSError, ValueError, KeyError):
        return None
    return sum(sum(level.values()) for level in trees.values())


def kept_growing(settled: tuple[float, float, int], end: tuple[float, float, int]) -> bool:
    """Whether a process grew after it settled: RSS up by more than 10 % + 2 MiB, or more than
    64 more open files. A bounded process is flat once its trees and caches are full; the first
    soak's rule (1.5 x + 20 MiB) let a steady 0.4-0.6 MiB/min through, which over hours is not bounded."""
    return end[0] > settled[0] and (end[1] > 1.10 * settled[1] + 2.0 or end[2] > settled[2] + 64)


@pytest.mark.lbbench_selfcheck
@pytest.mark.timeout(MINUTES * 60 + 600)  # the soak itself, then start-up, drain and stop
def test_soak_keeps_memory_and_files_bounded(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ledger = ProcessLedger(ledger_path(tmp_path))
    system = SYSTEMS[SYSTEM]
    if system.kind is BalancerKind.SKY_LB:  # our LB takes the last --max-tree-size given
        system = dataclasses.replace(system, balancer_args=(*system.balancer_args, "--max-tree-size", str(MAX_TREE_SIZE)))
    deployment = LocalDeployment(system, LocalSettings(
        replicas=4, replica_regions=DEFAULT_REPLICA_REGIONS, client_regions=CLIENT_REGIONS,
        log_dir=tmp_path / "logs", ledger=ledger,
    ))
    samples: dict[str, list[tuple[float, float, int]]] = {}
    tree_chars: dict[str, list[tuple[float, int]]] = {}  # LB name -> [(elapsed s, characters)]
    deployment.start()
    try:
        deployment.reset()
        spec = ExperimentSpec(
            system=SYSTEM, workload="arena_syn", exp_name="soak", client_regions=CLIENT_REGIONS,
            knobs=RunKnobs(duration_s=MINUTES * 60, seed=0), workload_options={"num_conv": 6000},  # ~100 chats per user: more than 30 min of turns
        )
        started = time.monotonic()
        last = [float("-inf")]

        def sample(elapsed_s: float, recorded: int) -> None:
            if elapsed_s - last[0] < SAMPLE_EVERY_S:
                return
            last[0] = elapsed_s
            for entry in live_entries(ledger_path(tmp_path)):
                stats = _proc_stats(int(entry["pid"]))
                if stats is not None:
                    samples.setdefault(str(entry["name"]), []).append((elapsed_s, *stats))
            for lb in deployment.lbs:
                if (chars := _tree_chars(lb.url)) is not None:
                    tree_chars.setdefault(lb.name, []).append((elapsed_s, chars))

        files = LocalClientLauncher(tmp_path / "logs", ledger).run(deployment, spec, tmp_path / "metric",
                                                                  on_progress=sample)
        wall = time.monotonic() - started
    finally:
        deployment.stop()
    records = [r for f in files.values() for r in json.loads(f.read_text())["metrics"]]
    failed = sum(1 for r in records if r["failed"])
    bound = (f"; LB prefix trees bounded at {MAX_TREE_SIZE} characters per target"
             if system.kind is BalancerKind.SKY_LB else "")
    lines = [f"{SYSTEM}, {MINUTES:g} min at 50 users x {len(CLIENT_REGIONS)} regions, 4 replicas: "
             f"{len(records)} requests ({failed} failed) in {wall / 60:.1f} min; "
             f"settled = after {SETTLED_S / 60:.0f} min{bound}",
             f"{'process':34} {'RSS MiB start':>13} {'settled':>7} {'end':>7} {'peak':>7} "
             f"{'fds start':>9} {'settled':>7} {'end':>5} {'peak':>5}"]
    growing: list[str] = []
    for name, points in sorted(samples.items()):
        start, end = points[0], points[-1]
        settled = next((p for p in points if p[0] >= SETTLED_S), start)
        peak_rss, peak_fds = max(p[1] for p in points), max(p[2] for p in points)
        lines.append(f"{name:34} {start[1]:>13.1f} {settled[1]:>7.1f} {end[1]:>7.1f} {peak_rss:>7.1f} "
                     f"{start[2]:>9d} {settled[2]:>7d} {end[2]:>5d} {peak_fds:>5d}")
        if kept_growing(settled, end):
            growing.append(f"{name}: RSS {settled[1]:.0f} -> {end[1]:.0f} MiB, fds {settled[2]} -> {end[2]}")
    for name, chars in sorted(tree_chars.items()):
        settled_chars = next((c for t, c in chars if t >= SETTLED_S), chars[0][1])
        lines.append(f"{name}: prefix-tree characters (all targets) start {chars[0][1]}, "
                     f"settled {settled_chars}, end {chars[-1][1]}, peak {max(c for _, c in chars)}")
    request.node.user_properties.append((NOTE_KEY, ("lbbench soak", lines)))
    (tmp_path / "soak.txt").write_text("\n".join(lines) + "\n")
    # Over time, for a plot or a closer look: {process: [[elapsed s, RSS MiB, fds], ...]}.
    (tmp_path / "soak.json").write_text(json.dumps(samples, indent=1) + "\n")
    (tmp_path / "soak-trees.json").write_text(json.dumps(tree_chars, indent=1) + "\n")
    plot_process_resources(samples, lines[0], tmp_path / "soak.png")
    print("\n".join(lines))
    assert len(records) > 0 and failed <= 0.01 * len(records), f"{failed} of {len(records)} failed"
    assert not growing, "processes kept growing: " + "; ".join(growing)
