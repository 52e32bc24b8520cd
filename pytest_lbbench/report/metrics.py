"""Experiment metrics as pure functions of per-request records (no I/O, no network).

Definitions (DESIGN §5; times in seconds unless the key says ``_ms``). Records marked
``warmup`` (started during the client's warm-up) are left out of every metric; they stay in
the result files.

* ``requests``: every record; ``failed``: records whose ``failed`` is set;
  ``failure_rate`` = failed / requests;
* TTFT and E2E statistics (mean, p50, p90, p99) over successful requests only;
* ITL: every gap between content chunks of successful requests; TPOT per request =
  (e2e − ttft) / (output_tokens − 1) for requests with at least two output tokens;
* ``span_s`` = last end − first start over successful requests (the plot script's span);
* ``throughput_tpt_per_s`` = Σ(input + 2·output) / span: the original paper's definition;
* ``output_tokens_per_s`` = Σ output / span; ``requests_per_s`` = successes / span;
* ``cache_hit_rate`` = Σ min(cached, input) / Σ input over successful requests that report
  ``cached_tokens`` (a request without a cache report is left out of both sums, not zeroed);
* ``served_remote_share``: of the successful requests whose serving replica is known, the
  share served by a replica outside the request's client region (needs the replica → region
  map of the deployment).
* goodput under an SLO (``{"ttft_s", "e2e_s", "tpot_s"}`` thresholds, inclusive): a request
  counts if it succeeded within every threshold; ``slo_attainment`` = those / all requests,
  ``goodput_requests_per_s`` = those / span.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence, TypeVar

from pytest_lbbench.stats import mean, percentile

Record = Mapping[str, Any]


R = TypeVar("R", bound=Record)


def measured(records: Iterable[R]) -> list[R]:
    """The records that count: every one except those sent during the warm-up."""
    return [r for r in records if not r.get("warmup")]


def _ok(records: Iterable[Record]) -> list[Record]:
    return [r for r in measured(records) if not r.get("failed") and r.get("e2e_latency") is not None]


def _dist(prefix: str, values: list[float]) -> dict[str, float | None]:
    return {
        f"{prefix}_mean_s": mean(values),
        f"{prefix}_p50_s": percentile(values, 50),
        f"{prefix}_p90_s": percentile(values, 90),
        f"{prefix}_p99_s": percentile(values, 99),
    }


def span_seconds(records: Iterable[Record]) -> float | None:
    """Last ``end`` minus first ``start`` over successful records (``None`` if none)."""
    ok = _ok(records)
    starts = [r["start"] for r in ok if r.get("start") is not None]
    ends = [r["end"] for r in ok if r.get("end") is not None]
    if not starts or not ends:
        return None
    return float(max(ends) - min(starts))


def cache_hit_rate(records: Iterable[Record]) -> float | None:
    """Σ min(cached, input) / Σ input over successful records that report a cache count."""
    hit = 0
    total = 0
    for r in _ok(records):
        cached, inp = r.get("cached_tokens"), r.get("input_tokens")
        if cached is None or not inp:
            continue
        hit += min(cached, inp)
        total += inp
    return hit / total if total else None


def tpot_values(records: Iterable[Record]) -> list[float]:
    """Time per output token after the first, one value per request with ≥ 2 output tokens."""
    out = []
    for r in _ok(records):
        n = r.get("output_tokens") or 0
        if n >= 2 and r.get("ttft") is not None:
            out.append((r["e2e_latency"] - r["ttft"]) / (n - 1))
    return out


def served_remote_share(records: Iterable[Record], replica_regions: Mapping[str, str]) -> float | None:
    """Share of successful requests served by a replica outside their client region."""
    known = [
        r for r in _ok(records)
        if r.get("replica") in replica_regions and r.get("client_region") is not None
    ]
    if not known:
        return None
    remote = sum(1 for r in known if replica_regions[r["replica"]] != r["client_region"])
    return remote / len(known)


def summarize(
    records: Sequence[Record], replica_regions: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every metric of one experiment (or one client region of it) as a flat dict."""
    records = measured(records)
    ok = _ok(records)
    failed = len(records) - len(ok)
    span = span_seconds(records)
    tokens_in = sum(r.get("input_tokens") or 0 for r in ok)
    tokens_out = sum(r.get("output_tokens") or 0 for r in ok)
    itl = [gap for r in ok for gap in (r.get("itl") or [])]
    summary: dict[str, Any] = {
        "requests": len(records),
        "succeeded": len(ok),
        "failed": failed,
        "failure_rate": failed / len(records) if records else None,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "span_s": span,
        "throughput_tpt_per_s": (tokens_in + 2 * tokens_out) / span if span else None,
        "output_tokens_per_s": tokens_out / span if span else None,
        "requests_per_s": len(ok) / span if span else None,
        "cache_hit_rate": cache_hit_rate(records),
        "served_remote_share": served_remote_share(records, replica_regions or {}),
    }
    summary.update(_dist("ttft", [r["ttft"] for r in ok if r.get("ttft") is not None]))
    summary.update(_dist("e2e", [r["e2e_latency"] for r in ok]))
    summary.update(_dist("tpot", tpot_values(records)))
    summary.update(_dist("itl", itl))
    return summary


