"""System 6 on real GKE: :class:`GkeDeployment`, and :class:`GkeEndpointDeployment` for an
existing gateway.

:class:`GkeDeployment` does what the original run book did by hand (seed "GKE Gateway
Baseline", steps 2–6), given one kube context per cluster, the first being the config cluster:

1. apply the Secret (only when a token is given), Deployment, Service and ServiceExport to every
   cluster, and the Gateway, HTTPRoute and HealthCheckPolicy to the config cluster;
2. scale the Deployment to N replicas in every cluster;
3. wait until every cluster has N ready replicas, the Gateway has an address and is Programmed,
   and the address answers ``GET /v1/models`` (a new load balancer takes minutes to serve);
4. at :meth:`GkeDeployment.stop` — after success, failure or Ctrl-C — scale every Deployment to
   zero. Nothing is deleted: the objects are reused by the next run (as in the run book), and
   the clusters and node pools are never touched (GPU nodes go when the cluster autoscaler
   finds them empty).

Every object is written to a JSONL ledger, ``<output-dir>/.lbbench/gke.jsonl``, *before* it is
applied, so :func:`scale_leftovers_to_zero` can find Deployments a killed run left scaled up.

:class:`GkeEndpointDeployment` (``--gke-endpoint HOST:PORT``) only points clients at a gateway
that already runs; it never calls the Kubernetes API.

No pytest import here.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from pytest_lbbench import __version__
from pytest_lbbench.backends.base import Deployment
from pytest_lbbench.backends.ledger import append_jsonl, read_jsonl
from pytest_lbbench.backends.gke.kube import GatewayStatus, KubeApi, KubeError, KubeNotFound, ResourceRef
from pytest_lbbench.backends.gke.preflight import context_location, parse_gke_endpoint
from pytest_lbbench.backends.gke.render import (
    GkeManifestSettings,
    render_cluster,
    render_config_cluster,
    render_secret,
)
from pytest_lbbench.systems import SystemSpec

__all__ = [
    "GkeDeployment",
    "GkeEndpointDeployment",
    "GkeLedger",
    "GkeSettings",
    "GkeTimeoutError",
    "LeftoverDeployment",
    "gke_ledger_path",
    "http_probe",
    "leftover_deployments",
    "scale_leftovers_to_zero",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
Probe = Callable[[str, float], str | None]


class GkeTimeoutError(TimeoutError):
    """A wait of :class:`GkeDeployment` ran out; the message says what, for how long, and what to check."""


# ---- ledger ------------------------------------------------------------------------------------


def gke_ledger_path(output_dir: Path) -> Path:
    """Where :class:`GkeDeployment` records what it applied and scaled."""
    return output_dir / ".lbbench" / "gke.jsonl"


class GkeLedger:
    """Append-only JSONL record of every object applied and every scale, per kube context.

    Lines are short and appended whole, so concurrent writers (xdist workers) do not interleave.
    Only names are written: never a manifest body, so never a secret.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, entry: dict[str, Any]) -> None:
        append_jsonl(self.path, {**entry, "time": time.time(), "owner_pid": os.getpid()})

    def applied(self, context: str, ref: ResourceRef, replicas: int | None = None) -> None:
        entry: dict[str, Any] = {
            "event": "apply", "context": context, "api_version": ref.api_version, "kind": ref.kind,
            "namespace": ref.namespace, "name": ref.name,
        }
        if replicas is not None:
            entry["replicas"] = replicas
        self._append(entry)

    def scaled(self, context: str, namespace: str, deployment: str, replicas: int) -> None:
        self._append({"event": "scale", "context": context, "kind": "Deployment",
                      "namespace": namespace, "name": deployment, "replicas": replicas})


@dataclass(frozen=True)
class LeftoverDeployment:
    """A Deployment the ledger last saw with replicas > 0."""

    context: str
    namespace: str
    name: str
    replicas: int


def leftover_deployments(path: Path) -> list[LeftoverDeployment]:
    """Deployments whose last ledger entry (apply or scale) left them with replicas > 0.

    A scale to zero is recorded only after the API accepted it, so a failed teardown stays a
    leftover. Cut lines (a crash mid-write) are skipped.
    """
    desired: dict[tuple[str, str, str], int] = {}
    for entry in read_jsonl(path):
        if entry.get("kind") != "Deployment":
            continue
        key = (str(entry.get("context")), str(entry.get("namespace")), str(entry.get("name")))
        if entry.get("event") == "apply":
            # Applying the manifest sets its replicas (or keeps the current ones; assume the worst).
            desired[key] = int(entry.get("replicas", 1))
        elif entry.get("event") == "scale":
            desired[key] = int(entry.get("replicas", 0))
    return [LeftoverDeployment(ctx, ns, name, n) for (ctx, ns, name), n in desired.items() if n > 0]


