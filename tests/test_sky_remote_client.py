"""The client job that ``sky exec`` runs on a client VM, run here as its own process against a
real local system: same module, same arguments, same result transport as on the cloud.

The job's ``run`` script is executed by bash exactly as SkyPilot would run it on the VM: in a
home directory where the staged package is mounted at ``~/lbbench-src`` (the client cluster's
``file_mounts``), the job file synced to ``~/sky_workdir`` (the exec's ``workdir``), and a
``python3`` on the PATH that has the dependencies but not pytest-lbbench. The result file comes
back through the job log (Ray prefixes every line) and is decoded by the launcher's function.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pytest_lbbench
from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path, live_entries
from pytest_lbbench.backends.local import LocalDeployment, LocalSettings
from pytest_lbbench.backends.sky.deployment import decode_result, ran_code
from pytest_lbbench.backends.sky.package import stage_package
from pytest_lbbench.backends.sky.render import (
    SkySettings,
    client_job_task,
    remote_result_path,
    render_clients,
    to_yaml,
)
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.systems import SYSTEMS

yaml = pytest.importorskip("yaml")


class ConftestWorkload:
    """A workload that lives only in a test module (as one from a conftest.py would): the VM
    has not got this code, so it can only run from the job file built here."""

    name = "only_in_conftest"
    hf_dataset = None

    def __init__(self) -> None:
        from pytest_lbbench.workloads import get_workload

        self._inner = get_workload("arena_syn")
        self.options = self._inner.options

    def plan(self, args: Any, region: str, region_index: int) -> Any:
        return dataclasses.replace(self._inner.plan(args, region, region_index), name=self.name)


def test_the_remote_client_job_runs_the_shipped_job_against_a_local_system(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from colorama import Fore, Style

    monkeypatch.setenv("LBBENCH_SHIP_DIR", str(tmp_path / "ship"))
    region = "us-east-2"
    ledger = ProcessLedger(ledger_path(tmp_path))
    deployment = LocalDeployment(SYSTEMS["sky_push_push"], LocalSettings(
        replicas=2, replica_regions=DEFAULT_REPLICA_REGIONS, client_regions=(region,),
        log_dir=tmp_path / "logs", time_scale=0.05, ledger=ledger,
    ))
    spec = ExperimentSpec(
        system="sky_push_push", workload="only_in_conftest", exp_name="only_in_conftest_sky_push_push",
        client_regions=(region,),
        knobs=RunKnobs(duration_s=2.0, num_users=3, seed=4, max_tokens=8, drain_timeout_s=20),
        workload_options={"num_conv": 30}, definition=ConftestWorkload(),
    )
    settings = SkySettings()
    # The VM: a home directory with the staged package mounted where the client cluster's
    # file_mounts put it, and the exec's workdir synced to ~/sky_workdir.
    home = tmp_path / "vm-home"
    client_task = render_clients(settings, [region])[0].task
    (mount_dst, mount_src), = client_task["file_mounts"].items()
    mount = home / mount_dst.removeprefix("~/")
    mount.parent.mkdir(parents=True)
    mount.symlink_to(stage_package(settings.package_dir))
    assert Path(mount_src) == mount.resolve()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The VM's python3 has the client's dependencies (the client cluster's setup installs them)
    # but not pytest-lbbench: -S keeps this venv's editable install out, its site-packages stay.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{site}" exec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    deployment.start()
    try:
        job_dir = tmp_path / "plans" / spec.exp_name
        spec.client_job(region, 0, deployment.endpoint_for(region),
                        Path(remote_result_path(spec.exp_name, region))).write(job_dir / f"{region}.json")
        task = yaml.safe_load(to_yaml(client_job_task(spec.exp_name, region, job_dir)))
        shutil.copytree(task["workdir"], home / "sky_workdir")  # what sky exec's workdir sync does
        env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        proc = subprocess.run(["bash", "-c", task["run"]], env=env, capture_output=True, text=True,
                              timeout=120)
        replicas = {r["name"] for r in deployment.describe()["replicas"]}
        url = deployment.endpoint_for(region)
    finally:
        deployment.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not live_entries(ledger_path(tmp_path))
    # The job log as SkyPilot returns it: Ray's dimmed cyan "(<task>, pid=N)" before each line.
    prefix = f"{Style.DIM}{Fore.CYAN}({task['name']}, pid=777){Style.RESET_ALL} "
    log = "".join(f"{prefix}{line}\n" for line in proc.stdout.splitlines())
    raw = decode_result(log)
    data = json.loads(raw)
    assert data["workload"] == "only_in_conftest" and data["region"] == region
    assert data["backend_url"] == url
    assert len(data["metrics"]) == data["sent"] > 0
    assert all(r["failed"] is None for r in data["metrics"])
    assert {r["replica"] for r in data["metrics"]} <= replicas
    # The VM ran the shipped code, and says so: same version, same content hash.
    assert data["client"]["pytest_lbbench"] == pytest_lbbench.__version__
    assert ran_code(raw) == settings.code_hash
    # The file also stayed on the "VM", where `sky exec` left it.
    assert (home / remote_result_path(spec.exp_name, region)).exists()
