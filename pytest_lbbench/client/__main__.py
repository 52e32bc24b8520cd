"""``python -m pytest_lbbench.client``: run one client region's users against one endpoint.

This is the same program the local backend starts per client region and that cloud backends
run on client VMs. It writes, in the original ``sky.lbbench`` layout:

* ``<output-file>`` (default ``<output-dir>/metric/<exp-name>.json``): one JSON object
  ``{"workload", "latency", "metrics": [records], "backend_url", "workload_args", ...}``;
* ``<output-file>.partial.jsonl`` while running: one record per line, flushed as each request
  completes, so a crash keeps every finished request (removed once the final file exists).

Exit status: 0 on a completed run (failed requests are data, not errors), 2 on bad arguments,
3 when the endpoint never became ready.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import IO, Any

from pytest_lbbench import __version__
from pytest_lbbench.client.records import RequestRecord
from pytest_lbbench.client.runner import (
    DEFAULT_LAG_THRESHOLD_MS,
    DEFAULT_REQUEST_TIMEOUT_S,
    ClientSettings,
    EndpointNotReady,
    run_client,
)
from pytest_lbbench.procutil import new_event_loop, watch_parent
from pytest_lbbench.regions import DEFAULT_REPLICA_REGIONS
from pytest_lbbench.workloads import WORKLOADS, get_workload

SCHEMA_VERSION = 1


def build_parser(workload_name: str | None) -> argparse.ArgumentParser:
    """The client's options; a workload's own options are added once it is known."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_lbbench.client",
        description="Closed-loop chat users against one LLM endpoint; one record per request.",
    )
    parser.add_argument("--backend-url", required=True, help="endpoint base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--region", default="us-east-2", help="client region name (default: %(default)s)")
    parser.add_argument(
        "--region-index", type=int, default=None,
        help="shard index of this region in the workload data (default: position in "
        f"{', '.join(DEFAULT_REPLICA_REGIONS)}, else 0)",
    )
    parser.add_argument("--num-users", type=int, default=1, help="simulated users (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds to start new turns (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None, help="override the workload's max_tokens")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    parser.add_argument(
        "--drain-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
        help="after --duration, how long turns in flight may take to finish (default: %(default)s)",
    )
    parser.add_argument("--lag-threshold-ms", type=float, default=DEFAULT_LAG_THRESHOLD_MS)
    parser.add_argument("--exp-name", default="sky-exp")
    parser.add_argument("--output-dir", default="lbbench-results")
    parser.add_argument("--output-file", default=None, help="write the result JSON here instead")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    if workload_name in WORKLOADS:
        get_workload(workload_name).add_args(parser)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workload")
    known, _ = pre.parse_known_args(argv)
    return build_parser(known.workload).parse_args(argv)


def _output_path(args: argparse.Namespace) -> Path:
    if args.output_file:
        return Path(args.output_file)
    return Path(args.output_dir) / "metric" / f"{args.exp_name}.json"


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    watch_parent(args.parent_pid)
    region_index = args.region_index
    if region_index is None:
        region_index = (
            DEFAULT_REPLICA_REGIONS.index(args.region) if args.region in DEFAULT_REPLICA_REGIONS else 0
        )
    workload = get_workload(args.workload)
    try:
        plan = workload.plan(args, args.region, region_index)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ClientSettings(
        backend_url=args.backend_url.rstrip("/"),
        region=args.region,
        duration_s=args.duration,
        request_timeout_s=args.request_timeout,
        drain_timeout_s=args.drain_timeout,
        lag_threshold_ms=args.lag_threshold_ms,
    )
    out = _output_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial_path = out.with_name(out.name + ".partial.jsonl")
    records: list[dict[str, Any]] = []
    partial: IO[str] = open(partial_path, "w", buffering=1)

    def sink(record: RequestRecord) -> None:
        data = record.to_dict()
        records.append(data)
        partial.write(json.dumps(data) + "\n")

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
        "workload": args.workload,
        "region": args.region,
        "num_users": args.num_users,
        "seed": args.seed,
        "duration": args.duration,
        "max_tokens": plan.settings.max_tokens,
        "temperature": plan.settings.temperature,
        **plan.args,
    }
    payload = {
        "workload": args.workload,
        "latency": round(run.latency_s, 3),
        "metrics": records,
        "backend_url": settings.backend_url,
        "workload_args": workload_args,
        # Additions beyond the original layout (its readers ignore unknown keys).
        "schema_version": SCHEMA_VERSION,
        "region": args.region,
        "model": run.model,
        "sent": run.sent,
        "recorded": run.recorded,
        "client": {
            "loop_lag": run.loop_lag,
            "client_bound": run.loop_lag.get("client_bound", False),
            "pytest_lbbench": __version__,
            "python": platform.python_version(),
        },
    }
    _write_json_atomic(out, payload)
    partial_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
