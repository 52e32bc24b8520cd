"""GkeDeployment and GkeEndpointDeployment against a stand-in for the Kubernetes API.

``FakeKube`` implements the ``KubeApi`` protocol (the module boundary) the way a cluster
behaves there: apply is idempotent (same manifest → same generation), scaling changes the
ready replicas one poll at a time, the Gateway gets an address after some polls or never,
a kind whose CRD is missing is a 404, and any call can be made to fail. No cluster is contacted.
"""

from __future__ import annotations

import copy
import http.server
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Mapping

import pytest

pytest.importorskip("yaml")

from pytest_lbbench.backends.gke.deployment import (  # noqa: E402
    GkeDeployment,
    GkeEndpointDeployment,
    GkeSettings,
    GkeTimeoutError,
    gke_ledger_path,
    leftover_deployments,
    scale_leftovers_to_zero,
)
from pytest_lbbench.backends.gke.kube import (  # noqa: E402
    GatewayStatus,
    KubeApi,
    KubeError,
    KubeNotFound,
    ResourceRef,
    run_bounded,
)
from pytest_lbbench.backends.gke.render import GkeManifestSettings  # noqa: E402
from pytest_lbbench.systems import get_system  # noqa: E402

pytestmark = pytest.mark.timeout(60)

US, ASIA = "gke_proj_us-central1_sglang-us", "gke_proj_asia-northeast1_sglang-asia"
ADDRESS = "203.0.113.7"  # TEST-NET-3: never routable
TOKEN = "hf_SECRET_never_in_files"
CRD_KINDS = {"ServiceExport", "Gateway", "HTTPRoute", "HealthCheckPolicy"}
SYSTEM = get_system("gke_gateway")


class FakeKube:
    """A KubeApi stand-in (see the module docstring)."""

    def __init__(
        self,
        contexts: tuple[str, ...] = (US, ASIA),
        *,
        address_after_polls: int | None = 2,
        crds_installed: bool = True,
        fail: Mapping[str, BaseException] | None = None,
        unreachable: tuple[str, ...] = (),
    ) -> None:
        self.contexts = contexts
        self.address_after_polls = address_after_polls
        self.crds_installed = crds_installed
        self.fail = dict(fail or {})
        self.unreachable = unreachable
        self.objects: dict[str, dict[tuple[str, str, str], dict[str, Any]]] = {c: {} for c in contexts}
        self.generation: dict[tuple[str, str, str, str], int] = {}
        self.desired: dict[tuple[str, str, str], int] = {}
        self.ready: dict[tuple[str, str, str], int] = {}
        self.gateway_polls = 0
        self.calls: list[tuple[str, str]] = []

    def _enter(self, op: str, context: str) -> None:
        self.calls.append((op, context))
        if context not in self.contexts:
            raise KubeError(f'context "{context}" does not exist')
        if context in self.unreachable:
            raise KubeError(f"{op} (context {context}): no answer within 1 s", transient=True)
        if op in self.fail:
            raise self.fail[op]

    def apply(self, context: str, manifest: Mapping[str, Any], *, timeout_s: float) -> None:
        self._enter("apply", context)
        ref = ResourceRef.of(manifest)
        if ref.kind in CRD_KINDS and not self.crds_installed:
            raise KubeNotFound(f'no matches for kind "{ref.kind}" in version "{ref.api_version}"', status=404)
        key = (ref.kind, ref.namespace, ref.name)
        gen_key = (context, *key)
        if self.objects[context].get(key) != manifest:
            self.generation[gen_key] = self.generation.get(gen_key, 0) + 1
        self.objects[context][key] = copy.deepcopy(dict(manifest))
        if ref.kind == "Deployment":
            self.desired[(context, ref.namespace, ref.name)] = int(manifest["spec"]["replicas"])

    def scale(self, context: str, namespace: str, deployment: str, replicas: int, *, timeout_s: float) -> None:
        self._enter("scale", context)
        if ("Deployment", namespace, deployment) not in self.objects[context]:
            raise KubeNotFound(f'deployments.apps "{deployment}" not found', status=404)
        key = (context, namespace, deployment)
        self.desired[key] = replicas
        self.ready[key] = min(self.ready.get(key, 0), replicas)  # scale-down is immediate

    def ready_replicas(self, context: str, namespace: str, deployment: str, *, timeout_s: float) -> int:
        self._enter("ready_replicas", context)
        key = (context, namespace, deployment)
        if key not in self.desired:
            raise KubeNotFound(f'deployments.apps "{deployment}" not found', status=404)
        # One more pod becomes ready per poll: scaling up takes time.
        self.ready[key] = min(self.ready.get(key, 0) + 1, self.desired[key])
        return self.ready[key]

    def gateway_status(self, context: str, namespace: str, gateway: str, *, timeout_s: float) -> GatewayStatus:
        self._enter("gateway_status", context)
        if ("Gateway", namespace, gateway) not in self.objects[context]:
            raise KubeNotFound(f'gateways "{gateway}" not found', status=404)
        self.gateway_polls += 1
        if self.address_after_polls is not None and self.gateway_polls >= self.address_after_polls:
            return GatewayStatus(ADDRESS, True, "Programmed=True (Programmed: )")
        return GatewayStatus(None, False, "Programmed=False (AddressNotAssigned: waiting for the load balancer)")

    def delete(self, context: str, ref: ResourceRef, *, timeout_s: float) -> None:
        self._enter("delete", context)
        self.objects[context].pop((ref.kind, ref.namespace, ref.name), None)

    # views for assertions
    def kinds(self, context: str) -> list[str]:
        return sorted(kind for kind, _, _ in self.objects[context])

    def replicas(self, context: str) -> int:
        return self.desired.get((context, "default", "sglang-deployment"), 0)


