"""The benchmark matrix (every selected system × workload), as shipped in the package.

Run ``pytest benchmarks -k push_push --regions us-east-2 --duration 30`` for one system, or
``pytest benchmarks -n 2`` for all of them in parallel workers. Without a checkout:
``pytest --pyargs pytest_lbbench.benchmarks ...``.
"""

from pytest_lbbench.benchmarks.test_systems import test_benchmark, test_capacity  # noqa: F401 - collected here
