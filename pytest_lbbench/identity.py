"""Which code this is: a content hash of the ``pytest_lbbench`` package (no pytest import).

Used for what a cloud VM runs (``backends/sky/package.py`` stages a copy stamped with it) and
recorded in every client result, so a result says which code produced it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

SHIPPED_FILE = "_shipped.json"
"""Written into the copy of the package a cloud VM runs (see ``backends/sky/package.py``)."""


def _skipped(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or path.name == SHIPPED_FILE


def package_files(package_dir: Path) -> list[Path]:
    """The package's files, sorted, without bytecode caches or an earlier stamp."""
    return sorted(p for p in package_dir.rglob("*") if p.is_file() and not _skipped(p.relative_to(package_dir)))


@functools.lru_cache(maxsize=8)
def _hash_of(package_dir: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    root = Path(package_dir)
    for rel, _size, _mtime in stamp:
        digest.update(rel.encode() + b"\0")
        digest.update((root / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def code_hash(package_dir: str | Path) -> str:
    """A hash of the package's content (file names and bytes): same code, same hash."""
    root = Path(package_dir)
    files = package_files(root)
    # Keyed by names, sizes and mtimes so that an edit during a session is seen, and an
    # unchanged tree is hashed once.
    stamp = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _hash_of(str(root), stamp)


