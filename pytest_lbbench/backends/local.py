"""The embedded ``local`` backend: every region on this machine, real processes on loopback.

For one system it starts:

* one simulated replica process per replica (``python -m pytest_lbbench.sim``), placed
  round-robin over the replica regions;
* its balancers: one Sky LB per replica region (``python -m pytest_lbbench.lb``), one global
  Sky LB, the real ``sglang-router`` binary, or a user's command (``--custom-system``, one
  instance or one per replica region), as the system's catalog entry says;
* one delay-link process (``python -m pytest_lbbench.netem``) holding a link for every
  connection that crosses a region boundary — client → entry point, LB → replica, LB → LB,
  router → replica — each paying the one-way delay of the RTT matrix in both directions
  (intra-region links pay the intra-region RTT).

Everything binds 127.0.0.1, is recorded in the process ledger, dies with its parent, and is
stopped in reverse order by :meth:`LocalDeployment.stop`. No pytest import here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator

from pytest_lbbench import __version__, interrupts
from pytest_lbbench.backends.base import Deployment, ExperimentSpec
from pytest_lbbench.backends.ledger import ProcessLedger, kill_leftovers, ledger_path
from pytest_lbbench.backends.registry import BackendContext
from pytest_lbbench.hostlag import read_component
from pytest_lbbench.procutil import (
    ManagedProcess,
    SpawnError,
    free_port,
    launch,
    python_module_argv,
    stop_all,
)
from pytest_lbbench.control import CONTROL_TOKEN_ENV, control_headers, new_control_token
from pytest_lbbench.custom import render_command
from pytest_lbbench.protocol import FAULT_PATH, MEMBERSHIP_PATH, RESET_PATH, GatewayMembership, LbMembership
from pytest_lbbench.regions import RttMatrix, place_round_robin
from pytest_lbbench.systems import BalancerKind, Placement, SystemSpec

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(frozen=True)
class LocalSettings:
    """How the local backend lays a system out on this machine."""

    replicas: int
    replica_regions: tuple[str, ...]
    client_regions: tuple[str, ...]
    log_dir: Path
    rtt: RttMatrix = field(default_factory=RttMatrix)
    replica_seed: int = 0  # seeds the simulated replicas (the plugin passes --seed)
    time_scale: float = 1.0
    model: str = DEFAULT_MODEL
    profile: str = "l4-llama3.1-8b"  # a registered engine profile or a JSON file (see pytest_lbbench.sim)
    engine_metrics: str = "sglang"  # gauges set at SGLang's logging points, or "live" every scrape
    startup_timeout_s: float = 60.0
    ledger: ProcessLedger | None = None
    #: The backend name written into results (a hook backend built on this one gives its own).
    backend_name: str = "local"
    #: ``--replica-url``: (region, URL) of running OpenAI-compatible servers to use as the
    #: replicas instead of simulated ones (``replicas`` and ``replica_regions`` then follow them).
    replica_urls: tuple[tuple[str, str], ...] = ()
    #: The run's control-plane secret: handed to our processes in their environment and sent
    #: with every control request; never in argv, a log or a result file (repr=False).
    control_token: str = field(default_factory=new_control_token, repr=False)


@dataclass(frozen=True)
class Component:
    """A server of the system: its name, region and address (ours listen on 127.0.0.1;
    ``--replica-url`` replicas are wherever the user runs them)."""

    name: str
    region: str
    port: int
    host: str = "127.0.0.1"
    external: bool = False  # not started by us: no crash drill, no reset endpoint

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _http_json(method: str, url: str, body: Any | None = None, timeout_s: float = 5.0,
               token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **control_headers(token)}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def models_answer(url: str, timeout_s: float = 5.0) -> str | None:
    """None when ``GET url/v1/models`` answers 200 (an OpenAI-compatible server is up), else why not."""
    status, body = _http_json("GET", f"{url}/v1/models", timeout_s=timeout_s)
    return None if status == 200 else f"GET /v1/models answered {status}: {str(body)[:200]}"


def parse_replica_url(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` of a ``--replica-url`` → (host, port); ``ValueError`` otherwise."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if parsed.scheme != "http" or not host or not port:
        raise ValueError(f"{url!r} is not http://HOST:PORT")
    return host, port


def wait_until(check: Callable[[], str | None], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll ``check`` (``None`` = ready, else the reason it is not) until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    reason = "not checked yet"
    while time.monotonic() < deadline:
        try:
            outcome = check()
        except (OSError, urllib.error.URLError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        if outcome is None:
            return
        reason = outcome
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s: {reason}")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


class LocalDeployment(Deployment):
    """One system on this machine (see the module docstring)."""

    def __init__(self, system: SystemSpec, settings: LocalSettings) -> None:
        self.system = system
        self.settings = settings
        self._procs: list[ManagedProcess] = []
        self._lock = threading.Lock()
        self.replicas: list[Component] = []
        self.lbs: list[Component] = []
        self.gateways: list[Component] = []
        self.router: Component | None = None
        self.customs: list[Component] = []  # --custom-system instances
        self._links: dict[str, dict[str, Any]] = {}  # name → spec (+ "port" once started)
        self._entry_for: dict[str, Component] = {}  # client region → entry component
        self._netem_control: str | None = None  # the delay links' control URL (stats, reset)
        self._crashed: dict[str, list[str]] = {}  # fault drills: name → argv to start it again
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"deployment of {self.system.name!r} is already started")
        self._started = True
        try:
            self._start_replicas()
            if self.system.kind is BalancerKind.SKY_LB:
                self._start_sky_lbs()
                self._choose_entries(self.lbs)
                self._start_links()
                self._send_membership()
            elif self.system.kind is BalancerKind.GATEWAY:
                self._start_gateways()
                self._choose_entries(self.gateways)
                self._start_links()
                self._send_gateway_membership()
            elif self.system.kind is BalancerKind.CUSTOM:
                self._plan_customs()
                self._choose_entries(self.customs)
                self._start_links()  # first: the command names its links' URLs
                self._start_customs()
            else:
                router_port = free_port()
                self.router = Component("sglang-router", self.system.entry_region, router_port)
                self._choose_entries([self.router])
                self._start_links()
                self._start_router()
            self._wait_endpoints()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        with self._lock:
            procs, self._procs = list(reversed(self._procs)), []
        try:
            stop_all(procs)  # all at once: Ctrl-C must end a run within seconds
        finally:
            if self.settings.ledger is not None:
                for proc in procs:
                    self.settings.ledger.stopped(proc.name, proc.pid)

    def reset(self) -> dict[str, Any]:
        """Give the next experiment the state of a fresh start (issue: isolated experiments).

        Replicas flush their prefix cache and zero their counters, our LBs and gateways clear
        their trees, queues, positions and counters (``POST /lbbench/reset``; each refuses with
        409 while it still holds a request, so we retry until the previous experiment's last
        cancelled request is gone), the real ``sglang-router``, which has no such endpoint, is
        restarted on its port, and the delay links zero their counters.

        A just-started system is reset too: a fresh LB's replica order follows the order in which
        its replicas first answered, a reset LB's the membership order, so only "always reset"
        gives every experiment the same starting state.
        """
        done: list[str] = []
        isolated = True
        for component in [*self.lbs, *self.gateways, *self.replicas]:
            if component.external:
                flushed = self._flush_external(component)
                isolated = isolated and flushed is not None
                done.append(f"{component.name} ({flushed or 'not reset: no cache-flush endpoint'})")
                continue
            self._post_reset(component)
            done.append(component.name)
        if self.router is not None:
            self._restart_router()
            done.append(f"{self.router.name} (restarted)")
        if self.customs:
            # A user's balancer has no reset endpoint: a fresh process is a fresh state.
            self._restart_customs()
            done.extend(f"{c.name} (restarted)" for c in self.customs)
        if self._netem_control is not None:
            status, reply = self._control("POST", f"{self._netem_control}/reset", {})
            if status != 200:
                raise RuntimeError(f"delay links refused to reset their counters (HTTP {status}): {reply}")
            done.append("netem")
        return {"isolated": isolated, "components": done}

    def _flush_external(self, replica: Component) -> str | None:
        """Empty a running engine's prefix cache: SGLang's (and our simulator's) ``POST
        /flush_cache``, else vLLM's ``POST /reset_prefix_cache``; None when neither answers 200.
        Its counters and its queue are its own: an external replica is never fully fresh."""
        for path in ("/flush_cache", "/reset_prefix_cache"):
            status, _ = _http_json("POST", f"{replica.url}{path}", timeout_s=10.0)
            if status == 200:
                return f"POST {path}"
        return None

    def _post_reset(self, component: Component, timeout_s: float = 30.0) -> None:
        def check() -> str | None:
            status, reply = self._control("POST", f"{component.url}{RESET_PATH}", {})
            if status == 200:
                return None
            if status == 409:  # still busy with the previous experiment's last requests
                return f"busy: {reply}"
            raise RuntimeError(f"{component.name} refused to reset (HTTP {status}): {reply}")

        wait_until(check, timeout_s, f"reset of {component.name}", interval_s=0.2)

    def _restart_router(self) -> None:
        self._stop_named({"sglang-router"})
        self._start_router()

    def _stop_named(self, names: set[str]) -> None:
        """Stop (and forget) our processes of these names: a balancer about to be started
        again in a fresh state, since it has no reset endpoint."""
        with self._lock:
            old = [p for p in self._procs if p.name in names]
            self._procs = [p for p in self._procs if p.name not in names]
        stop_all(old)
        if self.settings.ledger is not None:
            for proc in old:
                self.settings.ledger.stopped(proc.name, proc.pid)

    def host_lag(self) -> dict[str, dict[str, Any]]:
        """Every replica's, LB's, gateway's and the delay links' lag counters since the reset."""
        # External replicas run on their own clocks (real engines keep no lag counters).
        components = [(c, "replica") for c in self.replicas if not c.external]
        components += [(c, "sky_lb") for c in self.lbs] + [(c, "gateway") for c in self.gateways]
        out: dict[str, dict[str, Any]] = {c.name: read_component(kind, c.url) for c, kind in components}
        if self._netem_control is not None:
            out["netem"] = read_component("netem", self._netem_control)
        return out

    def process_ids(self) -> dict[str, int]:
        """Name → pid of every process this deployment runs now (for CPU accounting)."""
        with self._lock:
            return {proc.name: proc.pid for proc in self._procs if proc.alive()}

    def connection_counts(self) -> dict[str, int] | None:
        """Connections each delay link accepted since the last reset (every new connection of
        every hop passes one), or ``None`` when the links cannot be read."""
        if self._netem_control is None:
            return None
        try:
            status, stats = _http_json("GET", f"{self._netem_control}/stats")
        except OSError:
            return None
        if status != 200 or not isinstance(stats, dict):
            return None
        return {name: int(s.get("connections_total", 0)) for name, s in sorted(stats.items())}

    # ---- queries ---------------------------------------------------------------------------

    def endpoint_for(self, client_region: str) -> str:
        link = self._links.get(self._client_link_name(client_region))
        if link is None or "port" not in link:
            raise KeyError(f"no endpoint for client region {client_region!r}; started: {sorted(self._entry_for)}")
        return f"http://127.0.0.1:{link['port']}"

    def telemetry_targets(self) -> list[dict[str, str]]:
        # Direct addresses, not the delay links: the poller is the operator's monitoring, and
        # a WAN delay would only skew its snapshot.
        targets = [{"name": c.name, "url": c.url, "kind": "sky_lb"} for c in self.lbs]
        targets += [{"name": c.name, "url": c.url, "kind": "gateway"} for c in self.gateways]
        targets += [{"name": c.name, "url": c.url, "kind": "custom"} for c in self.customs]
        if self.router is not None:
            targets.append({"name": self.router.name, "url": self.router.url, "kind": "sglang_router"})
        targets += [{"name": c.name, "url": c.url, "kind": "replica"} for c in self.replicas]
        return targets

    def describe(self) -> dict[str, Any]:
        versions: dict[str, str | None] = {"pytest_lbbench": __version__}
        if self.system.kind is BalancerKind.SGLANG_ROUTER:
            versions["sglang_router"] = package_version("sglang-router")
        if self.system.kind is BalancerKind.CUSTOM:
            versions["custom_command"] = self.system.command
        return {
            "backend": self.settings.backend_name,
            "system": self.system.to_dict(),
            "replicas": [{"name": c.name, "region": c.region, **({"url": c.url} if c.external else {})}
                         for c in self.replicas],
            "balancers": [{"name": c.name, "region": c.region, "kind": kind}
                          for kind, group in (("sky_lb", self.lbs), ("gateway", self.gateways),
                                              ("custom", self.customs),
                                              ("sglang_router", [self.router] if self.router else []))
                          for c in group],
            "entry_points": {region: c.name for region, c in self._entry_for.items()},
            "links_one_way_ms": {name: spec["one_way_ms"] for name, spec in self._links.items()},
            # Every delay link (model-time one-way delay): what the TTFT decomposition subtracts.
            "links": [{k: spec[k] for k in ("name", "src_region", "target", "target_region", "one_way_ms")}
                      for spec in self._links.values()],
            "time_scale": self.settings.time_scale,
            "engine": {"profile": self.settings.profile, "metrics": self.settings.engine_metrics},
            "versions": versions,
        }

    # ---- steps -----------------------------------------------------------------------------

    def _control(self, method: str, url: str, body: Any | None = None, timeout_s: float = 5.0) -> tuple[int, Any]:
        """A control request to one of our processes, with the run's secret."""
        return _http_json(method, url, body, timeout_s, token=self.settings.control_token)

    def _launch(self, name: str, argv: list[str], wait_ready_line: bool = True,
                control: bool = True) -> ManagedProcess:
        # Our processes get the secret in their environment (argv is visible to ps); a
        # third-party balancer (control=False) never sees it.
        env = {**os.environ, CONTROL_TOKEN_ENV: self.settings.control_token} if control else None
        proc = launch(name, argv, log_path=self.settings.log_dir / f"{name}.log",
                      wait_ready_line=wait_ready_line, env=env)
        with self._lock:
            self._procs.append(proc)
        if self.settings.ledger is not None:
            self.settings.ledger.started(name, proc.pid)
        return proc

    def _launch_all(self, named_argv: list[tuple[str, list[str]]]) -> list[ManagedProcess]:
        """Start every process at once, then wait for each readiness line (they boot in parallel)."""
        procs = [self._launch(name, argv) for name, argv in named_argv]
        for proc in procs:
            proc.wait_ready(self.settings.startup_timeout_s)
        return procs

    def _start_replicas(self) -> None:
        if self.settings.replica_urls:
            self._use_external_replicas()
            return
        regions = place_round_robin(self.settings.replicas, self.settings.replica_regions)
        names = [f"replica-{i}-{region}" for i, region in enumerate(regions)]
        procs = self._launch_all([
            (
                name,
                python_module_argv(
                    "pytest_lbbench.sim", "--host", "127.0.0.1", "--port", "0",
                    "--name", name, "--model", self.settings.model, "--profile", self.settings.profile,
                    "--seed", str(self.settings.replica_seed), "--time-scale", str(self.settings.time_scale),
                    "--engine-metrics", self.settings.engine_metrics,
                ),
            )
            for name in names
        ])
        self.replicas = [
            Component(name, region, int(proc.info["port"]))
            for name, region, proc in zip(names, regions, procs)
        ]

    def _use_external_replicas(self) -> None:
        """``--replica-url``: running servers as the replicas, each checked to answer
        ``GET /v1/models`` (the client discovers the model there too)."""
        self.replicas = []
        for i, (region, url) in enumerate(self.settings.replica_urls):
            host, port = parse_replica_url(url)
            comp = Component(f"replica-{i}-{region}", region, port, host=host, external=True)
            wait_until(lambda: models_answer(comp.url), self.settings.startup_timeout_s,
                       f"--replica-url {region}={url}")
            self.replicas.append(comp)

    def _lb_regions(self) -> list[str]:
        if self.system.placement is Placement.GLOBAL:
            return [self.system.entry_region]
        return list(dict.fromkeys(c.region for c in self.replicas))

    def _start_sky_lbs(self) -> None:
        spec = self.system
        regions = self._lb_regions()
        names = [
            f"lb-{region}" if spec.placement is Placement.REGIONAL else "lb-global" for region in regions
        ]
        procs = self._launch_all([
            (
                name,
                python_module_argv(
                    "pytest_lbbench.lb", "--host", "127.0.0.1", "--port", "0", "--name", name,
                    "--region", region, "--lb-mode", str(spec.lb_mode),
                    "--replica-mode", str(spec.replica_mode), "--policy", str(spec.policy),
                    "--meta-policy", str(spec.meta_policy), "--time-scale", str(self.settings.time_scale),
                    *spec.balancer_args,
                ),
            )
            for name, region in zip(names, regions)
        ])
        self.lbs = [
            Component(name, region, int(proc.info["port"]))
            for name, region, proc in zip(names, regions, procs)
        ]

    def _choose_entries(self, entries: list[Component]) -> None:
        by_region = {c.region: c for c in entries}
        for client in self.settings.client_regions:
            nearest = self.settings.rtt.nearest(client, list(by_region))
            self._entry_for[client] = by_region[nearest]

    @staticmethod
    def _client_link_name(client_region: str) -> str:
        return f"client@{client_region}>entry"

    def _add_link(self, name: str, src_region: str, target: Component) -> None:
        # Model time: the delay process runs it at --time-scale (as the LBs and engines do).
        one_way = self.settings.rtt.one_way_ms(src_region, target.region)
        self._links[name] = {
            "name": name, "target_host": target.host, "target_port": target.port,
            "one_way_ms": round(one_way, 4), "src_region": src_region, "target": target.name,
            "target_region": target.region,
        }

    def _link_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._links[name]['port']}"

    def _start_links(self) -> None:
        for client, entry in self._entry_for.items():
            self._add_link(self._client_link_name(client), client, entry)
        balancers = self.lbs + self.gateways + self.customs + ([self.router] if self.router is not None else [])
        peer_group = self.lbs or self.customs  # LBs that talk to each other
        for balancer in balancers:
            for replica in self._replicas_of(balancer):
                self._add_link(f"{balancer.name}>{replica.name}", balancer.region, replica)
            for peer in peer_group:
                if peer is not balancer and balancer in peer_group:
                    self._add_link(f"{balancer.name}>{peer.name}", balancer.region, peer)
        specs = [
            {k: spec[k] for k in ("name", "target_host", "target_port", "one_way_ms")}
            for spec in self._links.values()
        ]
        # The links run at a higher priority: their delays are the benchmark's WAN, and on a
        # loaded 2-core machine a normal-priority link stretched a 100 ms RTT to ~104 ms.
        # Without root this only logs a warning.
        (proc,) = self._launch_all(
            [("netem", python_module_argv(
                "pytest_lbbench.netem", "--links-json", json.dumps(specs), "--nice", "-10",
                "--time-scale", str(self.settings.time_scale), "--control"))]
        )
        self._netem_control = f"http://127.0.0.1:{int(proc.info['control_port'])}"
        for name, port in proc.info["links"].items():
            self._links[name]["port"] = int(port)

    def _replicas_of(self, balancer: Component) -> list[Component]:
        if self.system.placement is not Placement.REGIONAL or self.router is not None:
            return list(self.replicas)
        return [r for r in self.replicas if r.region == balancer.region]

    def _send_membership(self, only: str | None = None) -> None:
        for lb in self.lbs:
            if only is not None and lb.name != only:
                continue
            membership = LbMembership(
                self_name=lb.name,
                lbs={
                    peer.name: (lb.url if peer is lb else self._link_url(f"{lb.name}>{peer.name}"))
                    for peer in self.lbs
                },
                replicas={r.name: self._link_url(f"{lb.name}>{r.name}") for r in self._replicas_of(lb)},
                regions={c.name: c.region for c in self.lbs + self.replicas},
            )
            status, reply = self._control("POST", f"{lb.url}{MEMBERSHIP_PATH}", membership.to_json())
            if status != 200:
                raise RuntimeError(f"{lb.name} refused its membership (HTTP {status}): {reply}")

    def _start_gateways(self) -> None:
        """One gateway front end per client region: the edge a global anycast L7 gives each client."""
        spec = self.system
        regions = list(self.settings.client_regions)
        names = [f"gke-{region}" for region in regions]
        procs = self._launch_all([
            (
                name,
                python_module_argv(
                    "pytest_lbbench.gateway", "--host", "127.0.0.1", "--port", "0", "--name", name,
                    "--region", region, "--time-scale", str(self.settings.time_scale),
                    *spec.balancer_args,
                ),
            )
            for name, region in zip(names, regions)
        ])
        self.gateways = [
            Component(name, region, int(proc.info["port"]))
            for name, region, proc in zip(names, regions, procs)
        ]

    def _send_gateway_membership(self, only: str | None = None) -> None:
        replica_regions = list(dict.fromkeys(r.region for r in self.replicas))
        for gw in self.gateways:
            if only is not None and gw.name != only:
                continue
            order = sorted(replica_regions, key=lambda r: (self.settings.rtt.rtt(gw.region, r), replica_regions.index(r)))
            membership = GatewayMembership(
                self_name=gw.name,
                backends={r.name: self._link_url(f"{gw.name}>{r.name}") for r in self.replicas},
                regions={r.name: r.region for r in self.replicas},
                region_order=tuple(order),
            )
            status, reply = self._control("POST", f"{gw.url}{MEMBERSHIP_PATH}", membership.to_json())
            if status != 200:
                raise RuntimeError(f"{gw.name} refused its membership (HTTP {status}): {reply}")

    def _start_router(self) -> None:
        assert self.router is not None
        worker_urls = [self._link_url(f"{self.router.name}>{r.name}") for r in self.replicas]
        argv = [
            sys.executable, "-m", "sglang_router.launch_router",
            "--host", "127.0.0.1", "--port", str(self.router.port),
            "--worker-urls", *worker_urls,
            *self.system.balancer_args,
            # Never the default 0.0.0.0:29000: parallel routers would collide on it.
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
            "--log-level", "warn",
        ]
        proc = self._launch("sglang-router", argv, wait_ready_line=False, control=False)
        try:
            wait_until(
                lambda: self._router_ready(proc, len(worker_urls)),
                self.settings.startup_timeout_s, "sglang-router",
            )
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\nRouter log ({proc.log_path}):\n{proc.log_tail()}") from exc

    def _router_ready(self, proc: ManagedProcess, workers: int) -> str | None:
        assert self.router is not None
        if not proc.alive():
            raise SpawnError(f"sglang-router exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
        # /health answers 200 before any worker is registered; /readiness does not.
        status, body = _http_json("GET", f"{self.router.url}/readiness", timeout_s=2.0)
        if status != 200:
            return f"/readiness answered {status}: {body}"
        healthy = body.get("healthy_workers") if isinstance(body, dict) else None
        if healthy is not None and healthy < workers:
            return f"{healthy} of {workers} workers healthy"
        return None

    def _plan_customs(self) -> None:
        """The instances of a ``--custom-system``: one in the entry region (``@global``) or one
        per replica region (``@regional``), each on a free port the command is told."""
        regions = self._lb_regions()
        regional = self.system.placement is Placement.REGIONAL
        self.customs = [
            Component(f"{self.system.name}-{region}" if regional else self.system.name, region, free_port())
            for region in regions
        ]

    def _custom_argv(self, comp: Component) -> list[str]:
        assert self.system.command is not None
        peers = [self._link_url(f"{comp.name}>{p.name}") for p in self.customs if p is not comp]
        argv = render_command(self.system.command, {
            "host": "127.0.0.1", "port": str(comp.port), "region": comp.region, "name": comp.name,
            "worker_urls": [self._link_url(f"{comp.name}>{r.name}") for r in self._replicas_of(comp)],
            "peer_urls": peers,
        })
        if not argv or shutil.which(argv[0]) is None:
            raise SpawnError(f"{self.system.name}: command not found: {argv[0] if argv else '(empty)'!r} "
                             f"(from --custom-system {self.system.name}={self.system.command!r}); give a "
                             "program on PATH or its path")
        return argv

    def _start_customs(self) -> None:
        procs = [self._launch(comp.name, self._custom_argv(comp), wait_ready_line=False, control=False)
                 for comp in self.customs]
        for comp, proc in zip(self.customs, procs):
            self._wait_custom(comp, proc)

    def _wait_custom(self, comp: Component, proc: ManagedProcess) -> None:
        """Until ``GET /v1/models`` answers 200; an exit or the start-up timeout stops the run
        with the command, its exit code and the tail of its log."""
        command = shlex.join(proc.argv)

        def ready() -> str | None:
            if not proc.alive():
                raise SpawnError(f"{comp.name} exited with code {proc.popen.returncode} before it was ready.\n"
                                 f"command: {command}\nlog ({proc.log_path}):\n{proc.log_tail()}")
            return models_answer(comp.url, timeout_s=2.0)

        try:
            wait_until(ready, self.settings.startup_timeout_s, comp.name)
        except TimeoutError as exc:
            raise SpawnError(f"{exc}\ncommand: {command}\nlog ({proc.log_path}):\n{proc.log_tail()}") from None

    def _restart_customs(self) -> None:
        self._stop_named({c.name for c in self.customs})
        self._start_customs()

    def _wait_endpoints(self) -> None:
        for region in self.settings.client_regions:
            url = self.endpoint_for(region)

            wait_until(lambda: models_answer(url), self.settings.startup_timeout_s,
                       f"{self.system.name} entry for {region}")


    # ---- fault drills (pytest_lbbench.faults) -----------------------------------------------

    def fault_targets(self) -> dict[str, list[str]]:
        """What a drill may name: components to crash, regions to partition, replicas to slow."""
        ours = [c.name for c in [*self.replicas, *self.lbs, *self.gateways, *self.customs] if not c.external]
        regions = sorted({c.region for c in [*self.replicas, *self.lbs, *self.gateways]}
                         | set(self.settings.client_regions))
        return {"crash": ours, "partition": regions, "slow": [r.name for r in self.replicas if not r.external]}

    def entry_components(self) -> dict[str, str]:
        return {client: comp.name for client, comp in self._entry_for.items()}

    def _partition_links(self, region: str) -> list[str]:
        # Into or out of the region; links inside it stay up (its LB still reaches its replicas).
        return [name for name, spec in self._links.items()
                if (spec["src_region"] == region) != (spec["target_region"] == region)]

    def partition_cuts_clients(self, region: str) -> list[str]:
        cut = set(self._partition_links(region))
        return [client for client in self._entry_for if self._client_link_name(client) in cut]

    def _component(self, name: str) -> Component:
        for comp in [*self.replicas, *self.lbs, *self.gateways, *self.customs]:
            if comp.name == name:
                return comp
        raise KeyError(f"{self.system.name} has no component {name!r}")

    def apply_fault(self, action: str, target: str, factor: float | None = None) -> dict[str, Any]:
        """One drill event. Call from the thread that started the deployment: a restarted
        process dies with the thread that launched it."""
        if action == "crash":
            return self._crash(target)
        if action == "restart":
            return self._restart(target)
        if action in ("partition", "heal"):
            links = self._partition_links(target)
            status, reply = self._control("POST", f"{self._netem_control}{FAULT_PATH}", {action: links})
            if status != 200:
                raise RuntimeError(f"delay links refused to {action} {target} (HTTP {status}): {reply}")
            return {"links": len(links), **(reply if isinstance(reply, dict) else {})}
        if action in ("slow", "unslow"):
            replica = self._component(target)
            status, reply = self._control("POST", f"{replica.url}{FAULT_PATH}",
                                          {"slowdown": factor if action == "slow" else 1.0})
            if status != 200:
                raise RuntimeError(f"{target} refused the slowdown (HTTP {status}): {reply}")
            return reply if isinstance(reply, dict) else {}
        raise ValueError(f"unknown fault action {action!r}")

    def _crash(self, name: str) -> dict[str, Any]:
        self._component(name)
        with self._lock:
            procs = [p for p in self._procs if p.name == name]
            self._procs = [p for p in self._procs if p.name != name]
        if not procs:
            return {"crashed": name, "note": "already down"}
        for proc in procs:
            proc.popen.kill()  # SIGKILL: a crash, not a shutdown
            proc.popen.wait(timeout=10)
            if self.settings.ledger is not None:
                self.settings.ledger.stopped(proc.name, proc.pid)
            self._crashed[name] = list(proc.argv)
        return {"crashed": name, "pid": procs[0].pid}

    def _restart(self, name: str) -> dict[str, Any]:
        comp = self._component(name)
        argv = self._crashed.pop(name, None)
        if argv is None:
            return {"restarted": name, "note": "was not down"}
        # The same port: every link and peer still points at it (SO_REUSEADDR lets us rebind).
        if comp in self.customs:
            self._wait_custom(comp, self._launch(name, argv, wait_ready_line=False, control=False))
            return {"restarted": name}
        argv = [str(comp.port) if i > 0 and argv[i - 1] == "--port" else a for i, a in enumerate(argv)]
        proc = self._launch(name, argv)
        proc.wait_ready(self.settings.startup_timeout_s)
        if comp in self.lbs:
            self._send_membership(only=name)
        elif comp in self.gateways:
            self._send_gateway_membership(only=name)
        return {"restarted": name, "pid": proc.pid}

    def restore(self) -> list[str]:
        """Undo every crash still in effect (the drill's end does the rest)."""
        return [self._restart(name)["restarted"] for name in list(self._crashed)]


class LocalClientLauncher:
    """Runs ``python -m pytest_lbbench.client`` once per client region, in parallel."""

    def __init__(self, log_dir: Path, ledger: ProcessLedger | None = None, rtt: RttMatrix | None = None) -> None:
        self.log_dir = log_dir
        self.ledger = ledger
        self.rtt = rtt or RttMatrix()

    def run(self, deployment: Deployment, spec: ExperimentSpec, metric_dir: Path,
            on_progress: Callable[[float, int], None] | None = None) -> dict[str, Path]:
        metric_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, Path] = {}
        procs: dict[str, ManagedProcess] = {}
        try:
            for region in spec.client_regions:
                out = metric_dir / f"{region}.json"
                out.unlink(missing_ok=True)
                outputs[region] = out
                index = self.rtt.shard_index(region)
                # Jobs live next to metric/ (not in it: the original readers glob metric/*/*.json).
                job_file = metric_dir.parent.parent / "plans" / spec.exp_name / f"{region}.json"
                spec.client_job(region, index, deployment.endpoint_for(region), out).write(job_file)
                argv = python_module_argv("pytest_lbbench.client", "--job-file", str(job_file))
                name = f"client-{spec.exp_name}-{region}"
                proc = launch(name, argv, log_path=self.log_dir / f"{name}.log", wait_ready_line=False)
                procs[region] = proc
                if self.ledger is not None:
                    self.ledger.started(name, proc.pid)
            limit = spec.deadline_s + 90.0
            started = time.monotonic()
            counted, counted_at = 0, float("-inf")
            while any(p.alive() for p in procs.values()):
                elapsed = time.monotonic() - started
                if elapsed > limit:
                    raise TimeoutError(
                        f"clients of {spec.exp_name} still running after {limit:.0f} s "
                        f"(warm-up + duration + drain {spec.deadline_s:.0f} s + 90 s); "
                        "they were killed. Partial records are in the .partial.jsonl files."
                    )
                if on_progress is not None:
                    # Every 0.1 s (fault drills act from here, in this thread); the partial files
                    # are counted at most every 0.5 s.
                    if elapsed - counted_at >= 0.5:
                        counted, counted_at = sum(_count_lines(o) for o in outputs.values()), elapsed
                    on_progress(elapsed, counted)
                interrupts.raise_if_pressed()  # one whose KeyboardInterrupt a finalizer dropped
                time.sleep(0.1)
        finally:
            try:
                stop_all(list(procs.values()))
            finally:
                if self.ledger is not None:
                    for proc in procs.values():
                        self.ledger.stopped(proc.name, proc.pid)
        for region, proc in procs.items():
            code = proc.popen.returncode
            if code != 0 or not outputs[region].exists():
                raise RuntimeError(
                    f"client for {region} exited with code {code}; log {proc.log_path}:\n{proc.log_tail()}"
                )
        return outputs


