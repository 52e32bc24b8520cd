"""The per-request record: the original ``Metric`` fields plus what the anchors add.

Every request the client sends gets exactly one record, failures and timeouts included.
Field meanings (times are epoch seconds from ``time.time()``; durations are seconds measured
with ``time.perf_counter()``):

* ``uid``: the client region (the original used its ``--seed``, which was the region name);
* ``start`` / ``response_start`` / ``streaming_start`` / ``end``: request sent, response
  headers received, first SSE chunk received, final chunk (with ``finish_reason``) received;
* ``ttft``: first SSE chunk − start (any chunk counts, as in the original); ``e2e_latency``:
  final chunk − start; both ``None`` when the request failed before them;
* ``failed``: ``None`` on success, else a short reason (``"timeout"``, ``"http 503: …"``, …);
* ``input_tokens``, ``output_tokens``, ``cached_tokens``: from the usage chunk;
* ``headers``: all response headers (the LB decision/timing headers among them);
* ``hash_key`` (sent as ``x-hash-key``), ``program_id`` (the conversation);
* additions: ``client_region``, ``user_index``, ``conv_index``, ``turn_index``, ``branch``
  (tree workloads: the node's path, e.g. ``"0.1"`` = second answer to the first answer),
  ``warmup`` (sent during the warm-up, left out of every metric), ``itl`` (gaps
  between content chunks, s), ``replica`` and ``lbs`` (who served it, from headers),
  ``replica_timing`` (the replica's own arrival/first-token/finish times, when it reports them),
  ``new_connection`` (the client's pool opened a connection for this request; ``None`` when the
  request failed before one was chosen);
* ``ttft_parts``: where the TTFT went (:mod:`pytest_lbbench.report.ttft_parts`), added by the
  harness after the run from these timestamps and the deployment's emulated delays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_lbbench.protocol import served_by

__all__ = ["RequestRecord", "served_by"]


@dataclass
class RequestRecord:
    """One request's outcome. Created when the request starts, completed in place."""

    uid: str
    hash_key: str | None
    program_id: str
    client_region: str
    user_index: int
    conv_index: int
    turn_index: int
    start: float
    response_start: float | None = None
    streaming_start: float | None = None
    end: float | None = None
    ttft: float | None = None
    e2e_latency: float | None = None
    failed: str | None = None
    failed_at: float | None = None  # wall time of the failure (epoch s), None when it did not fail
    input_tokens: int | None = None
    output_tokens: int = 0
    cached_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    itl: list[float] = field(default_factory=list)
    replica: str | None = None
    lbs: list[str] = field(default_factory=list)
    replica_timing: dict[str, Any] | None = None
    branch: str | None = None
    warmup: bool = False
    new_connection: bool | None = None
    ttft_parts: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
