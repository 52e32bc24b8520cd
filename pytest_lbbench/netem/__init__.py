"""Delay links: userspace TCP proxies that emulate the WAN delay between regions.

``tc netem`` is not available on the CI kernel, so every cross-region connection of the local
backend goes through a :class:`DelayLink` (in-process) or through one
``python -m pytest_lbbench.netem`` process that serves a whole :class:`LinkSet`.
No pytest import here.
"""

from __future__ import annotations

from typing import Sequence

from pytest_lbbench.procutil import python_module_argv

from .link import DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER, DelayLink, LinkSet, LinkStats
from .spec import LinkSpec, LinkSpecError, parse_link_specs, spec_from_dict, specs_to_json

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_LOW_WATER",
    "DelayLink",
    "LinkSet",
    "LinkSpec",
    "LinkSpecError",
    "LinkStats",
    "netem_argv",
    "parse_link_specs",
    "spec_from_dict",
    "specs_to_json",
]


def netem_argv(specs: Sequence[LinkSpec], *extra: str) -> list[str]:
    """The command line that serves ``specs`` in a child process (pass it to ``procutil.spawn``).

    The child announces ``{"links": {name: port, ...}, "pid": ...}`` on its readiness line.
    """
    return python_module_argv("pytest_lbbench.netem", "--links-json", specs_to_json(specs), *extra)
