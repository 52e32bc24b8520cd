"""Prometheus text exposition parsing, just what our telemetry needs (no dependency)."""

from __future__ import annotations


def parse_samples(text: str) -> dict[str, float]:
    """``{metric name: value}`` of the first sample of every metric family in ``text``.

    Labels are dropped (our replicas export one series per gauge); lines that do not parse
    are skipped, because a scrape must never fail the benchmark.
    """
    samples: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            _, _, rest = rest.rpartition("}")
        else:
            name, _, rest = line.partition(" ")
        parts = rest.split()
        if not name or not parts or name in samples:
            continue
        try:
            samples[name.strip()] = float(parts[0])
        except ValueError:
            continue
    return samples
