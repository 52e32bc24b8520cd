"""``python -m pytest_lbbench.telemetry``: poll a system at 1 Hz into a JSONL file.

Announces ``LBBENCH_READY {"pid": …}`` once running; stops on SIGTERM/SIGINT or when its parent
exits. Exit code 2 on a bad target list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from pytest_lbbench.procutil import announce_ready, install_stop_signals, new_event_loop, watch_parent
from pytest_lbbench.telemetry.poller import KINDS, Target, poll_forever


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_lbbench.telemetry", description=__doc__)
    parser.add_argument("--targets-json", required=True,
                        help=f'JSON list of {{"name", "url", "kind"}}; kind one of {", ".join(KINDS)}')
    parser.add_argument("--output", required=True, help="JSONL file to append to")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default: 1)")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        targets = [Target(**t) for t in json.loads(args.targets_json)]
    except (ValueError, TypeError) as exc:
        print(f"error: bad --targets-json ({exc}); expected a JSON list of "
              '{"name": str, "url": str, "kind": str}', file=sys.stderr)
        return 2
    watch_parent(args.parent_pid)
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    loop = new_event_loop()
    stop = asyncio.Event()
    install_stop_signals(loop, stop)
    with open(out_path, "a") as out:
        announce_ready({"pid": os.getpid(), "output": str(out_path)})
        loop.run_until_complete(poll_forever(targets, out, args.interval, stop))
    loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
