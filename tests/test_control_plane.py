"""The closed control plane, on real processes: every control endpoint of our LB, gateway,
simulated replica and delay links needs the run's secret (401 without it), membership may name
only targets on the allowed hosts (403 otherwise), an oversized body gets a JSON 413 naming the
limit, and an LB or gateway will not start without a secret.

The processes inherit the test session's secret (``tests/conftest.py``), as the benchmark's own
get theirs from the launcher.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_support import HEADERS
from pytest_lbbench import procutil
from pytest_lbbench.control import CONTROL_TOKEN_ENV, CONTROL_TOKEN_HEADER, AllowedTargets

MiB = 1024 * 1024


def _post(url: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("control")
    procs: list[procutil.ManagedProcess] = []
    try:
        def start(name: str, module: str, *args: str) -> procutil.ManagedProcess:
            proc = procutil.spawn(name, procutil.python_module_argv(module, *args), log_path=tmp / f"{name}.log")
            procs.append(proc)
            return proc

        replica = start("replica", "pytest_lbbench.sim", "--name", "replica", "--time-scale", "0.05")
        lb = start("lb", "pytest_lbbench.lb", "--name", "lb-a", "--region", "us-east-2",
                   "--lb-mode", "steal_v2", "--replica-mode", "push")
        gateway = start("gw", "pytest_lbbench.gateway", "--name", "gke-us-east-2", "--region", "us-east-2")
        links = json.dumps([{"name": "l", "target_host": "127.0.0.1", "target_port": replica.info["port"],
                             "one_way_ms": 1}])
        netem = start("netem", "pytest_lbbench.netem", "--links-json", links, "--control")
        yield {
            "replica": f"http://127.0.0.1:{replica.info['port']}",
            "lb": f"http://127.0.0.1:{lb.info['port']}",
            "gateway": f"http://127.0.0.1:{gateway.info['port']}",
            "netem": f"http://127.0.0.1:{netem.info['control_port']}",
        }
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.mark.parametrize("server, path, body", [
    ("lb", "/lbbench/membership", {"self": "lb-a", "lbs": {}, "replicas": {}}),
    ("lb", "/lbbench/reset", {}),
    ("lb", "/steal-request", {"num_steal": 1, "source_lb_url": "http://127.0.0.1:1"}),
    ("gateway", "/lbbench/membership", {"self": "gke-us-east-2", "backends": {}, "regions": {}}),
    ("gateway", "/lbbench/reset", {}),
    ("replica", "/lbbench/reset", {}),
    ("replica", "/lbbench/fault", {"slowdown": 2}),
    ("netem", "/reset", {}),
    ("netem", "/lbbench/fault", {"partition": ["l"]}),
])
def test_control_endpoints_need_the_secret(servers: dict[str, str], server: str, path: str, body: Any) -> None:
    url = servers[server] + path
    status, reply = _post(url, body)
    assert status == 401, reply
    assert CONTROL_TOKEN_HEADER in reply["error"]["message"]
    status, reply = _post(url, body, {CONTROL_TOKEN_HEADER: "guess"})
    assert status == 401 and "wrong" in reply["error"]["message"]
    status, reply = _post(url, body, HEADERS)
    assert status != 401, reply
    if server == "replica" and path == "/lbbench/fault":
        _post(url, {"slowdown": 1}, HEADERS)
    if server == "netem" and path == "/lbbench/fault":
        assert reply["partitioned"] == ["l"]
        assert _post(url, {"heal": ["l"]}, HEADERS)[1]["partitioned"] == []


@pytest.mark.parametrize("server, body", [
    ("lb", {"self": "lb-a", "lbs": {"lb-a": "http://127.0.0.1:1"}, "replicas": {"r": "http://203.0.113.7:8000"}}),
    ("lb", {"self": "lb-a", "lbs": {"lb-a": "http://127.0.0.1:1", "lb-b": "http://evil.example:80"},
            "replicas": {}}),
    ("gateway", {"self": "gke-us-east-2", "backends": {"r": "http://203.0.113.7:8000"},
                 "regions": {"r": "us-east-2"}}),
])
def test_membership_outside_the_allowed_hosts_is_refused(servers: dict[str, str], server: str,
                                                         body: dict[str, Any]) -> None:
    status, reply = _post(servers[server] + "/lbbench/membership", body, HEADERS)
    assert status == 403, reply
    message = reply["error"]["message"]
    assert "not on a host this run configured" in message and "127.0.0.0/8" in message
    assert "--allow-target-hosts" in message


@pytest.mark.parametrize("server", ["lb", "gateway"])
def test_an_oversized_body_gets_413_naming_the_limit(servers: dict[str, str], server: str) -> None:
    status, reply = _post(servers[server] + "/v1/chat/completions", None, raw=b"x" * (64 * MiB + 1))
    assert status == 413, reply
    assert f"{64 * MiB} bytes (64 MiB)" in reply["error"]["message"]


@pytest.mark.parametrize("module", ["pytest_lbbench.lb", "pytest_lbbench.gateway"])
def test_a_balancer_will_not_start_without_the_secret(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != CONTROL_TOKEN_ENV}
    done = subprocess.run([sys.executable, "-m", module, "--port", "0"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert f"{CONTROL_TOKEN_ENV} is not set" in done.stderr


def test_allowed_targets_rules() -> None:
    allowed = AllowedTargets.parse(["127.0.0.0/8", "::1", "10.0.0.0/8", "lb.internal"])
    assert allowed.refusal("http://127.0.0.1:9000") is None
    assert allowed.refusal("http://[::1]:9000") is None
    assert allowed.refusal("http://10.4.5.6") is None
    assert allowed.refusal("http://LB.internal:80") is None
    assert "not on a host" in (allowed.refusal("http://8.8.8.8") or "")
    assert "has no host" in (allowed.refusal("not a url") or "")
    with pytest.raises(ValueError, match="may not be empty"):
        AllowedTargets.parse([" "])


def test_the_secret_is_in_no_log_or_result_file(tmp_path: Path) -> None:
    """A real local deployment with a known secret: after start, membership, reset and stop,
    no file under its log directory (where every process writes) holds the secret."""
    from pytest_lbbench.backends.local import LocalDeployment, LocalSettings
    from pytest_lbbench.systems import SYSTEMS

    secret = "unmistakable-run-secret-4711"
    deployment = LocalDeployment(SYSTEMS["gke_gateway"], LocalSettings(
        replicas=2, replica_regions=("us-east-2", "eu-central-1"), client_regions=("us-east-2",),
        log_dir=tmp_path / "logs", time_scale=0.05, control_token=secret,
    ))
    assert secret not in repr(deployment.settings)
    deployment.start()
    try:
        deployment.reset()
        assert secret not in json.dumps(deployment.describe())
    finally:
        deployment.stop()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert secret not in path.read_text(errors="replace"), path


KNOWN_SECRET_BACKEND = """
from pytest_lbbench.backends.local import LocalBackend

class KnownSecret(LocalBackend):
    name = "known-secret"
    summary = "the local backend with a secret the test knows"
    _control_token = "known-secret-8d1f0c"

def pytest_lbbench_backends(config):
    return [KnownSecret()]
"""


def test_a_plugin_run_writes_its_secret_nowhere_under_the_output_dir(bench: pytest.Pytester) -> None:
    bench.makeconftest(KNOWN_SECRET_BACKEND)
    out = bench.path / "results"
    result = bench.runpytest("--backend", "known-secret", "--systems", "sky_walker", "--regions", "us-east-2",
                             "--output-dir", str(out), "--time-scale", "0.05", "--max-tokens", "12",
                             "--num-users", "3", "--replicas", "2", "--duration", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:
        assert "known-secret-8d1f0c" not in path.read_text(errors="replace"), path
