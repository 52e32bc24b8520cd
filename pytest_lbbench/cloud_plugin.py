"""Plugin level of the cloud backends: their options and validation, the ``sky`` and ``gke``
backends (:class:`SkyBackend`, :class:`GkeBackend`), and which backend or existing endpoint
serves a system.

:mod:`pytest_lbbench.cloud_options` declares the options; :mod:`pytest_lbbench.runconfig` builds the :class:`CloudConfig`
(validation and the sky preflight, ``pytest.UsageError`` on bad input) into the run's config,
whose backend registry holds one instance of each backend for the run. The fixtures ask
:func:`deployment_for` and :func:`client_launcher_for`: an existing endpoint (``--endpoint``,
``--service-names``, ``--gke-endpoint``) wins, the gateway goes to GKE with
``--gke-contexts``, everything else to ``--backend``. This module never imports
:mod:`pytest_lbbench.runconfig` (no import cycle).
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from pytest_lbbench.backends.gke.preflight import (
    GkePreflightError,
    check_gke_backend,
    parse_gke_contexts,
    parse_gke_endpoint,
)
from pytest_lbbench.backends.sky.endpoints import ANY_REGION, EndpointDeployment, parse_endpoint, service_endpoints
from pytest_lbbench.backends.sky.plan import Plan, build_plan
from pytest_lbbench.backends.sky.preflight import preflight
from pytest_lbbench.backends.sky.provision import (
    CloudLedger,
    Provisioner,
    Timeouts,
    cleanup,
    cloud_ledger_path,
)
from pytest_lbbench.backends.sky.render import (
    GKE_HINT,
    SkySettings,
    UnsupportedSystem,
    remote_result_path,
    write_yamls,
)
from pytest_lbbench.backends.registry import BackendContext, BackendUnavailable
from pytest_lbbench.protocol import CONTROL_TOKEN_ENV
from pytest_lbbench.systems import BalancerKind, SystemSpec

if TYPE_CHECKING:
    from pytest_lbbench.backends.base import ClientLauncher, Deployment
    from pytest_lbbench.backends.sky.deployment import SkySession
    from pytest_lbbench.runconfig import LbbenchConfig

CLOUDS = ("aws", "gcp", "azure", "kubernetes", "lambda", "runpod", "nebius", "oci")

_ACCELERATOR = re.compile(r"[A-Za-z0-9\-]+:[1-9][0-9]*")
_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,11}")


@dataclass(frozen=True)
class CloudConfig:
    """The validated cloud part of a run's configuration."""

    backend: str
    plan: bool
    keep_up: bool
    cleanup: bool
    endpoints: dict[str, dict[str, str]]  # system → client region (or "*") → URL
    service_names: dict[str, str]  # system → SkyServe service name
    settings: SkySettings
    max_parallel: int
    timeouts: Timeouts
    preflight_timeout_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    gke_contexts: tuple[str, ...] = ()
    gke_endpoint: str | None = None


def _fail(message: str) -> None:
    raise pytest.UsageError(message)


def _cloud_options(config: pytest.Config) -> dict[str, Any]:
    opt = config.getoption
    return {name: opt(name) for name in (
        "backend", "lbbench_plan", "keep_up", "lbbench_cleanup", "lbbench_endpoints", "service_names",
        "sky_cloud", "sky_accelerator", "sky_model", "sky_sglang_version", "sky_prefix", "sky_parallel",
        "sky_launch_timeout", "sky_ready_timeout", "sky_teardown_timeout", "sky_preflight_timeout",
        "gke_contexts", "gke_endpoint")}


def _sky_systems(cfg: LbbenchConfig) -> list[str]:
    return [s for s in cfg.systems if cfg.system(s).kind is not BalancerKind.GATEWAY]


