"""Rendered SkyPilot YAMLs: every one parses with SkyPilot's own ``Task.from_yaml``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_lbbench.backends.sky.deployment import RESULT_REREAD_S, _read_result, decode_result
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
        "client-job": client_job_task("arena_syn_sky_push_pull", "us-east-2", tmp_path / "it's \"quoted\""),
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
    task = client_job_task(exp, region, tmp_path)
    emit_line = next(line for line in task["run"].splitlines() if line.startswith("if [ -f"))
    out = subprocess.run(["bash", "-c", emit_line.replace("python3", sys.executable)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    # A real job log: Ray prints each line of the task's output behind a dimmed cyan
    # "(<task name>, pid=N)" (ray/_private/worker.py, print_worker_logs: Style.DIM, Fore.CYAN,
    # the prefix, Style.RESET_ALL, a space), and SkyPilot names the Ray task "<task name>,"
    # (sky/backends/task_codegen.py: name_str), so the prefix is "(lbb-…-us-east-2, pid=4242)".
    from colorama import Fore, Style

    prefix = f"{Style.DIM}{Fore.CYAN}({task['name']}, pid=4242){Style.RESET_ALL} "
    log = (f"{prefix}starting\n" + "".join(f"{prefix}{line}\n" for line in out.splitlines())
           + f"{Style.DIM}{Fore.CYAN}(head, rank=0, pid=99, ip=10.0.0.5){Style.RESET_ALL} done\r\n")
    assert "\x1b[36m(" in log and json.loads(decode_result(log)) == payload
    # Without the prefix (a local run's log) it decodes too.
    assert json.loads(decode_result(out)) == payload
    with pytest.raises(ValueError, match="markers missing"):
        decode_result(f"{prefix}Traceback ...")
    # A line of another Ray process between the markers is not part of the payload.
    lines = log.splitlines(keepends=True)
    stray = f"{Style.DIM}{Fore.CYAN}(raylet){Style.RESET_ALL} [2026-12-07 10:00:00] worker started\n"
    assert json.loads(decode_result("".join(lines[:3] + [stray] + lines[3:]))) == payload
    # The log read before its last lines landed (SkyPilot marks the job SUCCEEDED first).
    cut = "".join(lines[: len(lines) // 2])
    with pytest.raises(ValueError, match="markers missing"):
        decode_result(cut)
    reads = iter([cut, log])
    slept: list[float] = []
    prov = SimpleNamespace(sdk=SimpleNamespace(job_log=lambda cluster, job_id: next(reads)), sleep=slept.append)
    assert json.loads(_read_result(prov, "lbb-c", 1)[1]) == payload  # type: ignore[arg-type]
    assert slept == [RESULT_REREAD_S]
    broken = log.replace(out.splitlines()[2], out.splitlines()[2][:-4] + "!!!!")
    with pytest.raises(ValueError, match="does not decode"):
        decode_result(broken)


def test_the_client_job_runs_the_shipped_job_file(tmp_path: Path) -> None:
    task = client_job_task("arena_syn_sgl", "eu-central-1", tmp_path / "plans")
    parsed = sky.Task.from_yaml_str(to_yaml(task))
    assert parsed.workdir == str(tmp_path / "plans")
    assert "pytest_lbbench.client --job-file sky_workdir/eu-central-1.json" in task["run"]


# ---- secrets: what SkyPilot itself makes of the rendered replica YAML ---------------------------

def test_hf_token_reaches_the_replica_task_without_a_managed_secret_reference() -> None:
    from sky import execution
    from sky.utils import dag_utils

    from pytest_lbbench.backends.sky.sdk import task_with_secrets

    comp = render_system(SYSTEMS["sgl"], SkySettings(), 2, ["us-east-2"]).services[0]
    assert "HF_TOKEN" in comp.secrets and "hf_" not in comp.yaml
    task = task_with_secrets(comp.yaml, {"HF_TOKEN": "hf_test_value"})
    assert task.managed_secret_refs == []
    assert task.secrets["HF_TOKEN"].get_secret_value() == "hf_test_value"
    # What the API server gets: the client SDK sends the DAG as YAML, the server loads it and
    # resolves managed secrets before it launches (sky/execution.py).
    with sky.Dag() as dag:
        dag.add(task)
    on_server = dag_utils.load_chain_dag_from_yaml_str(dag_utils.dump_chain_dag_to_yaml_str(dag))
    assert on_server.tasks[0].managed_secret_refs == []
    assert on_server.tasks[0].secrets["HF_TOKEN"].get_secret_value() == "hf_test_value"
    execution._resolve_managed_secrets(on_server)  # raises without a secrets provider if a ref is left
    # The defect this replaces: from_yaml_str + update_secrets keeps the null declaration as a
    # managed reference, and the server refuses the launch.
    old = sky.Task.from_yaml_str(comp.yaml)
    old.update_secrets({"HF_TOKEN": "hf_test_value"})
    assert [ref.name for ref in old.managed_secret_refs] == ["HF_TOKEN"]
    with sky.Dag() as old_dag:
        old_dag.add(old)
    with pytest.raises(RuntimeError, match="No value available for secret"):
        execution._resolve_managed_secrets(
            dag_utils.load_chain_dag_from_yaml_str(dag_utils.dump_chain_dag_to_yaml_str(old_dag)))


def test_without_a_token_the_declaration_is_dropped_not_left_as_a_reference() -> None:
    from pytest_lbbench.backends.sky.sdk import task_with_secrets

    comp = render_system(SYSTEMS["sgl"], SkySettings(), 2, ["us-east-2"]).services[0]
    task = task_with_secrets(comp.yaml, {})
    assert task.managed_secret_refs == [] and "HF_TOKEN" not in task.secrets


# ---- the package the VMs run ------------------------------------------------------------------

def _package_copy(tmp_path: Path) -> Path:
    import shutil

    import pytest_lbbench

    copy = tmp_path / "src" / "pytest_lbbench"
    shutil.copytree(Path(pytest_lbbench.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


def test_changing_the_package_changes_the_reuse_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBBENCH_SHIP_DIR", str(tmp_path / "ship"))
    copy = _package_copy(tmp_path)
    settings = SkySettings(package_dir=str(copy))
    before = {c.name: c.fingerprint for c in all_components(settings)}
    hash_before = settings.code_hash
    (copy / "lb" / "policies.py").write_text((copy / "lb" / "policies.py").read_text() + "\n# changed\n")
    after = {c.name: c.fingerprint for c in all_components(settings)}
    assert settings.code_hash != hash_before
    code_mounting = {c.name for c in all_components(settings) if c.role in ("lb", "client")}
    assert code_mounting and all(before[n] != after[n] for n in code_mounting)
    # The replicas (SGLang) and the router do not run our code: their key stays.
    assert all(before[n] == after[n] for n in before if n not in code_mounting)


def test_the_vm_runs_the_staged_package_and_reports_the_local_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_lbbench
    from pytest_lbbench.backends.sky.package import stage_package

    monkeypatch.setenv("LBBENCH_SHIP_DIR", str(tmp_path / "ship"))
    settings = SkySettings()
    staged = stage_package(settings.package_dir)
    lb = render_system(SYSTEMS["sky_push_pull"], settings, 2, ["us-east-2"]).lbs[0]
    assert lb.task["file_mounts"] == {"~/lbbench-src/pytest_lbbench": str(staged)}
    assert lb.task["envs"] == {"LBBENCH_VERSION": pytest_lbbench.__version__,
                               "LBBENCH_CODE_HASH": settings.code_hash}
    assert stage_package(settings.package_dir) == staged  # staged once per content
    # On the VM: the mount, no install (-S: not even this venv's editable-install hook).
    vm = tmp_path / "vm" / "lbbench-src"
    vm.mkdir(parents=True)
    (vm / "pytest_lbbench").symlink_to(staged)
    out = subprocess.run(
        [sys.executable, "-S", "-c",
         "import pytest_lbbench as p; print(p.__file__); print(p.__version__); print(p.code_hash())"],
        env={"PYTHONPATH": str(vm), "PATH": "/usr/bin:/bin"}, cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=True).stdout.split()
    assert out[0].startswith(str(vm))
    assert out[1:] == [pytest_lbbench.__version__, settings.code_hash]
