"""Typed workload arguments for workload tests (what the client hands ``Workload.plan``)."""

from __future__ import annotations

from typing import Any

from pytest_lbbench.workloads.base import WorkloadArgs


def workload_args(values: dict[str, Any]) -> WorkloadArgs:
    """``values`` as the client would hand them over: ``num_users``, ``seed``, ``duration``
    (seconds), ``max_tokens``; every other key is an option by dest."""
    rest = dict(values)
    return WorkloadArgs(
        num_users=int(rest.pop("num_users")), seed=int(rest.pop("seed", 0)),
        duration_s=float(rest.pop("duration", 120.0)), max_tokens=rest.pop("max_tokens", None),
        options=rest,
    )