def cloud_config(pytest_config: pytest.Config, lbbench_config: LbbenchConfig, *,
                 run_preflight: bool | None = None) -> CloudConfig:
    """Validate the cloud options (``pytest.UsageError`` with the fix on bad input).

    With ``--backend sky`` (and neither ``--lbbench-plan`` nor ``--lbbench-cleanup``) this also
    runs the bounded preflight: extra installed, credentials present, ``HF_TOKEN`` set.
    """
    o = _cloud_options(pytest_config)
    cfg = lbbench_config
    backend = o["backend"]  # a registered name (runconfig.build_config checked it)
    if o["keep_up"] and backend != "sky":
        _fail("--keep-up keeps cloud clusters running between runs and only applies to --backend sky; "
              "the local backend always stops its processes. Drop --keep-up or add --backend sky.")
    endpoints: dict[str, dict[str, str]] = {}
    for raw in o["lbbench_endpoints"]:
        try:
            system, region, url = parse_endpoint(raw)
        except ValueError as exc:
            _fail(f"--endpoint: {exc}.")
        if system not in cfg.catalog:
            _fail(f"--endpoint {raw!r}: unknown system {system!r}. Valid systems: {', '.join(cfg.catalog)}.")
        if region != ANY_REGION and region not in cfg.regions:
            _fail(f"--endpoint {raw!r}: {region!r} is not a client region of this run "
                  f"({', '.join(cfg.regions)}). Use SYSTEM=URL for every region, or add it to --regions.")
        endpoints.setdefault(system, {})[region] = url
    for system, urls in endpoints.items():
        if ANY_REGION not in urls and set(urls) != set(cfg.regions):
            missing = sorted(set(cfg.regions) - set(urls))
            _fail(f"--endpoint: system {system!r} has no URL for client region(s) {', '.join(missing)}. "
                  f"Give one per client region, or a single {system}=URL for all.")
    service_names: dict[str, str] = {}
    if o["service_names"]:
        targets = [s for s in _sky_systems(cfg) if s not in endpoints]
        names = [n.strip() for value in o["service_names"] for n in value.split(",") if n.strip()]
        if len(names) != len(targets):
            _fail(f"--service-names: got {len(names)} name(s) ({' '.join(names)}) for {len(targets)} "
                  f"SkyPilot system(s) ({' '.join(targets)}). Give exactly one service per system, in "
                  "--systems order (GKE and --endpoint systems excluded), or narrow --systems.")
        service_names = dict(zip(targets, names))
    if o["sky_cloud"] not in CLOUDS:
        _fail(f"--sky-cloud: unknown cloud {o['sky_cloud']!r}. Valid clouds: {', '.join(CLOUDS)}.")
    if not _ACCELERATOR.fullmatch(o["sky_accelerator"]):
        _fail(f"--sky-accelerator must be NAME:COUNT (e.g. L4:1, A10G:1), got {o['sky_accelerator']!r}.")
    if not _PREFIX.fullmatch(o["sky_prefix"]):
        _fail(f"--sky-prefix must be a lowercase letter then up to 11 lowercase letters, digits or "
              f"dashes (it starts every cluster name), got {o['sky_prefix']!r}.")
    if o["sky_parallel"] < 1:
        _fail(f"--sky-parallel must be at least 1, got {o['sky_parallel']!r}.")
    for name in ("sky_launch_timeout", "sky_ready_timeout", "sky_teardown_timeout", "sky_preflight_timeout"):
        if o[name] <= 0:
            _fail(f"--{name.replace('_', '-')} must be a positive number of seconds, got {o[name]!r}.")
    gke_contexts: tuple[str, ...] = ()
    gke_endpoint: str | None = None
    if o["gke_contexts"] and o["gke_endpoint"]:
        _fail("--gke-contexts provisions a gateway and --gke-endpoint uses an existing one; give one of them.")
    if o["gke_contexts"]:
        try:
            gke_contexts = parse_gke_contexts(o["gke_contexts"])
        except ValueError as exc:
            _fail(f"--gke-contexts: {exc}")
    if o["gke_endpoint"]:
        try:
            host, port = parse_gke_endpoint(o["gke_endpoint"])
        except ValueError as exc:
            _fail(f"--gke-endpoint: {exc}")
        gke_endpoint = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    settings = SkySettings(cloud=o["sky_cloud"], accelerator=o["sky_accelerator"], model=o["sky_model"],
                           sglang_version=o["sky_sglang_version"], prefix=o["sky_prefix"])
    result = CloudConfig(
        backend=backend, plan=o["lbbench_plan"], keep_up=o["keep_up"], cleanup=o["lbbench_cleanup"],
        endpoints=endpoints, service_names=service_names, settings=settings,
        max_parallel=o["sky_parallel"],
        timeouts=Timeouts(launch_s=o["sky_launch_timeout"], ready_s=o["sky_ready_timeout"],
                          teardown_s=o["sky_teardown_timeout"]),
        preflight_timeout_s=o["sky_preflight_timeout"],
        gke_contexts=gke_contexts,
        gke_endpoint=gke_endpoint,
    )
    if gke_contexts and not result.plan and not result.cleanup and run_preflight is not False:
        try:
            check_gke_backend(gke_contexts)
        except GkePreflightError as exc:
            _fail(f"--gke-contexts: {exc}")
    if run_preflight is None:
        run_preflight = backend == "sky" and not result.plan and not result.cleanup
    needs_sky = bool(service_names) or (backend == "sky")
    if run_preflight and needs_sky:
        provisions = backend == "sky" and any(
            s not in endpoints and s not in service_names for s in _sky_systems(cfg))
        check = preflight(settings.cloud, settings.model, timeout_s=result.preflight_timeout_s,
                          need_hf_token=provisions)
        if not check.ok:
            _fail("--backend sky cannot start: " + " ".join(check.problems)
                  + " (--lbbench-plan shows what would be created without any of this.)")
        result = CloudConfig(**{**result.__dict__, "notes": check.notes})
    return result


