"""Plugin level of the cloud backends.

The ``test_cli_*`` tests run pytest end to end and need the wiring described in the docstring of
:mod:`pytest_lbbench.cloud_plugin`; the others call its functions directly.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench import cloud_plugin
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path
from pytest_lbbench.backends.local import LocalClientLauncher, LocalDeployment
from pytest_lbbench.backends.registry import BackendContext
from pytest_lbbench.backends.sky.endpoints import EndpointDeployment, parse_endpoint
from pytest_lbbench.backends.sky.provision import CloudLedger, cloud_ledger_path
from pytest_lbbench.runconfig import LbbenchConfig, get_config
from pytest_lbbench.systems import SYSTEMS

DEFAULTS: dict[str, Any] = {
    "backend": "local", "lbbench_plan": False, "keep_up": False, "lbbench_cleanup": False,
    "lbbench_endpoints": [], "service_names": None, "sky_cloud": "aws", "sky_accelerator": "L4:1",
    "sky_model": "meta-llama/Llama-3.1-8B-Instruct", "sky_sglang_version": "0.4.5", "sky_prefix": "lbb",
    "sky_parallel": 4, "sky_launch_timeout": 3600.0, "sky_ready_timeout": 3600.0,
    "sky_teardown_timeout": 1800.0, "sky_preflight_timeout": 2.0,
    "gke_contexts": None, "gke_endpoint": None,
}


class StubConfig:
    """Just ``getoption``: what :func:`cloud_config` reads."""

    def __init__(self, **options: Any) -> None:
        self.options = {**DEFAULTS, **options}

    def getoption(self, name: str) -> Any:
        return self.options[name]


@pytest.fixture
def lbbench_cfg(pytester: pytest.Pytester) -> LbbenchConfig:
    config = pytester.parseconfigure("--regions", "us-east-2,ap-northeast-1",
                                     "--systems", "sgl,sky_push_pull,gke_gateway")
    return get_config(config)


def cloud(lbbench_cfg: LbbenchConfig, **options: Any) -> cloud_plugin.CloudConfig:
    return cloud_plugin.cloud_config(StubConfig(**options), lbbench_cfg, run_preflight=False)  # type: ignore[arg-type]


def context(lbbench_cfg: LbbenchConfig, cloud_cfg: cloud_plugin.CloudConfig) -> BackendContext:
    """What the fixtures hand the backends: the run's config with these cloud options."""
    cfg = dataclasses.replace(lbbench_cfg, cloud_options=cloud_cfg, backend=cloud_cfg.backend)
    return BackendContext(cfg, ProcessLedger(ledger_path(cfg.output_dir)))


def deployment_for(lbbench_cfg: LbbenchConfig, cloud_cfg: cloud_plugin.CloudConfig, system: str) -> Any:
    return cloud_plugin.deployment_for(context(lbbench_cfg, cloud_cfg), SYSTEMS[system])


def test_defaults(lbbench_cfg: LbbenchConfig) -> None:
    cfg = cloud(lbbench_cfg)
    assert cfg.backend == "local" and cfg.endpoints == {} and cfg.service_names == {}
    assert cfg.settings.accelerator == "L4:1" and cfg.max_parallel == 4


def test_gke_endpoint_serves_only_the_gateway_system(lbbench_cfg: LbbenchConfig) -> None:
    from pytest_lbbench.backends.gke.deployment import GkeEndpointDeployment

    cfg = cloud(lbbench_cfg, gke_endpoint="34.117.239.237:80")
    assert cfg.gke_endpoint == "http://34.117.239.237:80"
    gateway = deployment_for(lbbench_cfg, cfg, "gke_gateway")
    assert isinstance(gateway, GkeEndpointDeployment)
    assert isinstance(deployment_for(lbbench_cfg, cfg, "sky_push_pull"), LocalDeployment)


def test_gke_contexts_give_a_gke_deployment(lbbench_cfg: LbbenchConfig) -> None:
    from pytest_lbbench.backends.gke.deployment import GkeDeployment

    cfg = cloud(lbbench_cfg, gke_contexts="gke_p_us-east4_a,gke_p_asia-northeast1_b")
    assert cfg.gke_contexts == ("gke_p_us-east4_a", "gke_p_asia-northeast1_b")
    assert isinstance(deployment_for(lbbench_cfg, cfg, "gke_gateway"), GkeDeployment)


