"""Extension points of pytest-lbbench, implemented in a ``conftest.py`` or a plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy
import pytest

if TYPE_CHECKING:
    from pytest_lbbench.backends.registry import Backend
    from pytest_lbbench.systems import SystemSpec

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_lbbench_systems(config: pytest.Config) -> list[SystemSpec] | None:
    """Return extra systems to benchmark, next to the built-in catalog.

    Every returned :class:`~pytest_lbbench.systems.SystemSpec` becomes a row of the matrix,
    selectable with ``--systems`` and ``-k`` like the built-in ones. Example ``conftest.py``::

        from pytest_lbbench.systems import BalancerKind, Placement, SystemSpec

        def pytest_lbbench_systems(config):
            return [
                SystemSpec(
                    name="sky_push_push_ll", label="Push+Push [least load]",
                    kind=BalancerKind.SKY_LB, placement=Placement.REGIONAL,
                    lb_mode="push", replica_mode="push",
                    policy="least_load", meta_policy="least_load",
                )
            ]

    A name that is already taken is refused at start-up.
    """


if TYPE_CHECKING:
    from pytest_lbbench.workloads.base import Workload


@hookspec
def pytest_lbbench_workloads(config: pytest.Config) -> list[Workload] | None:
    """Return extra workloads, next to the built-in ones.

    A workload is any object with ``name``, ``options`` (a tuple of
    :class:`~pytest_lbbench.workloads.base.WorkloadOption`, may be empty), ``hf_dataset``
    (``None`` for synthetic-only) and ``plan(args, region, region_index)`` returning a
    :class:`~pytest_lbbench.workloads.base.WorkloadPlan`. Each becomes a column of the matrix,
    selectable with ``--workloads`` and ``-k``. The plan is built in the pytest process and
    handed to the client as a file, so the workload's code never has to be importable by the
    client. Example ``conftest.py``::

        from pytest_lbbench.workloads.base import (
            Conversation, RequestSettings, WorkloadPlan, group_into_users, users_from_groups)

        class SupportChats:
            name = "support"
            options = ()
            hf_dataset = None

            def plan(self, args, region, region_index):
                convs = [Conversation(f"c{i}", f"customer{i % 7}", float(i),
                                      ("My order is late.", "It was order 12345."))
                         for i in range(100)]
                return WorkloadPlan(
                    name=self.name,
                    users=users_from_groups(group_into_users(convs, args.num_users)),
                    settings=RequestSettings(max_tokens=args.max_tokens or 128, temperature=0.0),
                )

        def pytest_lbbench_workloads(config):
            return [SupportChats()]

    ``args`` is a :class:`~pytest_lbbench.workloads.base.WorkloadArgs`: ``num_users``,
    ``seed``, ``duration_s``, ``max_tokens``, ``dataset_source``, ``dataset_path`` and the
    shared arrival options by dest (``args.option("request_rate")``); options of your own are
    best read from ``config`` when you construct the workload. A name that is already taken is
    refused at start-up.
    """


@hookspec
def pytest_lbbench_backends(config: pytest.Config) -> list[Backend] | None:
    """Return extra backends, next to ``local``, ``sky`` and ``gke``; select one with
    ``--backend NAME``.

    A backend is any object with the attributes and methods of
    :class:`~pytest_lbbench.backends.registry.Backend`: ``name``, ``summary``,
    ``scales_time`` (whether it honours ``--time-scale``; if not, a scaled run is refused),
    ``deployment(system, ctx)`` returning a :class:`~pytest_lbbench.backends.base.Deployment`
    (raise :class:`~pytest_lbbench.backends.registry.BackendUnavailable` to skip a system with
    a reason), ``client_launcher(system, ctx)``, ``plan(ctx)`` (text for ``--lbbench-plan``, or
    ``None``), ``cleanup(ctx)`` (``--lbbench-cleanup``: lines, failed) and ``close()`` (at the
    end of the run). One instance serves the whole run, so it may keep state. Example
    ``conftest.py``: a backend that reuses the local one on a different layout::

        from pytest_lbbench.backends.local import LocalBackend

        class Shared(LocalBackend):
            name = "shared"
            summary = "the local backend, one log directory for every system"

        def pytest_lbbench_backends(config):
            return [Shared()]

    A name that is already taken is refused at start-up.
    """
