"""The one interface every backend implements; tests and the report never see which ran.

A :class:`Deployment` starts one system (its replicas, balancers and network), tells each
client region which URL to use, and stops everything it started. A :class:`ClientLauncher`
runs the client module once per client region against those URLs and returns the paths of
the result files it produced. No pytest import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    num_conv: int
    seed: int
    max_tokens: int | None = None
    request_timeout_s: float = 100.0
    drain_timeout_s: float = 100.0
    lag_threshold_ms: float = 10.0
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
            "--num-conv", str(self.num_conv),
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
        argv += shlex.split(self.region_to_args.get(region, ""))
        return argv


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


class ClientLauncher(Protocol):
    """Runs the client module for every client region of an experiment."""

    def run(self, deployment: Deployment, spec: ExperimentSpec, metric_dir: Path) -> dict[str, Path]:
        """Run all client regions to completion; return region → result-file path."""
