"""The GKE manifests the package ships, rendered and validated against the API types.

* Core kinds (Deployment, Service, Secret): ``kubernetes-validate`` with the upstream
  Kubernetes 1.37 OpenAPI schemas in strict mode (an unknown field fails, as
  ``kubectl apply --validate=strict`` would).
* The CRDs (ServiceExport, Gateway, HTTPRoute, HealthCheckPolicy): no PyPI or Debian package
  ships their schemas. Two checks:

  1. ``CRD_SCHEMAS`` below: strict JSON schemas of only the fields we use, transcribed from the
     published references (each cites its source). Strict means ``additionalProperties: false``
     everywhere, so a misspelt or invented field fails.
  2. When Node.js is available: the npm packages ``@kubernetes-models/gateway-api`` and
     ``@kubernetes-models/gke``, whose validators are generated from the upstream CRDs / Go
     types (types, enums, patterns, required fields). They ignore unknown fields, which is
     why (1) exists. Installed once into ``$LBBENCH_K8S_MODELS_DIR`` (default
     ``~/.cache/pytest-lbbench/k8s-models``) with npm; skipped with the reason otherwise.

Every kind has a negative test, so each validator is shown to be able to fail.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn, Any

import pytest

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

from pytest_lbbench.backends.gke.render import (  # noqa: E402  (after the importorskips)
    GATEWAY_CLASS,
    GkeManifestSettings,
    dump_yaml,
    load_template,
    render_all,
    render_cluster,
    render_config_cluster,
    render_secret,
)
from pytest_lbbench.gateway.config import GatewayConfig  # noqa: E402

K8S_VERSION = "1.37.0"
TOKEN = "hf_TESTTOKEN_must_never_be_written"


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


@pytest.fixture(params=[GkeManifestSettings(), GkeManifestSettings(
    replicas_per_cluster=5, namespace="bench", model="Qwen/Qwen2.5-7B-Instruct", app="llm",
    image="registry.example/sglang:dev", max_rate_per_endpoint=2.5,
)], ids=["defaults", "custom"])
def settings(request: pytest.FixtureRequest) -> GkeManifestSettings:
    value: GkeManifestSettings = request.param
    return value


@pytest.fixture
def rendered(settings: GkeManifestSettings) -> dict[str, dict[str, Any]]:
    return by_kind(render_cluster(settings) + render_config_cluster(settings) + [render_secret(settings, TOKEN)])


# ---- core kinds: upstream OpenAPI schemas, strict ----------------------------------------------


@pytest.mark.parametrize("kind", ["Deployment", "Service", "Secret"])
def test_core_kinds_validate_strictly(rendered: dict[str, dict[str, Any]], kind: str) -> None:
    kv.validate(rendered[kind], K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0, "readinessProbe", "httpGett"], {}),
        ("Deployment", ["spec", "replicas"], "two"),
        ("Service", ["spec", "ports", 0, "targetPortt"], 8081),
        ("Service", ["spec", "ports", 0, "port"], "eighty"),
        ("Secret", ["stringdata"], {"token": "x"}),
        ("Secret", ["type"], 7),
    ],
    ids=["deployment-unknown-field", "deployment-wrong-type", "service-unknown-field",
         "service-wrong-type", "secret-unknown-field", "secret-wrong-type"],
)
def test_core_kinds_reject_unknown_fields_and_wrong_types(
    rendered: dict[str, dict[str, Any]], kind: str, path: list[Any], value: Any
) -> None:
    manifest = copy.deepcopy(rendered[kind])
    set_path(manifest, path, value)
    with pytest.raises(kv.ValidationError):
        kv.validate(manifest, K8S_VERSION, strict=True)


def set_path(doc: Any, path: list[Any], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


# ---- CRDs: strict schemas of the fields we use ----------------------------------------------------

_NAME = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}
_METADATA = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": _NAME, "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    # https://cloud.google.com/kubernetes-engine/docs/how-to/multi-cluster-services
    # ("Registering a Service for export"): a ServiceExport has only metadata; its name and
    # namespace must equal the exported Service's. CRD net.gke.io/v1 has no spec.
    "ServiceExport": _object(
        ["apiVersion", "kind", "metadata"],
        apiVersion={"const": "net.gke.io/v1"}, kind={"const": "ServiceExport"}, metadata=_METADATA,
    ),
    # https://gateway-api.sigs.k8s.io/reference/spec/#gateway (v1.Gateway, GatewaySpec, Listener,
    # AllowedRoutes, RouteGroupKind): gatewayClassName and listeners are required; a listener
    # needs name (SectionName), port (1–65535) and protocol; RouteGroupKind needs kind.
    "Gateway": _object(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": "gateway.networking.k8s.io/v1"}, kind={"const": "Gateway"}, metadata=_METADATA,
        spec=_object(
            ["gatewayClassName", "listeners"],
            gatewayClassName={"type": "string", "minLength": 1, "maxLength": 253},
            listeners={"type": "array", "minItems": 1, "maxItems": 64, "items": _object(
                ["name", "port", "protocol"],
                name={"type": "string", "minLength": 1, "maxLength": 253,
                      "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
                port=_PORT,
                protocol={"type": "string", "minLength": 1, "maxLength": 255},
                allowedRoutes=_object(
                    [],
                    kinds={"type": "array", "maxItems": 8, "items": _object(
                        ["kind"],
                        group={"type": "string", "maxLength": 253},
                        kind={"type": "string", "minLength": 1, "maxLength": 63,
                              "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"},
                    )},
                ),
            )},
        ),
    ),
    # https://gateway-api.sigs.k8s.io/reference/spec/#httproute (v1.HTTPRoute, HTTPRouteSpec,
    # ParentReference, HTTPRouteRule, HTTPBackendRef): parentRefs[].name and
    # backendRefs[].name are required; a backendRef to a non-Service kind needs a port.
    "HTTPRoute": _object(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": "gateway.networking.k8s.io/v1"}, kind={"const": "HTTPRoute"}, metadata=_METADATA,
        spec=_object(
            [],
            parentRefs={"type": "array", "minItems": 1, "maxItems": 32, "items": _object(
                ["name"],
                group={"type": "string"}, kind={"type": "string"}, namespace={"type": "string"},
                name={"type": "string", "minLength": 1, "maxLength": 253},
            )},
            rules={"type": "array", "minItems": 1, "maxItems": 16, "items": _object(
                [],
                backendRefs={"type": "array", "minItems": 1, "maxItems": 16, "items": _object(
                    ["name", "port"],
                    group={"type": "string"}, kind={"type": "string"},
                    name={"type": "string", "minLength": 1, "maxLength": 253}, port=_PORT,
                    weight={"type": "integer", "minimum": 0, "maximum": 1000000},
                )},
            )},
        ),
    ),
    # https://cloud.google.com/kubernetes-engine/docs/how-to/configure-gateway-resources
    # ("Configure health check"): spec.default.{checkIntervalSec, timeoutSec, healthyThreshold,
    # unhealthyThreshold, config.{type, httpHealthCheck.{portSpecification, port, requestPath}}}
    # and spec.targetRef.{group, kind, name}. Ranges as in that page: interval and timeout
    # 1–300 s, thresholds 1–10, type one of TCP/HTTP/HTTPS/HTTP2/GRPC.
    "HealthCheckPolicy": _object(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": "networking.gke.io/v1"}, kind={"const": "HealthCheckPolicy"}, metadata=_METADATA,
        spec=_object(
            ["targetRef"],
            default=_object(
                [],
                checkIntervalSec={"type": "integer", "minimum": 1, "maximum": 300},
                timeoutSec={"type": "integer", "minimum": 1, "maximum": 300},
                healthyThreshold={"type": "integer", "minimum": 1, "maximum": 10},
                unhealthyThreshold={"type": "integer", "minimum": 1, "maximum": 10},
                config=_object(
                    ["type"],
                    type={"enum": ["TCP", "HTTP", "HTTPS", "HTTP2", "GRPC"]},
                    httpHealthCheck=_object(
                        [],
                        portSpecification={"enum": ["USE_FIXED_PORT", "USE_NAMED_PORT", "USE_SERVING_PORT"]},
                        port=_PORT,
                        requestPath={"type": "string", "pattern": "^/"},
                    ),
                ),
            ),
            targetRef=_object(
                ["group", "kind", "name"],
                group={"type": "string"}, kind={"type": "string", "minLength": 1},
                name={"type": "string", "minLength": 1},
            ),
        ),
    ),
}


def crd_validate(manifest: dict[str, Any]) -> None:
    schema = CRD_SCHEMAS[manifest["kind"]]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(manifest)


@pytest.mark.parametrize("kind", sorted(CRD_SCHEMAS))
def test_crds_validate_strictly(rendered: dict[str, dict[str, Any]], kind: str) -> None:
    crd_validate(rendered[kind])


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("ServiceExport", ["spec"], {"ports": []}),
        ("Gateway", ["spec", "listeners", 0, "portt"], 80),
        ("Gateway", ["spec", "listeners", 0, "port"], 0),
        ("HTTPRoute", ["spec", "rules", 0, "backendRefs", 0, "serviceName"], "x"),
        ("HTTPRoute", ["spec", "parentRefs", 0, "name"], ""),
        ("HealthCheckPolicy", ["spec", "default", "config", "httpHealthCheck", "path"], "/health"),
        ("HealthCheckPolicy", ["spec", "default", "config", "type"], "HTTP3"),
    ],
    ids=["serviceexport-spec", "gateway-unknown-field", "gateway-port-range", "httproute-unknown-field",
         "httproute-empty-parent", "healthcheck-unknown-field", "healthcheck-bad-enum"],
)
def test_crd_schemas_reject_unknown_fields_and_bad_values(
    rendered: dict[str, dict[str, Any]], kind: str, path: list[Any], value: Any
) -> None:
    manifest = copy.deepcopy(rendered[kind])
    set_path(manifest, path, value)
    with pytest.raises(jsonschema.ValidationError):
        crd_validate(manifest)


# ---- CRDs: the upstream-generated validators of @kubernetes-models (Node.js) -----------------

NPM_PACKAGES = ["@kubernetes-models/gateway-api@2.0.0", "@kubernetes-models/gke@4.6.2"]
NODE_MODULES = {
    "ServiceExport": "@kubernetes-models/gke/net.gke.io/v1/ServiceExport",
    "Gateway": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/Gateway",
    "HTTPRoute": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute",
    "HealthCheckPolicy": "@kubernetes-models/gke/networking.gke.io/v1/HealthCheckPolicy",
}
NODE_SCRIPT = """
const docs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const modules = %s;
(async () => {
  const out = [];
  for (const doc of docs) {
    const mod = await import(modules[doc.kind]);
    try { new mod[doc.kind](doc).validate(); out.push(null); }
    catch (e) { out.push(String(e.message || e)); }
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(2); });
"""


def _unavailable(reason: str) -> NoReturn:
    """Skip locally; under CI (which installs Node.js and the packages) a skip would hide a gap."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def k8s_models_dir() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("Node.js/npm not on PATH: the @kubernetes-models cross-check needs them")
    root = Path(os.environ.get("LBBENCH_K8S_MODELS_DIR", Path.home() / ".cache" / "pytest-lbbench" / "k8s-models"))
    marker = root / "node_modules" / "@kubernetes-models" / "gke" / "package.json"
    if not marker.exists():
        # Install beside the target and rename, so parallel xdist workers never see half a tree.
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="k8s-models-", dir=root.parent))
        try:
            proc = subprocess.run(
                [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--loglevel=error",
                 *NPM_PACKAGES],
                capture_output=True, text=True, timeout=300,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(staging, ignore_errors=True)
            _unavailable(f"npm install {' '.join(NPM_PACKAGES)} did not finish within 300 s")
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            _unavailable(f"npm install {' '.join(NPM_PACKAGES)} failed: {proc.stderr[-500:]}")
        try:
            os.rename(staging, root)
        except OSError:  # another worker got there first
            shutil.rmtree(staging, ignore_errors=True)
    if not marker.exists():
        _unavailable(f"{marker} missing after npm install")
    return root


def node_validate(root: Path, manifests: list[dict[str, Any]]) -> list[str | None]:
    script = root / f"validate-{os.getpid()}.cjs"  # per process: xdist workers share root
    script.write_text(NODE_SCRIPT % json.dumps(NODE_MODULES))
    proc = subprocess.run(
        ["node", str(script)], input=json.dumps(manifests), capture_output=True, text=True,
        timeout=120, cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: list[str | None] = json.loads(proc.stdout)
    return result


def test_crds_pass_the_upstream_generated_validators(
    k8s_models_dir: Path, rendered: dict[str, dict[str, Any]]
) -> None:
    docs = [rendered[kind] for kind in NODE_MODULES]
    assert node_validate(k8s_models_dir, docs) == [None] * len(docs)


def test_upstream_generated_validators_can_fail(k8s_models_dir: Path, rendered: dict[str, dict[str, Any]]) -> None:
    bad = copy.deepcopy(rendered)
    bad["ServiceExport"]["apiVersion"] = "net.gke.io/v2"
    bad["Gateway"]["spec"]["listeners"][0]["port"] = "eighty"
    del bad["HTTPRoute"]["spec"]["parentRefs"][0]["name"]
    bad["HealthCheckPolicy"]["spec"]["default"]["config"]["type"] = "HTTP3"
    errors = node_validate(k8s_models_dir, [bad[kind] for kind in NODE_MODULES])
    assert all(errors), dict(zip(NODE_MODULES, errors))


# ---- what the manifests say ------------------------------------------------------------------


def test_rendering_follows_the_settings(settings: GkeManifestSettings, rendered: dict[str, dict[str, Any]]) -> None:
    dep, svc = rendered["Deployment"], rendered["Service"]
    assert dep["spec"]["replicas"] == settings.replicas_per_cluster
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == settings.image
    assert container["args"][container["args"].index("--model-path") + 1] == settings.model
    assert all(isinstance(arg, str) for arg in container["args"])
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8081}
    for manifest in rendered.values():
        assert manifest["metadata"]["namespace"] == settings.namespace
    assert rendered["ServiceExport"]["metadata"]["name"] == svc["metadata"]["name"]
    backend = rendered["HTTPRoute"]["spec"]["rules"][0]["backendRefs"][0]
    assert backend == {"group": "net.gke.io", "kind": "ServiceImport", "name": svc["metadata"]["name"],
                       "port": svc["spec"]["ports"][0]["port"]}
    assert rendered["HTTPRoute"]["spec"]["parentRefs"][0]["name"] == rendered["Gateway"]["metadata"]["name"]
    assert rendered["HealthCheckPolicy"]["spec"]["targetRef"] == {
        "group": "net.gke.io", "kind": "ServiceImport", "name": svc["metadata"]["name"]}
    assert rendered["Gateway"]["spec"]["gatewayClassName"] == GATEWAY_CLASS
    text = json.dumps([m for k, m in rendered.items() if k != "Secret"])
    assert "${" not in text


def test_capacity_and_health_check_match_the_local_emulation() -> None:
    """The real Gateway gets the knobs the emulated one uses (pytest_lbbench.gateway.config)."""
    emulated = GatewayConfig()
    docs = by_kind(render_cluster(GkeManifestSettings()) + render_config_cluster(GkeManifestSettings()))
    annotation = docs["Service"]["metadata"]["annotations"]["networking.gke.io/max-rate-per-endpoint"]
    assert float(annotation) == emulated.max_rate_per_endpoint
    hc = docs["HealthCheckPolicy"]["spec"]["default"]
    assert hc["checkIntervalSec"] == emulated.health_interval_s
    assert hc["timeoutSec"] == emulated.probe_timeout_s
    assert hc["healthyThreshold"] == emulated.healthy_threshold
    assert hc["unhealthyThreshold"] == emulated.unhealthy_threshold
    assert hc["config"]["httpHealthCheck"]["requestPath"] == emulated.health_path


def test_config_cluster_alone_gets_the_gateway_objects() -> None:
    out = render_all(GkeManifestSettings(), ["ctx-us", "ctx-asia"])
    assert [m["kind"] for m in out["ctx-us"]] == [
        "Deployment", "Service", "ServiceExport", "Gateway", "HTTPRoute", "HealthCheckPolicy"]
    assert [m["kind"] for m in out["ctx-asia"]] == ["Deployment", "Service", "ServiceExport"]


def test_token_only_through_a_secret_reference(tmp_path: Path) -> None:
    settings = GkeManifestSettings()
    manifests = render_cluster(settings) + render_config_cluster(settings)
    env = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}]
    text = dump_yaml(manifests)
    assert TOKEN not in text and "stringData" not in text
    with pytest.raises(ValueError, match="refusing to write Secret"):
        dump_yaml(manifests + [render_secret(settings, TOKEN)])
    for template in Path(load_template.__code__.co_filename).parent.joinpath("manifests").glob("*.yaml"):
        assert "hf_" not in template.read_text().replace("hf_secret", "").replace("hf_token}", "")


