"""The Kubernetes operations the GKE backend uses, and the adapter over the real client.

:class:`KubeApi` is deliberately narrow — apply, scale, read ready replicas, read the Gateway's
status, delete — so tests can stand in for a cluster at this boundary, and so it is obvious
what the backend may do to a cluster. :class:`KubernetesClientApi` implements it over the
``kubernetes`` package (the ``gke`` extra), imported only when the adapter is built.

Every call is bounded twice: the client's own ``(connect, read)`` timeout, and a deadline on a
daemon thread around the whole call. The second covers what the first does not: DNS lookups,
and kubeconfig ``exec`` credential plugins (``gke-gcloud-auth-plugin``), which the client runs
without a timeout. A call that misses its deadline raises :class:`KubeError` with
``transient=True``; the thread is left behind (it is a daemon and dies with the process).

No pytest import here.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, TypeVar

__all__ = [
    "FIELD_MANAGER",
    "GatewayStatus",
    "KubeApi",
    "KubeError",
    "KubeNotFound",
    "KubernetesClientApi",
    "ResourceRef",
    "run_bounded",
]

FIELD_MANAGER = "pytest-lbbench"
T = TypeVar("T")

# kind → (API group, plural) of every kind the shipped manifests use. "" is the core group.
KINDS: dict[str, tuple[str, str]] = {
    "Secret": ("", "secrets"),
    "Service": ("", "services"),
    "Deployment": ("apps", "deployments"),
    "ServiceExport": ("net.gke.io", "serviceexports"),
    "Gateway": ("gateway.networking.k8s.io", "gateways"),
    "HTTPRoute": ("gateway.networking.k8s.io", "httproutes"),
    "HealthCheckPolicy": ("networking.gke.io", "healthcheckpolicies"),
}


class KubeError(RuntimeError):
    """A Kubernetes API call failed; the message says which call, on which context, and why.

    ``transient`` is true for failures worth retrying while polling (timeouts, 5xx, 429,
    connection errors), false for those that will not go away (403, 422, missing CRDs).
    """

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class KubeNotFound(KubeError):
    """The object (or its kind) does not exist."""


@dataclass(frozen=True)
class ResourceRef:
    """Which object: enough to find it again (for the ledger and for delete)."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> ResourceRef:
        meta = manifest.get("metadata") or {}
        return cls(
            api_version=str(manifest["apiVersion"]), kind=str(manifest["kind"]),
            namespace=str(meta.get("namespace", "default")), name=str(meta["name"]),
        )

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class GatewayStatus:
    """What ``kubectl get gateway`` shows: the first address and whether it is Programmed."""

    address: str | None
    programmed: bool
    detail: str = ""
    """The Programmed condition's reason and message, for error messages."""


class KubeApi(Protocol):
    """The Kubernetes operations the GKE backend performs, one cluster (context) per call."""

    def apply(self, context: str, manifest: Mapping[str, Any], *, timeout_s: float) -> None:
        """Create or update ``manifest`` (server-side apply; applying the same manifest twice is a no-op)."""

    def scale(self, context: str, namespace: str, deployment: str, replicas: int, *, timeout_s: float) -> None:
        """Set the Deployment's desired replicas (``kubectl scale``)."""

    def ready_replicas(self, context: str, namespace: str, deployment: str, *, timeout_s: float) -> int:
        """Pods of the Deployment that pass their readiness probe now."""

    def gateway_status(self, context: str, namespace: str, gateway: str, *, timeout_s: float) -> GatewayStatus:
        """The Gateway's first address (``status.addresses[0].value``) and Programmed condition."""

    def delete(self, context: str, ref: ResourceRef, *, timeout_s: float) -> None:
        """Delete the object; a missing object is not an error."""


