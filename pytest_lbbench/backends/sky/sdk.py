"""The module boundary to SkyPilot: the asynchronous SDK operations the backend uses.

Every SkyPilot 0.14 SDK call sends a request to the API server and returns a request id at
once; ``sky.get`` waits for its result (without a timeout), ``sky.api_status`` reports a
request's state without waiting, ``sky.api_cancel`` aborts it. :class:`SkySdk` is that surface
reduced to what :mod:`.provision` needs, with plain-data results, so the state machine can be
tested against a stand-in. :class:`RealSkySdk` implements it over the installed ``sky``
package, imported lazily (the ``pytest-lbbench[sky]`` extra).

Secrets: the YAML text handed to :meth:`SkySdk.launch` / :meth:`SkySdk.serve_up` never carries
secret values; they arrive in the separate ``secrets`` mapping and are attached to the in-memory
``sky.Task`` only (:func:`task_with_secrets`), which SkyPilot redacts in its own logs.
"""

from __future__ import annotations

import enum
import io
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence


class RequestState(str, enum.Enum):
    """A request's life on the API server (``sky api status``)."""

    PENDING = "PENDING"  # queued, including SkyPilot's WAITING
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (RequestState.SUCCEEDED, RequestState.FAILED, RequestState.CANCELLED)


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica of a SkyServe service."""

    replica_id: int
    status: str  # sky.serve.ReplicaStatus value: PENDING, PROVISIONING, STARTING, READY, FAILED…
    endpoint: str | None  # http://<ip>:<port>


@dataclass(frozen=True)
class ServiceInfo:
    """A SkyServe service as ``sky.serve.status`` reports it."""

    name: str
    status: str  # sky.ServiceStatus value: CONTROLLER_INIT, REPLICA_INIT, READY, FAILED…
    endpoint: str | None
    replicas: tuple[ReplicaInfo, ...] = ()


class RequestFailed(RuntimeError):
    """A request ended FAILED or CANCELLED; the message carries SkyPilot's error."""


class MissingRequests(RuntimeError):
    """The API server's status reply left out requests this run submitted (a failed poll)."""


class SkySdk(Protocol):
    """The asynchronous SkyPilot operations pytest-lbbench uses; each submit returns a request id."""

    def launch(self, yaml_text: str, cluster: str, secrets: Mapping[str, str]) -> str:
        """``sky.launch``; result: the job id of the task's run (``None`` without a run)."""
        ...

    def exec(self, yaml_text: str, cluster: str, secrets: Mapping[str, str]) -> str:
        """``sky.exec`` on an existing cluster; result: the job id."""
        ...

    def down(self, cluster: str) -> str:
        """``sky.down``; result: ``None``."""
        ...

    def serve_up(self, yaml_text: str, service: str, secrets: Mapping[str, str]) -> str:
        """``sky.serve.up``; result: the service endpoint (SkyServe's own LB, unused here)."""
        ...

    def serve_down(self, service: str) -> str:
        """``sky.serve.down``; result: ``None``."""
        ...

    def serve_status(self, services: Sequence[str]) -> str:
        """``sky.serve.status``; result: ``list[ServiceInfo]`` (missing services are absent)."""
        ...

    def cluster_status(self, clusters: Sequence[str], refresh: bool = False) -> str:
        """``sky.status`` (``refresh``: ask the cloud, not the cached state); result:
        ``dict[name, status]`` with UP / INIT / STOPPED."""
        ...

    def endpoint(self, cluster: str, port: int) -> str:
        """``sky.endpoints``; result: ``http://host:port`` of that port on the cluster's head."""
        ...

    def job_status(self, cluster: str, job_id: int) -> str:
        """``sky.job_status``; result: the JobStatus value (RUNNING, SUCCEEDED, FAILED…) or None."""
        ...

    def request_states(self, request_ids: Sequence[str]) -> dict[str, RequestState]:
        """The current state of each request, without waiting (short request)."""
        ...

    def result(self, request_id: str) -> Any:
        """The result of a finished request; raises :class:`RequestFailed` if it failed."""
        ...

    def cancel(self, request_ids: Sequence[str]) -> None:
        """Abort requests (``sky api cancel``); finished ones are ignored."""
        ...

    def job_log(self, cluster: str, job_id: int) -> str:
        """The full log of a finished job."""
        ...


