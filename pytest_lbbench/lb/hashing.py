"""64-bit xxHash (seed 0) for the consistent-hashing ring.

The original ring uses ``xxhash.xxh64(key, seed=0).intdigest()``; so do we, through the C-backed
``xxhash`` package (a dependency). Only ring construction (about 1024 hashes) and one hash per
request go through here.
"""

from __future__ import annotations

import xxhash

__all__ = ["xxh64_intdigest"]


def xxh64_intdigest(key: str) -> int:
    """``xxh64(key.encode('utf-8'), seed=0)`` as an unsigned 64-bit int."""
    # xxhash 3.x hashed ``str`` as UTF-8; 4.x requires bytes, so encode explicitly.
    return int(xxhash.xxh64_intdigest(key.encode("utf-8")))