def run_bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``fn`` on a daemon thread and give up after ``timeout_s`` (see the module docstring)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"kube: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise KubeError(f"{what}: no answer within {timeout_s:g} s", transient=True)
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _api_error(exc: Any, what: str) -> KubeError:
    """A readable :class:`KubeError` from a client ``ApiException`` (only the server's message,
    never the request body, which may hold a secret)."""
    status = int(getattr(exc, "status", 0) or 0)
    message = str(getattr(exc, "reason", "") or "")
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message", message)
        except (ValueError, AttributeError):
            pass
    if status in (401, 403):
        return KubeError(
            f"{what}: the cluster refused our credentials (HTTP {status}: {message}). Refresh them with "
            "`gcloud auth login` and `gcloud container clusters get-credentials CLUSTER --location=LOCATION`, "
            "and check the account may manage Deployments, Services and Gateways.",
            status=status,
        )
    if status == 404:
        hint = ""
        if "the server could not find the requested resource" in message or "no matches for kind" in message:
            hint = (" The kind is not installed in this cluster: enable the Gateway API "
                    "(`gcloud container clusters update CLUSTER --gateway-api=standard`) and multi-cluster "
                    "Services/Ingress for the fleet (see the GKE run book).")
        return KubeNotFound(f"{what}: not found (HTTP 404: {message}).{hint}", status=status)
    transient = status == 429 or status >= 500 or status == 0
    return KubeError(f"{what}: HTTP {status or '?'}: {message}", transient=transient, status=status)


