"""The benchmark matrix, shipped in the package: after ``pip install pytest-lbbench``,
``pytest --pyargs pytest_lbbench.benchmarks -k push_push --regions us-east-2`` runs it."""