def settings(tmp_path: Path, **overrides: Any) -> GkeSettings:
    values: dict[str, Any] = {
        "contexts": (US, ASIA), "output_dir": tmp_path, "poll_interval_s": 0.01,
        "ready_timeout_s": 5.0, "address_timeout_s": 5.0, "serve_timeout_s": 5.0, "call_timeout_s": 1.0,
        **overrides,
    }
    return GkeSettings(**values)


def serving(url: str, timeout_s: float) -> str | None:
    return None


def make(tmp_path: Path, kube: KubeApi, progress: list[str] | None = None, **overrides: Any) -> GkeDeployment:
    return GkeDeployment(SYSTEM, settings(tmp_path, **overrides), kube,
                         on_progress=None if progress is None else progress.append, probe=serving)


def test_start_applies_scales_waits_and_stop_scales_to_zero(tmp_path: Path) -> None:
    kube = FakeKube()
    progress: list[str] = []
    dep = make(tmp_path, kube, progress, hf_token=TOKEN)
    dep.start()
    try:
        assert kube.kinds(US) == ["Deployment", "Gateway", "HTTPRoute", "HealthCheckPolicy", "Secret",
                                  "Service", "ServiceExport"]
        assert kube.kinds(ASIA) == ["Deployment", "Secret", "Service", "ServiceExport"]
        assert kube.ready[(US, "default", "sglang-deployment")] == 2
        assert kube.ready[(ASIA, "default", "sglang-deployment")] == 2
        assert dep.endpoint_for("us-east-2") == dep.endpoint_for("ap-northeast-1") == f"http://{ADDRESS}:80"
        assert dep.telemetry_targets() == []
        described = dep.describe()
        assert described["backend"] == "gke" and described["address"] == ADDRESS
        assert described["locations"] == {US: "us-central1", ASIA: "asia-northeast1"}
        assert any("1/2 ready" in line for line in progress)  # the progress callback saw the wait
        assert leftover_deployments(gke_ledger_path(tmp_path))  # running: the ledger says so
    finally:
        dep.stop()
    assert kube.replicas(US) == kube.replicas(ASIA) == 0
    assert ("Deployment", "default", "sglang-deployment") in kube.objects[US]  # scaled, not deleted
    assert not any(op == "delete" for op, _ in kube.calls)
    assert leftover_deployments(gke_ledger_path(tmp_path)) == []
    ledger_text = gke_ledger_path(tmp_path).read_text()
    assert TOKEN not in ledger_text and TOKEN not in "\n".join(progress)
    assert '"kind": "Secret"' in ledger_text  # its name is recorded, not its data


