"""Our LB processes in front of real simulated-replica processes, over loopback.

Every test starts its processes with ``procutil.spawn`` (the same protocol the local backend
uses) and stops them in ``finally``. Replicas run at ``--time-scale 0.05`` so a request takes
tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_support import HEADERS
from pytest_lbbench import procutil

pytestmark = pytest.mark.timeout(180)

TIME_SCALE = "0.05"
# Two "regions": two replicas behind the us-east-2 LB, one behind the ap-northeast-1 LB.
PLACEMENT = {
    "lb-us-east-2": ("us-east-2", ["replica-0", "replica-1"]),
    "lb-ap-northeast-1": ("ap-northeast-1", ["replica-2"]),
}
DECISION = re.compile(r"^(lb|replica)-decision-(\d+)$", re.IGNORECASE)


@dataclass
class Stack:
    """Running LB and replica processes of one system."""

    lbs: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, str] = field(default_factory=dict)
    procs: list[procutil.ManagedProcess] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def conf(self, lb: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.lbs[lb] + "/conf", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
            return data


def _post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json", **HEADERS}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


def start_stack(
    tmp_path: Path,
    *,
    lb_mode: str,
    replica_mode: str,
    placement: dict[str, tuple[str, list[str]]] = PLACEMENT,
    membership: bool = True,
    extra_lb_args: tuple[str, ...] = (),
    extra_replica_args: tuple[str, ...] = (),
) -> Stack:
    """Spawn replicas and LBs; on any failure, stop what was started and re-raise."""
    stack = Stack()
    try:
        for _, (_, names) in placement.items():
            for name in names:
                proc = procutil.spawn(
                    name,
                    procutil.python_module_argv(
                        "pytest_lbbench.sim", "--name", name, "--time-scale", TIME_SCALE,
                        *extra_replica_args,
                    ),
                    log_path=tmp_path / f"{name}.log",
                )
                stack.procs.append(proc)
                stack.replicas[name] = f"http://127.0.0.1:{proc.info['port']}"
        for lb, (region, _) in placement.items():
            proc = procutil.spawn(
                lb,
                procutil.python_module_argv(
                    "pytest_lbbench.lb", "--name", lb, "--region", region,
                    "--lb-mode", lb_mode, "--replica-mode", replica_mode, *extra_lb_args,
                ),
                log_path=tmp_path / f"{lb}.log",
            )
            stack.procs.append(proc)
            assert proc.info["name"] == lb
            stack.lbs[lb] = f"http://127.0.0.1:{proc.info['port']}"
        if membership:
            send_membership(stack, placement)
    except BaseException:
        stack.stop()
        raise
    return stack


def send_membership(stack: Stack, placement: dict[str, tuple[str, list[str]]] = PLACEMENT) -> None:
    regions = {}
    for lb, (region, names) in placement.items():
        regions[lb] = region
        regions.update({name: region for name in names})
    for lb, (_, names) in placement.items():
        reply = _post_json(
            stack.lbs[lb] + "/lbbench/membership",
            {
                "self": lb,
                "lbs": stack.lbs,
                "replicas": {n: stack.replicas[n] for n in names},
                "regions": regions,
            },
        )
        assert reply["ok"] and reply["num_replicas"] == len(names)


@dataclass
class Reply:
    """What a client saw for one chat request."""

    status: int
    headers: dict[str, str]
    content: str
    usage: dict[str, Any] | None
    done: bool
    raw: str

    @property
    def replica(self) -> str | None:
        return self.headers.get("x-lbbench-replica")

    def decisions(self) -> dict[str, str]:
        """``{"lb": value, "replica": value}`` from the numbered decision headers."""
        found: dict[str, str] = {}
        for key, value in self.headers.items():
            match = DECISION.match(key)
            if match:
                assert match.group(1).lower() not in found, f"two {match.group(1)} decisions"
                found[match.group(1).lower()] = value
        return found


async def chat(
    session: aiohttp.ClientSession,
    url: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 24,
    hash_key: str = "user",
) -> Reply:
    """One streaming chat completion, read to the end like the benchmark client does."""
    body = {
        "model": "m",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    async with session.post(
        url + "/v1/chat/completions", json=body, headers={"x-hash-key": hash_key}
    ) as resp:
        text = await resp.text()
        headers = {k.lower(): v for k, v in resp.headers.items()}
        status = resp.status
    content, usage, done = [], None, False
    for line in text.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices", []):
            content.append(choice.get("delta", {}).get("content") or "")
    return Reply(status, headers, "".join(content), usage, done, text)


def _conversation_opening(idx: int) -> str:
    rng = random.Random(idx)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda"]
    # Distinct from the first characters on, and long enough that later turns keep a match
    # rate above the 0.5 cache threshold.
    return f"conversation {idx}: " + " ".join(rng.choice(words) for _ in range(300))


def _wait_idle(stack: Stack, timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """Poll every LB's /conf until no request is queued or streaming (post hooks ran)."""
    deadline = time.monotonic() + timeout_s
    while True:
        confs = {lb: stack.conf(lb) for lb in stack.lbs}
        idle = all(
            c["queue_size"] == 0
            and not any(c["replica_queue"].values())
            and not any(c["lb_queue"].values())
            for c in confs.values()
        )
        if idle or time.monotonic() > deadline:
            return confs
        time.sleep(0.05)


