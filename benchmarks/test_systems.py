"""The benchmark matrix: every selected system × every selected workload.

Run ``pytest benchmarks -k push_push --regions us-east-2 --duration 30`` for one system, or
``pytest benchmarks -n 2 --dist loadgroup`` for all of them in parallel workers.
"""

from __future__ import annotations

from pytest_lbbench.backends.base import Deployment
from pytest_lbbench.fixtures import RunExperiment


def test_benchmark(
    lbbench_deployment: Deployment, lbbench_workload: str, lbbench_run: RunExperiment
) -> None:
    result = lbbench_run(lbbench_deployment, lbbench_workload)
    # Measuring is the point; these checks only make sure the measurement is whole.
    assert result.sent > 0, "no request was sent"
    assert result.recorded == result.sent, (
        f"{result.sent - result.recorded} of {result.sent} requests have no record"
    )
    assert set(result.payloads) == set(result.files)
