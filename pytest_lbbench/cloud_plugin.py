"""Plugin level of the cloud backends: options, validation, ``--lbbench-plan``/``--lbbench-cleanup``,
and the choice of Deployment / ClientLauncher per system.

The plugin (:mod:`pytest_lbbench.plugin`) calls :func:`add_options` from ``pytest_addoption``,
:func:`cmdline_main` (prints the plan or cleans up; ``None`` = run normally), builds the
:class:`CloudConfig` at configure time (validation and the sky preflight, ``pytest.UsageError``
on bad input), and :func:`close_sessions` at unconfigure. The fixtures ask
:func:`deployment_for` and :func:`client_launcher_for` which Deployment and ClientLauncher serve
a system (``None`` means the local backend serves it).
"""

from __future__ import annotations

import atexit
import re
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
    DEFAULT_MAX_PARALLEL,
    CloudLedger,
    Provisioner,
    Timeouts,
    cleanup,
    cloud_ledger_path,
)
from pytest_lbbench.backends.sky.render import (
    DEFAULT_ACCELERATOR,
    DEFAULT_CLOUD,
    DEFAULT_MODEL,
    DEFAULT_SGLANG_VERSION,
    GKE_HINT,
    SkySettings,
    UnsupportedSystem,
    remote_result_path,
    write_yamls,
)
from pytest_lbbench.systems import BalancerKind, SystemSpec

if TYPE_CHECKING:
    from pytest_lbbench.backends.base import ClientLauncher, Deployment
    from pytest_lbbench.backends.ledger import ProcessLedger
    from pytest_lbbench.backends.sky.deployment import SkySession
    from pytest_lbbench.options import LbbenchConfig

BACKEND_CHOICES = ("local", "sky")
CLOUDS = ("aws", "gcp", "azure", "kubernetes", "lambda", "runpod", "nebius", "oci")
CLOUD_KEY = pytest.StashKey["CloudConfig"]()

_ACCELERATOR = re.compile(r"[A-Za-z0-9\-]+:[1-9][0-9]*")
_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,11}")