@pytest.fixture(scope="module")
def push_push(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """System 4 (push/push) over two regions, shared by the tests below."""
    stack = start_stack(tmp_path_factory.mktemp("push_push"), lb_mode="push", replica_mode="push")
    try:
        yield stack
    finally:
        stack.stop()


def test_push_push_every_request_completes_with_both_decisions(push_push: Stack) -> None:
    async def run() -> list[Reply]:
        async with aiohttp.ClientSession() as session:
            jobs = [
                chat(session, url, [{"role": "user", "content": f"{entry} question {i}"}])
                for entry, url in push_push.lbs.items()
                for i in range(5)
            ]
            return await asyncio.gather(*jobs)

    replies = asyncio.run(run())
    url_to_replica = {url: name for name, url in push_push.replicas.items()}
    lb_urls = set(push_push.lbs.values())
    for reply in replies:
        assert reply.status == 200 and reply.done and reply.usage is not None
        decisions = reply.decisions()
        assert set(decisions) == {"lb", "replica"}, reply.headers
        # The replica decision names the replica that actually answered.
        replica_url = re.search(r"\((http://[^)]+)\)", decisions["replica"])
        assert replica_url and url_to_replica[replica_url.group(1)] == reply.replica
        lb_url = re.search(r"Select LB in region [\w-]+ \((http://[^)]+)\)", decisions["lb"])
        assert lb_url and lb_url.group(1) in lb_urls
        for hop in ("first", "second"):
            for what in ("arrive", "scheduled"):
                assert float(reply.headers[f"{hop}-hop-sky-time-{what}"]) > 0
        # The replica hop is recorded first, the LB hop after it.
        names = [k for k in reply.headers if DECISION.match(k)]
        assert names == ["replica-decision-0", "lb-decision-1"]


def test_push_push_conversations_stick_to_their_lb_and_replica(push_push: Stack) -> None:
    turns = 4
    entries = list(push_push.lbs.items())

    async def conversation(session: aiohttp.ClientSession, idx: int) -> list[Reply]:
        _, url = entries[idx % len(entries)]  # a user stays in its region
        messages = [{"role": "user", "content": _conversation_opening(idx)}]
        replies = []
        for turn in range(turns):
            reply = await chat(session, url, messages, hash_key=f"user-{idx}")
            replies.append(reply)
            messages = messages + [
                {"role": "assistant", "content": reply.content},
                {"role": "user", "content": f"and now turn {turn + 1}?"},
            ]
        return replies

    async def run() -> list[list[Reply]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(conversation(session, i) for i in range(6)))

    placements = []
    for replies in asyncio.run(run()):
        assert all(r.status == 200 and r.done for r in replies)
        seen = {(r.decisions()["lb"], r.replica) for r in replies}
        assert len(seen) == 1, f"a conversation moved while balanced: {seen}"
        placements.append(seen.pop())
        # Later turns hit the replica's prefix cache.
        assert all(r.usage and r.usage["prompt_tokens_details"]["cached_tokens"] > 0 for r in replies[1:])
    # Concurrent first turns were spread by least load, so stickiness is not a coincidence.
    assert len({replica for _, replica in placements}) >= 2


def test_push_push_conf_shows_an_empty_queue(push_push: Stack) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(
                *(
                    chat(session, url, [{"role": "user", "content": f"conf probe {i}"}])
                    for url in push_push.lbs.values()
                    for i in range(10)
                )
            )

    asyncio.run(run())
    confs = _wait_idle(push_push)
    for lb, conf in confs.items():
        region, names = PLACEMENT[lb]
        assert conf["name"] == lb and conf["region"] == region
        assert conf["lb_mode"] == "push" and conf["replica_mode"] == "push"
        assert conf["queue_size"] == 0 and conf["queue_size_actual"] == 0
        assert sorted(conf["replica_names"].values()) == sorted(names)
        assert conf["num_replicas"] == conf["num_available_replicas"] == len(names)
        assert set(conf["replica_queue"]) == {push_push.replicas[n] for n in names}
        assert abs(conf["time"] - time.time()) < 60


@pytest.mark.parametrize("replica_mode", ["push", "pull"])
def test_burst_of_100_concurrent_requests_loses_nothing(tmp_path: Path, replica_mode: str) -> None:
    stack = start_stack(tmp_path, lb_mode="push", replica_mode=replica_mode)
    try:
        before = {lb: stack.conf(lb) for lb in stack.lbs}
        entries = list(stack.lbs.values())
        n = 100

        async def run() -> list[Reply | BaseException]:
            timeout = aiohttp.ClientTimeout(total=100)  # the original client's timeout
            async with aiohttp.ClientSession(timeout=timeout) as session:
                return await asyncio.gather(
                    *(
                        chat(
                            session,
                            entries[i % 2],
                            [{"role": "user", "content": f"burst {i} " + "filler " * (i % 7 * 30)}],
                            max_tokens=16 + i % 5 * 8,
                            hash_key=f"user-{i % 13}",
                        )
                        for i in range(n)
                    ),
                    return_exceptions=True,
                )

        replies = asyncio.run(run())
        completed = [r for r in replies if isinstance(r, Reply) and r.status == 200 and r.done]
        failures = [r for r in replies if r not in completed]
        assert len(completed) == n, f"sent {n}, completed {len(completed)}: {failures[:3]}"
        confs = _wait_idle(stack)
        dispatched = sum(c["dispatched_total"] - before[lb]["dispatched_total"] for lb, c in confs.items())
        assert dispatched == n  # every request reached exactly one replica
        assert all(c["queue_size"] == 0 for c in confs.values())
        assert all(c["failed_total"] == c["upstream_errors_total"] == 0 for c in confs.values())
        served = {r.replica for r in completed}
        assert served <= set(stack.replicas)
    finally:
        stack.stop()


def test_requests_before_membership_wait_then_complete(tmp_path: Path) -> None:
    placement = {"lb-global": ("global", ["replica-0"])}
    stack = start_stack(
        tmp_path, lb_mode="global", replica_mode="pull", placement=placement, membership=False
    )
    try:
        async def run() -> tuple[Reply, dict[str, Any]]:
            url = stack.lbs["lb-global"]
            async with aiohttp.ClientSession() as session:
                early = asyncio.ensure_future(chat(session, url, [{"role": "user", "content": "early"}]))
                # A client that gives up while waiting leaves the queue (never a hang).
                impatient = aiohttp.ClientTimeout(total=0.3)
                async with aiohttp.ClientSession(timeout=impatient) as other:
                    with pytest.raises(asyncio.TimeoutError):
                        await chat(other, url, [{"role": "user", "content": "impatient"}])
                await asyncio.sleep(0.3)
                assert not early.done()
                async with session.get(url + "/conf") as resp:
                    waiting = await resp.json()
                await asyncio.to_thread(send_membership, stack, placement)
                return await asyncio.wait_for(early, 30), waiting

        reply, waiting = asyncio.run(run())
        assert waiting["queue_size"] == 1 and waiting["queue_size_actual"] == 1
        assert waiting["num_replicas"] == 0
        assert reply.status == 200 and reply.done and reply.replica == "replica-0"
        # A global LB makes no LB-level decision.
        assert set(reply.decisions()) == {"replica"}
    finally:
        stack.stop()


def test_models_passthrough_and_client_disconnect_closes_upstream(tmp_path: Path) -> None:
    placement = {"lb-global": ("global", ["replica-0"])}
    # Live gauges: SGLang sets num_running_reqs only at its logging points, and this test reads
    # the replica's running count to see the upstream generation stop.
    stack = start_stack(tmp_path, lb_mode="global", replica_mode="push", placement=placement,
                        extra_replica_args=("--engine-metrics", "live"))
    lb, replica = stack.lbs["lb-global"], stack.replicas["replica-0"]
    try:
        async def running_on_replica(session: aiohttp.ClientSession) -> float:
            async with session.get(replica + "/metrics") as resp:
                text = await resp.text()
            match = re.search(r"^sglang:num_running_reqs\{[^}]*\} (\S+)$", text, re.MULTILINE)
            assert match, text
            return float(match.group(1))

        async def run() -> None:
            async with aiohttp.ClientSession() as session:
                async with session.get(lb + "/v1/models") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["data"][0]["id"]
                    assert resp.headers["x-lbbench-replica"] == "replica-0"
                body = {
                    "model": "m",
                    "messages": [{"role": "user", "content": "write a very long story"}],
                    "stream": True,
                    "max_tokens": 4000,
                    "ignore_eos": True,
                }
                resp = await session.post(lb + "/v1/chat/completions", json=body)
                assert resp.status == 200
                await resp.content.readline()  # the stream has started
                assert await running_on_replica(session) == 1.0
                resp.close()  # the client goes away mid-stream
                deadline = time.monotonic() + 5
                while await running_on_replica(session) != 0.0:
                    assert time.monotonic() < deadline, "upstream generation kept running"
                    await asyncio.sleep(0.05)

        asyncio.run(run())
        conf = _wait_idle(stack)["lb-global"]
        assert conf["replica_queue"] == {replica: 0}
    finally:
        stack.stop()


def test_unreachable_replica_is_a_502_not_a_hang(tmp_path: Path) -> None:
    placement: dict[str, tuple[str, list[str]]] = {"lb-global": ("global", [])}
    # Replica pull: the engine probe of the dead replica fails, which leaves it "available"
    # (the original's rule), and the health probe is 60 s away, so the first request is
    # dispatched and fails fast instead of waiting; that failure ejects the replica, so the
    # next request is answered 503 at once instead of being held.
    stack = start_stack(tmp_path, lb_mode="global", replica_mode="pull", placement=placement,
                        membership=False, extra_lb_args=("--health-interval-s", "60"))
    try:
        _post_json(
            stack.lbs["lb-global"] + "/lbbench/membership",
            {"self": "lb-global", "lbs": {}, "replicas": {"gone": "http://127.0.0.1:9"}},
        )

        async def run() -> list[Reply]:
            await asyncio.sleep(0.3)  # a few probe rounds
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                return [await chat(session, stack.lbs["lb-global"], [{"role": "user", "content": "x"}])
                        for _ in range(2)]

        first, second = asyncio.run(run())
        assert first.status == 502
        assert first.headers["content-type"].startswith("application/json")
        error = json.loads(first.raw)["error"]
        assert error["upstream"] == "gone" and "Cannot connect" in error["message"]
        assert second.status == 503
        assert "No healthy replicas" in json.loads(second.raw)["error"]["message"]
        conf = _wait_idle(stack)["lb-global"]
        assert conf["replica_queue"] == {"http://127.0.0.1:9": 0}
        assert conf["upstream_errors_total"] == 1 and conf["dispatched_total"] == 1
        assert conf["failed_total"] == 1
        assert conf["num_available_replicas"] == 0 and conf["num_replicas"] == 0
        health = conf["replica_health"]["gone"]
        assert not health["healthy"] and health["ejections"] == 1
        assert "before its first byte" in health["reason"]
    finally:
        stack.stop()
