"""The one interface every backend implements; tests and the report never see which ran.

A :class:`Deployment` starts one system (its replicas, balancers and network), tells each
client region which URL to use, and stops everything it started. A :class:`ClientLauncher`
runs the client module once per client region against those URLs and returns the paths of
the result files it produced. No pytest import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from pytest_lbbench.systems import SystemSpec


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment: a system × workload run with its knobs."""

    system: str
    workload: str
    exp_name: str  # ``<exp>_<system>``: the folder under ``metric/``
    client_regions: tuple[str, ...]
    duration_s: float
    num_users: int
    seed: int
    max_tokens: int | None = None
    request_timeout_s: float = 100.0
    drain_timeout_s: float = 100.0
    lag_threshold_ms: float = 10.0
    warmup_s: float = 0.0
    # The workload's own options and the arrival/dataset options, as client arguments.
    workload_argv: tuple[str, ...] = ()
    region_to_args: dict[str, str] = field(default_factory=dict)

    def client_argv(self, region: str, region_index: int, backend_url: str, output_file: Path) -> list[str]:
        """Arguments of ``python -m pytest_lbbench.client`` for one client region.

        Region-specific arguments (``--region-to-args``) come last so they win, exactly as the
        original gen_cmd appended them to the bench command.
        """
        import shlex

        argv = [
            "--backend-url", backend_url,
            "--workload", self.workload,
            "--region", region,
            "--region-index", str(region_index),
            "--num-users", str(self.num_users),
            "--seed", str(self.seed),
            "--duration", str(self.duration_s),
            "--request-timeout", str(self.request_timeout_s),
            "--drain-timeout", str(self.drain_timeout_s),
            "--lag-threshold-ms", str(self.lag_threshold_ms),
            "--exp-name", self.exp_name,
            "--output-file", str(output_file),
        ]
        if self.max_tokens is not None:
            argv += ["--max-tokens", str(self.max_tokens)]
        if self.warmup_s:
            argv += ["--warmup", str(self.warmup_s)]
        argv += list(self.workload_argv)
        argv += shlex.split(self.region_to_args.get(region, ""))
        return argv

    def write_plan(self, argv: list[str], plan_file: Path) -> list[str]:
        """Build the plan the client would build from ``argv``, write it to ``plan_file`` and
        return ``argv`` with ``--plan-file``: the client then runs exactly that plan.

        Building it here, once, lets a workload from a ``conftest.py`` run in a client process
        that cannot import it, and loads a dataset once instead of once per client.
        ``ValueError`` says which argument is wrong.
        """
        from pytest_lbbench.client.planning import plan_from_argv

        plan = plan_from_argv(argv)
        plan_file.parent.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(plan.to_json())
        return [*argv, "--plan-file", str(plan_file)]


class Deployment(Protocol):
    """A started system under test."""

    system: SystemSpec

    def start(self) -> None:
        """Bring every component up and wait until each client endpoint answers."""

    def endpoint_for(self, client_region: str) -> str:
        """The base URL a client in ``client_region`` uses (its nearest entry point)."""

    def telemetry_targets(self) -> list[dict[str, str]]:
        """``{"name", "url", "kind"}`` of every component to poll (see :mod:`pytest_lbbench.telemetry`)."""

    def describe(self) -> dict[str, Any]:
        """Placement, software versions and effective configuration, for result files."""

    def stop(self) -> None:
        """Stop everything this deployment started (idempotent, never raises)."""

    def reset(self) -> dict[str, Any]:
        """Bring the system back to the state of a fresh start before an experiment: replica
        caches flushed, balancers' trees, queues and counters cleared. Returns what was done.

        Backends that cannot do it keep this default and say so in the result files.
        """
        return {"isolated": False, "why": "this backend does not reset a system between experiments"}

    def host_lag(self) -> dict[str, dict[str, Any]] | None:
        """How far each of this system's processes fell behind model time since the last
        :meth:`reset`, component name → counters (see :mod:`pytest_lbbench.hostlag`); ``None``
        where the backend cannot tell (real engines on real machines)."""
        return None


class ClientLauncher(Protocol):
    """Runs the client module for every client region of an experiment."""

    def run(self, deployment: Deployment, spec: ExperimentSpec, metric_dir: Path,
            on_progress: Callable[[float, int], None] | None = None) -> dict[str, Path]:
        """Run all client regions to completion; return region → result-file path.

        ``on_progress(elapsed_s, records_so_far)`` is called now and then while they run."""
