"""The sky backend's SDK boundary against a real SkyPilot API server, offline.

The module starts a local API server (``sky api start``, loopback, a free port, a private
``HOME`` so the user's ``~/.sky`` is never touched) and stops it at the end; ``.ci/run`` may
start one first and hand it over through ``LBBENCH_SKY_API_HOME`` / ``LBBENCH_SKY_API_PORT``.
Each scenario runs the backend's real adapter (:class:`RealSkySdk`) and state machine
(:class:`Provisioner`) in its own process (tests/sky_api_child.py) against that server.

What answers without a cloud (SkyPilot 0.14.1, checked here): request ids, ``api_status``,
``api_cancel``, ``sky.status`` (also with a forced refresh), and ``job_status`` / ``endpoints`` /
``down`` of a cluster that does not exist (each fails with SkyPilot's own "does not exist" /
"not found"); a ``launch`` of a task without a cloud is accepted and fails on the server with
NoCloudAccessError. ``sky.serve.status`` does *not* answer offline: it refreshes the serve
controller first and fails with "Failed to refresh services status due to network error"; so
the service waits (NO_REPLICA, replica relaunches) are tested against the stand-in in
test_sky_provision.py, whose statuses come from SkyPilot's own enums and status rule. A launch
of a task pinned to a cloud fails in the client (it downloads that cloud's catalog first).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sky", reason="skypilot is in the dev extra")

CHILD = Path(__file__).with_name("sky_api_child.py")
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sky_cli() -> list[str]:
    exe = Path(sys.executable).with_name("sky")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from sky.cli import cli; cli()"]


class ApiServer:
    """Where the server is, and the environment a client needs to reach it."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SKYPILOT_", "AWS_", "GOOGLE_", "AZURE_", "KUBECONFIG"))}
        env.update(HOME=str(self.home), SKYPILOT_API_SERVER_LOCAL_PORT=str(self.port),
                   PYTHONUNBUFFERED="1")
        return env

    def healthy(self) -> bool:
        proc = subprocess.run([*_sky_cli(), "api", "info"], env=self.env(), capture_output=True,
                              text=True, timeout=60)
        return proc.returncode == 0 and "HEALTHY" in proc.stdout


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    given_home, given_port = os.environ.get("LBBENCH_SKY_API_HOME"), os.environ.get("LBBENCH_SKY_API_PORT")
    if given_home and given_port:  # started (and stopped) by .ci/run
        server = ApiServer(Path(given_home), int(given_port))
        assert server.healthy(), f"no healthy SkyPilot API server on port {given_port} (HOME={given_home})"
        yield server
        return
    server = ApiServer(tmp_path_factory.mktemp("sky-home"), _free_port())
    proc = subprocess.run([*_sky_cli(), "api", "start", "--host", "127.0.0.1"], env=server.env(),
                          capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert proc.returncode == 0, f"sky api start failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    try:
        assert server.healthy()
        yield server
    finally:
        stop = subprocess.run([*_sky_cli(), "api", "stop"], env=server.env(), capture_output=True,
                              text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr[-2000:]
        # Nothing of ours keeps listening.
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", server.port)) != 0


def run_child(server: ApiServer, scenario: str, out: Path, timeout_s: float = 180.0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(CHILD), scenario, str(out)], env=server.env(),
                          capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"{scenario} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_stdout"] = proc.stdout
    return result


def test_status_requests_answer_offline(api_server: ApiServer, tmp_path: Path) -> None:
    result = run_child(api_server, "status_calls", tmp_path)
    assert result["status"] == {}  # sky.status(refresh=FORCE) of an unknown cluster: nothing
    for label, message in (("job_status", "does not exist"), ("endpoint", "not found")):
        assert message in result[label]["error"], result[label]
        assert result[label]["states"][-1] == "FAILED"
    assert "Failed to refresh services status due to network error" in result["serve_status"]["error"]
    assert "serve status: 5 status requests in a row failed" in result["serve_status_poll"]
    assert sum("serve status: status request failed" in line
               for line in result["_stdout"].splitlines()) == 4  # reported, then given up
    assert result["teardown_errors"] == [] and result["ledger_after_teardown"] == []


def test_a_launch_without_credentials_fails_clearly_and_leaves_nothing(api_server: ApiServer,
                                                                       tmp_path: Path) -> None:
    result = run_child(api_server, "launch_without_credentials", tmp_path)
    assert "NoCloudAccessError" in result["error"] and "sky check" in result["error"]
    assert "launch lbb-api-launch (us-east-2): failed" in result["error"]
    assert result["ledger"] == []  # the half-made cluster was "downed" (it does not exist)
    assert "LAUNCH_SUBMITTED" in result["_stdout"]


def test_ctrl_c_cancels_the_pending_request_on_the_server(api_server: ApiServer, tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, str(CHILD), "interrupted_launch", str(tmp_path)],
                             env=api_server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        request_id = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            if line.startswith("LAUNCH_SUBMITTED "):
                request_id = line.split()[1]
                break
        assert request_id, "the child never submitted its launch"
        child.send_signal(signal.SIGINT)  # Ctrl-C while the launch is in flight
        rest, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-3000:]
    result = json.loads(rest.strip().splitlines()[-1])
    assert result["interrupted"] is True, result
    assert result["ledger"] == []  # and what it had started was torn down
    assert "cancelled 1 request(s) in flight" in rest
    (tmp_path / "request_id").write_text(request_id)
    assert run_child(api_server, "request_state", tmp_path)["state"] == "CANCELLED"