def test_a_second_run_reapplies_without_changes_and_scales_up_again(tmp_path: Path) -> None:
    kube = FakeKube()
    first = make(tmp_path, kube)
    first.start()
    first.stop()
    generations = dict(kube.generation)
    kube.gateway_polls = 0
    second = make(tmp_path, kube)
    second.start()
    try:
        assert kube.generation == generations  # apply is idempotent: same manifests, same objects
        assert kube.replicas(US) == kube.replicas(ASIA) == 2  # scaled up after the last teardown
    finally:
        second.stop()
    assert kube.replicas(US) == kube.replicas(ASIA) == 0


def test_no_gateway_address_is_a_clear_timeout_and_still_scales_to_zero(tmp_path: Path) -> None:
    kube = FakeKube(address_after_polls=None)
    dep = make(tmp_path, kube, address_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(GkeTimeoutError) as info:
        dep.start()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "Gateway default/sglang-external-gateway" in message and "0.2 s" in message
    assert "AddressNotAssigned" in message  # the last state seen
    assert "gcloud container fleet ingress enable" in message  # what to check
    assert kube.replicas(US) == kube.replicas(ASIA) == 0
    assert leftover_deployments(gke_ledger_path(tmp_path)) == []


def test_pods_never_ready_times_out_with_the_state_per_cluster(tmp_path: Path) -> None:
    kube = FakeKube()
    dep = make(tmp_path, kube, ready_timeout_s=0.2, manifests=GkeManifestSettings(replicas_per_cluster=1000))
    with pytest.raises(GkeTimeoutError, match=r"sglang-us \d+/1000 ready.*HF_TOKEN"):
        dep.start()
    assert kube.replicas(US) == kube.replicas(ASIA) == 0


def test_missing_crds_fail_at_once_with_the_fix_and_tear_down(tmp_path: Path) -> None:
    kube = FakeKube(crds_installed=False)
    with pytest.raises(KubeNotFound, match="ServiceExport"):
        make(tmp_path, kube).start()
    # The Deployment in the first cluster was applied before the failure: it is scaled back.
    assert kube.replicas(US) == 0
    assert leftover_deployments(gke_ledger_path(tmp_path)) == []


def test_keyboard_interrupt_while_waiting_still_scales_to_zero(tmp_path: Path) -> None:
    kube = FakeKube(fail={"gateway_status": KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, kube).start()
    assert kube.replicas(US) == kube.replicas(ASIA) == 0
    assert leftover_deployments(gke_ledger_path(tmp_path)) == []


def test_transient_api_errors_while_polling_are_retried(tmp_path: Path) -> None:
    class Flaky(FakeKube):
        failures = 2

        def ready_replicas(self, context: str, namespace: str, deployment: str, *, timeout_s: float) -> int:
            if self.failures:
                self.failures -= 1
                raise KubeError("read Deployment: HTTP 503: etcd leader changed", transient=True, status=503)
            return super().ready_replicas(context, namespace, deployment, timeout_s=timeout_s)

    kube = Flaky()
    dep = make(tmp_path, kube)
    dep.start()
    dep.stop()
    assert kube.failures == 0 and kube.replicas(US) == 0


def test_teardown_failure_is_reported_kept_in_the_ledger_and_never_raises(tmp_path: Path) -> None:
    kube = FakeKube()
    dep = make(tmp_path, kube)
    dep.start()
    kube.unreachable = (ASIA,)
    dep.stop()  # must not raise
    dep.stop()  # idempotent
    assert kube.replicas(US) == 0 and kube.replicas(ASIA) == 2
    assert len(dep.teardown_errors) == 1 and f"--context={ASIA}" in dep.teardown_errors[0]
    leftovers = leftover_deployments(gke_ledger_path(tmp_path))
    assert [(item.context, item.replicas) for item in leftovers] == [(ASIA, 2)]


def test_cleanup_scales_what_a_killed_run_left_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    dep = make(tmp_path, kube)
    # A killed worker: start() ran, stop() never did.
    monkeypatch.setattr(dep, "stop", lambda: None)
    dep.start()
    path = gke_ledger_path(tmp_path)
    assert {(item.context, item.replicas) for item in leftover_deployments(path)} == {(US, 2), (ASIA, 2)}
    with open(path, "a") as fh:
        fh.write('{"event": "scale", "kind": "Deploy')  # a line cut by the kill
    kube.unreachable = (ASIA,)
    report = scale_leftovers_to_zero(path, kube, timeout_s=1.0)
    assert [item.context for item in report.scaled] == [US]
    assert [item.context for item, _ in report.failed] == [ASIA]
    assert kube.replicas(US) == 0
    kube.unreachable = ()
    report = scale_leftovers_to_zero(path, kube, timeout_s=1.0)
    assert [item.context for item in report.scaled] == [ASIA]
    assert kube.replicas(ASIA) == 0 and leftover_deployments(path) == []


def test_cleanup_treats_a_deleted_deployment_as_done(tmp_path: Path) -> None:
    kube = FakeKube()
    path = gke_ledger_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"event": "apply", "context": US, "kind": "Deployment", "namespace": "default",
                                "name": "sglang-deployment", "replicas": 2}) + "\n")
    report = scale_leftovers_to_zero(path, kube)
    assert report.failed == [] and leftover_deployments(path) == []


