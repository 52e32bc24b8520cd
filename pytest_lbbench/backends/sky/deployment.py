"""``SkyDeployment`` and ``SkyClientLauncher``: the Deployment interface on real clouds.

One :class:`SkySession` per process owns the SDK adapter, the :class:`~.provision.Provisioner`
and the client clusters. The first :meth:`SkyDeployment.start` of the process provisions every
system the process will run *and* the client clusters in one parallel wave (the provisioning
dominates: GPU VMs, SGLang install, model download), so later systems are already READY when
their tests start; each :meth:`SkyDeployment.stop` then releases its own system, and
:meth:`SkySession.close` the client clusters.

Wiring after the replicas are READY:

* Sky LB systems: every LB gets ``POST /lbbench/membership`` with its replicas (own region, or
  all for a global LB) and every LB's public URL — what the original's controller sync did;
* ``sgl``: ``sky exec`` of ``sglang_router.launch_router`` with the replicas' URLs;
* each client region uses the entry point nearest to it (RTT matrix), as DNS did.

No pytest import here.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pytest_lbbench import __version__
from pytest_lbbench.backends.base import Deployment, ExperimentSpec
from pytest_lbbench.backends.sky.package import stage_package
from pytest_lbbench.backends.sky.provision import Op, ProvisionError, Provisioner
from pytest_lbbench.backends.sky.render import (
    SECRET_NAMES,
    RESULT_BEGIN,
    RESULT_END,
    Component,
    SkySettings,
    SystemLayout,
    UnsupportedSystem,
    client_cluster_name,
    client_job_task,
    remote_result_path,
    render_clients,
    render_system,
    router_run_task,
    to_yaml,
)
from pytest_lbbench.protocol import CONTROL_TOKEN_HEADER, LB_HEALTH_PATH, MEMBERSHIP_PATH, LbMembership
from pytest_lbbench.regions import RttMatrix
from pytest_lbbench.systems import BalancerKind, Placement, SystemSpec

HttpFn = Callable[[str, str, "Any | None", float, "Mapping[str, str] | None"], "tuple[int, Any]"]


def http_json(method: str, url: str, body: Any | None = None, timeout_s: float = 10.0,
              headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """One JSON request with a timeout; ``(status, parsed body)``, status 0 on a network error."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def worker_id() -> str:
    """The xdist worker id (``gw0``…) or ``""``: each worker gets its own client clusters."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


class SkySession:
    """Per-process state of the sky backend (see the module docstring)."""

    def __init__(self, provisioner: Provisioner, settings: SkySettings, *, systems: Sequence[SystemSpec],
                 replicas: int, replica_regions: Sequence[str], client_regions: Sequence[str],
                 rtt: RttMatrix | None = None, worker: str = "", http: HttpFn = http_json,
                 endpoint_timeout_s: float = 600.0, control_token: str | None = None) -> None:
        self.provisioner = provisioner
        # The run's control secret: the LB VMs get it as a SkyPilot secret, membership sends it.
        self.control_token = control_token
        self.settings = settings
        self.replicas = replicas
        self.replica_regions = tuple(replica_regions)
        self.client_regions = tuple(client_regions)
        self.rtt = rtt or RttMatrix()
        self.worker = worker
        self.http = http
        self.endpoint_timeout_s = endpoint_timeout_s
        self.layouts: dict[str, SystemLayout] = {}
        for system in systems:
            try:
                self.layouts[system.name] = render_system(system, settings, replicas, self.replica_regions)
            except UnsupportedSystem:
                continue  # refused when its deployment is created
        self.clients = render_clients(settings, self.client_regions, worker)
        # The package copy the LB and client VMs mount (the rendered YAMLs point at it).
        stage_package(settings.package_dir)
        self._up: set[str] = set()
        self._reused: set[str] = set()
        self._released: set[str] = set()  # systems whose tests are done: not provisioned again
        self._lock = threading.Lock()
        self.services: dict[str, Any] = {}

    def layout(self, system: SystemSpec) -> SystemLayout:
        if system.name not in self.layouts:
            self.layouts[system.name] = render_system(system, self.settings, self.replicas, self.replica_regions)
        return self.layouts[system.name]

    def ensure_up(self, system: str | None = None) -> None:
        """Provision everything not yet up — every known system not already released, ``system``
        and the client clusters — in one parallel wave."""
        with self._lock:
            self._released.discard(system or "")
            wanted: list[Component] = [c for name, layout in self.layouts.items()
                                       if name not in self._released for c in layout.components]
            wanted += list(self.clients)
            todo = [c for c in wanted if c.name not in self._up]
            if not todo:
                return
            result = self.provisioner.up(todo)
            self._up |= {c.name for c in todo}
            self._reused |= {c.name for c in result.reused}
            self.services.update(result.services)

    def was_reused(self, name: str) -> bool:
        return name in self._reused

    def release_system(self, system: SystemSpec) -> list[str]:
        layout = self.layouts.get(system.name)
        if layout is None:
            return []
        self._released.add(system.name)
        comps = [c for c in layout.components if c.name in self._up]
        errors = self.provisioner.release(comps)
        self._up -= {c.name for c in comps}
        return errors

    def close(self) -> list[str]:
        """Release the client clusters and anything still up (idempotent)."""
        with self._lock:
            comps = [c for layout in self.layouts.values() for c in layout.components if c.name in self._up]
            comps += [c for c in self.clients if c.name in self._up]
            errors = self.provisioner.release(comps)
            self._up.clear()
            return errors

    def cluster_url(self, cluster: str, port: int) -> str:
        # A status request like the others: retried through a transient error.
        url = self.provisioner.poll(f"endpoint {cluster}:{port}",
                                    lambda: self.provisioner.sdk.endpoint(cluster, port))
        if not url:
            raise ProvisionError(f"SkyPilot reports no public endpoint for port {port} on {cluster}")
        return str(url)


class SkyDeployment(Deployment):
    """One system on real clouds through SkyPilot (see the module docstring)."""

    def __init__(self, system: SystemSpec, session: SkySession) -> None:
        if system.kind is BalancerKind.GATEWAY:
            # Raises UnsupportedSystem with the GKE hint.
            render_system(system, session.settings, session.replicas, session.replica_regions)
        self.system = system
        self.session = session
        self.layout = session.layout(system)
        self.replica_urls: dict[str, list[str]] = {}  # region → replica URLs
        self.lb_urls: dict[str, str] = {}  # LB cluster → public URL
        self.router_url: str | None = None
        self._entry: dict[str, str] = {}
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"deployment of {self.system.name!r} is already started")
        self._started = True
        try:
            self.session.ensure_up(self.system.name)
            self._collect_replicas()
            if self.system.kind is BalancerKind.SKY_LB:
                self._wire_lbs()
            else:
                self._start_router()
            self._wait_entries()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            self.session.release_system(self.system)
        except Exception:  # stop() never raises; the ledger keeps what is still live
            pass

    # ---- queries ---------------------------------------------------------------------------

    def endpoint_for(self, client_region: str) -> str:
        try:
            return self._entry[client_region]
        except KeyError:
            raise KeyError(f"no endpoint for client region {client_region!r}; known: {sorted(self._entry)}") from None

    def telemetry_targets(self) -> list[dict[str, str]]:
        targets = [{"name": self.layout.lb_names[c], "url": url, "kind": "sky_lb"} for c, url in self.lb_urls.items()]
        if self.router_url:
            targets.append({"name": "sglang-router", "url": self.router_url, "kind": "sglang_router"})
        for region, urls in self.replica_urls.items():
            targets += [{"name": f"replica-{i}-{region}", "url": u, "kind": "replica"} for i, u in enumerate(urls)]
        return targets

    def describe(self) -> dict[str, Any]:
        s = self.session.settings
        return {
            "backend": "sky",
            "system": self.system.to_dict(),
            "cloud": s.cloud,
            "accelerator": s.accelerator,
            "model": s.model,
            "sglang_version": s.sglang_version,
            "replicas": {region: len(urls) for region, urls in self.replica_urls.items()},
            "components": [{"name": c.name, "kind": c.kind, "role": c.role, "region": c.region,
                            "count": c.count, "fingerprint": c.fingerprint,
                            "reused": self.session.was_reused(c.name)} for c in self.layout.components],
            "entry_points": dict(self._entry),
            "versions": {"pytest_lbbench": __version__, "code_hash": s.code_hash,
                         "sglang_router": s.effective_router_version()
                         if self.system.kind is BalancerKind.SGLANG_ROUTER else None},
        }

    # ---- steps -----------------------------------------------------------------------------

    def _collect_replicas(self) -> None:
        if not self.session.services:
            self.session.services.update(self.session.provisioner.wait_services_ready(list(self.layout.services)))
        for comp in self.layout.services:
            info = self.session.services.get(comp.name)
            if info is None:
                info = self.session.provisioner.wait_services_ready([comp])[comp.name]
                self.session.services[comp.name] = info
            self.replica_urls[comp.region] = [r.endpoint for r in info.replicas
                                              if r.status == "READY" and r.endpoint]

    def _wire_lbs(self) -> None:
        port = self.session.settings.lb_port
        for comp in self.layout.lbs:
            self.lb_urls[comp.name] = self.session.cluster_url(comp.name, port)
        names = self.layout.lb_names
        for comp in self.layout.lbs:
            # The LB starts after its cluster's detached setup (pip install), as the launch job's
            # run: the membership must wait for it to answer.
            self.session.provisioner.wait_setup(comp.name, names[comp.name])
            self._wait_http(f"{self.lb_urls[comp.name]}{LB_HEALTH_PATH}", f"{names[comp.name]} ({comp.name})")
            served = (self.replica_urls if self.system.placement is Placement.GLOBAL
                      else {comp.region: self.replica_urls.get(comp.region, [])})
            replica_map = {f"replica-{i}-{r}": u for r, urls in served.items() for i, u in enumerate(urls)}
            membership = LbMembership(
                self_name=names[comp.name],
                lbs={names[c]: url for c, url in self.lb_urls.items()},
                replicas=replica_map,
                regions={**{names[c.name]: c.region for c in self.layout.lbs},
                         **{f"replica-{i}-{r}": r for r, urls in served.items() for i, _ in enumerate(urls)}},
            )
            headers = {CONTROL_TOKEN_HEADER: self.session.control_token} if self.session.control_token else None
            for _attempt in range(3):  # a network error (status 0) is retried; a refusal is not
                status, reply = self.session.http(
                    "POST", f"{self.lb_urls[comp.name]}{MEMBERSHIP_PATH}", membership.to_json(), 30.0, headers)
                if status != 0:
                    break
                self.session.provisioner.sleep(min(5.0, self.session.provisioner.timeouts.poll_s))
            if status != 200:
                raise ProvisionError(f"{names[comp.name]} ({comp.name}) refused its membership "
                                     f"(HTTP {status}): {reply}")
        by_region = {comp.region: self.lb_urls[comp.name] for comp in self.layout.lbs}
        for client in self.session.client_regions:
            nearest = self.session.rtt.nearest(client, list(by_region)) if len(by_region) > 1 else next(iter(by_region))
            self._entry[client] = by_region[nearest]

    def _start_router(self) -> None:
        router = self.layout.router
        assert router is not None  # SGLANG_ROUTER systems always render one
        self.router_url = self.session.cluster_url(router.name, self.session.settings.router_port)
        status, _ = self.session.http("GET", f"{self.router_url}/readiness", None, 10.0, None)
        if not (self.session.was_reused(router.name) and status == 200):
            workers = [u for urls in self.replica_urls.values() for u in urls]
            yaml_text = to_yaml(router_run_task(self.system, self.session.settings, router.name, workers))
            self.session.provisioner.exec_job(router.name, yaml_text, f"start sglang-router on {router.name}")
        for client in self.session.client_regions:
            self._entry[client] = self.router_url

    def _wait_http(self, url: str, what: str) -> None:
        """Poll ``GET url`` until it answers 200, at most ``endpoint_timeout_s``."""
        prov = self.session.provisioner
        start = prov.clock()
        while True:
            status, body = self.session.http("GET", url, None, 10.0, None)
            if status == 200:
                return
            if prov.clock() - start > self.session.endpoint_timeout_s:
                raise ProvisionError(f"{self.system.name}: {what} not ready after "
                                     f"{self.session.endpoint_timeout_s:.0f} s (GET {url}: {status} {body})")
            prov.sleep(min(5.0, prov.timeouts.poll_s))

    def _wait_entries(self) -> None:
        for region, url in self._entry.items():
            self._wait_http(f"{url}/v1/models", f"entry {url} for {region}")


def _exec_submit(prov: Provisioner, cluster: str, yaml_text: str) -> Callable[[], str]:
    # HF_TOKEN travels with the job (never in its YAML): --dataset-source hf loads gated
    # datasets on the client VM.
    return lambda: prov.sdk.exec(yaml_text, cluster, prov.secrets_named(SECRET_NAMES))


# Terminal escapes (CSI sequences: colours, cursor moves) and the prefix a job's log puts before
# each line of its output: Ray's ``(task, pid=123)`` (or ``(<task name>, pid=…, ip=…)``,
# ``(head, rank=0, pid=…)``), coloured cyan (sky/backends/task_codegen.py names the task;
# Ray prints the prefix with colorama's Fore.CYAN … Style.RESET_ALL).
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LOG_LINE_PREFIX = re.compile(r"^\s*\([^()]*\bpid=\d+[^()]*\)\s?")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+")


def strip_log_line(line: str) -> str:
    """One job-log line as the job printed it: no colours, no ``(task, pid=N)`` prefix."""
    return _LOG_LINE_PREFIX.sub("", _ANSI_ESCAPE.sub("", line.replace("\r", "")), count=1)


def decode_result(log: str) -> bytes:
    """The result file a client job printed between the markers (gzip + base64).

    ``log`` is the job's log as SkyPilot returns it: every line may carry Ray's coloured
    ``(task, pid=N)`` prefix and terminal escapes, which are removed first.
    """
    lines = [strip_log_line(line).strip() for line in log.splitlines()]
    try:
        start = lines.index(RESULT_BEGIN) + 1
        end = lines.index(RESULT_END, start)
    except ValueError:
        raise ValueError("the client job printed no result (markers missing)") from None
    # Only base64 lines: another process's line that lands between the markers (Ray prints
    # its own ``(raylet) ...`` lines into the same log) is not part of the payload.
    payload = "".join(line for line in lines[start:end] if _BASE64_LINE.fullmatch(line))
    try:
        return gzip.decompress(base64.b64decode(payload, validate=True))
    except (ValueError, OSError, EOFError, zlib.error) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"the client job's result between the markers does not decode "
                         f"({type(exc).__name__}: {exc}); first line: {lines[start:start + 1]}") from None


#: Reads of a finished job's log before its result is taken as missing: SkyPilot marks a job
#: SUCCEEDED and only then waits 0.5 s for the streamed logs to land (sky/backends/
#: task_codegen.py), so the first read can come before the last lines.
RESULT_READS = 4
RESULT_REREAD_S = 2.0


def _read_result(prov: Provisioner, cluster: str, job_id: int) -> tuple[str, bytes]:
    """The job's log and the result decoded from it, reading the log again (up to
    :data:`RESULT_READS` times) while the result is not all there yet."""
    for attempt in range(1, RESULT_READS + 1):
        log = prov.sdk.job_log(cluster, job_id)
        try:
            return log, decode_result(log)
        except ValueError:
            if attempt == RESULT_READS:
                raise
            prov.sleep(RESULT_REREAD_S)
    raise AssertionError("unreachable")


def ran_code(result: bytes) -> str | None:
    """The code hash a client result says it was produced by (``None`` if it does not say)."""
    try:
        client = json.loads(result).get("client") or {}
    except (ValueError, AttributeError):
        return None
    value = client.get("code_hash") if isinstance(client, dict) else None
    return str(value) if value else None


class SkyClientLauncher:
    """Runs ``python -m pytest_lbbench.client`` on each client region's cluster via ``sky exec``."""

    def __init__(self, session: SkySession, setup_margin_s: float = 600.0) -> None:
        self.session = session
        self.setup_margin_s = setup_margin_s

    def run(self, deployment: Deployment, spec: ExperimentSpec, metric_dir: Path,
            on_progress: Callable[[float, int], None] | None = None) -> dict[str, Path]:
        self.session.ensure_up()
        prov = self.session.provisioner
        metric_dir.mkdir(parents=True, exist_ok=True)
        ops: list[Op] = []
        clusters: dict[str, str] = {}
        # The jobs (plans included) are built here and shipped as each exec's workdir: the VM
        # runs exactly what pytest planned, as the local backend's clients do.
        job_dir = metric_dir.parent.parent / "plans" / spec.exp_name
        for region in spec.client_regions:
            index = self.session.rtt.shard_index(region)
            job = spec.client_job(region, index, deployment.endpoint_for(region),
                                  Path(remote_result_path(spec.exp_name, region)))
            job.write(job_dir / f"{region}.json")
            cluster = client_cluster_name(self.session.settings, region, self.session.worker)
            clusters[region] = cluster
            prov.wait_setup(cluster, f"client {region}")
            yaml_text = to_yaml(client_job_task(spec.exp_name, region, job_dir))
            ops.append(Op(region, f"sky exec {cluster} ({spec.exp_name})",
                          _exec_submit(prov, cluster, yaml_text)))
        jobs = prov.runner.run(ops, prov.timeouts.launch_s, f"client jobs of {spec.exp_name}").results
        limit = spec.deadline_s + self.setup_margin_s
        outputs: dict[str, Path] = {}
        failures: list[str] = []
        for region, cluster in clusters.items():
            job_id = int(jobs[region])
            status = prov.wait_job(cluster, job_id, limit, f"client {region}",
                                   on_poll=(lambda t: on_progress(t, 0)) if on_progress else None)
            out = metric_dir / f"{region}.json"
            try:
                log, data = _read_result(prov, cluster, job_id)
                out.write_bytes(data)
                outputs[region] = out
            except (ValueError, OSError) as exc:
                failures.append(f"{region}: job {job_id} on {cluster} ended {status}; {exc}. "
                                f"Log tail:\n{log[-2000:]}")
                continue
            if status != "SUCCEEDED":
                failures.append(f"{region}: job {job_id} on {cluster} ended {status} (result kept)")
            ran = ran_code(data)
            if ran != self.session.settings.code_hash:
                failures.append(f"{region}: the client on {cluster} ran code {ran}, but this run ships "
                                f"{self.session.settings.code_hash} (result kept): a stale mount? "
                                "`pytest --lbbench-cleanup` removes the kept-up clusters.")
        if failures:
            raise RuntimeError("client runs failed:\n" + "\n".join(failures))
        return outputs
