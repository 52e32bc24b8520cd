"""The sky provisioning state machine against a stand-in for SkyPilot's asynchronous API.

:class:`FakeSky` implements :class:`~pytest_lbbench.backends.sky.sdk.SkySdk` the way the 0.14
API server behaves: every call returns a request id at once; a request is PENDING until one of
the server's long-request workers is free, RUNNING for its duration, then SUCCEEDED, FAILED or
CANCELLED (``api_cancel``); a cancelled launch leaves a half-made (INIT) cluster. What needs a
cloud is stood in; SkyPilot's own rules are not: replica, service and job statuses are the real
``sky`` enums, and a service's status is computed by the real
``ServiceStatus.from_replica_statuses`` from its READY replicas only, as 0.14.1's serve_utils
does (so NO_REPLICA while replicas start). A failed replica is replaced by a new one, as SkyServe
does below target. A launched cluster's first job is its detached setup (SETTING_UP, then RUNNING
with a ``run``, SUCCEEDED without). Time is a fake clock advanced by ``sleep``. The tests against
a real local API server are in test_sky_api_server.py.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest

from pytest_lbbench.backends.sky.provision import (
    JOB_NOT_STARTED,
    JOB_TERMINAL,
    REPLICA_FAILED,
    REPLICA_LEAVING,
    REPLICA_UNRECOVERABLE_BEFORE_READY,
    SERVICE_FAILED,
    CloudLedger,
    ProvisionError,
    ProvisionTimeout,
    Provisioner,
    Timeouts,
    cleanup,
    cloud_ledger_path,
)
from pytest_lbbench.backends.sky.render import Component, SkySettings, render_clients, render_system
from pytest_lbbench.backends.sky.sdk import ReplicaInfo, RequestFailed, RequestState, ServiceInfo
from pytest_lbbench.systems import SYSTEMS

serve_state = pytest.importorskip("sky.serve.serve_state")
job_lib = pytest.importorskip("sky.skylet.job_lib")
ReplicaStatus = serve_state.ReplicaStatus
ServiceStatus = serve_state.ServiceStatus
JobStatus = job_lib.JobStatus

SECRET = "hf_SECRET_do_not_leak_123"


@dataclass
class Req:
    rid: str
    op: str
    target: str
    duration: float
    long: bool
    yaml: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    state: RequestState = RequestState.PENDING
    started: float | None = None
    error: str = ""
    value: Any = None


@dataclass
class Replica:
    replica_id: int
    started: float
    fails: bool  # this launch ends FAILED_PROVISION half-way
    failed_at: float | None = None


@dataclass
class Svc:
    name: str
    replicas: int
    created: float
    fail_launches: int = 0  # how many replica launches fail before they succeed (-1: all)
    controller_failed: bool = False
    app_fails: bool = False
    fleet: list[Replica] = field(default_factory=list)
    launches: int = 0


class FakeSky:
    """A stand-in API server (see the module docstring)."""

    def __init__(self, workers: int = 4, launch_s: float = 60.0, ready_s: float = 120.0) -> None:
        self.now = 0.0
        self.workers = workers
        self.launch_s = launch_s
        self.ready_s = ready_s
        self.reqs: dict[str, Req] = {}
        self.order: list[str] = []
        self.ids = itertools.count(1)
        self.clusters: dict[str, str] = {}
        self.services: dict[str, Svc] = {}
        self.jobs: dict[tuple[str, int], float] = {}  # (cluster, job) -> finish time
        self.fail: dict[str, str] = {}  # target -> error of its launch / serve up
        self.durations: dict[str, float] = {}
        self.failing_services: dict[str, int] = {}  # service -> replica launches that fail (-1: all)
        self.controller_failed: set[str] = set()
        self.app_failing: set[str] = set()  # every replica's app exits before it is ready
        self.setup_s = 40.0  # a cluster's detached setup job
        self.setup_done: dict[str, float] = {}  # cluster -> when its setup job finished
        self.has_run: dict[str, bool] = {}
        self.status_errors = 0  # the next N status requests fail (API server restarting)
        self.state_errors = 0  # the next N api_status polls raise (network blip)
        self.exec_times: list[tuple[float, str]] = []
        self.interrupt_at: float | None = None
        self.max_unfinished_long = 0
        self.cancelled: list[str] = []
        self.log: list[tuple[float, str, str]] = []  # (time, op, target)

    # -- clock ------------------------------------------------------------------------------
    def clock(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt
        if self.interrupt_at is not None and self.now >= self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        self._advance()

    # -- server -----------------------------------------------------------------------------
    def _submit(self, op: str, target: str, long: bool = True, yaml: str = "",
                secrets: Mapping[str, str] | None = None, duration: float | None = None) -> str:
        rid = f"req-{next(self.ids):04d}-{op}"
        dur = duration if duration is not None else self.durations.get(target, self.launch_s)
        self.reqs[rid] = Req(rid, op, target, dur if long else 0.0, long, yaml, dict(secrets or {}))
        self.order.append(rid)
        self.log.append((self.now, op, target))
        self._advance()
        return rid

    def _advance(self) -> None:
        running = [r for r in self.reqs.values() if r.long and r.state is RequestState.RUNNING]
        for rid in self.order:
            req = self.reqs[rid]
            if req.state is RequestState.PENDING and (not req.long or len(running) < self.workers):
                req.state, req.started = RequestState.RUNNING, self.now
                if req.long:
                    running.append(req)
            if req.state is RequestState.RUNNING and self.now - (req.started or 0) >= req.duration:
                self._finish(req)
                if req in running:
                    running.remove(req)
        unfinished = sum(1 for r in self.reqs.values() if r.long and not r.state.finished)
        self.max_unfinished_long = max(self.max_unfinished_long, unfinished)

    def _finish(self, req: Req) -> None:
        if req.op in ("launch", "serve_up") and req.target in self.fail:
            req.state, req.error = RequestFailed, self.fail[req.target]  # type: ignore[assignment]
            req.state = RequestState.FAILED
            if req.op == "launch":
                self.clusters[req.target] = "INIT"  # a failed launch can leave a VM behind
            return
        req.state = RequestState.SUCCEEDED
        if req.op == "launch":
            self.clusters[req.target] = "UP"
            # Job 1 runs the setup, detached: it is still running when launch returns.
            self.setup_done[req.target] = self.now + self.setup_s
            self.has_run[req.target] = "\nrun:" in "\n" + req.yaml
            req.value = 1
        elif req.op == "serve_up":
            replicas = int(req.yaml.split("replicas: ")[1].split("\n")[0])
            self.services[req.target] = Svc(req.target, replicas, self.now,
                                            fail_launches=self.failing_services.get(req.target, 0),
                                            controller_failed=req.target in self.controller_failed,
                                            app_fails=req.target in self.app_failing)
            req.value = f"http://{req.target}.controller:30001"
        elif req.op == "down":
            if self.clusters.pop(req.target, None) is None:
                req.state, req.error = RequestState.FAILED, f"ClusterDoesNotExist: {req.target} does not exist"
        elif req.op == "serve_down":
            if self.services.pop(req.target, None) is None:
                req.state, req.error = RequestState.FAILED, f"ValueError: No service {req.target}"
        elif req.op == "exec":
            job = 1 + len([k for k in self.jobs if k[0] == req.target]) + (req.target in self.setup_done)
            self.jobs[(req.target, job)] = self.now + 30.0
            self.exec_times.append((self.now, req.target))
            req.value = job

    def _replica_status(self, svc: Svc, rep: Replica) -> ReplicaStatus:
        age = self.now - rep.started
        if svc.app_fails and age >= self.ready_s * 0.75:
            # The app exited before it was ever ready: SkyServe's autoscaler stops scaling
            # (sky/serve/replica_managers.py, ReplicaStatusProperty.unrecoverable_failure).
            return ReplicaStatus.FAILED
        if rep.fails and age >= self.ready_s / 2:
            if rep.failed_at is None:
                rep.failed_at = rep.started + self.ready_s / 2
                self._launch_replica(svc, at=rep.failed_at)  # a failed launch is retried
            return ReplicaStatus.FAILED_PROVISION
        if age < self.ready_s / 2:
            return ReplicaStatus.PROVISIONING
        return ReplicaStatus.STARTING if age < self.ready_s else ReplicaStatus.READY

    def _launch_replica(self, svc: Svc, at: float) -> None:
        svc.launches += 1
        fails = svc.fail_launches < 0 or svc.launches <= svc.fail_launches
        svc.fleet.append(Replica(svc.launches, at, fails))

    def _service_info(self, svc: Svc) -> ServiceInfo:
        if not svc.fleet:
            for _ in range(svc.replicas):
                self._launch_replica(svc, at=svc.created)
        statuses: list[tuple[Replica, ReplicaStatus]] = []
        i = 0
        while i < len(svc.fleet):  # replacements may be appended while we look
            statuses.append((svc.fleet[i], self._replica_status(svc, svc.fleet[i])))
            i += 1
        if svc.controller_failed and self.now - svc.created > 30:
            status = ServiceStatus.CONTROLLER_FAILED
        elif self.now - svc.created < 10:
            status = ServiceStatus.CONTROLLER_INIT
        else:
            # sky/serve/serve_utils.py: set_service_status_and_active_versions_from_replica
            # passes the READY replicas only.
            status = ServiceStatus.from_replica_statuses(
                [st for _, st in statuses if st is ReplicaStatus.READY])
        reps = tuple(ReplicaInfo(r.replica_id, st.value,
                                 f"http://10.0.{r.replica_id}.1:8081" if st is ReplicaStatus.READY else None)
                     for r, st in statuses)
        ready = status is ServiceStatus.READY
        return ServiceInfo(svc.name, status.value, "http://ctrl:30001" if ready else None, reps)

    # -- SkySdk -----------------------------------------------------------------------------
    def launch(self, yaml_text: str, cluster: str, secrets: Mapping[str, str]) -> str:
        return self._submit("launch", cluster, yaml=yaml_text, secrets=secrets)

    def exec(self, yaml_text: str, cluster: str, secrets: Mapping[str, str]) -> str:
        return self._submit("exec", cluster, yaml=yaml_text, secrets=secrets, duration=5.0)

    def down(self, cluster: str) -> str:
        return self._submit("down", cluster, duration=20.0)

    def serve_up(self, yaml_text: str, service: str, secrets: Mapping[str, str]) -> str:
        return self._submit("serve_up", service, yaml=yaml_text, secrets=secrets)

    def serve_down(self, service: str) -> str:
        return self._submit("serve_down", service, duration=20.0)

    def _status_request(self, op: str, target: str, value: Any) -> str:
        rid = self._submit(op, target, long=False)
        if self.status_errors > 0:
            self.status_errors -= 1
            self.reqs[rid].state = RequestState.FAILED
            self.reqs[rid].error = "RuntimeError: Failed to refresh services status due to network error."
        else:
            self.reqs[rid].value = value
        return rid

    def serve_status(self, services: Sequence[str]) -> str:
        return self._status_request("serve_status", ",".join(services),
                                    [self._service_info(self.services[s]) for s in services if s in self.services])

    def cluster_status(self, clusters: Sequence[str], refresh: bool = False) -> str:
        self.refreshed = getattr(self, "refreshed", []) + [refresh]
        return self._status_request("status", ",".join(clusters),
                                    {c: self.clusters[c] for c in clusters if c in self.clusters})

    def endpoint(self, cluster: str, port: int) -> str:
        rid = self._submit("endpoint", cluster, long=False)
        self.reqs[rid].value = f"http://{cluster}.example:{port}"
        return rid

    def _job_status(self, cluster: str, job_id: int) -> JobStatus | None:
        if job_id == 1 and cluster in self.setup_done:  # the launch's setup job
            if self.now < self.setup_done[cluster]:
                return JobStatus.SETTING_UP
            return JobStatus.RUNNING if self.has_run.get(cluster) else JobStatus.SUCCEEDED
        finish = self.jobs.get((cluster, job_id))
        if finish is None:
            return None
        return JobStatus.SUCCEEDED if self.now >= finish else JobStatus.RUNNING

    def job_status(self, cluster: str, job_id: int) -> str:
        status = self._job_status(cluster, job_id)
        return self._status_request("job_status", cluster, None if status is None else status.value)

    def request_states(self, request_ids: Sequence[str]) -> dict[str, RequestState]:
        if self.state_errors > 0:
            self.state_errors -= 1
            raise ConnectionError("API server at http://127.0.0.1:46580 is not reachable")
        self._advance()
        return {rid: self.reqs[rid].state for rid in request_ids}

    def result(self, request_id: str) -> Any:
        req = self.reqs[request_id]
        assert req.state.finished, "result() of an unfinished request would block"
        if req.state is RequestState.FAILED:
            raise RequestFailed(req.error)
        if req.state is RequestState.CANCELLED:
            raise RequestFailed("request was cancelled")
        return req.value

    def cancel(self, request_ids: Sequence[str]) -> None:
        for rid in request_ids:
            req = self.reqs[rid]
            if not req.state.finished:
                if req.op == "launch" and req.state is RequestState.RUNNING:
                    self.clusters[req.target] = "INIT"  # half-provisioned
                req.state = RequestState.CANCELLED
                self.cancelled.append(rid)

    def job_log(self, cluster: str, job_id: int) -> str:
        return ""

    # -- helpers for assertions -------------------------------------------------------------
    def live(self) -> set[str]:
        return set(self.clusters) | set(self.services)

    def submitted(self, op: str) -> list[str]:
        return [target for _, o, target in self.log if o == op]


def components(n_systems: int = 2) -> list[Component]:
    settings = SkySettings(prefix="t")
    comps: list[Component] = []
    for name in ["sky_push_pull", "sgl", "sky_sgl_enhanced"][:n_systems]:
        comps += render_system(SYSTEMS[name], settings, 4, ["us-east-2", "ap-northeast-1"]).components
    comps += render_clients(settings, ["us-east-2", "ap-northeast-1"])
    return comps


def make(tmp_path: Path, fake: FakeSky, *, max_parallel: int = 3, keep_up: bool = False,
         lines: list[str] | None = None, timeouts: Timeouts | None = None) -> Provisioner:
    out = lines if lines is not None else []
    return Provisioner(
        fake, CloudLedger(cloud_ledger_path(tmp_path)), max_parallel=max_parallel,
        timeouts=timeouts or Timeouts(launch_s=3600, ready_s=3600, teardown_s=600, poll_s=5),
        progress=out.append, keep_up=keep_up, secrets={"HF_TOKEN": SECRET},
        clock=fake.clock, sleep=fake.sleep,
    )


def test_submission_is_parallel_and_bounded(tmp_path: Path) -> None:
    fake = FakeSky(workers=8, launch_s=60)
    comps = components()
    prov = make(tmp_path, fake, max_parallel=3)
    result = prov.up(comps)
    assert {c.name for c in result.created} == {c.name for c in comps}
    assert fake.max_unfinished_long == 3  # bounded by max_parallel, and it did run 3 at once
    first_three = [t for t, op, _ in fake.log if op in ("launch", "serve_up")][:3]
    assert first_three == [0.0, 0.0, 0.0]  # submitted together, not one after another
    # n components in ceil(n/3) waves of ~60 s, far less than n × 60 s sequentially.
    waves = -(-len(comps) // 3)
    assert fake.now < (waves + 1) * 60 + fake.ready_s + 30
    assert fake.now < len(comps) * 60
    assert fake.live() == {c.name for c in comps}


def test_api_server_queue_shows_pending_then_running(tmp_path: Path) -> None:
    fake = FakeSky(workers=1, launch_s=30)
    lines: list[str] = []
    comps = [c for c in components(1) if c.kind == "cluster"][:3]
    make(tmp_path, fake, max_parallel=3, lines=lines).up(comps)
    # With one server worker, the 2nd and 3rd request wait PENDING before they run.
    assert any(comps[2].name in l and l.endswith("running") for l in lines)
    assert fake.max_unfinished_long == 3
    assert fake.now >= 90  # serialised by the server, not by us


def test_teardown_after_success(tmp_path: Path) -> None:
    fake = FakeSky()
    comps = components()
    prov = make(tmp_path, fake)
    prov.up(comps)
    assert prov.release(comps) == []
    assert fake.live() == set()
    assert prov.ledger.live() == {}
    assert set(fake.submitted("serve_down")) == {c.name for c in comps if c.kind == "service"}


def test_launch_failure_cancels_in_flight_and_tears_down(tmp_path: Path) -> None:
    fake = FakeSky(workers=8, launch_s=60)
    comps = components()
    bad = next(c for c in comps if c.role == "lb")
    fake.fail[bad.name] = "ResourcesUnavailableError: no m6i.large in ap-northeast-1"
    fake.durations[bad.name] = 10  # fails while the others are still running
    prov = make(tmp_path, fake, max_parallel=4)
    with pytest.raises(ProvisionError, match="ResourcesUnavailableError"):
        prov.up(comps)
    assert fake.cancelled, "requests in flight must be cancelled"
    assert fake.live() == set()  # including the half-made cluster of the failed launch
    assert prov.ledger.live() == {}
    not_submitted = {c.name for c in comps} - set(fake.submitted("launch") + fake.submitted("serve_up"))
    assert not_submitted, "nothing more is submitted after the failure"


def test_a_service_whose_replicas_are_still_starting_is_waited_for(tmp_path: Path) -> None:
    # 25 minutes of PROVISIONING / STARTING (VM, SGLang install, model download): SkyPilot
    # reports the service NO_REPLICA the whole time, which is not a failure.
    fake = FakeSky(workers=8, ready_s=1500)
    lines: list[str] = []
    comps = components(1)
    prov = make(tmp_path, fake, max_parallel=8, lines=lines)
    result = prov.up(comps)
    assert fake.now >= 1500
    svc = next(c for c in comps if c.kind == "service")
    assert f"service {svc.name}: NO_REPLICA, 0/{svc.count} replicas ready" in lines
    assert result.services[svc.name].status == "READY"
    assert all(r.status == "READY" for r in result.services[svc.name].replicas)
    assert fake.live() == {c.name for c in comps}


def test_a_failed_replica_is_replaced_and_waited_for(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components(1)
    svc = next(c for c in comps if c.kind == "service")
    fake.failing_services[svc.name] = 1  # the first replica launch fails, SkyServe relaunches
    lines: list[str] = []
    prov = make(tmp_path, fake, max_parallel=8, lines=lines)
    result = prov.up(comps)
    info = result.services[svc.name]
    assert sum(r.status == "READY" for r in info.replicas) == svc.count
    assert any(r.status == "FAILED_PROVISION" for r in info.replicas)  # still listed, as SkyServe does
    assert any("replica 1 FAILED_PROVISION; SkyServe replaces it" in line for line in lines)


def test_a_service_whose_app_fails_before_it_was_ever_ready_fails_at_once(tmp_path: Path) -> None:
    # SkyServe stops scaling then (no replacement comes): no grace time is waited for.
    fake = FakeSky(workers=8)
    comps = components(1)
    svc = next(c for c in comps if c.kind == "service")
    fake.app_failing.add(svc.name)
    prov = make(tmp_path, fake, max_parallel=8,
                timeouts=Timeouts(launch_s=3600, ready_s=7200, teardown_s=600, poll_s=5, replica_grace_s=900))
    with pytest.raises(ProvisionError, match=f"service '{svc.name}' failed: replica .* is FAILED before any "
                                             "replica was ever READY, so SkyServe stops launching"):
        prov.up(comps)
    assert fake.now < fake.ready_s + 60  # at the first poll that saw it, not after the grace time
    assert fake.live() == set()
    assert prov.ledger.live() == {}


def test_a_service_whose_replicas_are_not_replaced_fails_after_the_grace_time(tmp_path: Path) -> None:
    # Launches fail (FAILED_PROVISION, which SkyServe recovers from, so it is waited for), but no
    # replacement comes: the wait ends after the grace time, not the ready timeout.
    fake = FakeSky(workers=8)
    comps = components(1)
    svc = next(c for c in comps if c.kind == "service")
    fake.failing_services[svc.name] = -1
    first_launch = fake._launch_replica

    def launch_only_the_first_wave(service: Svc, at: float) -> None:
        if service.launches < svc.count:
            first_launch(service, at)

    fake._launch_replica = launch_only_the_first_wave  # type: ignore[method-assign]
    prov = make(tmp_path, fake, max_parallel=8,
                timeouts=Timeouts(launch_s=3600, ready_s=7200, teardown_s=600, poll_s=5, replica_grace_s=900))
    with pytest.raises(ProvisionError, match=f"service '{svc.name}' failed: only .* of {svc.count} "
                                             "replicas alive for 9"):
        prov.up(comps)
    assert fake.now < 7200  # the grace time, not the ready timeout, ended it
    assert fake.live() == set()
    assert prov.ledger.live() == {}


def test_a_failed_controller_fails_the_service_at_once(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components(1)
    svc = next(c for c in comps if c.kind == "service")
    fake.controller_failed.add(svc.name)
    prov = make(tmp_path, fake, max_parallel=8)
    with pytest.raises(ProvisionError, match=f"service '{svc.name}' failed \\(CONTROLLER_FAILED"):
        prov.up(comps)
    assert fake.live() == set()


def test_transient_status_errors_are_retried(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components(1)
    lines: list[str] = []
    prov = make(tmp_path, fake, max_parallel=8, lines=lines)
    fake.state_errors = 2  # api_status raises twice during the launch wave
    real_serve_status = fake.serve_status

    def serve_status(services: Sequence[str]) -> str:
        if not getattr(fake, "broke", False):
            fake.broke, fake.status_errors = True, 3  # then three serve-status requests fail
        return real_serve_status(services)

    fake.serve_status = serve_status  # type: ignore[method-assign]
    prov.up(comps)
    assert fake.live() == {c.name for c in comps}
    assert sum("request-status poll failed (ConnectionError" in line for line in lines) == 2
    assert sum("serve status: status request failed" in line for line in lines) == 3


def test_persistent_status_errors_stop_the_wait(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components(1)
    prov = make(tmp_path, fake, max_parallel=8)
    real_serve_status = fake.serve_status

    def serve_status(services: Sequence[str]) -> str:
        fake.status_errors = 1
        return real_serve_status(services)

    fake.serve_status = serve_status  # type: ignore[method-assign]
    with pytest.raises(ProvisionError, match="serve status: 5 status requests in a row failed.*network error"):
        prov.up(comps)
    assert fake.live() == set()


def test_keyboard_interrupt_cancels_and_tears_down(tmp_path: Path) -> None:
    fake = FakeSky(workers=2, launch_s=60)
    fake.interrupt_at = 70  # the first wave finished, the second is running
    comps = components()
    prov = make(tmp_path, fake, max_parallel=4)
    with pytest.raises(KeyboardInterrupt):
        prov.up(comps)
    assert fake.cancelled
    assert all(fake.reqs[rid].state is RequestState.CANCELLED for rid in fake.cancelled)
    assert fake.live() == set()
    assert prov.ledger.live() == {}


def test_ready_timeout_tears_down(tmp_path: Path) -> None:
    fake = FakeSky(workers=8, ready_s=10_000)
    comps = components(1)
    prov = make(tmp_path, fake, max_parallel=8,
                timeouts=Timeouts(launch_s=600, ready_s=300, teardown_s=600, poll_s=5))
    with pytest.raises(ProvisionTimeout, match="not READY within 300 s"):
        prov.up(comps)
    assert fake.live() == set()


def test_keep_up_then_reuse(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components()
    first = make(tmp_path, fake, keep_up=True)
    first.up(comps)
    assert first.release(comps) == []
    assert fake.live() == {c.name for c in comps}  # kept
    launched = len(fake.submitted("launch")) + len(fake.submitted("serve_up"))

    second = make(tmp_path, fake)  # a later run, without --keep-up
    result = second.up(comps)
    assert fake.refreshed == [True]  # asked the cloud, not SkyPilot's cached state
    assert {c.name for c in result.reused} == {c.name for c in comps}
    assert result.created == []
    assert len(fake.submitted("launch")) + len(fake.submitted("serve_up")) == launched
    second.release(comps)  # this run does not keep them: they go now
    assert fake.live() == set()


def test_reuse_relaunches_what_is_gone_and_refuses_changed_config(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components(1)
    make(tmp_path, fake, keep_up=True).release(make(tmp_path, fake, keep_up=True).up(comps).created)
    gone = next(c for c in comps if c.kind == "cluster")
    del fake.clusters[gone.name]  # someone ran `sky down` by hand
    result = make(tmp_path, fake).up(comps)
    assert [c.name for c in result.created] == [gone.name]

    changed = [Component(c.kind, c.name, c.role, c.region, {**c.task, "setup": "echo changed\n"},
                         c.system, c.count, c.secrets) if c.name == gone.name else c for c in comps]
    with pytest.raises(ProvisionError, match="different configuration"):
        make(tmp_path, fake).up(changed)


def test_cleanup_from_ledger_after_a_crash(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components()
    make(tmp_path, fake).up(comps)  # and the process "dies": no release
    # A launch whose process died right after submitting: only a "submit" line, VM half made.
    ledger = CloudLedger(cloud_ledger_path(tmp_path))
    orphan = Component("cluster", "t-orphan", "lb", "us-east-2", {"name": "t-orphan"})
    ledger.record("submit", orphan.ledger_fields())
    fake.clusters["t-orphan"] = "INIT"
    # ... and one that never reached the cloud at all.
    ghost = Component("cluster", "t-ghost", "lb", "us-east-2", {"name": "t-ghost"})
    ledger.record("submit", ghost.ledger_fields())

    removed, errors = cleanup(make(tmp_path, fake))
    assert errors == []
    assert set(removed) == {c.name for c in comps} | {"t-orphan", "t-ghost"}
    assert fake.live() == set()
    assert CloudLedger(cloud_ledger_path(tmp_path)).live() == {}
    assert cleanup(make(tmp_path, fake)) == ([], [])


def test_secrets_reach_the_sdk_but_not_yaml_ledger_or_logs(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    lines: list[str] = []
    comps = components()
    prov = make(tmp_path, fake, lines=lines)
    prov.up(comps)
    prov.release(comps)
    ups = [r for r in fake.reqs.values() if r.op == "serve_up"]
    assert ups and all(r.secrets == {"HF_TOKEN": SECRET} for r in ups)
    assert all("HF_TOKEN" not in r.secrets for r in fake.reqs.values() if r.op == "launch")
    assert all(SECRET not in r.yaml for r in fake.reqs.values())
    assert SECRET not in cloud_ledger_path(tmp_path).read_text()
    assert not any(SECRET in line for line in lines)
    for line in cloud_ledger_path(tmp_path).read_text().splitlines():
        json.loads(line)


def test_teardown_reports_errors_without_raising(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    comps = components(1)
    prov = make(tmp_path, fake)
    prov.up(comps)
    victim = next(c for c in comps if c.kind == "cluster")

    real_down = fake.down

    def broken_down(cluster: str) -> str:
        rid = real_down(cluster)
        if cluster == victim.name:
            fake.fail[cluster] = "x"
            req = fake.reqs[rid]
            req.op = "launch"  # finishes FAILED through the launch-failure path
        return rid

    fake.down = broken_down  # type: ignore[method-assign]
    errors = prov.release(comps)
    assert len(errors) == 1 and victim.name in errors[0]
    assert set(prov.ledger.live()) == {victim.name}  # still listed, so cleanup can retry


def test_the_first_exec_on_a_fresh_cluster_waits_for_its_setup(tmp_path: Path) -> None:
    fake = FakeSky(workers=8, launch_s=60)
    fake.setup_s = 300
    client = next(c for c in components(1) if c.role == "client")
    prov = make(tmp_path, fake)
    prov.up([client])
    launched_at = fake.now
    prov.exec_job(client.name, "run: echo\n", "client")
    (exec_at, target), = fake.exec_times
    assert target == client.name and exec_at >= fake.setup_done[client.name] > launched_at
    prov.exec_job(client.name, "run: echo\n", "client")  # no second wait
    assert fake.exec_times[1][0] - exec_at < 10


def test_a_failed_setup_stops_before_the_exec(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    client = next(c for c in components(1) if c.role == "client")
    prov = make(tmp_path, fake)
    prov.up([client])
    fake.has_run[client.name] = False
    real = fake._job_status
    fake._job_status = lambda cluster, job_id: (  # type: ignore[method-assign]
        JobStatus.FAILED_SETUP if job_id == 1 else real(cluster, job_id))
    with pytest.raises(ProvisionError, match=f"setup job 1 on {client.name} ended FAILED_SETUP"):
        prov.exec_job(client.name, "run: echo\n", "client")
    assert fake.exec_times == []


def test_job_wait(tmp_path: Path) -> None:
    fake = FakeSky(workers=8)
    prov = make(tmp_path, fake)
    fake.clusters["c1"] = "UP"
    job = prov.exec_job("c1", "run: echo\n", "client")
    polls: list[float] = []
    assert prov.wait_job("c1", job, 300, "client", on_poll=polls.append) == "SUCCEEDED"
    assert polls
    fake.jobs[("c1", 99)] = 10_000
    with pytest.raises(ProvisionTimeout):
        prov.wait_job("c1", 99, 60, "client")


# ---- SkyDeployment / SkyClientLauncher on the stand-in ------------------------------------------

def test_sky_deployment_wires_lbs_and_runs_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import gzip

    from pytest_lbbench.backends.base import ExperimentSpec
    from pytest_lbbench.runspec import RunKnobs
    from pytest_lbbench.backends.sky.deployment import SkyClientLauncher, SkyDeployment, SkySession
    from pytest_lbbench.backends.sky.render import RESULT_BEGIN, RESULT_END

    monkeypatch.setenv("LBBENCH_SHIP_DIR", str(tmp_path / "ship"))  # the staged package copy
    fake = FakeSky(workers=8)
    posts: list[tuple[str, Any]] = []

    gets: list[str] = []
    healthy: set[str] = set()

    def http(method: str, url: str, body: Any, timeout_s: float,
             headers: Any = None) -> tuple[int, Any]:
        if method == "GET":
            gets.append(url)
            if url.endswith("/sky-lb-health") and gets.count(url) < 3:
                return 503, {"error": "starting"}  # the LB process is not up yet: waited for
            healthy.add(url)
        if method == "POST":
            # The LB answered its health check before it was told its membership.
            assert url.replace("/lbbench/membership", "/sky-lb-health") in healthy
            posts.append((url, body))
            assert headers == {"X-Lbbench-Control-Token": "sky-run-secret"}, headers
        return 200, {}

    settings = SkySettings(prefix="t")
    payload = {"workload": "arena_syn", "metrics": [{"uid": 1}], "client": {"code_hash": settings.code_hash}}
    encoded = base64.encodebytes(gzip.compress(json.dumps(payload).encode())).decode()
    fake.job_log = lambda cluster, job_id: (  # type: ignore[method-assign]
        f"(task, pid=1) {RESULT_BEGIN}\n" + "".join(f"(task, pid=1) {l}\n" for l in encoded.splitlines())
        + f"(task, pid=1) {RESULT_END}\n")
    prov = make(tmp_path, fake, max_parallel=8)
    session = SkySession(prov, settings, systems=[SYSTEMS["sky_push_pull"], SYSTEMS["sgl"]], replicas=4,
                         replica_regions=["us-east-2", "ap-northeast-1"],
                         client_regions=["us-east-2", "ap-northeast-1"], http=http,
                         control_token="sky-run-secret")
    push = SkyDeployment(SYSTEMS["sky_push_pull"], session)
    push.start()
    # One wave: both systems and the clients were launched by the first start().
    assert {"t-sgl-router", "t-client-us-east-2", "t-sky-push-pull-lb-us-east-2"} <= fake.live()
    assert push.endpoint_for("ap-northeast-1") == "http://t-sky-push-pull-lb-ap-northeast-1.example:8000"
    assert len(posts) == 2
    assert all(gets.count(u.replace("/lbbench/membership", "/sky-lb-health")) == 3 for u, _ in posts)
    url, body = next(p for p in posts if "ap-northeast-1" in p[0])
    assert url.endswith("/lbbench/membership") and body["self"] == "lb-ap-northeast-1"
    assert set(body["lbs"]) == {"lb-us-east-2", "lb-ap-northeast-1"}
    assert len(body["replicas"]) == 2 and all(k.endswith("ap-northeast-1") for k in body["replicas"])
    kinds = {t["kind"] for t in push.telemetry_targets()}
    assert kinds == {"sky_lb", "replica"}

    spec = ExperimentSpec(system="sky_push_pull", workload="arena_syn", exp_name="arena_syn_sky_push_pull",
                          client_regions=("us-east-2", "ap-northeast-1"),
                          knobs=RunKnobs(duration_s=60, num_users=2, seed=0))
    files = SkyClientLauncher(session).run(push, spec, tmp_path / "metric" / spec.exp_name)
    assert sorted(files) == ["ap-northeast-1", "us-east-2"]
    assert json.loads(files["us-east-2"].read_text()) == payload
    execs = [r for r in fake.reqs.values() if r.op == "exec"]
    assert {r.target for r in execs} == {"t-client-us-east-2", "t-client-ap-northeast-1"}
    assert all("pytest_lbbench.client --job-file sky_workdir/" in r.yaml for r in execs)
    # Each client ran only after its cluster's setup job had finished.
    assert all(at >= fake.setup_done[target] for at, target in fake.exec_times)
    # The jobs were built here, plans included, and shipped as the exec's workdir.
    from pytest_lbbench.client.job import ClientJob

    job_dir = tmp_path / "plans" / spec.exp_name
    job = ClientJob.from_json((job_dir / "us-east-2.json").read_text())
    assert job.backend_url == push.endpoint_for("us-east-2") and job.plan.users
    assert all(f'workdir: "{job_dir}"' in r.yaml for r in execs)
    # The token reaches the client jobs (for --dataset-source hf) but not their YAML.
    assert all(r.secrets == {"HF_TOKEN": SECRET} and SECRET not in r.yaml for r in execs)

    push.stop()
    assert not any(n.startswith("t-sky-push-pull") for n in fake.live())
    launches = len(fake.submitted("launch")) + len(fake.submitted("serve_up"))
    sgl = SkyDeployment(SYSTEMS["sgl"], session)
    sgl.start()  # already up: only the router is started, by sky exec
    assert len(fake.submitted("launch")) + len(fake.submitted("serve_up")) == launches
    assert any(r.op == "exec" and r.target == "t-sgl-router" and "launch_router" in r.yaml
               for r in fake.reqs.values())
    sgl.stop()
    session.close()
    assert fake.live() == set()
    assert prov.ledger.live() == {}


def test_sky_deployment_refuses_gke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBBENCH_SHIP_DIR", str(tmp_path / "ship"))
    from pytest_lbbench.backends.sky.deployment import SkyDeployment, SkySession
    from pytest_lbbench.backends.sky.render import UnsupportedSystem

    fake = FakeSky()
    session = SkySession(make(tmp_path, fake), SkySettings(), systems=[SYSTEMS["gke_gateway"]], replicas=2,
                         replica_regions=["us-east-2"], client_regions=["us-east-2"])
    with pytest.raises(UnsupportedSystem, match="--gke-endpoint or --gke-contexts"):
        SkyDeployment(SYSTEMS["gke_gateway"], session)


def test_the_status_constants_are_skypilots_own() -> None:
    """provision.py spells SkyPilot 0.14.1's statuses as strings (``sky`` is not imported at
    module level): they must be the real enums' values and groups."""
    ServiceStatus, ReplicaStatus, JobStatus = serve_state.ServiceStatus, serve_state.ReplicaStatus, job_lib.JobStatus
    assert set(SERVICE_FAILED) == {s.value for s in ServiceStatus.failed_statuses()}
    assert set(REPLICA_FAILED) == {s.value for s in ReplicaStatus.failed_statuses()}
    assert set(REPLICA_UNRECOVERABLE_BEFORE_READY) <= set(REPLICA_FAILED)
    assert set(REPLICA_LEAVING) | set(REPLICA_FAILED) == {s.value for s in ReplicaStatus.terminal_statuses()}
    assert set(JOB_TERMINAL) == {s.value for s in JobStatus if s.is_terminal()}
    assert set(JOB_NOT_STARTED) == {s.value for s in JobStatus.nonterminal_statuses()} - {"RUNNING"}


def test_a_status_reply_that_leaves_requests_out_is_a_failed_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """SkyPilot 0.14.1's ``api_status`` returns [] when its local API server is not running; the
    real SDK boundary turns that into an error (which the provisioner counts and retries)
    instead of reading every request as still pending until the launch timeout."""
    sky = pytest.importorskip("sky")
    from pytest_lbbench.backends.sky.sdk import MissingRequests, RealSkySdk

    monkeypatch.setattr(sky, "api_status", lambda request_ids=None, all_status=False: [])
    with pytest.raises(MissingRequests, match="reported nothing for 2 of 2 requests .*sky api info"):
        RealSkySdk().request_states(["aaaaaaaa-1", "bbbbbbbb-2"])