def task_with_secrets(yaml_text: str, secrets: Mapping[str, str]) -> Any:
    """The ``sky.Task`` of a rendered YAML with secret values attached, SkyPilot's own way.

    The values go in as ``secrets_overrides`` of ``Task.from_yaml_config`` (what ``sky launch
    --secret NAME=value`` does). A name the YAML declares with no value (``HF_TOKEN: null``) would
    otherwise become a *managed* secret reference (sky/task.py), which the API server refuses to
    launch without a secrets provider ("No value available for secret(s)",
    sky/execution.py ``_resolve_managed_secrets``); so a declared name without a value here is
    dropped, and the task is checked to carry no reference.
    """
    from sky import Task
    from sky.utils import yaml_utils

    config = yaml_utils.safe_load(yaml_text)
    declared = config.get("secrets")
    if isinstance(declared, dict):
        kept = {k: v for k, v in declared.items() if v is not None}
        if kept:
            config["secrets"] = kept
        else:
            config.pop("secrets")
    # from_yaml_config keeps this text as the user's YAML (shown, redacted, by SkyPilot).
    config["_user_specified_yaml"] = yaml_text
    task = Task.from_yaml_config(config, secrets_overrides=sorted(secrets.items()) or None)
    if task.managed_secret_refs:  # pragma: no cover - guarded by the code above
        names = ", ".join(ref.name for ref in task.managed_secret_refs)
        raise ValueError(f"the task would need a managed secrets provider for: {names}")
    return task


def _http_url(endpoint: str | None) -> str | None:
    if not endpoint:
        return None
    return endpoint if "://" in endpoint else f"http://{endpoint}"