def test_values_cannot_change_the_yaml_structure() -> None:
    # A model name that would be YAML syntax in a text template stays one string.
    odd = GkeManifestSettings(model="org/model:{a:[1,2]}#x")
    dep = by_kind(render_cluster(odd))["Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-path") + 1] == "org/model:{a:[1,2]}#x"
    kv.validate(dep, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "kwargs",
    [{"namespace": "Bad_NS"}, {"replicas_per_cluster": -1}, {"model": "a b"}, {"max_rate_per_endpoint": 0},
     {"container_port": 70000}, {"app": ""}],
)
def test_bad_settings_are_refused_with_the_reason(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GkeManifestSettings(**kwargs)


def test_every_template_parses_and_ships_in_the_package() -> None:
    for name in ("deployment.yaml", "service.yaml", "serviceexport.yaml", "gateway.yaml", "httproute.yaml",
                 "healthcheckpolicy.yaml", "secret.yaml"):
        doc = load_template(name)
        assert {"apiVersion", "kind", "metadata"} <= set(doc)


@pytest.mark.parametrize(("kind", "model"), [("Deployment", "V1Deployment"), ("Service", "V1Service"),
                                             ("Secret", "V1Secret")])
def test_core_kinds_load_into_the_kubernetes_client_models(
    rendered: dict[str, dict[str, Any]], kind: str, model: str
) -> None:
    client = pytest.importorskip("kubernetes.client")
    cls = getattr(client, model)
    assert cls.from_dict(rendered[kind]).to_dict()["metadata"]["name"] == rendered[kind]["metadata"]["name"]
    bad = copy.deepcopy(rendered[kind])
    bad["metadata"]["labels"] = {"app": 3}  # labels are strings in the API types
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        cls.from_dict(bad)