# ---- --lbbench-plan / --lbbench-cleanup -------------------------------------------------------

def make_plan(cloud_cfg: CloudConfig, cfg: LbbenchConfig, yaml_dir: Path | None = None) -> Plan:
    """The plan of this run (offline; see :mod:`pytest_lbbench.backends.sky.plan`)."""

    def client_argv(system: SystemSpec, region: str) -> list[str]:
        spec = cfg.experiment_spec(system.name, cfg.workloads[0])
        exp_name = spec.exp_name
        url = cloud_cfg.endpoints.get(system.name, {})
        entry = url.get(region) or url.get(ANY_REGION) or f"<entry of {system.name} nearest {region}>"
        index = cfg.rtt.shard_index(region)
        return spec.client_argv(region, index, entry, Path(remote_result_path(exp_name, region)))

    given = {s: ", ".join(f"{r}={u}" for r, u in urls.items()) for s, urls in cloud_cfg.endpoints.items()}
    given.update({s: f"SkyServe service {n}" for s, n in cloud_cfg.service_names.items()})
    systems = [cfg.system(s) for s in cfg.systems]
    plan = build_plan(systems, cloud_cfg.settings, replicas=cfg.replicas, replica_regions=cfg.replica_regions,
                      client_regions=cfg.regions, endpoints=given, client_argv=client_argv, yaml_dir=yaml_dir,
                      gke_plan=lambda system: gke_plan_note(cloud_cfg))
    if yaml_dir is not None:
        # The written LB and client YAMLs mount the staged package copy: make it exist, so that
        # `sky launch` of a written YAML by hand finds it.
        from pytest_lbbench.backends.sky.package import stage_package

        stage_package(cloud_cfg.settings.package_dir)
    plan.header = (
        f"pytest-lbbench plan (--backend sky, nothing provisioned): cloud {cloud_cfg.settings.cloud}, "
        f"{len(systems)} system(s), {cfg.replicas} replica(s) each over {', '.join(cfg.replica_regions)} "
        f"({cloud_cfg.settings.accelerator}, {cloud_cfg.settings.model}), clients in {', '.join(cfg.regions)}, "
        f"at most {cloud_cfg.max_parallel} SkyPilot requests in flight."
    )
    return plan