def add_options(group: Any) -> None:
    """Register the cloud options on the ``lbbench`` option group."""
    add = group.addoption
    add("--backend", dest="backend", default="local", choices=BACKEND_CHOICES, metavar="NAME",
        help="where systems run: local (this machine, simulated replicas) or sky (real clouds "
        "through SkyPilot; needs pytest-lbbench[sky]). Default: local")
    add("--lbbench-plan", dest="lbbench_plan", action="store_true", default=False,
        help="print what a --backend sky run would create (clusters, regions, instance types, "
        "commands) and its estimated hourly cost, then exit; provisions nothing")
    add("--keep-up", dest="keep_up", action="store_true", default=False,
        help="sky: leave clusters and services running at the end; a later run with the same "
        "--sky-prefix reuses them. Remove them with --lbbench-cleanup")
    add("--lbbench-cleanup", dest="lbbench_cleanup", action="store_true", default=False,
        help="remove everything the ledgers in --output-dir list as still running (local "
        "processes, sky clusters and services), then exit")
    add("--endpoint", dest="lbbench_endpoints", action="append", default=[], metavar="SYSTEM[@REGION]=URL",
        help="use an existing endpoint for SYSTEM instead of provisioning it; with @REGION only for "
        "that client region (repeatable)")
    add("--service-names", dest="service_names", nargs="+", default=None, metavar="NAME",
        help="existing SkyServe services, one per selected SkyPilot system in --systems order "
        "(as the original gen_cmd); their endpoints are used, nothing is provisioned")
    add("--gke-contexts", dest="gke_contexts", default=None, metavar="CTX1,CTX2",
        help="run gke_gateway on real GKE: kube contexts of the clusters (the first holds the "
        "Gateway); needs pip install 'pytest-lbbench[gke]'. Scaled to zero at the end")
    add("--gke-endpoint", dest="gke_endpoint", default=None, metavar="HOST:PORT",
        help="use an existing GKE gateway for gke_gateway, without touching it")
    add("--sky-cloud", dest="sky_cloud", default=DEFAULT_CLOUD, metavar="CLOUD",
        help=f"sky: cloud of every VM. Default: {DEFAULT_CLOUD}")
    add("--sky-accelerator", dest="sky_accelerator", default=DEFAULT_ACCELERATOR, metavar="NAME:N",
        help=f"sky: GPUs per replica. Default: {DEFAULT_ACCELERATOR}")
    add("--sky-model", dest="sky_model", default=DEFAULT_MODEL, metavar="HF_ID",
        help=f"sky: model the SGLang replicas serve. Default: {DEFAULT_MODEL}")
    add("--sky-sglang-version", dest="sky_sglang_version", default=DEFAULT_SGLANG_VERSION, metavar="VERSION",
        help=f"sky: SGLang version on the replicas. Default: {DEFAULT_SGLANG_VERSION}")
    add("--sky-prefix", dest="sky_prefix", default="lbb", metavar="PREFIX",
        help="sky: prefix of every cluster and service name (lowercase, <= 12 chars). Default: lbb")
    add("--sky-parallel", dest="sky_parallel", type=int, default=DEFAULT_MAX_PARALLEL, metavar="N",
        help="sky: SkyPilot requests in flight at once (a local API server runs 4 long requests "
        f"at a time). Default: {DEFAULT_MAX_PARALLEL}")
    add("--sky-launch-timeout", dest="sky_launch_timeout", type=float, default=3600.0, metavar="SECONDS",
        help="sky: deadline for all launches to finish. Default: 3600")
    add("--sky-ready-timeout", dest="sky_ready_timeout", type=float, default=3600.0, metavar="SECONDS",
        help="sky: deadline for every replica to be READY. Default: 3600")
    add("--sky-teardown-timeout", dest="sky_teardown_timeout", type=float, default=1800.0, metavar="SECONDS",
        help="sky: deadline for the teardown. Default: 1800")
    add("--sky-preflight-timeout", dest="sky_preflight_timeout", type=float, default=10.0, metavar="SECONDS",
        help="sky: bound on the start-up checks (API server health). Default: 10")


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
    backend = o["backend"]
    if backend not in BACKEND_CHOICES:
        _fail(f"--backend: unknown backend {backend!r}. Valid backends: {', '.join(BACKEND_CHOICES)}.")
    if o["lbbench_plan"] and backend != "sky":
        _fail("--lbbench-plan describes a cloud run, but --backend is 'local', which provisions "
              "nothing. Add --backend sky to see what a SkyPilot run would create.")
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
        names = list(o["service_names"])
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
    if backend == "sky":
        _check_sky_workloads(pytest_config, cfg)
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


def _check_sky_workloads(pytest_config: pytest.Config, cfg: LbbenchConfig) -> None:
    """What the remote clients cannot do yet: they build their plan on the client VM from the
    command line, so a workload that lives in a ``conftest.py`` or data on this machine's disk
    would not be there."""
    from pytest_lbbench.options import HOOK_WORKLOADS_KEY

    stash = getattr(pytest_config, "stash", None)
    hooked = [w for w in (stash.get(HOOK_WORKLOADS_KEY, []) if stash is not None else []) if w in cfg.workloads]
    if hooked:
        _fail(f"--backend sky runs the built-in workloads only; {', '.join(hooked)} comes from the "
              "pytest_lbbench_workloads hook, whose code the client VMs do not have. Run it with the "
              "local backend or against --endpoint URLs.")
    if cfg.dataset_path:
        _fail(f"--dataset-path {cfg.dataset_path} is a path on this machine, which the client VMs of "
              "--backend sky do not have. Use --dataset-source hf (the VMs download the data with "
              "HF_TOKEN) or the synthetic default.")


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


def cmdline_main(config: pytest.Config) -> int | None:
    """Handle ``--lbbench-plan`` and ``--lbbench-cleanup``: print, return the exit code.

    ``None`` means "run the tests normally". Call it from a ``tryfirst`` ``pytest_cmdline_main``.
    """
    if not (config.getoption("lbbench_plan") or config.getoption("lbbench_cleanup")):
        return None
    from pytest_lbbench.options import HOOK_WORKLOADS_KEY, build_config
    from pytest_lbbench.workloads.registry import unregister_workload

    try:
        return _plan_or_cleanup(config, build_config(config))
    finally:
        # pytest_configure/unconfigure never run on this path: undo the hook's registrations.
        for name in config.stash.get(HOOK_WORKLOADS_KEY, []):
            unregister_workload(name)


