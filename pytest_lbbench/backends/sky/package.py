"""What the VMs run: this machine's ``pytest_lbbench`` package, staged with its identity.

The LB and client VMs run the package from a file mount (``~/lbbench-src/pytest_lbbench``), not
from an install, so on the VM ``importlib.metadata`` knows no version. The mount's source is
therefore a staged copy of the local package (:func:`stage_package`) holding ``_shipped.json``
with the local version and a hash of the package's content; ``pytest_lbbench.__version__`` and
``pytest_lbbench.code_hash()`` read it on the VM, so results say which code ran. The staged
path contains the hash, so a changed package changes every rendered YAML that mounts it, and
with it the ``--keep-up`` reuse key (the component fingerprint). No pytest or ``sky`` import.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pytest_lbbench import __version__
from pytest_lbbench.identity import SHIPPED_FILE, code_hash, package_files

STAGE_ROOT_ENV = "LBBENCH_SHIP_DIR"
"""Where staged copies go (default: ``<tmp>/pytest-lbbench-ship``)."""


def stage_root() -> Path:
    return Path(os.environ.get(STAGE_ROOT_ENV) or Path(tempfile.gettempdir()) / "pytest-lbbench-ship")


def staged_path(package_dir: str | Path) -> Path:
    """Where :func:`stage_package` puts the copy of ``package_dir`` (a pure function of its hash)."""
    return stage_root() / code_hash(package_dir) / "pytest_lbbench"


def stage_package(package_dir: str | Path) -> Path:
    """Copy the package to :func:`staged_path` once, stamped with version and hash; returns it."""
    root = Path(package_dir)
    dest = staged_path(root)
    if (dest / SHIPPED_FILE).exists():
        return dest
    digest = code_hash(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest.parent))
    try:
        copy = scratch / "pytest_lbbench"
        for src in package_files(root):
            target = copy / src.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        if code_hash(copy) != digest:
            raise RuntimeError(f"the package under {root} changed while it was being staged; try again")
        (copy / SHIPPED_FILE).write_text(json.dumps({"version": __version__, "code_hash": digest}) + "\n")
        try:
            copy.rename(dest)  # atomic: a concurrent stager (another xdist worker) may win
        except OSError:
            if not (dest / SHIPPED_FILE).exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest
