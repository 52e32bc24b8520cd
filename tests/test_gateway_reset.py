"""The emulated gateway's ``POST /lbbench/reset`` and its ``/conf`` ``lag``.

In process: a gateway that served traffic and was reset reports and decides exactly like a fresh
one with the same membership; it refuses while a request is in flight; a stall of its event loop
shows in the health loop's lag. Over loopback: the real process answers the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from control_support import HEADERS
from pytest_lbbench import procutil
from pytest_lbbench.gateway.config import GatewayConfig
from pytest_lbbench.protocol import GatewayMembership
from pytest_lbbench.gateway.server import Gateway

pytestmark = pytest.mark.timeout(60)

US, AP = "us-east-2", "ap-northeast-1"
BACKENDS = {"r-us-0": "http://127.0.0.1:9000", "r-us-1": "http://127.0.0.1:9001", "r-ap-0": "http://127.0.0.1:9002"}
REGIONS = {"r-us-0": US, "r-us-1": US, "r-ap-0": AP}
MEMBERSHIP = {"self": "gke-us", "backends": BACKENDS, "regions": REGIONS, "region_order": [US, AP]}


def _gateway(**overrides: Any) -> Gateway:
    gw = Gateway(GatewayConfig(**{"max_rate_per_endpoint": 1.0, "rate_window_s": 10.0, **overrides}),
                 name="gke-us", region=US)
    gw.apply_membership(GatewayMembership.from_json(MEMBERSHIP, gw.name))
    return gw


def _comparable(conf: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in conf.items() if k not in ("time", "lag")}


def test_reset_gateway_reports_and_decides_like_a_fresh_one() -> None:
    used = _gateway()
    for _ in range(30):  # past the local budget: spills, rates and cursors move
        assert used.router.choose() is not None
    used.requests_total = used.upstream_errors_total = 5
    used.router.record_probe("r-us-0", False)
    used.lag.record("health_probe", 1.0)
    assert used.conf()["spill_total"] > 0
    reply = used.reset()
    assert reply["ok"] and reply["num_backends"] == 3
    fresh = _gateway()
    assert _comparable(used.conf()) == _comparable(fresh.conf())
    assert used.conf()["lag"]["ticks"] == 0 and used.conf()["spill_total"] == 0
    picks = [(c.backend, c.spill) for c in (used.router.choose() for _ in range(8)) if c]
    assert picks == [(c.backend, c.spill) for c in (fresh.router.choose() for _ in range(8)) if c]
    assert picks[0] == ("r-us-0", False)  # round robin starts at the first local backend


def test_reset_refuses_while_a_request_is_in_flight() -> None:
    gw = _gateway()
    gw.in_flight["r-us-0"] = 1
    with pytest.raises(RuntimeError, match="1 request\\(s\\) in flight"):
        gw.reset()
    gw.in_flight["r-us-0"] = 0
    assert gw.reset()["ok"]


def test_health_loop_lag_moves_under_an_event_loop_stall() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        gw = Gateway(GatewayConfig(health_interval_s=0.02), name="gke-us", region=US)
        task = asyncio.ensure_future(gw._health_loop())  # no backends yet: it only sleeps
        try:
            await asyncio.sleep(0.1)
            before = gw.lag.snapshot()
            time.sleep(0.15)  # the artificial stall
            await asyncio.sleep(0.05)
            return before, gw.lag.snapshot()
        finally:
            task.cancel()

    before, after = asyncio.run(scenario())
    assert before["ticks"] > 0
    assert after["late_ticks"] > before["late_ticks"] and after["tick_late_max_s"] >= 0.1
    assert "health_probe" in after["loops"]


def test_reset_endpoint_of_a_real_gateway(tmp_path: Path) -> None:
    proc = procutil.spawn(
        "gke-us", procutil.python_module_argv("pytest_lbbench.gateway", "--name", "gke-us", "--region", US),
        log_path=tmp_path / "gw.log",
    )
    try:
        url = f"http://127.0.0.1:{proc.info['port']}"

        def post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json", **HEADERS})
            with urllib.request.urlopen(req, timeout=5) as resp:
                data: dict[str, Any] = json.load(resp)
                return data

        post("/lbbench/membership", MEMBERSHIP)
        reply = post("/lbbench/reset", {})
        assert reply["ok"] and reply["num_backends"] == 3
        with urllib.request.urlopen(url + "/conf", timeout=5) as resp:
            conf = json.load(resp)
        assert conf["requests_total"] == 0 and sorted(conf["backend_regions"]) == sorted(BACKENDS)
        assert {"ticks", "late_ticks", "tick_late_s_total", "tick_late_max_s"} <= set(conf["lag"])
    finally:
        proc.stop()