def _plan_or_cleanup(config: pytest.Config, cfg: LbbenchConfig) -> int:
    cloud_cfg = cloud_config(config, cfg, run_preflight=False)
    if cloud_cfg.plan:
        yaml_dir = cfg.output_dir / ".lbbench" / "sky-plan"
        plan = make_plan(cloud_cfg, cfg, yaml_dir)
        write_yamls(plan.components, yaml_dir)
        print(plan.render())
        print(f"\nTask YAMLs (no secrets inside) written to {yaml_dir}")
        return 0
    return _cleanup(cloud_cfg, cfg)


def _cleanup(cloud_cfg: CloudConfig, cfg: LbbenchConfig) -> int:
    from pytest_lbbench.backends.ledger import kill_leftovers, ledger_path

    killed = kill_leftovers(ledger_path(cfg.output_dir))
    print(f"local: stopped {len(killed)} leftover process(es)"
          + (": " + ", ".join(str(e.get("name")) for e in killed) if killed else ""))
    gke_failed = _cleanup_gke(cfg)
    ledger = CloudLedger(cloud_ledger_path(cfg.output_dir))
    live = ledger.live()
    if not live:
        print(f"sky: nothing recorded as running in {ledger.path}")
        return 1 if gke_failed else 0
    check = preflight(cloud_cfg.settings.cloud, cloud_cfg.settings.model,
                      timeout_s=cloud_cfg.preflight_timeout_s, need_hf_token=False)
    if not check.ok:
        raise pytest.UsageError(
            f"--lbbench-cleanup: {len(live)} cloud component(s) are recorded as running "
            f"({', '.join(sorted(live))}) but SkyPilot cannot be used here: " + " ".join(check.problems))
    from pytest_lbbench.backends.sky.sdk import RealSkySdk

    prov = Provisioner(RealSkySdk(), ledger, max_parallel=cloud_cfg.max_parallel, timeouts=cloud_cfg.timeouts,
                       progress=lambda line: print(f"sky: {line}", flush=True))
    removed, errors = cleanup(prov)
    print(f"sky: removed {len(removed)} component(s)" + (": " + ", ".join(removed) if removed else ""))
    for error in errors:
        print(f"sky: NOT removed: {error}")
    return 1 if errors or gke_failed else 0


def _cleanup_gke(cfg: LbbenchConfig) -> bool:
    """Scale the GKE Deployments a crashed run left up back to zero; ``True`` if any failed."""
    from pytest_lbbench.backends.gke.deployment import (
        gke_ledger_path,
        leftover_deployments,
        scale_leftovers_to_zero,
    )

    path = gke_ledger_path(cfg.output_dir)
    leftovers = leftover_deployments(path)
    if not leftovers:
        print(f"gke: nothing recorded as scaled up in {path}")
        return False
    try:
        from pytest_lbbench.backends.gke.kube import KubernetesClientApi

        kube = KubernetesClientApi()
    except ImportError as exc:
        raise pytest.UsageError(
            f"--lbbench-cleanup: {len(leftovers)} GKE Deployment(s) are recorded as scaled up in "
            f"{path}, but {exc}") from None
    report = scale_leftovers_to_zero(path, kube)
    print(f"gke: scaled {len(report.scaled)} Deployment(s) to zero")
    for item, error in report.failed:
        print(f"gke: NOT scaled to zero: {item.context}/{item.namespace}/{item.name}: {error}")
    return bool(report.failed)


# ---- deployments -------------------------------------------------------------------------------

_SESSIONS: dict[tuple[str, str], SkySession] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(cloud_cfg: CloudConfig, cfg: LbbenchConfig, progress: Callable[[str], None] | None) -> SkySession:
    from pytest_lbbench.backends.sky.deployment import SkySession, worker_id
    from pytest_lbbench.backends.sky.sdk import RealSkySdk

    key = (str(cfg.output_dir), cloud_cfg.settings.prefix)
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            secrets = {name: value for name in ("HF_TOKEN",) if (value := _env(name))}
            prov = Provisioner(RealSkySdk(), CloudLedger(cloud_ledger_path(cfg.output_dir)),
                               max_parallel=cloud_cfg.max_parallel, timeouts=cloud_cfg.timeouts,
                               progress=progress, keep_up=cloud_cfg.keep_up, secrets=secrets)
            worker = worker_id()
            # Without xdist this process runs every selected system: provision them all in one
            # parallel wave. Under xdist each worker provisions only the systems it is given.
            names = [s for s in cfg.systems if s not in cloud_cfg.endpoints and s not in cloud_cfg.service_names]
            systems = [cfg.system(s) for s in names] if not worker else []
            _SESSIONS[key] = SkySession(prov, cloud_cfg.settings, systems=systems, replicas=cfg.replicas,
                                        replica_regions=cfg.replica_regions, client_regions=cfg.regions,
                                        rtt=cfg.rtt, worker=worker)
        return _SESSIONS[key]


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name) or None


def close_sessions() -> list[str]:
    """Release every sky session's client clusters (and anything still up); returns errors."""
    errors: list[str] = []
    with _SESSIONS_LOCK:
        sessions = list(_SESSIONS.values())
        _SESSIONS.clear()
    for session in sessions:
        errors += session.close()
    return errors


atexit.register(close_sessions)


def deployment_for(cloud_cfg: CloudConfig, system_spec: SystemSpec, lbbench_config: LbbenchConfig,
                   ledger: ProcessLedger | None = None, *,
                   progress: Callable[[str], None] | None = None) -> Deployment | None:
    """The Deployment of ``system_spec`` for this run, or ``None`` for the local backend.

    Existing endpoints (``--endpoint``, ``--service-names``) win over any backend. For
    ``--backend sky`` the GKE gateway is skipped with the reason unless an endpoint is given.
    """
    name = system_spec.name
    if name in cloud_cfg.endpoints:
        return EndpointDeployment(system_spec, cloud_cfg.endpoints[name], source="--endpoint")
    if system_spec.kind is BalancerKind.GATEWAY and cloud_cfg.gke_endpoint:
        from pytest_lbbench.backends.gke.deployment import GkeEndpointDeployment

        return GkeEndpointDeployment(system_spec, cloud_cfg.gke_endpoint)
    if system_spec.kind is BalancerKind.GATEWAY and cloud_cfg.gke_contexts:
        import os

        from pytest_lbbench.backends.gke.deployment import GkeDeployment, GkeSettings

        return GkeDeployment(
            system_spec,
            GkeSettings(contexts=cloud_cfg.gke_contexts, output_dir=lbbench_config.output_dir,
                        hf_token=os.environ.get("HF_TOKEN") or None),
            on_progress=progress,
        )
    if name in cloud_cfg.service_names:
        from pytest_lbbench.backends.sky.sdk import RealSkySdk

        service = cloud_cfg.service_names[name]
        try:
            url = service_endpoints(RealSkySdk(), [service], timeout_s=cloud_cfg.preflight_timeout_s * 6)[service]
        except ValueError as exc:
            pytest.fail(str(exc), pytrace=False)
        return EndpointDeployment(system_spec, {ANY_REGION: url}, source=f"--service-names {service}")
    if cloud_cfg.backend != "sky":
        return None
    from pytest_lbbench.backends.sky.deployment import SkyDeployment

    try:
        return SkyDeployment(system_spec, _session(cloud_cfg, lbbench_config, progress))
    except UnsupportedSystem as exc:
        pytest.skip(f"{name}: {exc}" if GKE_HINT in str(exc) else str(exc))


def client_launcher_for(cloud_cfg: CloudConfig, lbbench_config: LbbenchConfig,
                        ledger: ProcessLedger | None = None, *,
                        progress: Callable[[str], None] | None = None) -> ClientLauncher | None:
    """``SkyClientLauncher`` for ``--backend sky`` (clients on client clusters), else ``None``."""
    if cloud_cfg.backend != "sky":
        return None
    from pytest_lbbench.backends.sky.deployment import SkyClientLauncher

    return SkyClientLauncher(_session(cloud_cfg, lbbench_config, progress))


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