def failure_reasons(records: Iterable[Record], limit: int = 5) -> dict[str, int]:
    """The most common failure reasons with their counts (for error messages)."""
    counts: dict[str, int] = {}
    for r in measured(records):
        if r.get("failed"):
            key = str(r["failed"])[:120]
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:limit])


#: Thresholds a service-level objective may set, all in seconds.
SLO_KEYS: tuple[str, ...] = ("ttft_s", "e2e_s", "tpot_s")
#: The objective goodput is measured against when the run names none (seconds).
DEFAULT_SLO: dict[str, float] = {"ttft_s": 1.0, "e2e_s": 30.0, "tpot_s": 0.1}


def validate_slo(slo: Mapping[str, float]) -> dict[str, float]:
    """``slo`` as a plain dict of positive finite floats; ``ValueError`` names bad keys."""
    out: dict[str, float] = {}
    for key, value in slo.items():
        if key not in SLO_KEYS:
            raise ValueError(f"unknown SLO threshold {key!r}; valid: {', '.join(SLO_KEYS)}")
        number = float(value)
        if not number > 0 or number == float("inf"):
            raise ValueError(f"SLO threshold {key}={value!r} must be a positive finite number of seconds")
        out[key] = number
    return out


def meets_slo(record: Record, slo: Mapping[str, float]) -> bool:
    """Whether one request succeeded within every threshold of ``slo`` (inclusive).

    A request with fewer than two output tokens has no decode phase, so the TPOT threshold
    does not apply to it; a threshold whose value the record lacks counts as missed (an
    unknown latency cannot be shown to meet an objective).
    """
    if record.get("failed") or record.get("e2e_latency") is None:
        return False
    e2e = float(record["e2e_latency"])
    ttft = record.get("ttft")
    if "e2e_s" in slo and e2e > slo["e2e_s"]:
        return False
    if "ttft_s" in slo and (ttft is None or ttft > slo["ttft_s"]):
        return False
    if "tpot_s" in slo and (record.get("output_tokens") or 0) >= 2:
        if ttft is None:
            return False
        if (e2e - ttft) / (record["output_tokens"] - 1) > slo["tpot_s"]:
            return False
    return True


def goodput(records: Sequence[Record], slo: Mapping[str, float]) -> dict[str, Any]:
    """Requests that met ``slo``: their count, their share of all requests, and their rate.

    ``slo_attainment`` counts failed requests in the denominator (a failure misses every
    objective); ``goodput_requests_per_s`` divides by the same span as ``requests_per_s``,
    so goodput ≤ requests/s always holds.
    """
    slo = validate_slo(slo)
    records = measured(records)
    met = sum(1 for r in records if meets_slo(r, slo))
    span = span_seconds(records)
    return {
        "slo_met_requests": met,
        "slo_attainment": met / len(records) if records else None,
        "goodput_requests_per_s": met / span if span else None,
    }