def test_start_twice_is_refused(tmp_path: Path) -> None:
    dep = make(tmp_path, FakeKube())
    dep.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            dep.start()
    finally:
        dep.stop()


def test_run_bounded_gives_up_on_a_hung_call() -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(KubeError, match="no answer within 0.2 s") as info:
        run_bounded(lambda: release.wait(30), 0.2, "hung call")
    release.set()
    assert info.value.transient and time.monotonic() - started < 5


def test_real_adapter_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_lbbench.backends.gke.kube import KubernetesClientApi

    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(ImportError, match=r"pip install 'pytest-lbbench\[gke\]'"):
        KubernetesClientApi()


# ---- --gke-endpoint ------------------------------------------------------------------------


class _Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b'{"object": "list", "data": []}'
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def gateway_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_gke_endpoint_touches_no_cluster(gateway_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Any use of the Kubernetes client would fail: the endpoint deployment must not need it.
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    dep = GkeEndpointDeployment(SYSTEM, f"127.0.0.1:{gateway_port}", probe_timeout_s=5.0)
    dep.start()
    assert dep.endpoint_for("ap-northeast-1") == f"http://127.0.0.1:{gateway_port}"
    assert dep.telemetry_targets() == []
    assert dep.describe()["endpoint"] == f"127.0.0.1:{gateway_port}"
    dep.stop()
    dep.stop()


def test_gke_endpoint_that_does_not_answer_fails_in_bounded_time() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dep = GkeEndpointDeployment(SYSTEM, f"http://127.0.0.1:{port}/", probe_timeout_s=0.5, poll_interval_s=0.1)
    started = time.monotonic()
    with pytest.raises(GkeTimeoutError, match=f"--gke-endpoint 127.0.0.1:{port} does not serve"):
        dep.start()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("bad", ["", "34.117.239.237", "34.117.239.237:http", "host:0", "bad host:80", ":80"])
def test_gke_endpoint_syntax_errors_name_the_form(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        GkeEndpointDeployment(SYSTEM, bad)


# ---- the real adapter, against a stand-in API server on loopback -------------------------------


class _ApiServer(http.server.BaseHTTPRequestHandler):
    """Answers the few API paths the adapter uses; ``mode`` on the server picks ok/403/hang."""

    def _reply(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        server: Any = self.server
        server.requests.append((self.command, self.path, self.headers.get("Content-Type"), body))
        if server.mode == "hang":
            time.sleep(3)
        if server.mode == "403":
            return self._reply(403, {"kind": "Status", "message": "deployments.apps is forbidden: User cannot patch"})
        path = self.path.split("?")[0]
        if path.endswith("/scale"):
            return self._reply(200, {"apiVersion": "autoscaling/v1", "kind": "Scale",
                                     "metadata": {"name": "sglang-deployment"}, "spec": (body or {})["spec"]})
        if path.endswith("/status"):
            return self._reply(200, {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "metadata": {"name": "sglang-deployment"}, "status": {"readyReplicas": 2}})
        if "/gateways/" in path:
            return self._reply(200, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                                     "metadata": {"name": "g"}, "status": {
                                         "addresses": [{"type": "IPAddress", "value": ADDRESS}],
                                         "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed",
                                                         "message": ""}]}})
        return self._reply(200, body or {})

    do_GET = do_PATCH = do_DELETE = _handle  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    pytest.importorskip("kubernetes")
    import yaml

    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    server.daemon_threads = True
    server.requests, server.mode = [], "ok"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    try:
        yield server, str(config)
    finally:
        server.shutdown()
        server.server_close()


