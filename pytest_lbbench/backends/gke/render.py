"""Render the GKE manifests the package ships for one benchmark run.

The templates in ``manifests/`` are YAML with ``${name}`` placeholders. Rendering parses the
template first and substitutes afterwards, so a value (a model name, a namespace) is always one
scalar and can never change the document's structure: ``${name}`` becomes the typed value
(an ``int`` stays an ``int``), ``${name|str}`` its text, and a placeholder inside a longer string
is replaced by the text.

What goes where (reference §4.6 and the GKE run book):

* every cluster: Deployment (SGLang on an L4), Service (with the per-replica capacity
  annotation) and ServiceExport — :func:`render_cluster`;
* the config cluster only: Gateway, HTTPRoute and HealthCheckPolicy — :func:`render_config_cluster`;
* the Hugging Face token: a Secret built in memory only (:func:`render_secret`); the Deployment
  refers to it by name, and :func:`dump_yaml` refuses to write a Secret that carries data.

No pytest import here; PyYAML comes with the ``gke`` extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping, Sequence

import yaml

from pytest_lbbench.gateway.config import GatewayConfig

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_MODEL",
    "GATEWAY_CLASS",
    "GkeManifestSettings",
    "dump_yaml",
    "render_all",
    "render_cluster",
    "render_config_cluster",
    "render_secret",
]

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# The original ran SGLang 0.4.5 (reference §4.1); its GKE image is unknown (§4.6), so we use
# the project's own CUDA 12.4 image of that release.
DEFAULT_IMAGE = "lmsysorg/sglang:v0.4.5-cu124"
GATEWAY_CLASS = "gke-l7-global-external-managed-mc"

CLUSTER_TEMPLATES = ("deployment.yaml", "service.yaml", "serviceexport.yaml")
CONFIG_CLUSTER_TEMPLATES = ("gateway.yaml", "httproute.yaml", "healthcheckpolicy.yaml")

_PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)(\|str)?\}")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DEFAULT_GATEWAY = GatewayConfig()


@dataclass(frozen=True)
class GkeManifestSettings:
    """What the rendered manifests say. Defaults match the original run book and the local
    emulation of the Gateway (:class:`pytest_lbbench.gateway.config.GatewayConfig`)."""

    replicas_per_cluster: int = 2
    model: str = DEFAULT_MODEL
    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    app: str = "sglang"
    """Prefix of every object name: ``sglang-deployment``, ``sglang-service``, …"""
    hf_secret_name: str = "hf-token"
    hf_secret_key: str = "token"
    accelerator: str = "nvidia-l4"
    gpus: int = 1
    cpu_request: str = "4"
    memory_request: str = "24Gi"
    shm_size: str = "4Gi"
    mem_fraction_static: float = 0.8
    container_port: int = 8081
    service_port: int = 8080
    gateway_port: int = 80
    gateway_class: str = GATEWAY_CLASS
    max_rate_per_endpoint: float = _DEFAULT_GATEWAY.max_rate_per_endpoint
    """Requests/s per pod before the Gateway spills to the next region (Service annotation)."""
    health_path: str = _DEFAULT_GATEWAY.health_path
    health_interval_s: int = int(_DEFAULT_GATEWAY.health_interval_s)
    health_timeout_s: int = int(_DEFAULT_GATEWAY.probe_timeout_s)
    healthy_threshold: int = _DEFAULT_GATEWAY.healthy_threshold
    unhealthy_threshold: int = _DEFAULT_GATEWAY.unhealthy_threshold

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("namespace", "app", "hf_secret_name"):
            value = getattr(self, name)
            if not _DNS_LABEL.match(value) or len(value) > 40:
                problems.append(f"{name}={value!r} must be a DNS label (a-z, 0-9, '-'; at most 40 characters)")
        if self.replicas_per_cluster < 0:
            problems.append(f"replicas_per_cluster must be >= 0, got {self.replicas_per_cluster}")
        if self.gpus < 1:
            problems.append(f"gpus must be >= 1, got {self.gpus}")
        for name in ("container_port", "service_port", "gateway_port"):
            if not 1 <= getattr(self, name) <= 65535:
                problems.append(f"{name} must be a TCP port, got {getattr(self, name)}")
        if not self.model.strip() or any(c.isspace() for c in self.model):
            problems.append(f"model must be a non-empty name without spaces, got {self.model!r}")
        if not self.image.strip() or any(c.isspace() for c in self.image):
            problems.append(f"image must be a non-empty reference without spaces, got {self.image!r}")
        if not self.max_rate_per_endpoint > 0:
            problems.append(f"max_rate_per_endpoint must be positive, got {self.max_rate_per_endpoint}")
        if not 0 < self.mem_fraction_static < 1:
            problems.append(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if not self.health_path.startswith("/"):
            problems.append(f"health_path must start with '/', got {self.health_path!r}")
        if problems:
            raise ValueError("invalid GKE manifest settings: " + "; ".join(problems))

    # Object names, fixed by ``app`` so a cleanup can find them again.
    @property
    def deployment(self) -> str:
        return f"{self.app}-deployment"

    @property
    def service(self) -> str:
        return f"{self.app}-service"

    @property
    def gateway(self) -> str:
        return f"{self.app}-external-gateway"

    @property
    def route(self) -> str:
        return f"{self.app}-route"

    @property
    def healthcheck(self) -> str:
        return f"{self.app}-healthcheck"

    def values(self) -> dict[str, Any]:
        """Every placeholder's value (without the token, which only :func:`render_secret` adds)."""
        return {
            "replicas": self.replicas_per_cluster,
            "model": self.model,
            "namespace": self.namespace,
            "image": self.image,
            "app": self.app,
            "hf_secret_name": self.hf_secret_name,
            "hf_secret_key": self.hf_secret_key,
            "accelerator": self.accelerator,
            "gpus": self.gpus,
            "cpu_request": self.cpu_request,
            "memory_request": self.memory_request,
            "shm_size": self.shm_size,
            "mem_fraction_static": self.mem_fraction_static,
            "container_port": self.container_port,
            "service_port": self.service_port,
            "gateway_port": self.gateway_port,
            "gateway_class": self.gateway_class,
            "max_rate_per_endpoint": self.max_rate_per_endpoint,
            "health_path": self.health_path,
            "health_interval_s": self.health_interval_s,
            "health_timeout_s": self.health_timeout_s,
            "healthy_threshold": self.healthy_threshold,
            "unhealthy_threshold": self.unhealthy_threshold,
            "deployment": self.deployment,
            "service": self.service,
            "gateway": self.gateway,
            "route": self.route,
            "healthcheck": self.healthcheck,
        }


