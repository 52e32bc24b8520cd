"""The one interface every backend implements; tests and the report never see which ran.

A :class:`Deployment` starts one system (its replicas, balancers and network), tells each
client region which URL to use, and stops everything it started. A :class:`ClientLauncher`
runs the client module once per client region against those URLs and returns the paths of
the result files it produced. No pytest import here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pytest_lbbench.runspec import RunKnobs, knob_argv, knobs_from
from pytest_lbbench.systems import SystemSpec

if TYPE_CHECKING:
    from pytest_lbbench.client.job import ClientJob
    from pytest_lbbench.workloads.base import Workload


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment: a system × workload run with its settings, typed.

    ``knobs`` and ``workload_options`` hold for every client region; ``region_overrides``
    (parsed once from ``--region-to-args`` by :func:`~pytest_lbbench.client.planning.parse_region_args`)
    replace some of them in one region. :meth:`client_job` turns it into what one client runs.
    """

    system: str
    workload: str
    exp_name: str  # ``<exp>_<system>``: the folder under ``metric/``
    client_regions: tuple[str, ...]
    knobs: RunKnobs = field(default_factory=RunKnobs)
    # The shared arrival/dataset options and the workload's own, by dest (left out: default).
    workload_options: Mapping[str, Any] = field(default_factory=dict)
    # Client region → option values (knobs by field name, options by dest) set there only.
    region_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The workload's code: the run's catalog entry (a hook workload exists only there); None:
    # the built-in workload named ``workload``.
    definition: Workload | None = field(default=None, compare=False)

    @property
    def workload_definition(self) -> Workload:
        """What builds this experiment's plans (``ValueError`` for an unknown built-in name)."""
        if self.definition is not None:
            return self.definition
        from pytest_lbbench.workloads import get_workload

        return get_workload(self.workload)

    @property
    def duration_s(self) -> float:
        """The longest ``--duration`` of any client region (what a launcher waits for)."""
        return max(self.region_settings(r)[0].duration_s for r in self.client_regions or ("",))

    @property
    def deadline_s(self) -> float:
        """How long the slowest client region may take: warm-up + duration + drain."""
        return max(k.warmup_s + k.duration_s + k.drain_timeout_s
                   for k in (self.region_settings(r)[0] for r in self.client_regions or ("",)))

    def region_settings(self, region: str) -> tuple[RunKnobs, dict[str, Any]]:
        """``(knobs, option values by dest)`` of one client region, overrides applied.
        ``ValueError`` when an override does not fit this workload or a value is invalid."""
        from pytest_lbbench.client.planning import check_overrides

        overrides = dict(self.region_overrides.get(region, {}))
        check_overrides(overrides, self.workload_definition)
        knobs = knobs_from(overrides, self.knobs)
        knob_names = set(knobs.to_dict())
        options = {**self.workload_options,
                   **{k: v for k, v in overrides.items() if k not in knob_names}}
        return knobs, options

    def client_job(self, region: str, region_index: int, backend_url: str, output_file: Path) -> ClientJob:
        """What the client of ``region`` runs (its plan built here, once). ``ValueError`` (or
        ``OSError`` for a dataset) says what is wrong."""
        from pytest_lbbench.client.job import build_job

        knobs, options = self.region_settings(region)
        return build_job(workload=self.workload_definition, region=region, region_index=region_index,
                         knobs=knobs, options=options, backend_url=backend_url,
                         exp_name=self.exp_name, output_file=str(output_file))

    def client_argv(self, region: str, region_index: int, backend_url: str, output_file: Path) -> list[str]:
        """Arguments of ``python -m pytest_lbbench.client`` that build the same job by hand, on a
        machine without the job file (what ``--lbbench-plan`` shows; runs ship the job file):
        every knob stated, then the options that differ from their defaults. A built-in
        workload only: a hook workload's code is where pytest runs."""
        from pytest_lbbench.client.planning import COMMON_OPTIONS

        knobs, options = self.region_settings(region)
        argv = [
            "--backend-url", backend_url,
            "--workload", self.workload,
            "--region", region,
            "--region-index", str(region_index),
            *knob_argv(knobs),
            "--exp-name", self.exp_name,
            "--output-file", str(output_file),
        ]
        for option in (*COMMON_OPTIONS, *self.workload_definition.options):
            argv += option.to_argv(options.get(option.dest, option.default))
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

    def connection_counts(self) -> dict[str, int] | None:
        """New connections each emulated link accepted since the last :meth:`reset` (link name
        → count); ``None`` where no link sees them (real networks)."""
        return None


class ClientLauncher(Protocol):
    """Runs the client module for every client region of an experiment."""

    def run(self, deployment: Deployment, spec: ExperimentSpec, metric_dir: Path,
            on_progress: Callable[[float, int], None] | None = None) -> dict[str, Path]:
        """Run all client regions to completion; return region → result-file path.

        ``on_progress(elapsed_s, records_so_far)`` is called now and then while they run."""
