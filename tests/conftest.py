"""Fixtures shared by the pytester tests of the plugin."""

from __future__ import annotations

import os

import pytest

# Figures are drawn by in-process pytester runs too. matplotlib's C extensions cannot be loaded
# twice in one process, and pytester drops the modules an inner run imported, so the first run
# that drew a figure broke every later one ("cannot load module more than once per process"),
# depending on test order. Loaded here, in the outer process, they stay loaded.
import matplotlib.figure  # noqa: F401
from matplotlib.backends import backend_agg  # noqa: F401

from control_support import TOKEN
from pytest_lbbench.control import CONTROL_TOKEN_ENV

# Processes the tests start by hand (LBs, gateways, replicas, delay links) get the session's
# control secret through the environment they inherit, as the benchmark hands it to its own.
os.environ[CONTROL_TOKEN_ENV] = TOKEN

# The benchmark matrix test as a user writes it: one test, run once per system × workload.
BENCH = '''
from pytest_lbbench.backends.base import Deployment
from pytest_lbbench.fixtures import RunExperiment

def test_benchmark(lbbench_deployment: Deployment, lbbench_workload: str,
                   lbbench_run: RunExperiment) -> None:
    result = lbbench_run(lbbench_deployment, lbbench_workload)
    assert result.sent > 0
    assert result.recorded == result.sent
'''


@pytest.fixture
def bench(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory holding the matrix test (``test_bench.py``)."""
    pytester.makepyfile(test_bench=BENCH)
    return pytester
