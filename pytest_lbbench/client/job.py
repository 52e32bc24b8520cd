"""The job file: everything one client process runs, written by the plugin, read by the client.

pytest-lbbench builds each client region's job in the pytest process, from the typed
experiment settings (:class:`~pytest_lbbench.backends.base.ExperimentSpec`): the knobs after the
region's overrides, and the workload's plan (so a workload from a ``conftest.py`` runs in a
client that cannot import it, and a dataset is loaded once). The client is started with
``--job-file`` and parses nothing else. By hand (or on a cloud VM) the client builds the same
job from its command line (:func:`job_from_args`). No pytest import here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_lbbench.client.planning import (
    apply_arrival_options,
    option_defaults,
    region_index_of,
    workload_option_values,
)
from pytest_lbbench.client.runner import ClientSettings
from pytest_lbbench.runspec import RunKnobs, knobs_from
from pytest_lbbench.workloads import get_workload
from pytest_lbbench.workloads.base import Workload, WorkloadArgs, WorkloadPlan

JOB_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ClientJob:
    """One client region's run of one experiment."""

    backend_url: str
    region: str
    region_index: int
    workload: str
    exp_name: str
    output_file: str
    knobs: RunKnobs
    plan: WorkloadPlan

    def settings(self) -> ClientSettings:
        """How the client drives the endpoint."""
        return ClientSettings(backend_url=self.backend_url.rstrip("/"), region=self.region,
                              knobs=self.knobs)

    def to_json(self) -> str:
        return json.dumps({
            "schema_version": JOB_SCHEMA_VERSION,
            "backend_url": self.backend_url, "region": self.region,
            "region_index": self.region_index, "workload": self.workload,
            "exp_name": self.exp_name, "output_file": self.output_file,
            "knobs": self.knobs.to_dict(), "plan": json.loads(self.plan.to_json()),
        })

    @classmethod
    def from_json(cls, text: str) -> ClientJob:
        """Parse a job file; ``ValueError`` names what is wrong (schema, missing keys)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"job file is not JSON ({exc})") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != JOB_SCHEMA_VERSION:
            raise ValueError(f"job file schema_version {version!r} is not {JOB_SCHEMA_VERSION} "
                             "(written by another pytest-lbbench version?)")
        try:
            return cls(
                backend_url=str(data["backend_url"]), region=str(data["region"]),
                region_index=int(data["region_index"]), workload=str(data["workload"]),
                exp_name=str(data["exp_name"]), output_file=str(data["output_file"]),
                knobs=RunKnobs.from_dict(data["knobs"]),
                plan=WorkloadPlan.from_json(json.dumps(data["plan"])),
            )
        except KeyError as exc:
            raise ValueError(f"job file lacks {exc.args[0]!r}") from None

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path


def build_job(*, workload: Workload, region: str, region_index: int, knobs: RunKnobs,
              options: Mapping[str, Any], backend_url: str, exp_name: str,
              output_file: str) -> ClientJob:
    """Build the plan of ``workload`` for one client region and wrap it as a job.

    ``options`` are option values by dest (the shared ones and the workload's own); the ones
    left out take their defaults. ``ValueError`` (or ``OSError`` for a dataset) says what is
    wrong."""
    values = {**option_defaults(workload), **options}
    args = WorkloadArgs(num_users=knobs.num_users, seed=knobs.seed, duration_s=knobs.duration_s,
                        max_tokens=knobs.max_tokens, options=values)
    plan = apply_arrival_options(workload.plan(args, region, region_index), args)
    return ClientJob(backend_url=backend_url, region=region, region_index=region_index,
                     workload=workload.name, exp_name=exp_name, output_file=output_file,
                     knobs=knobs, plan=plan)


def job_from_args(args: argparse.Namespace) -> ClientJob:
    """The job of a client started by hand (parsed by :func:`~.planning.parse_args`), or the
    one in ``--job-file``."""
    if args.job_file:
        return ClientJob.from_json(Path(args.job_file).read_text())
    output = args.output_file or str(Path(args.output_dir) / "metric" / f"{args.exp_name}.json")
    workload = get_workload(args.workload)
    return build_job(
        workload=workload, region=args.region, region_index=region_index_of(args),
        knobs=knobs_from(vars(args)), options=workload_option_values(args, workload),
        backend_url=args.backend_url, exp_name=args.exp_name, output_file=output,
    )
