"""Arrival patterns, trees and warm-up, driven against a real simulated replica."""

from __future__ import annotations

import asyncio
import random
import statistics
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_lbbench.client.records import RequestRecord
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.client.runner import ClientSettings, arrival_gaps, replay_offsets, run_client
from pytest_lbbench.procutil import ManagedProcess, python_module_argv, spawn
from pytest_lbbench.report.metrics import summarize
from pytest_lbbench.workloads.base import (
    Arrival,
    Conversation,
    RequestSettings,
    TreeShape,
    UserScript,
    WorkloadPlan,
)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    proc: ManagedProcess = spawn(
        "replica",
        python_module_argv("pytest_lbbench.sim", "--port", "0", "--name", "r0", "--time-scale", "0.02"),
        log_path=tmp_path / "replica.log",
    )
    try:
        yield f"http://127.0.0.1:{proc.info['port']}"
    finally:
        proc.stop()


def convs(n: int, turns: int = 2, key: str = "u", gap_s: float = 1.0) -> tuple[Conversation, ...]:
    return tuple(
        Conversation(f"c{i}", f"{key}{i % 3}", i * gap_s, tuple(f"question {i}.{t}?" for t in range(turns)))
        for i in range(n)
    )


def plan(users: list[tuple[Conversation, ...]], arrival: Arrival = Arrival(),
         tree: TreeShape | None = None, max_tokens: int = 4) -> WorkloadPlan:
    return WorkloadPlan(
        name="test",
        users=tuple(UserScript(i, c) for i, c in enumerate(users)),
        settings=RequestSettings(max_tokens=max_tokens, temperature=0.0),
        arrival=arrival,
        tree=tree,
    )


def run(p: WorkloadPlan, url: str, **kw: Any) -> tuple[list[RequestRecord], Any]:
    records: list[RequestRecord] = []
    settings = ClientSettings(backend_url=url, region="us-east-2",
                              knobs=RunKnobs(**{"drain_timeout_s": 30, **kw}))
    result = asyncio.run(run_client(p, settings, records.append))
    return records, result


def test_think_time_floor_spaces_a_users_turns(url: str) -> None:
    records, result = run(
        plan([convs(2, turns=3)], Arrival(think_time_floor_s=0.4)), url, duration_s=1.5,
    )
    assert result.sent == result.recorded == len(records) >= 3
    starts = sorted(r.start for r in records)  # one user: every request is the same user's
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps and min(gaps) >= 0.39
    # Without the floor the same turns follow each other in a few milliseconds.
    fast, _ = run(plan([convs(2, turns=3)]), url, duration_s=0.3)
    assert fast[1].start - fast[0].start < 0.3


def test_replay_scales_recorded_gaps_and_staggers_users() -> None:
    c = convs(4, gap_s=100.0)  # recorded span 300 s
    assert replay_offsets(c, 3.0) == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert replay_offsets(c, 1000.0) == pytest.approx([0.0, 100.0, 200.0, 300.0])  # never stretched
    assert replay_offsets(c, None) == pytest.approx([0.0, 100.0, 200.0, 300.0])


def test_replay_starts_conversations_at_their_times(url: str) -> None:
    p = plan([convs(3, turns=1, gap_s=10.0), convs(3, turns=1, gap_s=10.0)],
             Arrival(kind="replay", replay_span_s=1.0, user_stagger_s=0.25))
    records, _ = run(p, url, duration_s=2.0)
    assert len(records) == 6  # one pass, every conversation once
    t0 = min(r.start for r in records)
    starts = sorted((r.user_index, r.conv_index, r.start - t0) for r in records)
    # User u's conversation c starts at 0.25·u (stagger) + 0.5·c (10 s gaps squeezed 20×).
    assert all(abs(t - (0.25 * u + 0.5 * c)) < 0.08 for u, c, t in starts), starts


def test_gamma_gaps_have_the_asked_mean_and_burstiness() -> None:
    for shape in (1.0, 0.25):
        gen = arrival_gaps(20.0, shape, random.Random(1))
        gaps = [next(gen) for _ in range(20000)]
        assert statistics.mean(gaps) == pytest.approx(1 / 20.0, rel=0.03)
        cv = statistics.pstdev(gaps) / statistics.mean(gaps)
        assert cv == pytest.approx(shape ** -0.5, rel=0.06)  # gamma: CV = 1/sqrt(shape)


