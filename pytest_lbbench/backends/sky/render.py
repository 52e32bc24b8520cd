"""SkyPilot task YAMLs for every component of a system, rendered from the catalog.

What the original ran by hand (reference/skypilot-lb.md §4), as data:

* **replicas** — SGLang serving the model on one GPU per replica, through ``sky serve up``.
  Released SkyPilot treats ``resources.ordered`` as a *preference* list (it fills the first
  region it can), while the original's branch placed replicas round-robin over it; so the
  round-robin placement is made explicit here: one service per (system, region) with that
  region's share of the replicas, pinned to the region.
* **our load balancers** — ``python -m pytest_lbbench.lb`` on a CPU VM per replica region (or one
  global VM in the system's entry region), launched with ``sky launch``. They learn their
  replicas and peers through ``POST /lbbench/membership`` once the replicas are ready.
* **the sglang-router** (system ``sgl``) — a CPU VM in the entry region; its setup is launched
  with the rest, and the router itself is started with ``sky exec`` once the worker URLs exist.
* **clients** — one CPU VM per client region; each experiment is a ``sky exec`` of
  ``python -m pytest_lbbench.client --job-file`` (the job and its plan built here, shipped as
  the task's workdir) that prints its result file (gzip + base64) between markers, so results
  come back through the job log with a local or a remote API server.

The LB and client VMs mount a staged copy of this machine's package (:mod:`.package`): same
code, same version, and a content hash in every YAML that mounts it.

Secrets never appear in a rendered YAML: ``HF_TOKEN`` is declared as a ``secrets:`` entry with
no value, and its value is attached to the task object at launch time (see :mod:`.sdk`).
No pytest import and no ``sky`` import here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import pytest_lbbench
from pytest_lbbench.backends.sky.package import staged_path
from pytest_lbbench.identity import code_hash
from pytest_lbbench.protocol import CONTROL_TOKEN_ENV
from pytest_lbbench.regions import place_round_robin
from pytest_lbbench.systems import BalancerKind, Placement, SystemSpec

from pytest_lbbench.backends.sky.defaults import (  # noqa: F401 - re-exported for the backend's users
    DEFAULT_ACCELERATOR,
    DEFAULT_CLOUD,
    DEFAULT_MODEL,
    DEFAULT_SGLANG_VERSION,
)
# The router's behaviour is pinned by SGLANG_ROUTER_ORIGINAL_ARGS; its version follows the local
# install (the local backend runs the same binary), falling back to this one.
FALLBACK_ROUTER_VERSION = "0.3.6"
SECRET_NAMES = ("HF_TOKEN",)
LB_SECRET_NAMES = (CONTROL_TOKEN_ENV,)
"""Attached to LB tasks at launch (never in their YAML): the run's control secret."""

REMOTE_SRC = "~/lbbench-src"  # where the package is mounted on LB and client VMs
REMOTE_RESULTS = "lbbench-results"  # relative to the job's working directory (~)
RESULT_BEGIN = "LBBENCH_RESULT_BEGIN"
RESULT_END = "LBBENCH_RESULT_END"

# Remote Python dependencies of ``pytest_lbbench.lb`` and ``pytest_lbbench.client`` (checked by
# importing both: aiohttp and xxhash; uvloop is optional but what the local backend uses).
REMOTE_PIP = ("aiohttp>=3.9", "xxhash>=3.0", "uvloop>=0.19")

Kind = Literal["service", "cluster"]
Role = Literal["replicas", "lb", "router", "client"]


@dataclass(frozen=True)
class SkySettings:
    """Cloud knobs of the ``sky`` backend (defaults: the original benchmark's)."""

    cloud: str = DEFAULT_CLOUD
    accelerator: str = DEFAULT_ACCELERATOR
    model: str = DEFAULT_MODEL
    replica_cpus: str = "16+"  # with L4:1 on AWS this resolves to g6.4xlarge, as in the README
    disk_tier: str = "high"
    lb_cpus: str = "2+"  # m6i.large on AWS
    client_cpus: str = "8+"  # the original client.yaml
    sglang_version: str = DEFAULT_SGLANG_VERSION
    router_version: str = ""  # "" = the locally installed sglang-router, else FALLBACK_ROUTER_VERSION
    prefix: str = "lbb"
    replica_port: int = 8081
    lb_port: int = 8000
    router_port: int = 9001
    # Model download plus load on a fresh VM takes minutes; SkyServe must not kill the replica
    # while it happens.
    readiness_initial_delay_s: int = 1200
    package_dir: str = field(default_factory=lambda: str(Path(pytest_lbbench.__file__).resolve().parent))

    @property
    def code_hash(self) -> str:
        """The content hash of the package the LB and client VMs get (see :mod:`.package`)."""
        return code_hash(self.package_dir)

    @property
    def shipped_dir(self) -> str:
        """The local source of the VMs' package mount: the staged, stamped copy (its path
        holds the hash, so a code change changes the YAMLs and the reuse key)."""
        return str(staged_path(self.package_dir))

    def effective_router_version(self) -> str:
        if self.router_version:
            return self.router_version
        try:
            return version("sglang-router")
        except PackageNotFoundError:
            return FALLBACK_ROUTER_VERSION


@dataclass(frozen=True)
class Component:
    """One thing to provision: a SkyServe service or a cluster, with its task YAML."""

    kind: Kind
    name: str
    role: Role
    region: str
    task: Mapping[str, Any]
    system: str | None = None
    count: int = 1  # VMs: replicas of a service, else 1
    secrets: tuple[str, ...] = ()  # names whose values are attached at launch time

    @property
    def yaml(self) -> str:
        return to_yaml(self.task)

    @property
    def fingerprint(self) -> str:
        """Hash of the rendered YAML: a kept-up component is reused only if it is unchanged."""
        return hashlib.sha256(self.yaml.encode()).hexdigest()[:16]

    def ledger_fields(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "role": self.role, "region": self.region,
                "system": self.system, "count": self.count, "fingerprint": self.fingerprint}


# ---- names -----------------------------------------------------------------------------------

_NAME_OK = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def sky_name(*parts: str) -> str:
    """A cluster/service name SkyPilot accepts on every cloud: lowercase, digits and dashes."""
    raw = "-".join(p for p in parts if p)
    name = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "x" + name
    if not _NAME_OK.fullmatch(name):  # pragma: no cover - the substitutions above guarantee it
        raise ValueError(f"cannot build a valid SkyPilot name from {parts!r}")
    return name


def service_name(settings: SkySettings, system: str, region: str) -> str:
    return sky_name(settings.prefix, system, region)


def lb_cluster_name(settings: SkySettings, system: str, region: str | None) -> str:
    return sky_name(settings.prefix, system, "lb", region or "global")


def router_cluster_name(settings: SkySettings, system: str) -> str:
    return sky_name(settings.prefix, system, "router")


def client_cluster_name(settings: SkySettings, region: str, worker: str = "") -> str:
    return sky_name(settings.prefix, "client", region, worker)


# ---- YAML ------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    # A JSON string is a valid YAML double-quoted scalar (same escapes), so quoting every string
    # this way never turns "8000" into an int or "on" into a bool.
    return json.dumps(str(value))


