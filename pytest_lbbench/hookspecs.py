"""Extension points of pytest-lbbench, implemented in a ``conftest.py`` or a plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy
import pytest

if TYPE_CHECKING:
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
