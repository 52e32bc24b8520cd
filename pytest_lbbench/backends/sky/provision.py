"""The provisioning state machine of the ``sky`` backend, and its cloud ledger.

:class:`RequestRunner` drives asynchronous SkyPilot requests: it submits at most
``max_parallel`` at a time (the local API server runs at most 4 long requests at once —
``sky/server/config.py: _MAX_LONG_WORKERS_LOCAL`` — so more would only queue there), polls
their state without blocking (``sky.api_status``), reports every transition to a progress
callback, and enforces a deadline. On a failure, a timeout or ``KeyboardInterrupt`` it cancels
every request still in flight before re-raising, so nothing keeps provisioning behind our back.

:class:`Provisioner` builds on it: :meth:`Provisioner.up` reuses what a ``--keep-up`` run left
(same name, same rendered YAML, still UP/READY), launches the rest in parallel, waits for the
services' replicas to be READY, and tears down what it created if any of that fails or is
interrupted. :meth:`Provisioner.release` tears down (or, with ``--keep-up``, records as kept).

Waits are tolerant where the cloud is slow, not where it is broken: status polls survive a few
errors in a row (:meth:`Provisioner.poll`), a service is waited for while SkyServe reports
NO_REPLICA (its replicas are still starting) or relaunches a failed replica, and the first
``sky exec`` on a fresh cluster waits for that cluster's detached setup job
(:meth:`Provisioner.wait_setup`).

Every submit, success, keep and removal is a JSON line in ``<output-dir>/.lbbench/cloud.jsonl``
(:class:`CloudLedger`), written *before* the request is sent, so a crash at any point leaves a
record that :func:`cleanup` (``pytest --lbbench-cleanup``) can act on. Ledger lines carry names,
regions and hashes only — never secrets. No pytest import here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from pytest_lbbench.backends.ledger import append_jsonl, read_jsonl
from pytest_lbbench.backends.sky.render import Component
from pytest_lbbench.backends.sky.sdk import RequestFailed, RequestState, ServiceInfo, SkySdk

from pytest_lbbench.backends.sky.defaults import DEFAULT_MAX_PARALLEL  # noqa: F401 - re-exported

ProgressFn = Callable[[str], None]

# SkyPilot 0.14.1's status values, as strings (``sky`` is not imported at module level; a test
# checks these against the real enums).
#
# A service's status is computed from its READY replicas only
# (sky/serve/serve_utils.py, set_service_status_and_active_versions_from_replica, passes
# ``ready_replicas`` to ServiceStatus.from_replica_statuses): while every replica is still
# PENDING / PROVISIONING / STARTING the service reads NO_REPLICA, and FAILED cannot be reached on
# that path. So NO_REPLICA, CONTROLLER_INIT and REPLICA_INIT mean "wait"; only the statuses of
# ServiceStatus.failed_statuses() (sky/serve/serve_state.py) mean the service itself is broken.
SERVICE_FAILED = ("CONTROLLER_FAILED", "FAILED_CLEANUP")
# ReplicaStatus.failed_statuses(): SkyServe terminates such a replica and launches a new one
# while the service is below its target, so one failed replica is not the end of a service.
REPLICA_FAILED = ("FAILED", "FAILED_CLEANUP", "FAILED_INITIAL_DELAY", "FAILED_PROBING",
                  "FAILED_PROVISION", "UNKNOWN")
# The two of them SkyServe does not recover from while no replica of the service was ever READY:
# its autoscaler stops scaling when a replica of the latest version failed unrecoverably before
# that version was ever ready (sky/serve/autoscalers.py, generate_scaling_decisions;
# replica_managers.py, ReplicaStatusProperty.unrecoverable_failure: the user app failed, or the
# initial delay ran out). Waiting for a replacement would bill every VM for nothing.
REPLICA_UNRECOVERABLE_BEFORE_READY = ("FAILED", "FAILED_INITIAL_DELAY")
# Replicas on their way out (being terminated, or preempted and recycled): not counted as alive.
REPLICA_LEAVING = ("SHUTTING_DOWN", "PREEMPTED")
# sky.skylet.job_lib.JobStatus: terminal (is_terminal()), and the states before a job's run
# starts (a cluster's first job runs its setup, detached, after ``sky launch`` returns).
JOB_TERMINAL = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED")
JOB_NOT_STARTED = ("INIT", "PENDING", "SETTING_UP")
# Messages of a down request for something that is already gone: that is a success.
_ALREADY_GONE = ("does not exist", "not found", "No service", "not exist")


class ProvisionError(RuntimeError):
    """Provisioning failed; what was created by this run has been torn down."""


class ProvisionTimeout(ProvisionError):
    """A wait ran past its deadline; in-flight requests were cancelled."""


@dataclass(frozen=True)
class Timeouts:
    """Deadlines of each phase, in seconds."""

    launch_s: float = 3600.0  # submit → every launch / serve-up request finished
    ready_s: float = 3600.0  # services' replicas READY (model download + load on fresh VMs)
    teardown_s: float = 1800.0
    job_s: float = 3600.0  # a client job (the launcher passes the experiment's own bound)
    poll_s: float = 5.0
    # How long a service may have fewer live (not failed, not leaving) replicas than it wants
    # before the run gives up on it: SkyServe relaunches failed replicas, which takes a new VM,
    # the install and the model download again.
    replica_grace_s: float = 1800.0
    # Status polls in a row that may fail (API server restarting, a network blip) before a wait
    # gives up; one transient error must not tear down every VM of the run.
    max_poll_errors: int = 5


# ---- ledger ----------------------------------------------------------------------------------

def cloud_ledger_path(output_dir: Path) -> Path:
    return output_dir / ".lbbench" / "cloud.jsonl"


class CloudLedger:
    """Append-only JSONL record of every cluster and service a run provisioned or removed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, event: str, fields: Mapping[str, Any]) -> None:
        append_jsonl(self.path, {**fields, "event": event, "time": time.time(), "pid": os.getpid()},
                     sort_keys=True)

    def entries(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def live(self) -> dict[str, dict[str, Any]]:
        """Name → latest entry, for everything not recorded as removed."""
        latest: dict[str, dict[str, Any]] = {}
        first: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            name = entry.get("name")
            if not isinstance(name, str):
                continue
            first.setdefault(name, entry)
            if entry.get("event") == "removed":
                latest.pop(name, None)
                first.pop(name, None)
            else:
                # Keep the descriptive fields of the submit line, the event of the latest one.
                latest[name] = {**first[name], **entry}
        return latest


# ---- requests --------------------------------------------------------------------------------

@dataclass
class Op:
    """One asynchronous request to make: ``submit()`` returns its request id."""

    key: str
    label: str
    submit: Callable[[], str]
    on_done: Callable[[Any], None] | None = None
    request_id: str | None = None
    state: RequestState | None = None
    submitted_at: float = 0.0


@dataclass
class Outcome:
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class RequestRunner:
    """Submits ops with a concurrency bound and waits for them with a deadline."""

    def __init__(self, sdk: SkySdk, max_parallel: int = DEFAULT_MAX_PARALLEL, poll_s: float = 5.0,
                 progress: ProgressFn | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, max_poll_errors: int = 5) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self.sdk = sdk
        self.max_parallel = max_parallel
        self.poll_s = poll_s
        self.max_poll_errors = max_poll_errors
        self.progress = progress or (lambda line: None)
        self.clock = clock
        self.sleep = sleep

    def run(self, ops: Sequence[Op], timeout_s: float, what: str, fail_fast: bool = True) -> Outcome:
        """Run every op; with ``fail_fast`` the first failure cancels the rest and raises."""
        pending = list(ops)
        in_flight: dict[str, Op] = {}
        outcome = Outcome()
        start = self.clock()
        state_errors = 0
        try:
            while pending or in_flight:
                while pending and len(in_flight) < self.max_parallel:
                    op = pending.pop(0)
                    op.request_id = op.submit()
                    op.state = RequestState.PENDING
                    op.submitted_at = self.clock()
                    in_flight[op.request_id] = op
                    self.progress(f"{op.label}: submitted (request {op.request_id[:8]})")
                try:
                    states = self.sdk.request_states(list(in_flight))
                    state_errors = 0
                except Exception as exc:  # the requests go on on the server: ask again
                    state_errors += 1
                    if state_errors >= self.max_poll_errors:
                        raise ProvisionError(
                            f"{what}: {state_errors} request-status polls in a row failed, the last "
                            f"with {type(exc).__name__}: {exc}. Is the SkyPilot API server up "
                            "(`sky api info`)?") from exc
                    self.progress(f"{what}: request-status poll failed ({type(exc).__name__}: {exc}); "
                                  f"retrying ({state_errors}/{self.max_poll_errors})")
                    self.sleep(self.poll_s)
                    continue
                for rid, op in list(in_flight.items()):
                    state = states.get(rid, op.state or RequestState.PENDING)
                    if state != op.state:
                        op.state = state
                        if not state.finished:
                            self.progress(f"{op.label}: {state.value.lower()}")
                    if not state.finished:
                        continue
                    del in_flight[rid]
                    elapsed = self.clock() - op.submitted_at
                    try:
                        value = self.sdk.result(rid)
                    except RequestFailed as exc:
                        outcome.errors[op.key] = f"{op.label}: {state.value.lower()}: {exc}"
                        self.progress(f"{op.label}: {state.value.lower()} after {elapsed:.0f} s: {exc}")
                        if fail_fast:
                            raise ProvisionError(outcome.errors[op.key]) from exc
                        continue
                    outcome.results[op.key] = value
                    if op.on_done is not None:
                        op.on_done(value)
                    self.progress(f"{op.label}: done in {elapsed:.0f} s")
                if not (pending or in_flight):
                    break
                if self.clock() - start > timeout_s:
                    names = ", ".join(op.label for op in in_flight.values()) or "(none in flight)"
                    raise ProvisionTimeout(
                        f"{what} did not finish within {timeout_s:.0f} s; still running: {names}. "
                        "They were cancelled; raise the timeout (--sky-launch-timeout) if the "
                        "cloud is just slow."
                    )
                self.sleep(self.poll_s)
        except BaseException:
            # Failure, timeout or Ctrl-C: nothing may keep provisioning after we stop watching.
            self.cancel([rid for rid in in_flight])
            raise
        return outcome

    def cancel(self, request_ids: list[str]) -> None:
        if not request_ids:
            return
        try:
            self.sdk.cancel(request_ids)
            self.progress(f"cancelled {len(request_ids)} request(s) in flight")
        except Exception as exc:  # teardown must go on; report, do not mask the original error
            self.progress(f"could not cancel requests {request_ids}: {exc}")

    def one(self, label: str, submit: Callable[[], str], timeout_s: float) -> Any:
        """Run a single request to completion and return its result."""
        return self.run([Op(label, label, submit)], timeout_s, label).results[label]


# ---- provisioner -----------------------------------------------------------------------------

@dataclass
class UpResult:
    created: list[Component] = field(default_factory=list)
    reused: list[Component] = field(default_factory=list)
    services: dict[str, ServiceInfo] = field(default_factory=dict)


class Provisioner:
    """Brings components up (reusing kept ones) and takes them down again; see the module doc."""

    def __init__(self, sdk: SkySdk, ledger: CloudLedger, *, max_parallel: int = DEFAULT_MAX_PARALLEL,
                 timeouts: Timeouts = Timeouts(), progress: ProgressFn | None = None,
                 keep_up: bool = False, secrets: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sdk = sdk
        self.ledger = ledger
        self.timeouts = timeouts
        self.keep_up = keep_up
        self.progress = progress or (lambda line: None)
        self._secrets = dict(secrets or {})
        self.clock = clock
        self.sleep = sleep
        self.runner = RequestRunner(sdk, max_parallel, timeouts.poll_s, self.progress, clock, sleep,
                                    max_poll_errors=timeouts.max_poll_errors)
        self.owned: dict[str, Component] = {}  # created by this run and not yet removed
        # Cluster → the job id its ``sky launch`` returned: on a fresh cluster that first job runs
        # the setup (detached, after launch returns); see :meth:`wait_setup`.
        self.launch_jobs: dict[str, int] = {}
        self._setup_done: set[str] = set()

    def _secrets_for(self, comp: Component) -> dict[str, str]:
        return self.secrets_named(comp.secrets)

    def secrets_named(self, names: Sequence[str]) -> dict[str, str]:
        """The values of the secrets called ``names`` that this run has (for ``sky exec``)."""
        return {k: self._secrets[k] for k in names if k in self._secrets}

    # ---- up ----------------------------------------------------------------------------------

    def reusable(self, components: Sequence[Component]) -> list[Component]:
        """Components a ``--keep-up`` run left that are unchanged and still UP / READY."""
        live = self.ledger.live()
        candidates = [c for c in components if c.name in live]
        for comp in candidates:
            recorded = live[comp.name].get("fingerprint")
            if recorded != comp.fingerprint:
                raise ProvisionError(
                    f"{comp.kind} {comp.name!r} is still up from an earlier run, but with a different "
                    f"configuration (ledger {recorded}, now {comp.fingerprint}). Remove it with "
                    "`pytest --lbbench-cleanup`, or choose another --sky-prefix."
                )
        if not candidates:
            return []
        services = [c.name for c in candidates if c.kind == "service"]
        clusters = [c.name for c in candidates if c.kind == "cluster"]
        up: set[str] = set()
        if services:
            infos: list[ServiceInfo] = self.poll("serve status", lambda: self.sdk.serve_status(services))
            up |= {i.name for i in infos if i.status == "READY"}
        if clusters:
            # Refreshed from the cloud: the cached status still says UP for a VM that was
            # terminated from the console or preempted.
            statuses: dict[str, str] = self.poll(
                "status", lambda: self.sdk.cluster_status(clusters, refresh=True))
            up |= {name for name, status in statuses.items() if status == "UP"}
        return [c for c in candidates if c.name in up]

    def _up_op(self, comp: Component) -> Op:
        def submit() -> str:
            # Recorded before the request leaves: a crash right after still leaves a trace.
            self.ledger.record("submit", comp.ledger_fields())
            self.owned[comp.name] = comp
            secrets = self._secrets_for(comp)
            if comp.kind == "service":
                return self.sdk.serve_up(comp.yaml, comp.name, secrets)
            return self.sdk.launch(comp.yaml, comp.name, secrets)

        def done(value: Any) -> None:
            self.ledger.record("up", comp.ledger_fields())
            if comp.kind == "cluster" and value is not None:
                self.launch_jobs[comp.name] = int(value)

        verb = "serve up" if comp.kind == "service" else "launch"
        return Op(comp.name, f"{verb} {comp.name} ({comp.region})", submit, on_done=done)

    def up(self, components: Sequence[Component]) -> UpResult:
        """Provision ``components`` in parallel and wait for every service to be READY.

        On any failure, timeout or ``KeyboardInterrupt`` the requests in flight are cancelled and
        everything this call created is torn down before the exception propagates.
        """
        result = UpResult()
        reused = self.reusable(components)
        for comp in reused:
            self.ledger.record("reused", comp.ledger_fields())
            self.progress(f"reusing {comp.kind} {comp.name} (kept up by an earlier run)")
        reused_names = {c.name for c in reused}
        todo = [c for c in components if c.name not in reused_names]
        before = set(self.owned)
        try:
            self.runner.run([self._up_op(c) for c in todo], self.timeouts.launch_s, "provisioning")
            result.services = self.wait_services_ready([c for c in components if c.kind == "service"])
        except BaseException:
            created = [c for name, c in self.owned.items() if name not in before]
            self.progress(f"provisioning stopped; tearing down {len(created)} component(s) it created")
            try:
                self.teardown(created)
            except Exception as exc:  # never mask why provisioning stopped
                self.progress(f"teardown after failure raised {type(exc).__name__}: {exc}")
            raise
        result.created, result.reused = todo, reused
        return result

    def poll(self, label: str, submit: Callable[[], str]) -> Any:
        """One status request, retried: up to ``max_poll_errors`` failures in a row are reported
        and waited out (the API server restarting, a network blip); the next one raises."""
        errors = 0
        while True:
            try:
                return self.runner.one(label, submit, self.timeouts.launch_s)
            except Exception as exc:  # KeyboardInterrupt is not an Exception: it goes through
                errors += 1
                if errors >= self.timeouts.max_poll_errors:
                    raise ProvisionError(
                        f"{label}: {errors} status requests in a row failed, the last with "
                        f"{type(exc).__name__}: {exc}. Is the SkyPilot API server up "
                        "(`sky api info`)?") from exc
                self.progress(f"{label}: status request failed ({type(exc).__name__}: {exc}); "
                              f"retrying ({errors}/{self.timeouts.max_poll_errors})")
                self.sleep(self.timeouts.poll_s)

    def wait_services_ready(self, services: Sequence[Component]) -> dict[str, ServiceInfo]:
        """Poll ``sky.serve.status`` until every service has all its replicas READY.

        A service fails at once in a status SkyPilot counts as failed (``SERVICE_FAILED``), and
        when a replica failed in a way SkyServe does not recover from before any replica of the
        service was READY (``REPLICA_UNRECOVERABLE_BEFORE_READY``: SkyServe stops scaling). Any
        other failed replica is reported and waited for (SkyServe relaunches it), and the service
        fails only when it has had fewer live replicas than wanted for ``replica_grace_s``.
        """
        if not services:
            return {}
        names = [c.name for c in services]
        wanted = {c.name: c.count for c in services}
        start = self.clock()
        last: dict[str, str] = {}
        short_since: dict[str, float] = {}  # service → since when it has too few live replicas
        seen_failed: set[tuple[str, int, str]] = set()
        ever_ready: set[str] = set()
        while True:
            infos: list[ServiceInfo] = self.poll("serve status", lambda: self.sdk.serve_status(names))
            by_name = {i.name: i for i in infos}
            ready: dict[str, ServiceInfo] = {}
            now = self.clock()
            for name in names:
                info = by_name.get(name)
                if info is None:
                    raise ProvisionError(f"service {name!r} disappeared while waiting for it to be READY")
                n_ready = sum(1 for r in info.replicas if r.status == "READY")
                if n_ready:
                    ever_ready.add(name)
                failed = [r for r in info.replicas if r.status in REPLICA_FAILED]
                alive = [r for r in info.replicas
                         if r.status not in REPLICA_FAILED and r.status not in REPLICA_LEAVING]
                summary = f"{info.status}, {n_ready}/{wanted[name]} replicas ready"
                if last.get(name) != summary:
                    last[name] = summary
                    self.progress(f"service {name}: {summary}")
                for r in failed:
                    if (name, r.replica_id, r.status) not in seen_failed:
                        seen_failed.add((name, r.replica_id, r.status))
                        self.progress(f"service {name}: replica {r.replica_id} {r.status}; SkyServe "
                                      f"replaces it (`sky serve logs {name} {r.replica_id}`)")
                detail = ", ".join(f"replica {r.replica_id} {r.status}" for r in failed)
                if info.status in SERVICE_FAILED:
                    raise ProvisionError(
                        f"service {name!r} failed ({info.status}{'; ' + detail if detail else ''}). "
                        f"See `sky serve logs --controller {name}`."
                    )
                fatal = [r for r in failed if r.status in REPLICA_UNRECOVERABLE_BEFORE_READY]
                if fatal and name not in ever_ready:
                    raise ProvisionError(
                        f"service {name!r} failed: replica {fatal[0].replica_id} is {fatal[0].status} "
                        "before any replica was ever READY, so SkyServe stops launching replicas "
                        f"(the app exits or never answers its readiness probe). See `sky serve logs "
                        f"{name} {fatal[0].replica_id}` for the replica's log."
                    )
                if len(alive) < wanted[name] and failed:
                    since = short_since.setdefault(name, now)
                    if now - since > self.timeouts.replica_grace_s:
                        raise ProvisionError(
                            f"service {name!r} failed: only {len(alive)} of {wanted[name]} replicas "
                            f"alive for {now - since:.0f} s ({detail}). See `sky serve logs {name} "
                            f"{failed[-1].replica_id}` for the replica's log."
                        )
                else:
                    short_since.pop(name, None)
                if n_ready >= wanted[name]:
                    ready[name] = info
            if len(ready) == len(names):
                return ready
            if self.clock() - start > self.timeouts.ready_s:
                waiting = ", ".join(f"{n} ({last.get(n)})" for n in names if n not in ready)
                raise ProvisionTimeout(
                    f"services not READY within {self.timeouts.ready_s:.0f} s: {waiting}. "
                    "Raise --sky-ready-timeout if the model is still downloading."
                )
            self.sleep(self.timeouts.poll_s)

    # ---- jobs --------------------------------------------------------------------------------

    def wait_setup(self, cluster: str, label: str) -> None:
        """Wait until the setup of a cluster this run launched has finished.

        ``sky launch`` returns once the VM is up; its setup then runs detached, as the cluster's
        first job (sky/backends/cloud_vm_ray_backend.py, ``_setup`` with ``detach_setup``). A
        ``sky exec`` or a request to the cluster before that would race the install. A reused
        (kept-up) cluster was set up by the run that launched it.
        """
        job_id = self.launch_jobs.get(cluster)
        if job_id is None or cluster in self._setup_done:
            return
        start = self.clock()
        while True:
            status = self.poll(f"{label}: setup status", lambda: self.sdk.job_status(cluster, job_id))
            if status is not None and status not in JOB_NOT_STARTED:
                if status in JOB_TERMINAL and status != "SUCCEEDED":
                    raise ProvisionError(
                        f"{label}: the setup job {job_id} on {cluster} ended {status}; "
                        f"see `sky logs {cluster} {job_id}`")
                self._setup_done.add(cluster)
                return
            if self.clock() - start > self.timeouts.ready_s:
                raise ProvisionTimeout(f"{label}: setup of {cluster} (job {job_id}) still {status} "
                                       f"after {self.timeouts.ready_s:.0f} s")
            self.sleep(self.timeouts.poll_s)

    def exec_job(self, cluster: str, yaml_text: str, label: str, secrets: Mapping[str, str] | None = None) -> int:
        self.wait_setup(cluster, label)
        job_id = self.runner.one(label, lambda: self.sdk.exec(yaml_text, cluster, dict(secrets or {})),
                                 self.timeouts.launch_s)
        if job_id is None:
            raise ProvisionError(f"{label}: SkyPilot returned no job id")
        return int(job_id)

    def wait_job(self, cluster: str, job_id: int, timeout_s: float, label: str,
                 on_poll: Callable[[float], None] | None = None) -> str:
        """Poll a job until it finishes; returns its final status (SUCCEEDED, FAILED, …)."""
        start = self.clock()
        status: str | None = None
        while True:
            status = self.poll(f"{label} status", lambda: self.sdk.job_status(cluster, job_id))
            if status in JOB_TERMINAL:
                return str(status)
            elapsed = self.clock() - start
            if on_poll is not None:
                on_poll(elapsed)
            if elapsed > timeout_s:
                raise ProvisionTimeout(
                    f"{label}: job {job_id} on {cluster} still {status} after {timeout_s:.0f} s"
                )
            self.sleep(self.timeouts.poll_s)

    # ---- down --------------------------------------------------------------------------------

    def release(self, components: Iterable[Component]) -> list[str]:
        """End of use: tear down, or with ``--keep-up`` record the components as kept."""
        comps = list(components)
        if self.keep_up:
            for comp in comps:
                self.ledger.record("kept", comp.ledger_fields())
                self.owned.pop(comp.name, None)
            if comps:
                self.progress(f"--keep-up: left {len(comps)} component(s) running; "
                              "`pytest --lbbench-cleanup` removes them")
            return []
        return self.teardown(comps)

    def teardown(self, components: Iterable[Component]) -> list[str]:
        """Down every component in parallel; returns error lines (never raises on a failed down)."""
        comps = list({c.name: c for c in components}.values())
        return self.teardown_entries([c.ledger_fields() for c in comps])

    def teardown_entries(self, entries: Sequence[Mapping[str, Any]]) -> list[str]:
        ops = []
        for entry in entries:
            name, kind = str(entry["name"]), str(entry.get("kind", "cluster"))

            def submit(name: str = name, kind: str = kind) -> str:
                return self.sdk.serve_down(name) if kind == "service" else self.sdk.down(name)

            def done(_value: Any, entry: Mapping[str, Any] = entry) -> None:
                self.ledger.record("removed", dict(entry))
                self.owned.pop(str(entry["name"]), None)

            verb = "serve down" if kind == "service" else "down"
            ops.append(Op(name, f"{verb} {name}", submit, on_done=done))
        if not ops:
            return []
        try:
            outcome = self.runner.run(ops, self.timeouts.teardown_s, "teardown", fail_fast=False)
        except ProvisionError as exc:  # a timeout: whatever is still live stays in the ledger
            self.progress(f"teardown error: {exc}")
            return [str(exc)]
        errors = []
        for name, error in outcome.errors.items():
            if any(marker in error for marker in _ALREADY_GONE):
                entry = next(e for e in entries if e["name"] == name)
                self.ledger.record("removed", dict(entry))
                self.owned.pop(name, None)
            else:
                errors.append(error)
        for error in errors:
            self.progress(f"teardown error: {error}")
        return errors

    def teardown_owned(self) -> list[str]:
        return self.teardown(list(self.owned.values()))


def cleanup(provisioner: Provisioner) -> tuple[list[str], list[str]]:
    """Remove everything the ledger lists as live (``pytest --lbbench-cleanup``).

    Returns ``(removed names, error lines)``.
    """
    live = provisioner.ledger.live()
    if not live:
        return [], []
    entries = list(live.values())
    errors = provisioner.teardown_entries(entries)
    still = provisioner.ledger.live()
    removed = [name for name in live if name not in still]
    return removed, errors