def _key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, str) and "\n" in v:
                out.append(f"{pad}{_key(str(k))}: |")
                for line in v.rstrip("\n").split("\n"):
                    out.append(f"{pad}  {line.rstrip()}" if line.strip() else "")
            elif isinstance(v, Mapping) and v:
                out.append(f"{pad}{_key(str(k))}:")
                _emit(v, indent + 1, out)
            elif isinstance(v, (list, tuple)) and v:
                out.append(f"{pad}{_key(str(k))}:")
                _emit(v, indent + 1, out)
            elif isinstance(v, (Mapping, list, tuple)):
                out.append(f"{pad}{_key(str(k))}: {'{}' if isinstance(v, Mapping) else '[]'}")
            else:
                out.append(f"{pad}{_key(str(k))}: {_scalar(v)}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (Mapping, list, tuple)):
                raise TypeError("nested collections in lists are not used by our YAMLs")
            out.append(f"{pad}- {_scalar(item)}")
    else:
        raise TypeError(f"not a mapping or list: {value!r}")


def to_yaml(task: Mapping[str, Any]) -> str:
    """Block-style YAML of a task dict (strings quoted, multi-line strings as ``|`` blocks).

    A tiny emitter instead of PyYAML so that plans render without the ``sky`` extra.
    """
    out: list[str] = []
    _emit(task, 0, out)
    return "\n".join(out) + "\n"


# ---- tasks -----------------------------------------------------------------------------------

def _infra(settings: SkySettings, region: str) -> str:
    return f"{settings.cloud}/{region}"


def _remote_python_setup() -> str:
    return (
        "set -e\n"
        "# Our LB and client need only these; the package itself is mounted at "
        f"{REMOTE_SRC}.\n"
        f"python3 -m pip install --quiet {' '.join(shlex.quote(p) for p in REMOTE_PIP)}\n"
    )


def _code_envs(settings: SkySettings) -> dict[str, str]:
    # Which code the VM gets, in plain sight in the YAML (and in its fingerprint).
    return {"LBBENCH_VERSION": pytest_lbbench.__version__, "LBBENCH_CODE_HASH": settings.code_hash}


def _module_cmd(module: str, argv: Sequence[str]) -> str:
    return f"cd ~ && PYTHONPATH={REMOTE_SRC} python3 -u -m {module} " + " ".join(shlex.quote(a) for a in argv)


def replica_task(settings: SkySettings, name: str, region: str, replicas: int) -> dict[str, Any]:
    """The service YAML of one region's replicas (original: examples/serve/external-lb/llm.yaml)."""
    setup = (
        "set -e\n"
        "# As the original llm.yaml: a uv venv with SGLang and the flashinfer wheels, and the\n"
        "# safetensors downloaded in parallel with the install.\n"
        "pip install --quiet uv\n"
        "uv venv -p 3.10 ~/sglang-venv\n"
        "source ~/sglang-venv/bin/activate\n"
        "uv pip install huggingface-hub==0.30.2\n"
        "huggingface-cli download $MODEL_NAME --max-workers 32 --include '*.safetensors' "
        "> ~/hf-download.log 2>&1 &\n"
        "download=$!\n"
        "uv pip install setuptools==79.0.0 \"sglang[all]==$SGLANG_VERSION\" "
        "--find-links https://flashinfer.ai/whl/cu124/torch2.5/flashinfer-python\n"
        "wait $download\n"
        "huggingface-cli download $MODEL_NAME  # config and tokenizer files\n"
    )
    run = (
        "source ~/sglang-venv/bin/activate\n"
        f"python -m sglang.launch_server --model-path $MODEL_NAME --host 0.0.0.0 "
        f"--port {settings.replica_port} --tensor-parallel-size $SKYPILOT_NUM_GPUS_PER_NODE "
        "--enable-metrics --enable-cache-report --mem-fraction-static 0.8\n"
    )
    return {
        "name": name,
        "envs": {"MODEL_NAME": settings.model, "SGLANG_VERSION": settings.sglang_version},
        # Declared without a value: SkyPilot resolves it at launch from what the SDK adapter
        # attaches, so the token is never in this file.
        "secrets": {"HF_TOKEN": None},
        "service": {
            # Not /v1/chat/completions: that would be queued behind real requests (original comment).
            "readiness_probe": {"path": "/v1/models",
                                "initial_delay_seconds": settings.readiness_initial_delay_s},
            "replicas": replicas,
        },
        "resources": {
            "infra": _infra(settings, region),
            "accelerators": settings.accelerator,
            "cpus": settings.replica_cpus,
            "disk_tier": settings.disk_tier,
            "ports": settings.replica_port,
        },
        "setup": setup,
        "run": run,
    }


def lb_argv(system: SystemSpec, settings: SkySettings, name: str, region: str) -> list[str]:
    """Arguments of ``python -m pytest_lbbench.lb`` on an LB VM (public port, no parent watch)."""
    return [
        # The VM's public port is the LB's interface; 127.0.0.1 would make it unreachable.
        "--host", "0.0.0.0", "--port", str(settings.lb_port), "--name", name, "--region", region,
        "--lb-mode", str(system.lb_mode), "--replica-mode", str(system.replica_mode),
        "--policy", str(system.policy), "--meta-policy", str(system.meta_policy),
        # Replica and peer addresses are known only after every VM is up, after the LBs start,
        # so the LB cannot be told them here: any host may be named, and membership itself is
        # closed by the run's secret (LBBENCH_CONTROL_TOKEN, a SkyPilot secret of this task).
        "--allow-target-hosts", "0.0.0.0/0,::/0",
        *system.balancer_args,
    ]


def lb_task(system: SystemSpec, settings: SkySettings, cluster: str, region: str,
            lb_name: str, lb_region: str) -> dict[str, Any]:
    """An LB VM in ``region``; ``lb_region`` is the LB's own notion (``global`` for one global LB)."""
    return {
        "name": cluster,
        "envs": _code_envs(settings),
        "resources": {"infra": _infra(settings, region), "cpus": settings.lb_cpus,
                      "ports": settings.lb_port},
        "file_mounts": {f"{REMOTE_SRC}/pytest_lbbench": settings.shipped_dir},
        "setup": _remote_python_setup(),
        "run": _module_cmd("pytest_lbbench.lb", lb_argv(system, settings, lb_name, lb_region)) + "\n",
    }


def router_setup_task(settings: SkySettings, cluster: str, region: str) -> dict[str, Any]:
    """The router VM (original router.yaml) without its run: workers are known only later."""
    return {
        "name": cluster,
        "resources": {"infra": _infra(settings, region), "cpus": settings.lb_cpus,
                      "ports": settings.router_port},
        "setup": "set -e\n"
                 f"python3 -m pip install --quiet sglang-router=={settings.effective_router_version()}\n",
    }


def router_run_task(system: SystemSpec, settings: SkySettings, cluster: str,
                    worker_urls: Sequence[str]) -> dict[str, Any]:
    """The ``sky exec`` that starts the router once the replicas' URLs are known."""
    argv = ["--host", "0.0.0.0", "--port", str(settings.router_port), "--worker-urls",
            *worker_urls, *system.balancer_args]
    return {
        "name": f"{cluster}-run",
        "envs": {"WORKER_URLS": " ".join(worker_urls)},
        "run": "python3 -m sglang_router.launch_router " + " ".join(shlex.quote(a) for a in argv) + "\n",
    }


def client_cluster_task(settings: SkySettings, cluster: str, region: str) -> dict[str, Any]:
    return {
        "name": cluster,
        "envs": _code_envs(settings),
        "resources": {"infra": _infra(settings, region), "cpus": settings.client_cpus},
        "file_mounts": {f"{REMOTE_SRC}/pytest_lbbench": settings.shipped_dir},
        "setup": _remote_python_setup(),
    }


def remote_result_path(exp_name: str, region: str) -> str:
    return f"{REMOTE_RESULTS}/metric/{exp_name}/{region}.json"


def remote_job_file(region: str) -> str:
    """Where a client job finds its job file on the VM (relative to ``~``): ``sky exec`` syncs
    the task's ``workdir`` to ``~/sky_workdir`` (sky/skylet/constants.py, SKY_REMOTE_WORKDIR)."""
    return f"sky_workdir/{region}.json"


def client_job_task(exp_name: str, region: str, job_dir: str | Path) -> dict[str, Any]:
    """One experiment's client run on a client VM, from the job file built on this machine.

    ``job_dir`` holds ``<region>.json`` (:meth:`~pytest_lbbench.client.job.ClientJob.write`, its
    plan included): it goes to the VM as the task's workdir, so the VM runs exactly the plan
    pytest built (conftest workloads and local datasets included) and needs no dataset
    library. The result file comes back in the log, between markers.
    """
    out = remote_result_path(exp_name, region)
    client_argv = ["--job-file", remote_job_file(region)]
    emit = (
        'import base64, gzip, sys; data = open(sys.argv[1], "rb").read(); '
        f'print("{RESULT_BEGIN}"); print(base64.encodebytes(gzip.compress(data)).decode(), end=""); '
        f'print("{RESULT_END}")'
    )
    run = (
        "cd ~\n"
        f"mkdir -p {shlex.quote(str(Path(out).parent))}\n"
        + _module_cmd("pytest_lbbench.client", client_argv) + "\n"
        + "rc=$?\n"
        + f"if [ -f {shlex.quote(out)} ]; then python3 -c {shlex.quote(emit)} {shlex.quote(out)}; fi\n"
        + "exit $rc\n"
    )
    return {"name": sky_name("lbb", exp_name, region), "workdir": str(job_dir), "run": run}


# ---- a system's components -------------------------------------------------------------------

@dataclass(frozen=True)
class SystemLayout:
    """Everything a system needs on the cloud (clients are shared and rendered separately)."""

    system: SystemSpec
    services: tuple[Component, ...]
    lbs: tuple[Component, ...]
    router: Component | None
    lb_names: Mapping[str, str]  # LB cluster → the LB's membership name

    @property
    def components(self) -> tuple[Component, ...]:
        return self.services + self.lbs + ((self.router,) if self.router else ())


class UnsupportedSystem(ValueError):
    """The system cannot run on the sky backend (e.g. the GKE gateway)."""


GKE_HINT = "needs --gke-endpoint or --gke-contexts (GKE backend)"


def render_system(system: SystemSpec, settings: SkySettings, replicas: int,
                  replica_regions: Sequence[str]) -> SystemLayout:
    """Services, LB clusters and router cluster of one system."""
    if system.kind is BalancerKind.GATEWAY:
        raise UnsupportedSystem(
            f"system {system.name!r} is a GKE Multi-Cluster Gateway, which SkyPilot does not "
            f"provision; it {GKE_HINT}, or give its URL with --endpoint {system.name}=URL."
        )
    if system.kind is BalancerKind.CUSTOM:
        raise UnsupportedSystem(
            f"system {system.name!r} is a --custom-system, which runs on the local backend only; "
            f"on a cloud, start it yourself and give its URL with --endpoint {system.name}=URL.")
    regions = place_round_robin(replicas, list(replica_regions))
    per_region: dict[str, int] = {}
    for region in regions:
        per_region[region] = per_region.get(region, 0) + 1
    services = tuple(
        Component("service", service_name(settings, system.name, region), "replicas", region,
                  replica_task(settings, service_name(settings, system.name, region), region, n),
                  system=system.name, count=n, secrets=SECRET_NAMES)
        for region, n in per_region.items()
    )
    lbs: list[Component] = []
    lb_names: dict[str, str] = {}
    router = None
    if system.kind is BalancerKind.SKY_LB:
        lb_regions: list[str | None] = (
            [None] if system.placement is Placement.GLOBAL else list(per_region)
        )
        for lb_region in lb_regions:
            cluster = lb_cluster_name(settings, system.name, lb_region)
            lb_name = f"lb-{lb_region}" if lb_region else "lb-global"
            # A global LB runs in the entry region but serves every replica ("--region global").
            vm_region = lb_region or system.entry_region
            task = lb_task(system, settings, cluster, vm_region, lb_name, lb_region or "global")
            lbs.append(Component("cluster", cluster, "lb", vm_region, task, system=system.name,
                                 secrets=LB_SECRET_NAMES))
            lb_names[cluster] = lb_name
    else:
        cluster = router_cluster_name(settings, system.name)
        router = Component("cluster", cluster, "router", system.entry_region,
                           router_setup_task(settings, cluster, system.entry_region),
                           system=system.name)
    return SystemLayout(system, services, tuple(lbs), router, lb_names)


def render_clients(settings: SkySettings, client_regions: Sequence[str], worker: str = "") -> tuple[Component, ...]:
    """One client cluster per client region (shared by every system this process runs)."""
    return tuple(
        Component("cluster", client_cluster_name(settings, region, worker), "client", region,
                  client_cluster_task(settings, client_cluster_name(settings, region, worker), region))
        for region in client_regions
    )


def write_yamls(components: Sequence[Component], directory: Path) -> list[Path]:
    """Write each component's YAML to ``directory/<name>.yaml`` (no secret values inside)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for comp in components:
        path = directory / f"{comp.name}.yaml"
        path.write_text(comp.yaml)
        paths.append(path)
    return paths
