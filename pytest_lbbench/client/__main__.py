"""``python -m pytest_lbbench.client``: run one client region's users against one endpoint.

This is the same program the local backend starts per client region and that cloud backends
run on client VMs. It writes, in the original ``sky.lbbench`` layout:

* the job's output file (``--output-file``, default ``<output-dir>/metric/<exp-name>.json``;
  in a ``--job-file``, its ``output_file``): one JSON object
  ``{"workload", "latency", "metrics": [records], "backend_url", "workload_args", ...}``;
* ``<output-file>.partial.jsonl`` while running: one record per line, flushed as each request
  completes, so a crash keeps every finished request; once the final file exists it stays, as
  ``<output-file minus .json>.jsonl`` (every request's record, one per line, for tools that
  stream).

Exit status: 0 on a completed run (failed requests are data, not errors), 2 on bad arguments,
3 when the endpoint never became ready.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import IO, Any

from pytest_lbbench import __version__, code_hash
from pytest_lbbench.client.job import job_from_args
from pytest_lbbench.client.planning import parse_args
from pytest_lbbench.client.records import RequestRecord
from pytest_lbbench.client.runner import EndpointNotReady, run_client
from pytest_lbbench.procutil import new_event_loop, watch_parent
from pytest_lbbench.workloads.base import WorkloadPlan

__all__ = ["main", "parse_args"]

SCHEMA_VERSION = 1


def _write_result_atomic(path: Path, payload: dict[str, Any], records_jsonl: Path) -> None:
    """Write ``payload`` with ``"metrics"`` set to the records of ``records_jsonl`` (one JSON
    object per line), copied line by line: the client never holds every record in memory (a
    30-minute soak grew the client by ~12 KiB per request when it did)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as out, open(records_jsonl) as records:
        for index, (key, value) in enumerate(payload.items()):
            out.write(", " if index else "{")
            out.write(json.dumps(key) + ": ")
            if key != "metrics":
                out.write(json.dumps(value))
                continue
            out.write("[")
            first = True
            for line in records:
                line = line.strip()
                if line:
                    out.write(line if first else ", " + line)
                    first = False
            out.write("]")
        out.write("}")
    os.replace(tmp, path)


def _arrival_knobs(plan: WorkloadPlan) -> dict[str, Any]:
    """How requests arrived, as flat knobs (summary.csv columns); unset ones left out."""
    arrival = plan.arrival
    knobs: dict[str, Any] = {"arrival": arrival.kind}
    if arrival.kind == "rate":
        knobs.update(request_rate=arrival.request_rate, burstiness=arrival.burstiness)
    if arrival.think_time_floor_s is not None:
        knobs["open_loop_threshold"] = arrival.think_time_floor_s
    if arrival.kind == "replay":
        knobs.update(replay_span_s=arrival.replay_span_s, user_stagger_s=arrival.user_stagger_s)
    if plan.tree is not None:
        knobs.update(num_branches=plan.tree.num_branches, parallel_branches=plan.tree.parallel)
    return knobs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    watch_parent(args.parent_pid)
    try:
        job = job_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan, knobs, settings = job.plan, job.knobs, job.settings()
    out = Path(job.output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial_path = out.with_name(out.name + ".partial.jsonl")
    partial: IO[str] = open(partial_path, "w", buffering=1)

    def sink(record: RequestRecord) -> None:
        # On disk only: the result file is assembled from these lines at the end.
        partial.write(json.dumps(record.to_dict()) + "\n")

    loop = new_event_loop()
    try:
        run = loop.run_until_complete(run_client(plan, settings, sink))
    except EndpointNotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        partial.close()
        loop.close()
    workload_args = {
        "workload": job.workload,
        "region": job.region,
        "num_users": knobs.num_users,
        "seed": knobs.seed,
        "duration": knobs.duration_s,
        "warmup": knobs.warmup_s,
        "max_tokens": plan.settings.max_tokens,
        "temperature": plan.settings.temperature,
        **_arrival_knobs(plan),
        **plan.args,
    }
    payload = {
        "workload": job.workload,
        "latency": round(run.latency_s, 3),
        "metrics": None,  # filled from the partial JSONL by _write_result_atomic
        "backend_url": settings.backend_url,
        "workload_args": workload_args,
        # Additions beyond the original layout (its readers ignore unknown keys).
        "schema_version": SCHEMA_VERSION,
        "region": job.region,
        "model": run.model,
        "sent": run.sent,
        "warmup_s": knobs.warmup_s,
        "recorded": run.recorded,
        "client": {
            "loop_lag": run.loop_lag,
            "client_bound": run.loop_lag.get("client_bound", False),
            "pytest_lbbench": __version__,
            "code_hash": code_hash(),  # which code ran (on a cloud VM: the shipped copy's)
            "python": platform.python_version(),
        },
    }
    _write_result_atomic(out, payload, partial_path)
    partial_path.replace(out.with_suffix(".jsonl"))  # the per-request records stay
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