def test_open_loop_keeps_sending_whatever_the_server_does(url: str) -> None:
    # One user, long answers: closed loop would send one request at a time; open loop sends
    # at the rate, so many requests are in flight at once.
    p = plan([convs(50, turns=3)], Arrival(kind="rate", request_rate=40.0), max_tokens=64)
    records, result = run(p, url, duration_s=1.5, seed=3)
    assert result.sent == result.recorded == len(records)
    starts = sorted(r.start for r in records)
    assert 35 <= len(records) <= 85  # Poisson(60): far outside this only if the rate is wrong
    overlapping = sum(1 for r in records if r.end and r.start < starts[5] < r.end)
    assert overlapping >= 3
    # Later turns extend their conversation: a turn k>0 only after its turn k-1 answered.
    done: dict[tuple[int, int], float] = {}
    for r in sorted(records, key=lambda r: r.start):
        if r.turn_index > 0:
            prev = done.get((r.conv_index, r.turn_index - 1))
            assert prev is not None and prev <= r.start
        if r.end:
            done[(r.conv_index, r.turn_index)] = r.end


def test_open_loop_schedule_is_reproducible(url: str) -> None:
    p = plan([convs(20, turns=1)], Arrival(kind="rate", request_rate=30.0))
    a, _ = run(p, url, duration_s=0.8, seed=5)
    b, _ = run(p, url, duration_s=0.8, seed=5)
    c, _ = run(p, url, duration_s=0.8, seed=6)
    def rel(rs: list[RequestRecord]) -> list[float]:
        ordered = sorted(rs, key=lambda r: r.start)
        return [round(r.start - ordered[0].start, 1) for r in ordered]

    assert len(a) == len(b) and rel(a) == pytest.approx(rel(b), abs=0.15)
    assert len(a) != len(c) or rel(a) != rel(c)


@pytest.mark.parametrize("parallel", [True, False])
def test_tree_answers_every_node_num_branches_times(url: str, parallel: bool) -> None:
    stages = ("Plan: 2+3?", "Execute.", "Reflect.", "Answer.")
    question = Conversation("q0", "user-0", 0.0, stages)
    p = plan([(question,)], tree=TreeShape(num_branches=2, parallel=parallel))
    # Long enough for a whole tree on a slow machine (a stage starts only before the deadline);
    # the user then starts the question again, so the first 30 requests are the first tree.
    records, _ = run(p, url, duration_s=3.0)
    tree = sorted(records, key=lambda r: r.start)[:30]
    assert len(tree) == 2 + 4 + 8 + 16
    assert [sum(1 for r in tree if r.turn_index == k) for k in range(4)] == [2, 4, 8, 16]
    paths = {r.branch for r in tree}
    assert {"0", "1", "0.0", "1.1.0", "1.1.1.1"} <= paths and len(paths) == 30
    # A child's prompt is its parent's prompt + answer + the next stage: it hits the cache.
    deep = [r for r in tree if r.turn_index == 3]
    assert all(r.failed is None and r.cached_tokens and r.cached_tokens > 0.5 * (r.input_tokens or 0)
               for r in deep)
    if not parallel:
        ordered = sorted(tree, key=lambda r: r.start)
        assert all(a.end is not None and a.end <= b.start for a, b in zip(ordered, ordered[1:]))
    else:
        leaves = sorted((r for r in tree if r.turn_index == 3), key=lambda r: r.start)
        assert leaves[-1].start < min(r.end for r in leaves if r.end)  # sent together


def test_warmup_requests_are_recorded_but_not_counted(url: str) -> None:
    records, result = run(plan([convs(5, turns=2)] * 2), url, duration_s=0.6, warmup_s=0.6)
    warm = [r for r in records if r.warmup]
    counted = [r for r in records if not r.warmup]
    assert warm and counted and result.recorded == len(records)
    t0 = min(r.start for r in records)
    assert all(r.start - t0 < 0.65 for r in warm) and all(r.start - t0 >= 0.55 for r in counted)
    summary = summarize([r.to_dict() for r in records])
    assert summary["requests"] == len(counted)
    assert 0.5 < result.latency_s < 5  # the measured phase only
