"""64-bit xxHash (seed 0) for the consistent-hashing ring.

The original ring uses ``xxhash.xxh64(key, seed=0).intdigest()``. We use the ``xxhash`` package
when it is installed (it is fast and C-backed) and otherwise a small pure-Python port of the
reference algorithm with identical output, so the ring never depends on an optional wheel. Only
ring construction (about 1024 hashes) and one hash per request go through here.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["xxh64_intdigest", "xxh64_python"]

_MASK = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _MASK
    return (_rotl(acc, 31) * _P1) & _MASK


def _merge(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * _P1 + _P4) & _MASK


def xxh64_python(data: bytes, seed: int = 0) -> int:
    """Reference XXH64 in pure Python (used only when the ``xxhash`` package is missing)."""
    n = len(data)
    pos = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _MASK
        v2 = (seed + _P2) & _MASK
        v3 = seed & _MASK
        v4 = (seed - _P1) & _MASK
        limit = n - 32
        while pos <= limit:
            v1 = _round(v1, int.from_bytes(data[pos : pos + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[pos + 8 : pos + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[pos + 16 : pos + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[pos + 24 : pos + 32], "little"))
            pos += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while pos + 8 <= n:
        k1 = _round(0, int.from_bytes(data[pos : pos + 8], "little"))
        h ^= k1
        h = (_rotl(h, 27) * _P1 + _P4) & _MASK
        pos += 8
    if pos + 4 <= n:
        h ^= (int.from_bytes(data[pos : pos + 4], "little") * _P1) & _MASK
        h = (_rotl(h, 23) * _P2 + _P3) & _MASK
        pos += 4
    while pos < n:
        h ^= (data[pos] * _P5) & _MASK
        h = (_rotl(h, 11) * _P1) & _MASK
        pos += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK
    h ^= h >> 29
    h = (h * _P3) & _MASK
    h ^= h >> 32
    return h


def _python_intdigest(key: str) -> int:
    return xxh64_python(key.encode("utf-8"))


def _load() -> Callable[[str], int]:
    try:
        import xxhash
    except ImportError:
        return _python_intdigest
    fast: Callable[[bytes], int] = xxhash.xxh64_intdigest

    def _c_intdigest(key: str) -> int:
        # xxhash 3.x hashed ``str`` as UTF-8; 4.x requires bytes, so encode explicitly.
        return fast(key.encode("utf-8"))

    return _c_intdigest


xxh64_intdigest: Callable[[str], int] = _load()
"""``xxh64(key.encode('utf-8'), seed=0)`` as an unsigned 64-bit int."""