@pytest.mark.parametrize(("options", "message"), [
    ({"gke_contexts": "a,b", "gke_endpoint": "1.2.3.4:80"}, "give one of them"),
    ({"gke_endpoint": "no-port"}, "HOST:PORT"),
    ({"keep_up": True}, "only applies to --backend sky"),
    ({"lbbench_endpoints": ["sgl"]}, "is not SYSTEM=URL"),
    ({"lbbench_endpoints": ["nope=http://x"]}, "unknown system 'nope'. Valid systems: sgl"),
    ({"lbbench_endpoints": ["sgl@eu-central-1=http://x"]}, "not a client region of this run"),
    ({"lbbench_endpoints": ["sgl@us-east-2=http://x"]}, "no URL for client region(s) ap-northeast-1"),
    ({"service_names": ["svc1"]}, "got 1 name(s) (svc1) for 2 SkyPilot system(s) (sgl sky_push_pull)"),
    ({"sky_accelerator": "L4"}, "NAME:COUNT"),
    ({"sky_prefix": "Bad_Prefix"}, "--sky-prefix"),
    ({"sky_parallel": 0}, "at least 1"),
    ({"sky_ready_timeout": -1.0}, "--sky-ready-timeout must be a positive"),
    ({"sky_cloud": "ibm"}, "Valid clouds: aws"),
])
def test_usage_errors(lbbench_cfg: LbbenchConfig, options: dict[str, Any], message: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        cloud(lbbench_cfg, **options)
    assert message in str(info.value)


def test_endpoints_and_service_names(lbbench_cfg: LbbenchConfig) -> None:
    cfg = cloud(lbbench_cfg, lbbench_endpoints=["sgl=1.2.3.4:9001"], service_names=["svc4"])
    assert cfg.endpoints == {"sgl": {"*": "http://1.2.3.4:9001"}}
    assert cfg.service_names == {"sky_push_pull": "svc4"}  # positional, GKE and --endpoint excluded
    deployment = deployment_for(lbbench_cfg, cfg, "sgl")
    assert isinstance(deployment, EndpointDeployment)
    assert deployment.endpoint_for("ap-northeast-1") == "http://1.2.3.4:9001"
    assert deployment.telemetry_targets() == [{"name": "sgl-0", "url": "http://1.2.3.4:9001",
                                               "kind": "sglang_router"}]
    local = context(lbbench_cfg, cloud(lbbench_cfg))
    assert isinstance(cloud_plugin.deployment_for(local, SYSTEMS["sgl"]), LocalDeployment)
    assert isinstance(cloud_plugin.client_launcher_for(local, SYSTEMS["sgl"]), LocalClientLauncher)


def test_parse_endpoint() -> None:
    assert parse_endpoint("sky_push_pull@us-east-2=http://a:8000/") == ("sky_push_pull", "us-east-2", "http://a:8000")


def test_endpoint_deployment_start_is_bounded() -> None:
    calls: list[str] = []

    def http(method: str, url: str, body: Any, timeout_s: float) -> tuple[int, Any]:
        calls.append(url)
        return 0, "connection refused"

    dep = EndpointDeployment(SYSTEMS["sgl"], {"*": "http://127.0.0.1:9"}, ready_timeout_s=0.5, http=http)
    with pytest.raises(RuntimeError, match="did not answer GET /v1/models with 200 within 0 s"):
        dep.start()
    assert calls and calls[0] == "http://127.0.0.1:9/v1/models"


def test_preflight_failure_is_a_usage_error(lbbench_cfg: LbbenchConfig, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "SKYPILOT_API_SERVER_ENDPOINT",
                 "HF_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(pytest.UsageError) as info:
        cloud_plugin.cloud_config(StubConfig(backend="sky"), lbbench_cfg)  # type: ignore[arg-type]
    text = str(info.value)
    assert "--backend sky cannot start" in text and "aws configure" in text and "HF_TOKEN" in text


def test_make_plan(lbbench_cfg: LbbenchConfig) -> None:
    plan = cloud_plugin.make_plan(cloud(lbbench_cfg, backend="sky"), lbbench_cfg)
    text = plan.render()
    assert "[sgl]" in text and "[sky_push_pull]" in text and "needs --gke-contexts" in text
    assert "sky exec lbb-client-ap-northeast-1" in text and "--workload" in text
    with_gke = cloud_plugin.make_plan(cloud(lbbench_cfg, backend="sky", gke_contexts="east,tokyo"), lbbench_cfg)
    gke = with_gke.render().split("[gke_gateway]")[1]
    assert "east: apply Deployment/" in gke and "Gateway/" in gke and "HealthCheckPolicy/" in gke
    assert "tokyo: apply Deployment/" in gke and "not provisioned" not in gke
    endpoint = cloud_plugin.make_plan(cloud(lbbench_cfg, backend="sky", gke_endpoint="1.2.3.4:80"), lbbench_cfg)
    assert "not provisioned: existing GKE gateway http://1.2.3.4:80" in endpoint.render()


# ---- end to end (need the wiring) -------------------------------------------------------------

def _no_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("HOME", str(home))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "SKYPILOT_API_SERVER_ENDPOINT",
                 "HF_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)


def test_cli_plan_without_credentials(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, pytester.path / "home")
    pytester.makepyfile(test_x="def test_x():\n    raise AssertionError('must not run')\n")
    result = pytester.runpytest("--backend", "sky", "--regions", "us-east-2,ap-northeast-1",
                                "--lbbench-plan", "--output-dir", str(pytester.path / "out"))
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*pytest-lbbench plan*", "*[sky_push_pull]*", "*g6.4xlarge (L4:1)*",
                                 "*needs --gke-contexts CTX1,CTX2 (or --gke-endpoint HOST:PORT)*", "Total: * VMs, estimated $*/h*"])
    assert list((pytester.path / "out" / ".lbbench" / "sky-plan").glob("*.yaml"))


