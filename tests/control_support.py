"""The control-plane secret of the test session.

``tests/conftest.py`` exports :data:`TOKEN` as ``LBBENCH_CONTROL_TOKEN``, so every LB, gateway,
replica and delay-link process a test starts by hand holds it; tests send :data:`HEADERS` with
their control requests (membership, reset, steal, faults), as the benchmark's launcher does.
"""

from __future__ import annotations

from pytest_lbbench.control import CONTROL_TOKEN_HEADER

TOKEN = "tests-control-secret"
HEADERS = {CONTROL_TOKEN_HEADER: TOKEN}
