"""``python -m pytest_lbbench.sim`` as the local backend starts it: a separate process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pytest_lbbench import procutil
from pytest_lbbench.sim.__main__ import main

PROMPT = {
    "messages": [{"role": "user", "content": "Summarise the history of the printing press"}],
    "max_tokens": 400,
}


def start_replica(tmp_path: Path, name: str, *args: str) -> procutil.ManagedProcess:
    argv = procutil.python_module_argv("pytest_lbbench.sim", "--name", name, "--time-scale", "0.01", *args)
    return procutil.spawn(name, argv, log_path=tmp_path / f"{name}.log", ready_timeout_s=30)


async def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.json()


def test_output_is_the_same_on_separate_processes_and_changes_with_the_seed(tmp_path: Path) -> None:
    procs = [
        start_replica(tmp_path, "a", "--seed", "0"),
        start_replica(tmp_path, "b", "--seed", "0"),
        start_replica(tmp_path, "c", "--seed", "1"),
    ]
    try:
        for proc in procs:
            assert proc.info["name"] == proc.name and proc.info["port"] > 0

        async def ask_all() -> list[dict[str, Any]]:
            urls = [f"http://127.0.0.1:{p.info['port']}/v1/chat/completions" for p in procs]
            return list(await asyncio.gather(*(post(url, PROMPT) for url in urls)))

        a, b, c = asyncio.run(ask_all())
        text = [r["choices"][0]["message"]["content"] for r in (a, b, c)]
        assert [r["lbbench"]["replica"] for r in (a, b, c)] == ["a", "b", "c"]
        assert text[0] == text[1] and a["usage"] == b["usage"]
        assert text[0] != text[2]
    finally:
        for proc in procs:
            proc.stop()
    for proc in procs:
        assert proc.popen.returncode == 0, proc.log_tail()
        assert "Traceback" not in (proc.log_tail(200) or ""), proc.log_tail()


def test_profile_from_a_json_file_and_clean_sigterm(tmp_path: Path) -> None:
    profile = tmp_path / "small.json"
    profile.write_text(json.dumps({"base": "l4-llama3.1-8b", "kv_capacity_tokens": 4000}))
    proc = start_replica(tmp_path, "p", "--profile", str(profile), "--engine-metrics", "live")
    try:
        info = asyncio.run(get(f"http://127.0.0.1:{proc.info['port']}/get_server_info"))
        assert info["max_total_num_tokens"] == 4000
        assert info["lbbench"]["engine_metrics"] == "live"
        assert info["lbbench_profile"]["name"] == "small"
        assert info["lbbench_profile"]["time_scale"] == 0.01
        proc.popen.terminate()
        assert proc.popen.wait(timeout=10) == 0
    finally:
        proc.stop()


def test_bad_profile_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_lbbench.sim", "--profile", "no-such-profile"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown engine profile 'no-such-profile'" in result.stderr
    assert "l4-llama3.1-8b" in result.stderr
    assert procutil.READY_PREFIX not in result.stdout


@pytest.mark.parametrize("bad", ["0", "-1", "fast"])
def test_bad_time_scale_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--time-scale", bad])
    assert exc_info.value.code == 2
    assert "positive number" in capsys.readouterr().err


def test_bad_engine_metrics_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--engine-metrics", "stale"])
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'stale'" in err and "sglang" in err and "live" in err


def test_the_plugin_offers_the_engines_metrics_modes() -> None:
    from pytest_lbbench.options import ENGINE_METRICS_MODES
    from pytest_lbbench.sim.engine import ENGINE_METRICS

    assert ENGINE_METRICS_MODES == ENGINE_METRICS
