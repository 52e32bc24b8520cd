"""pytest-lbbench: benchmark LLM load balancers across regions with one pytest command."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pytest_lbbench.identity import SHIPPED_FILE
from pytest_lbbench.identity import code_hash as _hash_of_files


def _shipped() -> dict[str, str]:
    try:
        data = json.loads((Path(__file__).parent / SHIPPED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


_SHIPPED = _shipped()

if _SHIPPED.get("version"):  # a copy shipped to a VM: the version of the machine that sent it
    __version__ = _SHIPPED["version"]
else:
    try:
        __version__ = version("pytest-lbbench")
    except PackageNotFoundError:  # running from a source tree that is not installed
        __version__ = "0.0.0+unknown"


def code_hash() -> str:
    """The content hash of this package's code: stamped into a copy shipped to a cloud VM,
    computed (once per change) from the files otherwise."""
    if _SHIPPED.get("code_hash"):
        return _SHIPPED["code_hash"]
    return _hash_of_files(Path(__file__).parent)


__all__ = ["__version__", "code_hash"]