def gke_plan_note(cloud_cfg: CloudConfig) -> str:
    """What the run would do for ``gke_gateway`` (shown by ``--lbbench-plan``)."""
    if cloud_cfg.gke_endpoint:
        return f"not provisioned: existing GKE gateway {cloud_cfg.gke_endpoint} (--gke-endpoint)"
    from pytest_lbbench.backends.gke.render import GkeManifestSettings, render_all

    settings = GkeManifestSettings()
    contexts = cloud_cfg.gke_contexts or ("<context 1>", "<context 2>")
    lines = []
    for context, manifests in render_all(settings, contexts).items():
        kinds = ", ".join(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)
        lines.append(f"{context}: apply {kinds}; scale to {settings.replicas_per_cluster} "
                     f"x {settings.model} (1 L4 each), to 0 at the end")
    prefix = "GKE (--gke-contexts): " if cloud_cfg.gke_contexts else (
        "not provisioned: needs --gke-contexts CTX1,CTX2 (or --gke-endpoint HOST:PORT); with them: ")
    return prefix + "\n    ".join(lines) + "\n    (GPU nodes billed by GKE, not in the total)"


def sky_plan_text(cloud_cfg: CloudConfig, cfg: LbbenchConfig) -> str:
    """``--lbbench-plan`` for ``--backend sky``: the plan, with its task YAMLs written."""
    yaml_dir = cfg.output_dir / ".lbbench" / "sky-plan"
    plan = make_plan(cloud_cfg, cfg, yaml_dir)
    write_yamls(plan.components, yaml_dir)
    return plan.render() + f"\n\nTask YAMLs (no secrets inside) written to {yaml_dir}"


def _cleanup_sky(cloud_cfg: CloudConfig, output_dir: Path) -> tuple[list[str], bool]:
    ledger = CloudLedger(cloud_ledger_path(output_dir))
    live = ledger.live()
    if not live:
        return [f"sky: nothing recorded as running in {ledger.path}"], False
    check = preflight(cloud_cfg.settings.cloud, cloud_cfg.settings.model,
                      timeout_s=cloud_cfg.preflight_timeout_s, need_hf_token=False)
    if not check.ok:
        raise BackendUnavailable(
            f"{len(live)} cloud component(s) are recorded as running "
            f"({', '.join(sorted(live))}) but SkyPilot cannot be used here: " + " ".join(check.problems))
    from pytest_lbbench.backends.sky.sdk import RealSkySdk

    prov = Provisioner(RealSkySdk(), ledger, max_parallel=cloud_cfg.max_parallel, timeouts=cloud_cfg.timeouts,
                       progress=lambda line: print(f"sky: {line}", flush=True))
    removed, errors = cleanup(prov)
    lines = [f"sky: removed {len(removed)} component(s)" + (": " + ", ".join(removed) if removed else "")]
    lines += [f"sky: NOT removed: {error}" for error in errors]
    return lines, bool(errors)


def _cleanup_gke(output_dir: Path) -> tuple[list[str], bool]:
    """Scale the GKE Deployments a crashed run left up back to zero; lines, and whether any failed."""
    from pytest_lbbench.backends.gke.deployment import (
        gke_ledger_path,
        leftover_deployments,
        scale_leftovers_to_zero,
    )

    path = gke_ledger_path(output_dir)
    leftovers = leftover_deployments(path)
    if not leftovers:
        return [f"gke: nothing recorded as scaled up in {path}"], False
    try:
        from pytest_lbbench.backends.gke.kube import KubernetesClientApi

        kube = KubernetesClientApi()
    except ImportError as exc:
        raise BackendUnavailable(
            f"{len(leftovers)} GKE Deployment(s) are recorded as scaled up in {path}, but {exc}") from None
    report = scale_leftovers_to_zero(path, kube)
    lines = [f"gke: scaled {len(report.scaled)} Deployment(s) to zero"]
    lines += [f"gke: NOT scaled to zero: {item.context}/{item.namespace}/{item.name}: {error}"
              for item, error in report.failed]
    return lines, bool(report.failed)