def test_real_adapter_speaks_server_side_apply(api_server: tuple[Any, str]) -> None:
    from pytest_lbbench.backends.gke.kube import KubernetesClientApi
    from pytest_lbbench.backends.gke.render import render_cluster, render_config_cluster

    server, config = api_server
    kube: KubeApi = KubernetesClientApi(config)
    ms = GkeManifestSettings()
    for manifest in render_cluster(ms) + render_config_cluster(ms):
        kube.apply("fake", manifest, timeout_s=5)
    kube.scale("fake", "default", "sglang-deployment", 0, timeout_s=5)
    assert kube.ready_replicas("fake", "default", "sglang-deployment", timeout_s=5) == 2
    assert kube.gateway_status("fake", "default", "sglang-external-gateway", timeout_s=5) == GatewayStatus(
        ADDRESS, True, "Programmed=True (Programmed: )")
    patches = [(path.split("?")[0], ctype) for method, path, ctype, _ in server.requests if method == "PATCH"]
    assert patches[:6] == [
        ("/apis/apps/v1/namespaces/default/deployments/sglang-deployment", "application/apply-patch+yaml"),
        ("/api/v1/namespaces/default/services/sglang-service", "application/apply-patch+yaml"),
        ("/apis/net.gke.io/v1/namespaces/default/serviceexports/sglang-service", "application/apply-patch+yaml"),
        ("/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/sglang-external-gateway",
         "application/apply-patch+yaml"),
        ("/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/sglang-route",
         "application/apply-patch+yaml"),
        ("/apis/networking.gke.io/v1/namespaces/default/healthcheckpolicies/sglang-healthcheck",
         "application/apply-patch+yaml"),
    ]
    assert patches[6] == ("/apis/apps/v1/namespaces/default/deployments/sglang-deployment/scale",
                          "application/merge-patch+json")
    first_query = server.requests[0][1].split("?", 1)[1]
    assert {"fieldManager=pytest-lbbench", "force=true", "fieldValidation=Strict"} <= set(first_query.split("&"))


def test_real_adapter_explains_refused_credentials_and_bounds_a_hang(api_server: tuple[Any, str]) -> None:
    from pytest_lbbench.backends.gke.kube import KubernetesClientApi

    server, config = api_server
    kube = KubernetesClientApi(config)
    server.mode = "403"
    with pytest.raises(KubeError, match="refused our credentials .*gcloud container clusters get-credentials") as info:
        kube.scale("fake", "default", "sglang-deployment", 0, timeout_s=5)
    assert not info.value.transient
    server.mode = "hang"
    started = time.monotonic()
    with pytest.raises(KubeError) as hung:
        kube.ready_replicas("fake", "default", "sglang-deployment", timeout_s=0.5)
    assert hung.value.transient and time.monotonic() - started < 3.5
