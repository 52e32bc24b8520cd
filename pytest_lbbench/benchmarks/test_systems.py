"""The benchmark matrix: every selected system × every selected workload.

Run ``pytest --pyargs pytest_lbbench.benchmarks -k push_push --regions us-east-2 --duration 30``
(or, in a checkout, ``pytest benchmarks ...``) for one system, or add ``-n 2`` for all of them in
parallel workers (each system stays on one worker). ``--num-users 10,50`` sweeps the load;
``--lbbench-sla ttft_p90_s=1.0`` runs :func:`test_capacity` instead of :func:`test_benchmark`.
"""

from __future__ import annotations

from pytest_lbbench.backends.base import Deployment
from pytest_lbbench.fixtures import RunExperiment, SearchCapacity


def test_benchmark(
    lbbench_deployment: Deployment, lbbench_workload: str, lbbench_run: RunExperiment
) -> None:
    """One experiment of one system under one workload; the run's table, files and gates do
    the measuring."""
    result = lbbench_run(lbbench_deployment, lbbench_workload)
    # Measuring is the point; these checks only make sure the measurement is whole.
    assert result.sent > 0, "no request was sent"
    assert result.recorded == result.sent, (
        f"{result.sent - result.recorded} of {result.sent} requests have no record"
    )
    assert set(result.payloads) == set(result.files)


def test_capacity(
    lbbench_deployment: Deployment, lbbench_workload: str, lbbench_capacity: SearchCapacity
) -> None:
    """The capacity of one system under one workload at the ``--lbbench-sla`` targets: the
    highest load that meets them all (each probe is a full experiment in the summary)."""
    found = lbbench_capacity(lbbench_deployment, lbbench_workload)
    assert found.probes, "the search ran no experiment"
