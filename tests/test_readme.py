"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = "pip install -e '.[dev]' && pytest tests"
BENCH_COMMAND = "pip install -e '.[dev]' && pytest benchmarks -k push_push --regions us-east-2 --duration 30"


def test_readme_and_ci_run_the_same_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in readme.splitlines()
    assert TEST_COMMAND in ci.splitlines()
    assert BENCH_COMMAND in readme.splitlines()