def _text(value: Any) -> str:
    # 1.0 → "1": annotations and CLI flags read better without a trailing ".0".
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def substitute(node: Any, values: Mapping[str, Any]) -> Any:
    """Replace placeholders in a parsed template (see the module docstring); unknown names raise."""
    if isinstance(node, dict):
        return {substitute(k, values): substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(item, values) for item in node]
    if not isinstance(node, str):
        return node

    def lookup(match: re.Match[str]) -> Any:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder ${{{name}}} has no value; known: {', '.join(sorted(values))}")
        return values[name]

    whole = _PLACEHOLDER.fullmatch(node)
    if whole is not None:
        value = lookup(whole)
        return _text(value) if whole.group(2) else value
    return _PLACEHOLDER.sub(lambda m: _text(lookup(m)), node)


def load_template(name: str) -> dict[str, Any]:
    """One shipped template, parsed but not rendered."""
    text = resources.files("pytest_lbbench.backends.gke").joinpath("manifests").joinpath(name).read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ValueError(f"manifest template {name} is not one YAML mapping")
    return doc


def _render(names: Sequence[str], values: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [substitute(load_template(name), values) for name in names]


def render_cluster(settings: GkeManifestSettings) -> list[dict[str, Any]]:
    """Deployment, Service and ServiceExport: applied to every cluster."""
    return _render(CLUSTER_TEMPLATES, settings.values())


def render_config_cluster(settings: GkeManifestSettings) -> list[dict[str, Any]]:
    """Gateway, HTTPRoute and HealthCheckPolicy: applied to the config cluster only."""
    return _render(CONFIG_CLUSTER_TEMPLATES, settings.values())


def render_all(settings: GkeManifestSettings, contexts: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Context → manifests, in apply order; the first context is the config cluster."""
    if not contexts:
        raise ValueError("at least one kube context is needed")
    out = {ctx: render_cluster(settings) for ctx in contexts}
    out[contexts[0]] = out[contexts[0]] + render_config_cluster(settings)
    return out


def render_secret(settings: GkeManifestSettings, token: str) -> dict[str, Any]:
    """The Secret holding the Hugging Face token, in memory only (never pass it to :func:`dump_yaml`)."""
    if not token:
        raise ValueError("the Hugging Face token is empty")
    secret: dict[str, Any] = substitute(load_template("secret.yaml"), {**settings.values(), "hf_token": token})
    return secret


def dump_yaml(manifests: Sequence[Mapping[str, Any]]) -> str:
    """Multi-document YAML of rendered manifests, for files and logs.

    A Secret with ``data``/``stringData`` is refused: the token must never reach a file.
    """
    for manifest in manifests:
        if manifest.get("kind") == "Secret" and (manifest.get("data") or manifest.get("stringData")):
            raise ValueError(
                f"refusing to write Secret {manifest.get('metadata', {}).get('name')!r} with its data; "
                "secrets are applied from memory only"
            )
    return yaml.safe_dump_all([dict(m) for m in manifests], sort_keys=False)
