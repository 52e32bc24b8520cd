"""The module boundary to SkyPilot: the asynchronous SDK operations the backend uses.

Every SkyPilot 0.14 SDK call sends a request to the API server and returns a request id at
once; ``sky.get`` waits for its result (without a timeout), ``sky.api_status`` reports a
request's state without waiting, ``sky.api_cancel`` aborts it. :class:`SkySdk` is that surface
reduced to what :mod:`.provision` needs, with plain-data results, so the state machine can be
tested against a stand-in. :class:`RealSkySdk` implements it over the installed ``sky``
package, imported lazily (the ``pytest-lbbench[sky]`` extra).

Secrets: the YAML text handed to :meth:`SkySdk.launch` / :meth:`SkySdk.serve_up` never carries
secret values; they arrive in the separate ``secrets`` mapping and are attached to the in-memory
``sky.Task`` only (``Task.update_secrets``), which SkyPilot redacts in its own logs.
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

    def cluster_status(self, clusters: Sequence[str]) -> str:
        """``sky.status``; result: ``dict[name, status]`` with UP / INIT / STOPPED."""
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
        import sky

        task = sky.Task.from_yaml_str(yaml_text)
        if secrets:
            task.update_secrets(dict(secrets))
        return task

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

    def cluster_status(self, clusters: Sequence[str]) -> str:
        import sky

        return self._track("status", sky.status(list(clusters)))

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

    def cancel(self, request_ids: Sequence[str]) -> None:
        import sky

        if request_ids:
            sky.api_cancel(list(request_ids), silent=True)

    def job_log(self, cluster: str, job_id: int) -> str:
        import sky

        buf = io.StringIO()
        sky.tail_logs(cluster, job_id, follow=False, output_stream=buf)
        return buf.getvalue()


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))