# ---- the sky and gke backends ------------------------------------------------------------------

def _cloud(ctx: BackendContext) -> CloudConfig:
    cloud_cfg = ctx.config.cloud_options
    if cloud_cfg is None:
        raise RuntimeError("the cloud options of this run were not validated (build_config does it)")
    return cloud_cfg


class SkyBackend:
    """``--backend sky``: replicas, balancers and clients on SkyPilot clusters. One session
    (provisioner, client clusters) per run, held here and released by :meth:`close`."""

    name = "sky"
    summary = "real clouds through SkyPilot (needs pytest-lbbench[sky])"
    scales_time = False  # real engines on real clocks

    def __init__(self) -> None:
        self._session: SkySession | None = None
        self._lock = threading.Lock()
        self._control_token = secrets.token_urlsafe(32)

    def session(self, ctx: BackendContext) -> SkySession:
        """The run's SkyPilot session, created on first use."""
        from pytest_lbbench.backends.sky.deployment import SkySession, worker_id
        from pytest_lbbench.backends.sky.sdk import RealSkySdk

        cloud_cfg, cfg = _cloud(ctx), ctx.config
        with self._lock:
            if self._session is None:
                launch_secrets = {name: value for name in ("HF_TOKEN",) if (value := os.environ.get(name))}
                # The LB VMs' control secret, made for this run (never in a YAML or a log).
                launch_secrets[CONTROL_TOKEN_ENV] = self._control_token
                prov = Provisioner(RealSkySdk(), CloudLedger(cloud_ledger_path(cfg.output_dir)),
                                   max_parallel=cloud_cfg.max_parallel, timeouts=cloud_cfg.timeouts,
                                   progress=ctx.progress, keep_up=cloud_cfg.keep_up, secrets=launch_secrets)
                worker = worker_id()
                # Without xdist this process runs every selected system: provision them all in
                # one parallel wave. Under xdist each worker provisions only the systems it is given.
                names = [s for s in cfg.systems
                         if s not in cloud_cfg.endpoints and s not in cloud_cfg.service_names]
                systems = [cfg.system(s) for s in names] if not worker else []
                self._session = SkySession(prov, cloud_cfg.settings, systems=systems, replicas=cfg.replicas,
                                           replica_regions=cfg.replica_regions, client_regions=cfg.regions,
                                           rtt=cfg.rtt, worker=worker, control_token=self._control_token)
            return self._session

    def deployment(self, system: SystemSpec, ctx: BackendContext) -> Deployment:
        from pytest_lbbench.backends.sky.deployment import SkyDeployment

        try:
            return SkyDeployment(system, self.session(ctx))
        except UnsupportedSystem as exc:
            raise BackendUnavailable(f"{system.name}: {exc}" if GKE_HINT in str(exc) else str(exc)) from None

    def client_launcher(self, system: SystemSpec, ctx: BackendContext) -> ClientLauncher:
        from pytest_lbbench.backends.sky.deployment import SkyClientLauncher

        return SkyClientLauncher(self.session(ctx))

    def plan(self, ctx: BackendContext) -> str | None:
        return sky_plan_text(_cloud(ctx), ctx.config)

    def cleanup(self, ctx: BackendContext) -> tuple[list[str], bool]:
        return _cleanup_sky(_cloud(ctx), ctx.config.output_dir)

    def close(self) -> list[str]:
        with self._lock:
            session, self._session = self._session, None
        return session.close() if session is not None else []


