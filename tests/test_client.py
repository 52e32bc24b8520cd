"""The client against a real simulated replica: one record per request, failures included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_lbbench.client.records import RequestRecord, served_by
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.client.runner import ClientSettings, EndpointNotReady, run_client
from pytest_lbbench.procutil import ManagedProcess, launch, python_module_argv, spawn
from pytest_lbbench.workloads.base import Conversation, RequestSettings, UserScript, WorkloadPlan


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = spawn(
        "replica",
        python_module_argv("pytest_lbbench.sim", "--port", "0", "--name", "r0", "--time-scale", "0.05"),
        log_path=tmp_path / "replica.log",
    )
    try:
        yield proc
    finally:
        proc.stop()


def make_plan(turns: list[tuple[str, ...]], max_tokens: int = 8, users: int = 1) -> WorkloadPlan:
    convs = tuple(Conversation(f"c{i}", f"judge{i}", float(i), t) for i, t in enumerate(turns))
    return WorkloadPlan(
        name="test",
        users=tuple(UserScript(u, convs) for u in range(users)),
        settings=RequestSettings(max_tokens=max_tokens, temperature=0.0),
    )


def run(plan: WorkloadPlan, url: str, **kw: Any) -> tuple[list[RequestRecord], Any]:
    records: list[RequestRecord] = []
    knobs = {k: kw.pop(k) for k in list(kw) if k in RunKnobs.__dataclass_fields__}
    settings = ClientSettings(backend_url=url, region="us-east-2", knobs=RunKnobs(**knobs), **kw)
    result = asyncio.run(run_client(plan, settings, records.append))
    return records, result


def test_multi_turn_history_grows_with_the_servers_answers(replica: ManagedProcess) -> None:
    url = f"http://127.0.0.1:{replica.info['port']}"
    plan = make_plan([("What is a radix tree?", "And why use one?", "Thanks, bye.")])
    records, result = run(plan, url, duration_s=0.5, drain_timeout_s=30)
    first_three = records[:3]
    assert [r.turn_index for r in first_three] == [0, 1, 2]
    assert all(r.failed is None for r in first_three)
    # The second turn's prompt is the first prompt + the first answer + the new question,
    # so the replica finds the first turn (and its answer) in its prefix cache.
    assert first_three[1].input_tokens > first_three[0].input_tokens + first_three[0].output_tokens
    assert first_three[1].cached_tokens >= first_three[0].input_tokens
    assert all(r.replica == "r0" and r.hash_key == "judge0" for r in first_three)
    assert all(r.itl and len(r.itl) == r.output_tokens - 1 for r in first_three)
    assert result.sent == result.recorded == len(records)


def test_failures_and_timeouts_are_recorded(replica: ManagedProcess) -> None:
    url = f"http://127.0.0.1:{replica.info['port']}"
    # Longer than SGLang's max_req_input_len on the default profile (bound by its 22,000-token
    # KV pool, not the model's 131,072-token context): HTTP 400.
    too_long = " ".join(["word"] * 23000)
    records, result = run(make_plan([(too_long,)]), url, duration_s=0.3, drain_timeout_s=10)
    assert records and all(r.failed and r.failed.startswith("http 400") for r in records)
    assert result.sent == len(records)
    # A request timeout shorter than the answer (75 tokens, ~0.26 s at this time scale):
    # recorded as "timeout", never dropped.
    records, result = run(make_plan([("Tell me a long story.",)], max_tokens=400), url,
                          duration_s=0.2, request_timeout_s=0.1, drain_timeout_s=10)
    assert records and all(r.failed == "timeout" for r in records)
    assert result.sent == len(records)


def test_drain_timeout_cancels_and_records_turns_in_flight(replica: ManagedProcess) -> None:
    url = f"http://127.0.0.1:{replica.info['port']}"
    records, result = run(make_plan([("Tell me a long story.",)], max_tokens=400, users=3), url,
                          duration_s=0.1, drain_timeout_s=0.05)  # the answers take ~0.26 s
    assert len(records) == result.sent == 3
    assert all(r.failed == "cancelled: drain timeout exceeded" for r in records)


def test_lag_threshold_flags_a_client_bound_run(replica: ManagedProcess) -> None:
    url = f"http://127.0.0.1:{replica.info['port']}"
    _, result = run(make_plan([("hi",)]), url, duration_s=0.5, lag_threshold_ms=-1.0)
    assert result.loop_lag["samples"] > 10
    assert result.loop_lag["client_bound"] is True


def test_unreachable_endpoint_fails_fast_with_a_message() -> None:
    with pytest.raises(EndpointNotReady, match="did not answer within 1 s"):
        run(make_plan([("hi",)]), "http://127.0.0.1:9", duration_s=1, ready_timeout_s=1)


def test_cli_writes_the_original_layout_and_no_partial_file(replica: ManagedProcess, tmp_path: Path) -> None:
    out = tmp_path / "metric" / "exp_sys" / "us-east-2.json"
    argv = python_module_argv(
        "pytest_lbbench.client", "--backend-url", f"http://127.0.0.1:{replica.info['port']}",
        "--workload", "arena_syn", "--num-users", "2", "--duration", "1", "--max-tokens", "4",
        "--output-file", str(out),
    )
    proc = launch("client", argv, log_path=tmp_path / "client.log", wait_ready_line=False)
    assert proc.popen.wait(timeout=60) == 0, proc.log_tail()
    data = json.loads(out.read_text())
    assert {"workload", "latency", "metrics", "backend_url", "workload_args"} <= set(data)
    assert data["workload"] == "arena_syn" and data["workload_args"]["num_users"] == 2
    assert len(data["metrics"]) == data["sent"] > 0
    assert not out.with_name(out.name + ".partial.jsonl").exists()
    # The per-request JSONL stays beside the result, one record per line.
    lines = out.with_suffix(".jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == data["metrics"]


def test_served_by_reads_replica_and_lb_headers() -> None:
    replica, lbs = served_by({
        "X-Lbbench-Replica": "replica-1",
        "lb-decision-0": "Select LB in region ap-northeast-1 (http://127.0.0.1:1)",
        "replica-decision-1": "Select Replica with id 1 (http://127.0.0.1:2)",
    })
    assert replica == "replica-1" and lbs == ["ap-northeast-1"]
    _, lbs = served_by({"gateway-decision-0": "Select backend r2 in region eu-central-1 (spill: yes)"})
    assert lbs == ["eu-central-1"]


def test_the_result_file_is_assembled_from_the_partial_records_on_disk(tmp_path: Path) -> None:
    # The client keeps no records in memory (a soak grew it ~12 KiB per request when it did):
    # the result's "metrics" are the partial JSONL's lines, in order, blank lines skipped.
    from pytest_lbbench.client.__main__ import _write_result_atomic

    records = [{"uid": "us-east-2", "failed": None, "text": "a\nb \u00e9"}, {"uid": "x", "itl": [0.1, 0.2]}]
    partial = tmp_path / "r.json.partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    payload = {"workload": "arena_syn", "latency": 2.5, "metrics": None, "client": {"loop_lag": {}}}
    _write_result_atomic(tmp_path / "r.json", payload, partial)
    assert json.loads((tmp_path / "r.json").read_text()) == {**payload, "metrics": records}
    partial.write_text("")
    _write_result_atomic(tmp_path / "r.json", payload, partial)
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == []
    assert not list(tmp_path.glob("*.tmp"))


def test_new_connection_is_set_only_for_the_request_that_opened_it(replica: ManagedProcess) -> None:
    # Model discovery opens the first connection (its short answer comes back whole with the
    # head): the first chat turn reuses it, so no request claims a handshake it never paid.
    # Later turns usually reuse it too, but not always: the client stops reading at [DONE]
    # (as the openai SDK does), and when the chunked terminator has not arrived by then aiohttp
    # closes the connection. So each flag is checked against the replica's own view of the
    # connection (the first request on it, from aiohttp's server side), not against a guess.
    url = f"http://127.0.0.1:{replica.info['port']}"
    plan = make_plan([("One?", "Two?", "Three?")])
    records, _ = run(plan, url, duration_s=0.5, drain_timeout_s=30)
    assert len(records) >= 3 and all(r.failed is None for r in records)
    assert records[0].new_connection is False
    assert [r.new_connection for r in records] == [
        (r.replica_timing or {}).get("new_connection") for r in records]


def test_connection_seen_tells_fresh_from_reused_connections(replica: ManagedProcess) -> None:
    import aiohttp

    from pytest_lbbench.client.runner import ConnectionSeen

    url = f"http://127.0.0.1:{replica.info['port']}/v1/models"

    async def main() -> list[bool | None]:
        seen = ConnectionSeen()
        flags: list[bool | None] = []
        async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
            for session in (first, first, second, first):
                async with session.get(url) as resp:
                    flags.append(seen.first_use(resp))
                    await resp.read()
        return flags

    assert asyncio.run(main()) == [True, False, True, False]
