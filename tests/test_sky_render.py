"""Rendered SkyPilot YAMLs: every one parses with SkyPilot's own ``Task.from_yaml``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_lbbench.backends.sky.deployment import decode_result
from pytest_lbbench.backends.sky.render import (
    Component,
    SkySettings,
    UnsupportedSystem,
    client_job_task,
    remote_result_path,
    render_clients,
    render_system,
    router_run_task,
    to_yaml,
    write_yamls,
)
from pytest_lbbench.systems import SYSTEMS, BalancerKind, Placement

sky = pytest.importorskip("sky", reason="skypilot is in the dev extra")
yaml = pytest.importorskip("yaml")

REGIONS = ["us-east-2", "ap-northeast-1", "eu-central-1"]
SKY_SYSTEMS = [s for s in SYSTEMS.values() if s.kind is not BalancerKind.GATEWAY]


def all_components(settings: SkySettings) -> list[Component]:
    comps: list[Component] = []
    for system in SKY_SYSTEMS:
        comps += render_system(system, settings, 4, REGIONS).components
    return comps + list(render_clients(settings, ["us-east-2", "ap-northeast-1"], "gw1"))


def test_every_rendered_yaml_parses_with_skypilot(tmp_path: Path) -> None:
    comps = all_components(SkySettings())
    paths = write_yamls(comps, tmp_path)
    extra = {
        "router-run": router_run_task(SYSTEMS["sgl"], SkySettings(), "lbb-sgl-router",
                                      ["http://1.2.3.4:8081", "http://5.6.7.8:8081"]),
        "client-job": client_job_task("arena_syn_sky_push_pull", "us-east-2",
                                      ["--backend-url", "http://1.2.3.4:8000", "--region-to", "it's \"quoted\""]),
    }
    for name, task in extra.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(to_yaml(task))
        paths.append(path)
    assert len(paths) == len({p.name for p in paths}) > 60
    for path in paths:
        text = path.read_text()
        task = sky.Task.from_yaml(str(path))
        assert yaml.safe_load(text)["name"] == task.name
    for comp in comps:
        assert yaml.safe_load(comp.yaml) == comp.task  # the emitter writes what the dict says


def test_services_are_skyserve_services_with_the_original_resources() -> None:
    layout = render_system(SYSTEMS["sky_push_pull"], SkySettings(), 4, REGIONS)
    for comp in layout.services:
        task = sky.Task.from_yaml_str(comp.yaml)
        assert task.service is not None
        assert task.service.readiness_path == "/v1/models"
        (res,) = task.resources
        assert res.region == comp.region
        assert res.accelerators == {"L4": 1}
        assert "sglang.launch_server" in comp.task["run"]
        assert "--enable-metrics" in comp.task["run"]  # replicas' /metrics feed the LBs and telemetry


@pytest.mark.parametrize(("replicas", "regions", "expected"), [
    (4, REGIONS, {"us-east-2": 2, "ap-northeast-1": 1, "eu-central-1": 1}),  # the README's example
    (4, REGIONS[:2], {"us-east-2": 2, "ap-northeast-1": 2}),
    (1, REGIONS, {"us-east-2": 1}),
])
def test_replicas_round_robin_over_ordered_regions(replicas: int, regions: list[str], expected: dict[str, int]) -> None:
    layout = render_system(SYSTEMS["sky_pull_pull"], SkySettings(), replicas, regions)
    assert {c.region: c.count for c in layout.services} == expected
    assert {c.region: c.task["service"]["replicas"] for c in layout.services} == expected
    assert [c.region for c in layout.lbs] == list(expected)  # one LB per replica region


def test_lb_commands_follow_the_catalog() -> None:
    for system in SKY_SYSTEMS:
        layout = render_system(system, SkySettings(), 4, REGIONS)
        if system.kind is BalancerKind.SGLANG_ROUTER:
            assert layout.router is not None and not layout.lbs
            assert "sglang-router==" in layout.router.task["setup"]
            continue
        expected_lbs = 1 if system.placement is Placement.GLOBAL else 3
        assert len(layout.lbs) == expected_lbs
        for lb in layout.lbs:
            run = lb.task["run"]
            assert "-m pytest_lbbench.lb" in run
            for flag, value in (("--lb-mode", system.lb_mode), ("--replica-mode", system.replica_mode),
                                ("--policy", system.policy), ("--meta-policy", system.meta_policy)):
                assert f"{flag} {value}" in run
            region = "global" if system.placement is Placement.GLOBAL else lb.region
            assert f"--region {region}" in run
            assert lb.task["resources"]["ports"] == 8000


def test_router_run_carries_the_original_cache_aware_config() -> None:
    task = router_run_task(SYSTEMS["sgl"], SkySettings(), "c", ["http://a:8081", "http://b:8081"])
    assert "--worker-urls http://a:8081 http://b:8081" in task["run"]
    assert "--cache-threshold 0.5" in task["run"] and "--balance-abs-threshold 32" in task["run"]


def test_names_are_valid_and_distinct() -> None:
    comps = all_components(SkySettings(prefix="lbb"))
    names = [c.name for c in comps]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
        sky.utils.common_utils.check_cluster_name_is_valid(name)


def test_gke_gateway_is_refused_with_the_hint() -> None:
    with pytest.raises(UnsupportedSystem, match="--gke-endpoint or --gke-contexts"):
        render_system(SYSTEMS["gke_gateway"], SkySettings(), 4, REGIONS)


def test_no_secret_in_rendered_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_42")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret_value_42")
    comps = all_components(SkySettings())
    for path in write_yamls(comps, tmp_path):
        text = path.read_text()
        assert "secret_value_42" not in text
    services = [c for c in comps if c.kind == "service"]
    assert all(c.task["secrets"] == {"HF_TOKEN": None} and c.secrets == ("HF_TOKEN",) for c in services)


def test_fingerprint_changes_with_the_yaml() -> None:
    a = render_system(SYSTEMS["sgl"], SkySettings(), 4, REGIONS).services[0]
    b = render_system(SYSTEMS["sgl"], SkySettings(model="Qwen/Qwen2.5-7B-Instruct"), 4, REGIONS).services[0]
    assert a.name == b.name and a.fingerprint != b.fingerprint


def test_client_job_prints_the_result_file_between_markers(tmp_path: Path) -> None:
    exp, region = "arena_syn_sky_push_pull", "us-east-2"
    result = tmp_path / remote_result_path(exp, region)
    result.parent.mkdir(parents=True)
    payload = {"workload": "arena_syn", "metrics": [{"uid": i, "ttft": 0.1 * i} for i in range(500)]}
    result.write_text(json.dumps(payload))
    run = client_job_task(exp, region, ["--x"])["run"]
    emit_line = next(line for line in run.splitlines() if line.startswith("if [ -f"))
    out = subprocess.run(["bash", "-c", emit_line.replace("python3", sys.executable)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    # SkyPilot prefixes every job log line with the task and pid.
    log = "(task, pid=4242) starting\n" + "".join(f"(task, pid=4242) {line}\n" for line in out.splitlines())
    assert json.loads(decode_result(log)) == payload
    with pytest.raises(ValueError, match="markers missing"):
        decode_result("(task, pid=1) Traceback ...")