class KubernetesClientApi:
    """:class:`KubeApi` over the ``kubernetes`` Python client (the ``gke`` extra).

    One API client per kube context, built from ``kubeconfig`` (default: ``$KUBECONFIG`` or
    ``~/.kube/config``) on first use. Objects are applied with server-side apply under the
    field manager ``pytest-lbbench`` and ``fieldValidation=Strict``, so the API server rejects
    an unknown field instead of dropping it.
    """

    def __init__(self, kubeconfig: str | None = None, *, connect_timeout_s: float = 10.0) -> None:
        try:
            import kubernetes  # noqa: F401  (only to fail here, with the install hint)
        except ImportError as exc:
            raise ImportError(
                "the gke backend needs the Kubernetes client: pip install 'pytest-lbbench[gke]'"
            ) from exc
        self.kubeconfig = kubeconfig
        self.connect_timeout_s = connect_timeout_s
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # ---- plumbing ----------------------------------------------------------------------------

    def _client(self, context: str, timeout_s: float) -> Any:
        with self._lock:
            client = self._clients.get(context)
        if client is not None:
            return client
        from kubernetes import config

        def build() -> Any:
            return config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=self.kubeconfig, context=context, persist_config=False
            )

        try:
            client = run_bounded(build, timeout_s, f"loading kube context {context!r}")
        except config.ConfigException as exc:
            raise KubeError(
                f"kube context {context!r} cannot be loaded: {exc}. "
                "Fetch it with `gcloud container clusters get-credentials CLUSTER --location=LOCATION`."
            ) from exc
        with self._lock:
            self._clients.setdefault(context, client)
            return self._clients[context]

    def _call(self, context: str, what: str, timeout_s: float, fn: Callable[[Any, tuple[float, float]], T]) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        label = f"{what} (context {context})"
        client = self._client(context, timeout_s)
        request_timeout = (min(self.connect_timeout_s, timeout_s), timeout_s)
        try:
            # The thread deadline is a little longer than the client's own read timeout, so
            # the client's clearer error wins whenever it fires.
            return run_bounded(lambda: fn(client, request_timeout), timeout_s + 2.0, label)
        except ApiException as exc:
            raise _api_error(exc, label) from None
        except HTTPError as exc:
            raise KubeError(f"{label}: cannot reach the API server: {exc}", transient=True) from None

    # ---- KubeApi -----------------------------------------------------------------------------

    def apply(self, context: str, manifest: Mapping[str, Any], *, timeout_s: float) -> None:
        from kubernetes import client as k

        ref = ResourceRef.of(manifest)
        if ref.kind not in KINDS:
            raise ValueError(f"{ref}: kind not supported by the gke backend; known: {', '.join(KINDS)}")
        group, plural = KINDS[ref.kind]
        body = dict(manifest)
        common: dict[str, Any] = {
            "field_manager": FIELD_MANAGER, "force": True, "field_validation": "Strict",
            "_content_type": "application/apply-patch+yaml", "_preload_content": False,
        }

        def call(api_client: Any, request_timeout: tuple[float, float]) -> None:
            kw = {**common, "_request_timeout": request_timeout}
            resp: Any
            if ref.kind == "Secret":
                resp = k.CoreV1Api(api_client).patch_namespaced_secret(ref.name, ref.namespace, body, **kw)
            elif ref.kind == "Service":
                resp = k.CoreV1Api(api_client).patch_namespaced_service(ref.name, ref.namespace, body, **kw)
            elif ref.kind == "Deployment":
                resp = k.AppsV1Api(api_client).patch_namespaced_deployment(ref.name, ref.namespace, body, **kw)
            else:
                version = ref.api_version.split("/", 1)[1]
                resp = k.CustomObjectsApi(api_client).patch_namespaced_custom_object(
                    group, version, ref.namespace, plural, ref.name, body, **kw
                )
            _discard(resp)

        self._call(context, f"apply {ref}", timeout_s, call)

    def scale(self, context: str, namespace: str, deployment: str, replicas: int, *, timeout_s: float) -> None:
        from kubernetes import client as k

        def call(api_client: Any, request_timeout: tuple[float, float]) -> None:
            _discard(k.AppsV1Api(api_client).patch_namespaced_deployment_scale(
                deployment, namespace, {"spec": {"replicas": replicas}},
                _content_type="application/merge-patch+json", _request_timeout=request_timeout,
                _preload_content=False,
            ))

        self._call(context, f"scale Deployment {namespace}/{deployment} to {replicas}", timeout_s, call)

    def ready_replicas(self, context: str, namespace: str, deployment: str, *, timeout_s: float) -> int:
        from kubernetes import client as k

        def call(api_client: Any, request_timeout: tuple[float, float]) -> int:
            # Raw JSON, not the client's model: only status.readyReplicas matters, and a
            # model validation error must not masquerade as an API failure.
            resp = k.AppsV1Api(api_client).read_namespaced_deployment_status(
                deployment, namespace, _request_timeout=request_timeout, _preload_content=False
            )
            obj = _json(resp)
            return int((obj.get("status") or {}).get("readyReplicas") or 0)

        return self._call(context, f"read Deployment {namespace}/{deployment}", timeout_s, call)

    def gateway_status(self, context: str, namespace: str, gateway: str, *, timeout_s: float) -> GatewayStatus:
        from kubernetes import client as k

        def call(api_client: Any, request_timeout: tuple[float, float]) -> Any:
            return k.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", namespace, "gateways", gateway,
                _request_timeout=request_timeout,
            )

        obj = self._call(context, f"read Gateway {namespace}/{gateway}", timeout_s, call)
        return gateway_status_of(obj)

    def delete(self, context: str, ref: ResourceRef, *, timeout_s: float) -> None:
        from kubernetes import client as k

        group, plural = KINDS[ref.kind]

        def call(api_client: Any, request_timeout: tuple[float, float]) -> None:
            kw: dict[str, Any] = {"_request_timeout": request_timeout, "_preload_content": False}
            resp: Any
            if ref.kind == "Secret":
                resp = k.CoreV1Api(api_client).delete_namespaced_secret(ref.name, ref.namespace, **kw)
            elif ref.kind == "Service":
                resp = k.CoreV1Api(api_client).delete_namespaced_service(ref.name, ref.namespace, **kw)
            elif ref.kind == "Deployment":
                resp = k.AppsV1Api(api_client).delete_namespaced_deployment(ref.name, ref.namespace, **kw)
            else:
                version = ref.api_version.split("/", 1)[1]
                resp = k.CustomObjectsApi(api_client).delete_namespaced_custom_object(
                    group, version, ref.namespace, plural, ref.name, **kw
                )
            _discard(resp)

        try:
            self._call(context, f"delete {ref}", timeout_s, call)
        except KubeNotFound:
            pass


def _discard(response: Any) -> None:
    """Read and release a raw response: apply/scale/delete need only the status, which the
    client has already checked (non-2xx raises), and skipping model deserialisation keeps a
    server's newer fields from failing a call that succeeded."""
    read = getattr(response, "read", None)
    if callable(read):
        read()
    release = getattr(response, "release_conn", None)
    if callable(release):
        release()


def _json(response: Any) -> dict[str, Any]:
    data = response.read()
    release = getattr(response, "release_conn", None)
    if callable(release):
        release()
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KubeError(f"the API server answered something that is not JSON: {exc}", transient=True) from None
    return doc if isinstance(doc, dict) else {}


def gateway_status_of(obj: Mapping[str, Any]) -> GatewayStatus:
    """:class:`GatewayStatus` from a Gateway object as the API returns it."""
    status = obj.get("status") or {}
    addresses = status.get("addresses") or []
    address = next((a.get("value") for a in addresses if a.get("value")), None)
    programmed = False
    detail = "no Programmed condition yet"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Programmed":
            programmed = cond.get("status") == "True"
            detail = f"Programmed={cond.get('status')} ({cond.get('reason', '')}: {cond.get('message', '')})"
    return GatewayStatus(address=address, programmed=programmed, detail=detail)