def _count_lines(result_file: Path) -> int:
    partial = result_file.with_name(result_file.name + ".partial.jsonl")
    try:
        with open(partial, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0



@contextlib.contextmanager
def telemetry_recorder(
    targets: list[dict[str, str]], output: Path, log_dir: Path, ledger: ProcessLedger | None = None
) -> Iterator[Path]:
    """Poll ``targets`` at 1 Hz into ``output`` (JSONL, truncated first) while the block runs."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("")
    name = f"telemetry-{output.stem}"
    proc = launch(
        name,
        python_module_argv("pytest_lbbench.telemetry", "--targets-json", json.dumps(targets),
                           "--output", str(output)),
        log_path=log_dir / f"{name}.log",
    )
    if ledger is not None:
        ledger.started(name, proc.pid)
    try:
        proc.wait_ready(30.0)
        yield output
    finally:
        proc.stop()
        if ledger is not None:
            ledger.stopped(name, proc.pid)


class LocalBackend:
    """The ``local`` backend: every system on this machine (simulated replicas, our balancers,
    the real ``sglang-router``, emulated WAN links); clients run here too."""

    name = "local"
    summary = "this machine: simulated replicas, real balancers and router, emulated WAN"
    scales_time = True

    #: One control secret per run (one backend object per run's registry), for all its systems;
    #: made on first use, so a subclass need not call ``__init__``.
    _control_token: str | None = None

    def control_token(self) -> str:
        """This run's control-plane secret (see :mod:`pytest_lbbench.control`)."""
        if self._control_token is None:
            self._control_token = new_control_token()
        return self._control_token

    def deployment(self, system: SystemSpec, ctx: BackendContext) -> Deployment:
        cfg = ctx.config
        return LocalDeployment(system, LocalSettings(
            replicas=cfg.replicas,
            replica_regions=cfg.replica_regions,
            client_regions=cfg.regions,
            log_dir=cfg.run_dir / "logs" / system.name,
            rtt=cfg.rtt,
            replica_seed=cfg.knobs.seed,
            time_scale=cfg.time_scale,
            profile=cfg.engine_profile,
            engine_metrics=cfg.engine_metrics,
            replica_urls=cfg.replica_urls,
            ledger=ctx.ledger,
            backend_name=self.name,
            control_token=self.control_token(),
        ))

    def client_launcher(self, system: SystemSpec, ctx: BackendContext) -> LocalClientLauncher:
        return LocalClientLauncher(ctx.config.run_dir / "logs" / system.name, ctx.ledger, ctx.config.rtt)

    def plan(self, ctx: BackendContext) -> str | None:
        return None  # processes on this machine: nothing to provision

    def cleanup(self, ctx: BackendContext) -> tuple[list[str], bool]:
        killed = kill_leftovers(ledger_path(ctx.config.output_dir))
        return [f"local: stopped {len(killed)} leftover process(es)"
                + (": " + ", ".join(str(e.get("name")) for e in killed) if killed else "")], False

    def close(self) -> list[str]:
        return []  # every deployment stops its own processes