class GkeBackend:
    """The GKE gateway (``gke_gateway``) on real GKE clusters (``--gke-contexts``), scaled to
    zero at the end; its clients run on this machine. Other systems it refuses."""

    name = "gke"
    summary = "the GKE gateway on real GKE clusters (--gke-contexts; needs pytest-lbbench[gke])"
    scales_time = False  # real engines on real clocks

    def deployment(self, system: SystemSpec, ctx: BackendContext) -> Deployment:
        cloud_cfg = _cloud(ctx)
        if system.kind is not BalancerKind.GATEWAY:
            raise BackendUnavailable(f"{system.name}: the gke backend runs the GKE gateway only; "
                                     "run this system with --backend local or sky")
        if not cloud_cfg.gke_contexts:
            raise BackendUnavailable(f"{system.name}: the gke backend needs --gke-contexts CTX1,CTX2 "
                                     "(or use an existing gateway with --gke-endpoint HOST:PORT)")
        from pytest_lbbench.backends.gke.deployment import GkeDeployment, GkeSettings

        return GkeDeployment(
            system,
            GkeSettings(contexts=cloud_cfg.gke_contexts, output_dir=ctx.config.output_dir,
                        hf_token=os.environ.get("HF_TOKEN") or None),
            on_progress=ctx.progress,
        )

    def client_launcher(self, system: SystemSpec, ctx: BackendContext) -> ClientLauncher:
        return ctx.config.backends.get("local").client_launcher(system, ctx)  # clients run here

    def plan(self, ctx: BackendContext) -> str | None:
        return "pytest-lbbench plan (--backend gke, nothing provisioned):\n  gke_gateway: " + gke_plan_note(_cloud(ctx))

    def cleanup(self, ctx: BackendContext) -> tuple[list[str], bool]:
        return _cleanup_gke(ctx.config.output_dir)

    def close(self) -> list[str]:
        return []  # each GkeDeployment scales itself to zero when stopped


def deployment_for(ctx: BackendContext, system_spec: SystemSpec) -> Deployment:
    """The Deployment of ``system_spec`` for this run.

    Existing endpoints (``--endpoint``, ``--gke-endpoint``, ``--service-names``) win over any
    backend; the gateway goes to the gke backend with ``--gke-contexts``; everything else to
    ``--backend``. :class:`BackendUnavailable` when the backend cannot run the system.
    """
    cloud_cfg, cfg = _cloud(ctx), ctx.config
    name = system_spec.name
    if name in cloud_cfg.endpoints:
        return EndpointDeployment(system_spec, cloud_cfg.endpoints[name], source="--endpoint")
    if system_spec.kind is BalancerKind.GATEWAY and cloud_cfg.gke_endpoint:
        from pytest_lbbench.backends.gke.deployment import GkeEndpointDeployment

        return GkeEndpointDeployment(system_spec, cloud_cfg.gke_endpoint)
    if system_spec.kind is BalancerKind.GATEWAY and cloud_cfg.gke_contexts:
        return cfg.backends.get("gke").deployment(system_spec, ctx)
    if name in cloud_cfg.service_names:
        from pytest_lbbench.backends.sky.sdk import RealSkySdk

        service = cloud_cfg.service_names[name]
        try:
            url = service_endpoints(RealSkySdk(), [service], timeout_s=cloud_cfg.preflight_timeout_s * 6)[service]
        except ValueError as exc:
            pytest.fail(str(exc), pytrace=False)
        return EndpointDeployment(system_spec, {ANY_REGION: url}, source=f"--service-names {service}")
    return cfg.backends.get(cfg.backend).deployment(system_spec, ctx)


def client_launcher_for(ctx: BackendContext, system_spec: SystemSpec) -> ClientLauncher:
    """What runs the clients of an experiment on ``system_spec``: ``--backend``'s launcher
    (sky: on client clusters, whoever serves the system; otherwise on this machine)."""
    return ctx.config.backends.get(ctx.config.backend).client_launcher(system_spec, ctx)


def progress_writer(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines of provisioning on the terminal (stderr under xdist workers)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if hasattr(config, "workerinput") or reporter is None or capture is None:
        return lambda line: print(f"[sky] {line}", file=sys.stderr, flush=True)

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"  [sky] {line}")

    return write
