"""How an experiment's load fell on its replicas: request shares and the outstanding-request spread.

* **Replica share**: of the measured records (warm-up left out) whose ``replica`` field is
  known (the ``x-lbbench-replica`` response header), the fraction each replica served.
  Failed requests that reached a replica count too: they were load on it. Records without a
  replica (a request that never reached one) are left out and counted separately.
* **Outstanding-request spread**: from the 1 Hz telemetry (``queue_size/<exp>.txt``), each
  replica's mean number of outstanding requests, running + queued (``num_running_reqs`` +
  ``num_queue_reqs``, the SGLang gauges the poller reads from ``/metrics``), over the ticks
  where its running count was read; the spread is the largest mean over the smallest. This
  is the imbalance figure the SkyWalker paper reports per system in Fig. 8 (SGL 2.33-5.08x,
  CH 2.54-4.92x, fidelity.md §1); we define it this way because the paper's own formula was
  not available to us (see :mod:`~pytest_lbbench.report.paper`). A replica idle throughout
  makes the spread infinite (``inf``; ``null`` in JSON).

No pytest here; nothing but the stored files is read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from pytest_lbbench.report.metrics import measured
from pytest_lbbench.report.queuelog import QueueLog, read_queue_log

#: Replica names start with this in every backend; the tables leave it out to stay narrow.
NAME_PREFIX = "replica-"


def replica_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Measured requests per serving replica (records without a known replica left out)."""
    counts: dict[str, int] = {}
    for record in measured(records):
        name = record.get("replica")
        if name:
            counts[str(name)] = counts.get(str(name), 0) + 1
    return dict(sorted(counts.items()))


def replica_shares(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Each replica's fraction of the measured requests whose replica is known (sums to 1)."""
    counts = replica_counts(records)
    total = sum(counts.values())
    return {name: n / total for name, n in counts.items()} if total else {}


def mean_outstanding(log: QueueLog) -> dict[str, float]:
    """Each replica's mean running + queued requests over the ticks its running count was read.

    A tick whose queue gauge is missing counts the running requests alone (the gauge is
    absent, not zero, on a failed read of one sample; a failed poll drops the whole tick).
    """
    out: dict[str, float] = {}
    for name, running in sorted(log.replica_running.items()):
        queued = dict(log.replica_queue.get(name, []))
        values = [value + queued.get(t, 0.0) for t, value in running]
        if values:
            out[name] = sum(values) / len(values)
    return out


def spread(means: Mapping[str, float]) -> float | None:
    """Largest mean over smallest: ``None`` under two replicas or when all are idle, ``inf``
    when one replica stayed idle while another did not."""
    if len(means) < 2:
        return None
    high, low = max(means.values()), min(means.values())
    if high <= 0:
        return None
    return math.inf if low <= 0 else high / low


def telemetry_spread(queue_log: Path | None) -> tuple[dict[str, float], float | None]:
    """``(mean outstanding per replica, spread)`` from one telemetry file; empty without one."""
    if queue_log is None or not Path(queue_log).is_file():
        return {}, None
    means = mean_outstanding(read_queue_log(Path(queue_log)))
    return means, spread(means)


def short_name(name: str) -> str:
    """``replica-0-us-east-2`` → ``0-us-east-2``."""
    return name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) and len(name) > len(NAME_PREFIX) else name


def format_shares(shares: Mapping[str, float]) -> str:
    """``"0-us-east-2 41% 1-ap-northeast-1 22% …"`` in name order (``"-"`` when unknown)."""
    if not shares:
        return "-"
    return " ".join(f"{short_name(n)} {100 * s:.0f}%" for n, s in sorted(shares.items()))


def format_spread(value: float | None) -> str:
    """``2.31x``, ``inf`` (a replica idle throughout) or ``-`` (no telemetry)."""
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2f}x"


def queue_log_beside(exp: Mapping[str, Any]) -> Path | None:
    """``queue_size/<exp>.txt`` next to ``metric/<exp>/<region>.json`` (where the plugin and the
    original tooling write it), or the experiment's own ``queue_size`` entry."""
    named = exp.get("queue_size")
    if named and Path(str(named)).is_file():
        return Path(str(named))
    for path in (exp.get("files") or {}).values():
        candidate = Path(str(path)).parent.parent.parent / "queue_size" / f"{exp.get('exp_name')}.txt"
        if candidate.is_file():
            return candidate
    return None