@dataclass
class CleanupReport:
    """What :func:`scale_leftovers_to_zero` did."""

    scaled: list[LeftoverDeployment] = field(default_factory=list)
    failed: list[tuple[LeftoverDeployment, str]] = field(default_factory=list)


def scale_leftovers_to_zero(path: Path, kube: KubeApi, timeout_s: float = 30.0) -> CleanupReport:
    """Scale every leftover Deployment of the ledger at ``path`` to zero (a Deployment that no
    longer exists counts as done). Never raises for one Deployment; failures are reported."""
    ledger = GkeLedger(path)
    report = CleanupReport()
    for item in leftover_deployments(path):
        try:
            kube.scale(item.context, item.namespace, item.name, 0, timeout_s=timeout_s)
        except KubeNotFound:
            pass
        except (KubeError, OSError) as exc:
            report.failed.append((item, str(exc)))
            continue
        ledger.scaled(item.context, item.namespace, item.name, 0)
        report.scaled.append(item)
    return report


# ---- probes ------------------------------------------------------------------------------------


def http_probe(base_url: str, timeout_s: float) -> str | None:
    """``None`` when ``GET base_url/v1/models`` answers 200, else why not (bounded by ``timeout_s``)."""
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"GET /v1/models answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"GET /v1/models answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"GET /v1/models failed: {type(exc).__name__}: {exc}"


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ---- the deployment ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GkeSettings:
    """How :class:`GkeDeployment` lays system 6 out on GKE.

    ``contexts`` are kube context names, one per cluster; the first is the config cluster of
    the fleet (where the Gateway lives). The timeouts are generous because a cold start is slow:
    a GPU node scales up (minutes), pulls a ~10 GB image, downloads the model; a new global load
    balancer takes several minutes to get an address and more to serve.
    """

    contexts: tuple[str, ...]
    output_dir: Path
    manifests: GkeManifestSettings = field(default_factory=GkeManifestSettings)
    hf_token: str | None = field(default=None, repr=False)
    """Written into the cluster as a Secret when given; when None, the Secret must already exist."""
    ready_timeout_s: float = 1800.0
    address_timeout_s: float = 900.0
    serve_timeout_s: float = 900.0
    poll_interval_s: float = 10.0
    call_timeout_s: float = 30.0
    """Timeout of one Kubernetes API call."""
    probe_timeout_s: float = 10.0
    """Timeout of one ``GET /v1/models`` against the Gateway."""

    def __post_init__(self) -> None:
        if not self.contexts:
            raise ValueError("GkeSettings needs at least one kube context")
        if len(set(self.contexts)) != len(self.contexts):
            raise ValueError(f"kube contexts must be distinct, got {list(self.contexts)}")
        for name in ("ready_timeout_s", "address_timeout_s", "serve_timeout_s", "poll_interval_s",
                     "call_timeout_s", "probe_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


class GkeDeployment(Deployment):
    """System 6 on real GKE clusters (see the module docstring).

    ``kube`` defaults to :class:`~pytest_lbbench.backends.gke.kube.KubernetesClientApi`;
    ``on_progress`` receives one line per step and per poll; ``probe`` checks that the
    Gateway serves (``None`` = serving).
    """

    def __init__(
        self,
        system: SystemSpec,
        settings: GkeSettings,
        kube: KubeApi | None = None,
        *,
        on_progress: Progress | None = None,
        probe: Probe = http_probe,
        kubeconfig: str | None = None,
    ) -> None:
        self.system = system
        self.settings = settings
        if kube is None:
            from pytest_lbbench.backends.gke.kube import KubernetesClientApi

            kube = KubernetesClientApi(kubeconfig)
        self.kube: KubeApi = kube
        self.ledger = GkeLedger(gke_ledger_path(settings.output_dir))
        self._on_progress = on_progress
        self._probe = probe
        self._started = False
        self._touched: list[str] = []  # contexts we applied to, in order: stop() scales these
        self._stopped = False
        self.address: str | None = None
        self.teardown_errors: list[str] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Apply, scale and wait (see the module docstring); on any failure or interrupt, scale
        back to zero and re-raise."""
        if self._started:
            raise RuntimeError(f"deployment of {self.system.name!r} is already started")
        self._started = True
        try:
            self._apply_all()
            self._scale_all(self.settings.manifests.replicas_per_cluster)
            self._wait_ready()
            self._wait_address()
            self._wait_serving()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Scale the Deployment to zero in every cluster this run applied to.

        Idempotent and never raises: a cluster that cannot be reached is logged, kept in
        :attr:`teardown_errors`, and stays a leftover in the ledger for a later cleanup.
        """
        if self._stopped:
            return
        self._stopped = True
        ms = self.settings.manifests
        for ctx in self._touched:
            try:
                self.kube.scale(ctx, ms.namespace, ms.deployment, 0, timeout_s=self.settings.call_timeout_s)
            except KubeNotFound:
                pass  # never created: nothing runs
            except Exception as exc:  # noqa: BLE001 — teardown must go on to the next cluster
                msg = (f"could not scale {ms.namespace}/{ms.deployment} to zero in {ctx}: {exc}. "
                       f"Run `kubectl scale deployment {ms.deployment} --replicas=0 -n {ms.namespace} "
                       f"--context={ctx}`.")
                self.teardown_errors.append(msg)
                log.warning("%s", msg)
                continue
            self.ledger.scaled(ctx, ms.namespace, ms.deployment, 0)
            self._progress(f"{ctx}: {ms.deployment} scaled to 0")

    # ---- queries ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://ADDRESS:PORT`` of the Gateway (after :meth:`start`)."""
        if self.address is None:
            raise KeyError(f"{self.system.name}: the Gateway has no address yet (start() not done)")
        return f"http://{self.address}:{self.settings.manifests.gateway_port}"

    def endpoint_for(self, client_region: str) -> str:
        """The Gateway's URL: one anycast address for every client region."""
        return self.base_url

    def telemetry_targets(self) -> list[dict[str, str]]:
        """None: the Gateway has no queue endpoint and the pods are not reachable from outside
        (the original polled nothing for GKE either, reference §1.2)."""
        return []

    def describe(self) -> dict[str, Any]:
        ms = self.settings.manifests
        return {
            "backend": "gke",
            "system": self.system.to_dict(),
            "contexts": list(self.settings.contexts),
            "config_context": self.settings.contexts[0],
            "locations": {ctx: context_location(ctx) for ctx in self.settings.contexts},
            "namespace": ms.namespace,
            "replicas_per_cluster": ms.replicas_per_cluster,
            "model": ms.model,
            "image": ms.image,
            "accelerator": ms.accelerator,
            "gateway_class": ms.gateway_class,
            "gateway": ms.gateway,
            "address": self.address,
            "max_rate_per_endpoint": ms.max_rate_per_endpoint,
            "health_check": {
                "path": ms.health_path, "interval_s": ms.health_interval_s, "timeout_s": ms.health_timeout_s,
                "healthy_threshold": ms.healthy_threshold, "unhealthy_threshold": ms.unhealthy_threshold,
            },
            "versions": {"pytest_lbbench": __version__, "kubernetes": _package_version("kubernetes")},
        }

    # ---- steps -----------------------------------------------------------------------------

    def _progress(self, message: str) -> None:
        log.info("%s: %s", self.system.name, message)
        if self._on_progress is not None:
            self._on_progress(message)

    def _apply(self, ctx: str, manifest: dict[str, Any], secret: str | None = None) -> None:
        ref = ResourceRef.of(manifest)
        replicas = manifest["spec"].get("replicas") if ref.kind == "Deployment" else None
        # Ledger first: if we die during the call, the cleanup still knows the object may exist.
        self.ledger.applied(ctx, ref, replicas)
        if ctx not in self._touched:
            self._touched.append(ctx)
        try:
            self.kube.apply(ctx, manifest, timeout_s=self.settings.call_timeout_s)
        except KubeError as exc:
            text = str(exc) if secret is None else str(exc).replace(secret, "***")
            raise type(exc)(f"{self.system.name}: {text}", transient=exc.transient, status=exc.status) from None
        self._progress(f"{ctx}: applied {ref}")

    def _apply_all(self) -> None:
        ms = self.settings.manifests
        token = self.settings.hf_token
        for ctx in self.settings.contexts:
            if token:
                self._apply(ctx, render_secret(ms, token), secret=token)
            for manifest in render_cluster(ms):
                self._apply(ctx, manifest)
        config_ctx = self.settings.contexts[0]
        for manifest in render_config_cluster(ms):
            self._apply(config_ctx, manifest)

    def _scale_all(self, replicas: int) -> None:
        # Explicit, like `kubectl scale` in the run book: a Deployment scaled to zero by an
        # earlier run's teardown is scaled up here even when its manifest did not change.
        ms = self.settings.manifests
        for ctx in self.settings.contexts:
            self.ledger.scaled(ctx, ms.namespace, ms.deployment, replicas)
            self.kube.scale(ctx, ms.namespace, ms.deployment, replicas, timeout_s=self.settings.call_timeout_s)
            self._progress(f"{ctx}: scaled {ms.deployment} to {replicas}")

    def _poll(self, what: str, timeout_s: float, check: Callable[[], str | None], hint: str) -> None:
        """Call ``check`` (``None`` = done, else the current state) every poll interval until
        ``timeout_s``; transient API errors count as a state, others raise at once."""
        deadline = time.monotonic() + timeout_s
        state = "not checked yet"
        while True:
            try:
                outcome = check()
            except KubeError as exc:
                if not exc.transient:
                    raise
                outcome = str(exc)
            if outcome is None:
                return
            state = outcome
            self._progress(f"waiting for {what}: {state}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GkeTimeoutError(
                    f"{self.system.name}: {what} not reached within {timeout_s:g} s; last state: {state}. "
                    f"{hint} The Deployments are scaled to zero on the way out."
                )
            time.sleep(min(self.settings.poll_interval_s, remaining))

    def _wait_ready(self) -> None:
        ms = self.settings.manifests
        want = ms.replicas_per_cluster
        t = self.settings.call_timeout_s

        def check() -> str | None:
            counts = {ctx: self.kube.ready_replicas(ctx, ms.namespace, ms.deployment, timeout_s=t)
                      for ctx in self.settings.contexts}
            if all(n >= want for n in counts.values()):
                return None
            return ", ".join(f"{ctx} {n}/{want} ready" for ctx, n in counts.items())

        ctx0 = self.settings.contexts[0]
        self._poll(
            f"{want} ready replica(s) of {ms.deployment} per cluster", self.settings.ready_timeout_s, check,
            f"Check `kubectl get pods -n {ms.namespace} --context={ctx0}` and `kubectl describe pod`: an L4 node "
            f"pool with `cloud.google.com/gke-accelerator: {ms.accelerator}` nodes must be able to scale up, "
            f"and the Secret {ms.hf_secret_name!r} (key {ms.hf_secret_key!r}) must hold a Hugging Face token "
            f"with access to {ms.model} (set HF_TOKEN to have it created).",
        )

    def _wait_address(self) -> None:
        ms = self.settings.manifests
        ctx = self.settings.contexts[0]

        def check() -> str | None:
            status: GatewayStatus = self.kube.gateway_status(
                ctx, ms.namespace, ms.gateway, timeout_s=self.settings.call_timeout_s
            )
            if status.address and status.programmed:
                self.address = status.address
                return None
            return f"address={status.address or 'none'}, {status.detail}"

        self._poll(
            f"an address of Gateway {ms.namespace}/{ms.gateway} in {ctx}", self.settings.address_timeout_s, check,
            f"Check `kubectl describe gateway {ms.gateway} -n {ms.namespace} --context={ctx}`: the GatewayClass "
            f"{ms.gateway_class!r} exists only when multi-cluster Ingress is enabled for the fleet with {ctx}'s "
            "cluster as config membership (`gcloud container fleet ingress enable --config-membership=...`).",
        )
        self._progress(f"Gateway address {self.address}")

    def _wait_serving(self) -> None:
        url = self.base_url
        self._poll(
            f"{url} to serve GET /v1/models", self.settings.serve_timeout_s,
            lambda: self._probe(url, self.settings.probe_timeout_s),
            "A new load balancer can take 10 minutes to program; check the backend services' health in "
            "the Cloud console (the HealthCheckPolicy probes "
            f"{self.settings.manifests.health_path} on port {self.settings.manifests.container_port}).",
        )


class GkeEndpointDeployment(Deployment):
    """An existing GKE Gateway given as ``HOST:PORT`` (``--gke-endpoint``).

    It never calls the Kubernetes API: :meth:`start` only checks that the address answers
    ``GET /v1/models`` (bounded by ``probe_timeout_s``), and :meth:`stop` does nothing.
    """

    def __init__(
        self,
        system: SystemSpec,
        endpoint: str,
        *,
        probe: Probe = http_probe,
        probe_timeout_s: float = 30.0,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.system = system
        self.host, self.port = parse_gke_endpoint(endpoint)
        self._probe = probe
        self.probe_timeout_s = probe_timeout_s
        self.poll_interval_s = poll_interval_s

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Wait (at most ``probe_timeout_s``) until the gateway answers; raise if it never does."""
        deadline = time.monotonic() + self.probe_timeout_s
        while True:
            reason = self._probe(self.base_url, min(10.0, self.probe_timeout_s))
            if reason is None:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GkeTimeoutError(
                    f"{self.system.name}: --gke-endpoint {self.host}:{self.port} does not serve after "
                    f"{self.probe_timeout_s:g} s ({reason}). Check the address with `kubectl get gateway "
                    "-n NAMESPACE --context=CONFIG_CONTEXT` and that its Deployments are scaled up."
                )
            time.sleep(min(self.poll_interval_s, remaining))

    def stop(self) -> None:
        """Nothing to stop: the gateway belongs to whoever started it."""

    def endpoint_for(self, client_region: str) -> str:
        return self.base_url

    def telemetry_targets(self) -> list[dict[str, str]]:
        return []

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "gke-endpoint",
            "system": self.system.to_dict(),
            "endpoint": f"{self.host}:{self.port}",
            "versions": {"pytest_lbbench": __version__},
        }
