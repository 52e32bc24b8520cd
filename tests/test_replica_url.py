"""``--replica-url``: running servers as the replicas, behind our delay links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from pytest_lbbench.procutil import ManagedProcess, python_module_argv, spawn

FAST = ("--time-scale", "0.05", "--max-tokens", "12", "--num-users", "3",
        "--duration", "3", "--drain-timeout", "20", "-p", "no:cacheprovider")


@pytest.fixture
def outside_replicas(tmp_path: Path) -> Iterator[list[str]]:
    """Two simulated replicas started outside the run, as a user starts their engines."""
    procs: list[ManagedProcess] = []
    try:
        for i in range(2):
            procs.append(spawn(f"outside-{i}", python_module_argv(
                "pytest_lbbench.sim", "--host", "127.0.0.1", "--port", "0", "--name", f"outside-{i}",
                "--time-scale", "0.05"), log_path=tmp_path / f"outside-{i}.log"))
        yield [f"http://127.0.0.1:{p.info['port']}" for p in procs]
    finally:
        for proc in procs:
            proc.stop()


def test_running_servers_serve_as_the_replicas(bench: pytest.Pytester, outside_replicas: list[str]) -> None:
    out = bench.path / "results"
    east, tokyo = outside_replicas
    result = bench.runpytest("--replica-url", f"us-east-2={east}", "--replica-url", f"ap-northeast-1={tokyo}",
                             "--systems", "sky_push_push", "--regions", "us-east-2,ap-northeast-1",
                             "--output-dir", str(out), *FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*replicas=2 over us-east-2,ap-northeast-1*"])
    records = []
    for region in ("us-east-2", "ap-northeast-1"):
        data = json.loads((out / "latest" / "metric" / "arena_syn_sky_push_push" / f"{region}.json").read_text())
        records += data["metrics"]
    assert data["deployment"]["replicas"] == [
        {"name": "replica-0-us-east-2", "region": "us-east-2", "url": east},
        {"name": "replica-1-ap-northeast-1", "region": "ap-northeast-1", "url": tokyo}]
    assert records and not [r for r in records if r["failed"]]
    # The outside servers named themselves in their responses, and multi-turn chats hit their caches.
    assert {r["replica"] for r in records} <= {"outside-0", "outside-1"}
    assert any((r.get("cached_tokens") or 0) > 0 for r in records)
    # Between experiments their prefix caches were flushed through SGLang's endpoint.
    assert "replica-0-us-east-2 (POST /flush_cache)" in data["isolation"]["components"]
    # Each region's LB reaches its outside replica through an intra-region delay link.
    links = data["deployment"]["links_one_way_ms"]
    assert links["lb-us-east-2>replica-0-us-east-2"] == links["lb-ap-northeast-1>replica-1-ap-northeast-1"] == 0.5


@pytest.mark.parametrize(("args", "says"), [
    (("--replica-url", "us-east-2"), "*--replica-url 'us-east-2': expected REGION=http://HOST:PORT*"),
    (("--replica-url", "mars-1=http://127.0.0.1:1"), "*--replica-url: unknown region 'mars-1'*"),
    (("--replica-url", "us-east-2=http://127.0.0.1:1", "--replicas", "3"), "*--replicas 3 but 1 --replica-url given*"),
])
def test_bad_replica_urls_are_usage_errors(bench: pytest.Pytester, args: tuple[str, ...], says: str) -> None:
    result = bench.runpytest("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([says])