def test_cli_plan_of_a_backend_that_provisions_nothing_is_refused(pytester: pytest.Pytester) -> None:
    # The backend answers (LocalBackend.plan is None), not a list of cloud backend names.
    pytester.makepyfile(test_x="def test_x():\n    raise AssertionError('must not run')\n")
    result = pytester.runpytest("--lbbench-plan", "--output-dir", str(pytester.path / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--backend is 'local', which provisions nothing. Add --backend sky*"])


def test_cli_sky_without_credentials_fails_fast(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, pytester.path / "home")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("--backend", "sky", "--systems", "sky_push_pull")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--backend sky cannot start*aws configure*"])


def test_cli_cleanup_with_an_empty_ledger(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--lbbench-cleanup", "--output-dir", str(pytester.path / "out"))
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*local: stopped 0 leftover process(es)*", "*sky: nothing recorded as running*",
                                 "*gke: nothing recorded as scaled up*"])


def test_cli_cleanup_refuses_without_sky_when_something_is_recorded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_credentials(monkeypatch, pytester.path / "home")
    out = pytester.path / "out"
    CloudLedger(cloud_ledger_path(out)).record("submit", {"name": "lbb-sgl-router", "kind": "cluster"})
    result = pytester.runpytest("--lbbench-cleanup", "--output-dir", str(out))
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*lbb-sgl-router*SkyPilot cannot be used here*"])


def test_cli_help_lists_the_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(textwrap.dedent("""
        *--backend=NAME*
        *--lbbench-plan*
        *--keep-up*
        *--endpoint=SYSTEM?@REGION?=URL*
    """).strip().splitlines())


def test_sky_takes_a_local_dataset_path(lbbench_cfg: LbbenchConfig) -> None:
    import dataclasses

    # The plan is built here and shipped to the client VM as its job file, so the data file
    # never has to be there.
    local = dataclasses.replace(lbbench_cfg, dataset_path="/data/arena.jsonl")
    assert cloud(local, backend="sky").backend == "sky"
    assert cloud(local).backend == "local"


def test_sky_plans_a_conftest_workload(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('''
from pytest_lbbench.workloads.base import RequestSettings, WorkloadPlan

class Mine:
    name = "mine"
    options = ()
    hf_dataset = None

    def plan(self, args, region, region_index):
        return WorkloadPlan(name="mine", users=(), settings=RequestSettings(8, 0.0))

def pytest_lbbench_workloads(config):
    return [Mine()]
''')
    result = pytester.runpytest("--backend", "sky", "--workloads", "mine", "--lbbench-plan")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    assert "--workload mine" in result.stdout.str()
