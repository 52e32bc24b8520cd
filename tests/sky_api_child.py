"""One scenario of the sky backend's SDK boundary, run against a real SkyPilot API server.

Run by tests/test_sky_api_server.py as its own process, with ``HOME`` and
``SKYPILOT_API_SERVER_LOCAL_PORT`` pointing at the server that test module started (so nothing
touches the user's ``~/.sky``). Prints one JSON object on its last stdout line; progress lines
before it. ``python tests/sky_api_child.py SCENARIO OUTPUT_DIR``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pytest_lbbench.backends.sky.provision import (
    CloudLedger,
    ProvisionError,
    Provisioner,
    Timeouts,
    cloud_ledger_path,
)
from pytest_lbbench.backends.sky.render import Component
from pytest_lbbench.backends.sky.sdk import RealSkySdk, RequestFailed

# A cluster task with no cloud named: the API server takes the request and fails it for want of
# credentials (NoCloudAccessError). A task pinned to a cloud (all our rendered ones) fails
# earlier, in the client, when the SDK tries to download that cloud's catalog offline.
NO_CLOUD_TASK = {"name": "lbb-api-probe", "resources": {"cpus": "2+"}, "run": "echo hi\n"}


class LoggingSdk(RealSkySdk):
    """The real adapter, printing the full id of every launch it submits (for the parent)."""

    def launch(self, yaml_text: str, cluster: str, secrets: Any) -> str:
        rid = super().launch(yaml_text, cluster, secrets)
        print(f"LAUNCH_SUBMITTED {rid}", flush=True)
        return rid


def _provisioner(out: Path, sdk: RealSkySdk, **timeouts: float) -> Provisioner:
    return Provisioner(sdk, CloudLedger(cloud_ledger_path(out)), max_parallel=2,
                       timeouts=Timeouts(launch_s=120, ready_s=120, teardown_s=120, poll_s=0.2,
                                         **timeouts),  # type: ignore[arg-type]
                       progress=lambda line: print(f"progress: {line}", flush=True),
                       clock=time.monotonic, sleep=time.sleep)


def _component(name: str) -> Component:
    return Component("cluster", name, "client", "us-east-2", NO_CLOUD_TASK)


def status_calls(out: Path) -> dict[str, Any]:
    """The short requests that answer offline, through the runner as the backend polls them."""
    sdk = RealSkySdk()
    prov = _provisioner(out, sdk)
    result: dict[str, Any] = {}
    result["status"] = prov.poll("status", lambda: sdk.cluster_status(["lbb-nothing"], refresh=True))
    for label, submit in (("job_status", lambda: sdk.job_status("lbb-nothing", 1)),
                          ("endpoint", lambda: sdk.endpoint("lbb-nothing", 8000)),
                          ("serve_status", lambda: sdk.serve_status(["lbb-nothing"]))):
        rid = submit()
        states: list[str] = []
        while not states or states[-1] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            states.append(sdk.request_states([rid])[rid].value)
            time.sleep(0.1)
        try:
            result[label] = {"value": sdk.result(rid), "states": states}
        except RequestFailed as exc:
            result[label] = {"error": str(exc), "states": states}
    # A serve status that cannot answer is retried max_poll_errors times, then stops the wait.
    try:
        prov.poll("serve status", lambda: sdk.serve_status(["lbb-nothing"]))
    except ProvisionError as exc:
        result["serve_status_poll"] = str(exc)
    # Downing what does not exist counts as removed (the ledger is cleared), not as an error.
    prov.ledger.record("submit", _component("lbb-never-made").ledger_fields())
    result["teardown_errors"] = prov.teardown_entries(list(prov.ledger.live().values()))
    result["ledger_after_teardown"] = sorted(prov.ledger.live())
    return result


def launch_without_credentials(out: Path) -> dict[str, Any]:
    """``Provisioner.up`` of a cluster: the launch request fails on the server, clearly."""
    sdk = LoggingSdk()
    prov = _provisioner(out, sdk)
    try:
        prov.up([_component("lbb-api-launch")])
    except ProvisionError as exc:
        return {"error": str(exc), "ledger": sorted(prov.ledger.live())}
    return {"error": None}


def interrupted_launch(out: Path) -> dict[str, Any]:
    """``Provisioner.up`` waiting on a launch when Ctrl-C (SIGINT from the parent) arrives."""
    sdk = LoggingSdk()
    prov = _provisioner(out, sdk)
    try:
        prov.up([_component("lbb-api-interrupted")])
    except KeyboardInterrupt:
        return {"interrupted": True, "ledger": sorted(prov.ledger.live())}
    except ProvisionError as exc:
        return {"interrupted": False, "error": str(exc)}
    return {"interrupted": False}


def request_state(out: Path) -> dict[str, Any]:
    """The server's state of the request id in ``out/request_id``."""
    rid = (out / "request_id").read_text().strip()
    return {"state": RealSkySdk().request_states([rid])[rid].value}


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    f.__name__: f for f in (status_calls, launch_without_credentials, interrupted_launch, request_state)
}


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    result = SCENARIOS[scenario](out)
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
