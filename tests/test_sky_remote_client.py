"""The client job that ``sky exec`` runs on a client VM, run here as its own process against a
real local system: same module, same arguments, same result transport as on the cloud.

The job's ``run`` script is executed by bash exactly as SkyPilot would run it on the VM: in a
home directory where the package is mounted at ``~/lbbench-src`` (the client cluster's
``file_mounts``), with ``python3`` on the PATH. The result file comes back through the job log
(SkyPilot prefixes every line) and is decoded by the same function the launcher uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_lbbench
from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.runspec import RunKnobs
from pytest_lbbench.backends.ledger import ProcessLedger, ledger_path, live_entries
from pytest_lbbench.backends.local import LocalDeployment, LocalSettings
from pytest_lbbench.backends.sky.deployment import decode_result
from pytest_lbbench.backends.sky.render import client_job_task, remote_result_path, to_yaml
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.systems import SYSTEMS

yaml = pytest.importorskip("yaml")


def test_the_remote_client_job_runs_against_a_local_system(tmp_path: Path) -> None:
    region = "us-east-2"
    ledger = ProcessLedger(ledger_path(tmp_path))
    deployment = LocalDeployment(SYSTEMS["sky_push_push"], LocalSettings(
        replicas=2, replica_regions=DEFAULT_REPLICA_REGIONS, client_regions=(region,),
        log_dir=tmp_path / "logs", time_scale=0.05, ledger=ledger,
    ))
    spec = ExperimentSpec(
        system="sky_push_push", workload="arena_syn", exp_name="arena_syn_sky_push_push",
        client_regions=(region,),
        knobs=RunKnobs(duration_s=2.0, num_users=3, seed=4, max_tokens=8, drain_timeout_s=20),
        workload_options={"num_conv": 30},
    )
    # The VM: a home directory with the package mounted where the client cluster mounts it.
    home = tmp_path / "vm-home"
    (home / "lbbench-src").mkdir(parents=True)
    (home / "lbbench-src" / "pytest_lbbench").symlink_to(Path(pytest_lbbench.__file__).parent)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The VM's python3 has the client's dependencies, as the client cluster's setup installs them
    # (a wrapper, not a symlink: a symlinked venv interpreter would not find its venv).
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    deployment.start()
    try:
        argv = spec.client_argv(region, 0, deployment.endpoint_for(region),
                                Path(remote_result_path(spec.exp_name, region)))
        task = yaml.safe_load(to_yaml(client_job_task(spec.exp_name, region, argv)))
        env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        proc = subprocess.run(["bash", "-c", task["run"]], env=env, capture_output=True, text=True,
                              timeout=120)
        replicas = {r["name"] for r in deployment.describe()["replicas"]}
        url = deployment.endpoint_for(region)
    finally:
        deployment.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not live_entries(ledger_path(tmp_path))
    log = "".join(f"(lbb-client, pid=777) {line}\n" for line in proc.stdout.splitlines())
    data = json.loads(decode_result(log))
    assert data["workload"] == "arena_syn" and data["region"] == region
    assert data["backend_url"] == url
    assert len(data["metrics"]) == data["sent"] > 0
    assert all(r["failed"] is None for r in data["metrics"])
    assert {r["replica"] for r in data["metrics"]} <= replicas
    # The file also stayed on the "VM", where `sky exec` left it.
    assert (home / remote_result_path(spec.exp_name, region)).exists()
