"""The emulated GKE Gateway in front of real simulated-replica processes, over loopback.

Every process is started with ``procutil.spawn``/``launch`` (the local backend's protocol) and
stopped in ``finally``. Replicas run at ``--time-scale 0.05``, so a request takes tens of ms.
Placement: one replica in us-east-2, three in ap-northeast-1, so the remote region has room for
everything the local one spills.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_support import HEADERS
from pytest_lbbench import procutil

pytestmark = pytest.mark.timeout(180)

US, AP, EU = "us-east-2", "ap-northeast-1", "eu-central-1"
TIME_SCALE = "0.05"
PLACEMENT = {"r-us-0": US, "r-ap-0": AP, "r-ap-1": AP, "r-ap-2": AP}
DECISION_NAME = re.compile(r"^gateway-decision-(\d+)$", re.IGNORECASE)
DECISION_VALUE = re.compile(r"^Select backend (\S+) in region (\S+) \(spill: (yes|no)\)$")


# ---------------------------------------------------------------- processes


def _start_replicas(
    tmp_path: Path, placement: dict[str, str]
) -> tuple[dict[str, str], list[procutil.ManagedProcess]]:
    """Launch all replicas at once (they start in parallel), then wait for each."""
    procs: list[procutil.ManagedProcess] = []
    try:
        for name in placement:
            procs.append(procutil.launch(
                name,
                procutil.python_module_argv("pytest_lbbench.sim", "--name", name,
                                            "--time-scale", TIME_SCALE),
                log_path=tmp_path / f"{name}.log",
            ))
        urls = {}
        for proc in procs:
            urls[proc.name] = f"http://127.0.0.1:{proc.wait_ready(30)['port']}"
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return urls, procs


@dataclass
class Replicas:
    urls: dict[str, str]
    regions: dict[str, str]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """The shared replica processes (tests that kill a replica start their own)."""
    urls, procs = _start_replicas(tmp_path_factory.mktemp("gateway-replicas"), PLACEMENT)
    try:
        yield Replicas(urls, dict(PLACEMENT))
    finally:
        for proc in procs:
            proc.stop()


@dataclass
class Gw:
    """One running gateway front end."""

    proc: procutil.ManagedProcess
    url: str
    name: str

    def conf(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/conf", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
            return data

    def membership(self, backends: dict[str, str], regions: dict[str, str],
                   order: list[str]) -> dict[str, Any]:
        payload = {"self": self.name, "backends": backends, "regions": regions,
                   "region_order": order}
        req = urllib.request.Request(
            self.url + "/lbbench/membership", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **HEADERS},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
        assert data["ok"] and data["num_backends"] == len(backends)
        return data


def start_gateway(tmp_path: Path, region: str, *flags: str) -> Gw:
    name = f"gke-{region}"
    proc = procutil.spawn(
        name,
        procutil.python_module_argv("pytest_lbbench.gateway", "--name", name, "--region", region,
                                    *flags),
        log_path=tmp_path / f"{name}.log",
    )
    assert proc.info["name"] == name
    return Gw(proc, f"http://127.0.0.1:{proc.info['port']}", name)


# ---------------------------------------------------------------- client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str
    done: bool

    @property
    def replica(self) -> str | None:
        return self.headers.get("x-lbbench-replica")

    def decision(self) -> tuple[str, str, bool]:
        """(backend, region, spill) from the single gateway decision header."""
        found = [(k, v) for k, v in self.headers.items() if DECISION_NAME.match(k)]
        assert len(found) == 1, self.headers
        match = DECISION_VALUE.match(found[0][1])
        assert match, found
        return match.group(1), match.group(2), match.group(3) == "yes"


async def chat(session: aiohttp.ClientSession, url: str, prompt: str) -> Reply:
    """One streaming chat completion, read to the end."""
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": 8, "temperature": 0.0}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        text = await resp.text()
        headers = {k.lower(): v for k, v in resp.headers.items()}
        return Reply(resp.status, headers, text, "data: [DONE]" in text)


async def paced(url: str, count: int, rate: float, tag: str) -> list[Reply]:
    """Open loop: start ``count`` requests ``1/rate`` s apart without waiting for answers."""
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        for i in range(count):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(chat(session, url, f"{tag} question {i}")))
        return await asyncio.gather(*tasks)


def assert_served(reply: Reply, regions: dict[str, str]) -> tuple[str, bool]:
    """The reply completed and its decision names the replica that answered; (region, spill)."""
    assert reply.status == 200 and reply.done, (reply.status, reply.body[:300])
    backend, region, spill = reply.decision()
    assert backend == reply.replica and regions[backend] == region
    return region, spill


def wait_idle(gw: Gw, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        conf = gw.conf()
        if not any(conf["in_flight"].values()) or time.monotonic() > deadline:
            return conf
        time.sleep(0.05)


# ---------------------------------------------------------------- tests


def test_under_budget_every_request_stays_in_the_front_ends_region(
    replicas: Replicas, tmp_path: Path
) -> None:
    # Budget 50 req/s per replica: a closed loop of one client cannot reach it.
    us = start_gateway(tmp_path, US, "--max-rate-per-endpoint", "50", "--rate-window-s", "1")
    ap = start_gateway(tmp_path, AP, "--max-rate-per-endpoint", "50", "--rate-window-s", "1")
    try:
        us.membership(replicas.urls, replicas.regions, [US, AP])
        ap.membership(replicas.urls, replicas.regions, [AP, US])

        async def run() -> dict[str, list[Reply]]:
            async with aiohttp.ClientSession() as session:
                out: dict[str, list[Reply]] = {US: [], AP: []}
                for i in range(12):
                    out[US].append(await chat(session, us.url, f"us question {i}"))
                    out[AP].append(await chat(session, ap.url, f"ap question {i}"))
                return out

        replies = asyncio.run(run())
        for region, served in replies.items():
            for reply in served:
                assert assert_served(reply, replicas.regions) == (region, False)
        # Round robin over the three local replicas of the ap front end.
        assert Counter(r.replica for r in replies[AP]) == {"r-ap-0": 4, "r-ap-1": 4, "r-ap-2": 4}
        conf = wait_idle(us)
        assert conf["name"] == us.name and conf["region"] == US and conf["spill_total"] == 0
        assert conf["regions"][US]["requests_total"] == 12
        assert conf["regions"][US]["budget_rps"] == 50.0
        assert conf["in_flight"] == {name: 0 for name in replicas.urls}
        assert sorted(conf["healthy_backends"]) == sorted(replicas.urls)
        with urllib.request.urlopen(us.url + "/health", timeout=5) as resp:
            assert resp.status == 200
    finally:
        for gw in (us, ap):
            gw.proc.stop()
    # SIGTERM is a clean shutdown, not a crash.
    assert us.proc.popen.returncode == 0 and ap.proc.popen.returncode == 0


def test_over_budget_spills_to_next_region_and_share_grows_with_overload(
    replicas: Replicas, tmp_path: Path
) -> None:
    # us: 1 replica × 4 req/s = 4 req/s local budget; ap (next) has 12 req/s.
    gw = start_gateway(tmp_path, US, "--max-rate-per-endpoint", "4", "--rate-window-s", "1")
    try:
        gw.membership(replicas.urls, replicas.regions, [US, AP])
        shares = []
        for overload in (2, 4):
            replies = asyncio.run(paced(gw.url, 8 * overload, 4.0 * overload, f"x{overload}"))
            spills = 0
            for reply in replies:
                region, spill = assert_served(reply, replicas.regions)
                assert region == (AP if spill else US)
                spills += spill
            shares.append(spills / len(replies))
            time.sleep(1.2)  # let the 1 s window empty before the next phase
        # Expected ≈ 1 − 1/overload: 0.5 then 0.75 (loose bounds: a loaded CI box bunches
        # or stretches arrivals).
        assert shares[0] >= 0.25, shares
        assert shares[1] >= shares[0] + 0.1, shares
        conf = wait_idle(gw)
        assert conf["spill_by_reason"].get("capacity", 0) > 0
        assert conf["spill_by_region"][AP] == conf["spill_total"]
    finally:
        gw.proc.stop()


def test_region_without_healthy_backends_sends_everything_to_the_next_region(
    replicas: Replicas, tmp_path: Path
) -> None:
    eu_urls, eu_procs = _start_replicas(tmp_path, {"r-eu-0": EU})
    gw = None
    try:
        gw = start_gateway(tmp_path, EU, "--max-rate-per-endpoint", "100", "--rate-window-s", "1",
                           "--health-interval-s", "0.2", "--unhealthy-threshold", "2",
                           # A generous probe timeout: a busy CI box must not flap a live
                           # replica; the dead one fails at once (connection refused).
                           "--health-timeout-s", "2")
        urls = {**replicas.urls, **eu_urls}
        regions = {**replicas.regions, "r-eu-0": EU}
        gw.membership(urls, regions, [EU, US, AP])
        url = gw.url

        async def burst(n: int, tag: str) -> list[Reply]:
            async with aiohttp.ClientSession() as session:
                return [await chat(session, url, f"{tag} {i}") for i in range(n)]

        for reply in asyncio.run(burst(3, "before")):
            assert assert_served(reply, regions) == (EU, False)
        eu_procs[0].stop()
        deadline = time.monotonic() + 15
        while "r-eu-0" in gw.conf()["healthy_backends"]:
            assert time.monotonic() < deadline, "the health check never noticed the dead replica"
            time.sleep(0.1)
        for reply in asyncio.run(burst(8, "after")):
            # The next-nearest region takes everything (its budget is far from reached).
            assert assert_served(reply, regions) == (US, True)
        conf = gw.conf()
        assert conf["spill_by_reason"] == {"health": 8}
        assert conf["regions"][EU]["healthy"] == [] and not conf["regions"][EU]["eligible"]
    finally:
        if gw is not None:
            gw.proc.stop()
        for proc in eu_procs:
            proc.stop()


def test_request_agnostic_same_prompt_goes_to_different_backends(
    replicas: Replicas, tmp_path: Path
) -> None:
    gw = start_gateway(tmp_path, AP, "--max-rate-per-endpoint", "50", "--rate-window-s", "1")
    try:
        gw.membership(replicas.urls, replicas.regions, [AP, US])
        prompt = "the very same long prompt " * 40

        async def run() -> list[Reply]:
            async with aiohttp.ClientSession() as session:
                return [await chat(session, gw.url, prompt) for _ in range(6)]

        replies = asyncio.run(run())
        for reply in replies:
            assert assert_served(reply, replicas.regions) == (AP, False)
        # A prefix-aware LB would pin this prompt to one replica; the gateway rotates.
        assert Counter(r.replica for r in replies) == {"r-ap-0": 2, "r-ap-1": 2, "r-ap-2": 2}
    finally:
        gw.proc.stop()


def test_burst_of_concurrent_requests_loses_nothing(replicas: Replicas, tmp_path: Path) -> None:
    # Default budget and window (1 req/s per replica over 10 s): the burst overruns both
    # regions, so local, capacity spill and overflow paths all carry traffic.
    gw = start_gateway(tmp_path, US)
    try:
        gw.membership(replicas.urls, replicas.regions, [US, AP])

        async def run() -> list[Reply]:
            async with aiohttp.ClientSession() as session:
                jobs = [chat(session, gw.url, f"burst {i}") for i in range(50)]
                return await asyncio.gather(*jobs)

        replies = asyncio.run(run())
        assert len(replies) == 50
        for reply in replies:
            assert_served(reply, replicas.regions)
        conf = wait_idle(gw)
        assert conf["requests_total"] == 50
        assert sum(conf["backend_requests_total"].values()) == 50
        assert conf["failed_total"] == 0 and conf["upstream_errors_total"] == 0
        assert conf["in_flight"] == {name: 0 for name in replicas.urls}
        assert conf["over_capacity_total"] > 0
    finally:
        gw.proc.stop()


def test_requests_before_membership_wait_then_are_served_or_get_503(
    replicas: Replicas, tmp_path: Path
) -> None:
    gw = start_gateway(tmp_path, US, "--membership-wait-s", "0.5")
    late = start_gateway(tmp_path, AP, "--membership-wait-s", "20")
    try:
        async def run() -> tuple[Reply, Reply]:
            async with aiohttp.ClientSession() as session:
                refused = await chat(session, gw.url, "too early")
                waiting = asyncio.create_task(chat(session, late.url, "waits for membership"))
                await asyncio.sleep(0.3)
                assert not waiting.done()
                await asyncio.to_thread(late.membership, replicas.urls, replicas.regions, [AP, US])
                return refused, await waiting

        refused, served = asyncio.run(run())
        assert refused.status == 503
        error = json.loads(refused.body)["error"]
        assert "membership" in error["message"] and error["code"] == 503
        assert assert_served(served, replicas.regions) == (AP, False)
    finally:
        gw.proc.stop()
        late.proc.stop()


def test_upstream_failure_is_a_502_not_a_hang(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{procutil.free_port()}"  # nothing listens there
    # Long health interval: the first round runs before membership, so the dead backend
    # still counts as healthy and the request really goes to it.
    gw = start_gateway(tmp_path, US, "--health-interval-s", "60")
    try:
        gw.membership({"r-dead": dead}, {"r-dead": US}, [US])

        async def run() -> Reply:
            async with aiohttp.ClientSession() as session:
                return await chat(session, gw.url, "anyone there?")

        reply = asyncio.run(run())
        assert reply.status == 502
        assert "r-dead" in json.loads(reply.body)["error"]["message"]
        conf = gw.conf()
        assert conf["upstream_errors_total"] == 1 and conf["in_flight"] == {"r-dead": 0}
    finally:
        gw.proc.stop()