class RealSkySdk:
    """:class:`SkySdk` over the installed ``skypilot`` package (0.14 API)."""

    def __init__(self) -> None:
        import sky  # noqa: F401 - fail here, with an ImportError the preflight explains
        import sky.serve  # noqa: F401

        self._ops: dict[str, str] = {}
        self._lock = threading.Lock()

    def _track(self, op: str, request_id: Any) -> str:
        rid = str(request_id)
        with self._lock:
            self._ops[rid] = op
        return rid

    @staticmethod
    def _task(yaml_text: str, secrets: Mapping[str, str]) -> Any:
        return task_with_secrets(yaml_text, secrets)

    def launch(self, yaml_text: str, cluster: str, secrets: Mapping[str, str]) -> str:
        import sky

        # fast=True: a kept-up cluster is not set up again (the seeds' "re-run without
        # reprovisioning"); the API server serialises launches of the same cluster.
        return self._track("launch", sky.launch(self._task(yaml_text, secrets), cluster_name=cluster,
                                                fast=True))

    def exec(self, yaml_text: str, cluster: str, secrets: Mapping[str, str]) -> str:
        import sky

        return self._track("exec", sky.exec(self._task(yaml_text, secrets), cluster_name=cluster))

    def down(self, cluster: str) -> str:
        import sky

        return self._track("down", sky.down(cluster))

    def serve_up(self, yaml_text: str, service: str, secrets: Mapping[str, str]) -> str:
        import sky

        return self._track("serve_up", sky.serve.up(self._task(yaml_text, secrets), service))

    def serve_down(self, service: str) -> str:
        import sky

        return self._track("serve_down", sky.serve.down(service))

    def serve_status(self, services: Sequence[str]) -> str:
        import sky

        return self._track("serve_status", sky.serve.status(list(services)))

    def cluster_status(self, clusters: Sequence[str], refresh: bool = False) -> str:
        import sky
        from sky.utils.common import StatusRefreshMode

        mode = StatusRefreshMode.FORCE if refresh else StatusRefreshMode.NONE
        return self._track("status", sky.status(list(clusters), refresh=mode))

    def endpoint(self, cluster: str, port: int) -> str:
        import sky

        return self._track(f"endpoint:{port}", sky.endpoints(cluster, port))

    def job_status(self, cluster: str, job_id: int) -> str:
        import sky

        return self._track(f"job_status:{job_id}", sky.job_status(cluster, [job_id]))

    def request_states(self, request_ids: Sequence[str]) -> dict[str, RequestState]:
        import sky

        states: dict[str, RequestState] = {}
        for payload in sky.api_status(list(request_ids)):
            raw = str(payload.status).upper().split(".")[-1]
            states[payload.request_id] = (
                RequestState.PENDING if raw == "WAITING" else RequestState(raw)
            )
        missing = [rid for rid in request_ids if rid not in states]
        if missing:
            # SkyPilot 0.14.1 answers [] instead of raising when its local API server is not
            # running (sky/client/sdk.py, api_status): a request the server does not report is a
            # failed poll, counted as one, not a request that is still pending.
            raise MissingRequests(
                f"the SkyPilot API server reported nothing for {len(missing)} of {len(request_ids)} "
                f"requests ({', '.join(r[:8] for r in missing[:3])}{'…' if len(missing) > 3 else ''}); "
                "is it still running (`sky api info`)?"
            )
        return states

    def result(self, request_id: str) -> Any:
        import sky

        try:
            value: Any = sky.get(request_id)  # type: ignore[arg-type]
        except Exception as exc:  # SkyPilot re-raises the request's own exception type
            raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
        op = self._ops.get(request_id, "")
        return self._normalise(op, value)

    @staticmethod
    def _normalise(op: str, value: Any) -> Any:
        if op in ("launch", "exec"):
            job_id = value[0] if isinstance(value, tuple) else None
            return job_id
        if op == "serve_up":
            return value[1] if isinstance(value, tuple) else value
        if op == "serve_status":
            out = []
            for rec in value or []:
                replicas = tuple(
                    ReplicaInfo(int(r["replica_id"]), _enum_value(r["status"]), _http_url(r.get("endpoint")))
                    for r in rec.get("replica_info", [])
                )
                out.append(ServiceInfo(rec["name"], _enum_value(rec["status"]),
                                       _http_url(rec.get("endpoint")), replicas))
            return out
        if op == "status":
            statuses: dict[str, str] = {}
            for rec in value or []:
                name = rec["name"] if isinstance(rec, Mapping) else getattr(rec, "name")
                status = rec["status"] if isinstance(rec, Mapping) else getattr(rec, "status")
                statuses[name] = _enum_value(status)
            return statuses
        if op.startswith("endpoint:"):
            port = int(op.split(":", 1)[1])
            mapping = value or {}
            return _http_url(mapping.get(port) or mapping.get(str(port)))
        if op.startswith("job_status:"):
            job_id = int(op.split(":", 1)[1])
            status = (value or {}).get(job_id)
            return None if status is None else _enum_value(status)
        return value

    def cancel(self, request_ids: Sequence[str], timeout_s: float = 30.0) -> None:
        import time

        import sky

        if not request_ids:
            return
        # api_cancel is itself a request: wait (bounded) until the server has carried it out, so
        # a process that exits right after a Ctrl-C has really stopped what it started.
        cancel_id = sky.api_cancel(list(request_ids), silent=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.request_states([str(cancel_id)])
            if states.get(str(cancel_id), RequestState.PENDING).finished:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the API server did not carry out the cancel of {list(request_ids)} "
                           f"within {timeout_s:.0f} s")

    def job_log(self, cluster: str, job_id: int) -> str:
        import sky

        buf = io.StringIO()
        sky.tail_logs(cluster, job_id, follow=False, output_stream=buf)
        return buf.getvalue()


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))
