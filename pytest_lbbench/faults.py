"""Fault drills: what ``--fault`` schedules, how it runs, and which requests it hit.

A drill is a list of events relative to the start of an experiment's traffic (the moment the
clients start, warm-up included), in the seconds of ``--duration`` (wall seconds: the client
runs on the wall clock at every ``--time-scale``)::

    crash:replica-0-us-east-2@15s          kill -9 the replica at 15 s (stays down)
    crash:replica-0-us-east-2@15s+10s      ... and start it again 10 s later
    restart:replica-0-us-east-2@25s        start a crashed component again at 25 s
    crash:lb-us-east-2@30s                 kill an LB (or gateway: gke-<region>)
    partition:ap-northeast-1@20s+30s       every link into and out of the region drops for 30 s
    slow:replica-1-ap-northeast-1@10s*3    that replica's engine runs 3x slower from 10 s ...
    slow:replica-1-ap-northeast-1@10s+20s*3   ... or for 20 s

At the end of every experiment the drill is undone (crashed components started again,
partitions healed, engines at speed), so the next experiment starts from the whole system.

A request is *hit by a fault* when it failed and it overlaps the fault's impact window: the
moment of the fault plus ``grace`` (requests in flight then, and those sent before a balancer
could notice), the same after the fault ends, and, where clients have no way around it (their
entry LB crashed, their link into a partitioned region), the whole fault. Hit requests are
reported apart and do not count against ``--lbbench-max-failure-rate``; every other failure
does, so a balancer that keeps sending to a dead replica fails its test.

No pytest import here: :class:`FaultDriller` drives any object with the :class:`FaultTarget`
methods (the local deployment has them).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ACTIONS",
    "FaultDriller",
    "FaultError",
    "FaultEvent",
    "FaultSpec",
    "FaultTarget",
    "ImpactWindow",
    "classify_failures",
    "parse_fault",
    "parse_faults",
]

log = logging.getLogger(__name__)

ACTIONS = ("crash", "restart", "partition", "slow")
_SYNTAX = re.compile(
    r"^(?P<action>[a-z]+):(?P<target>[A-Za-z0-9_.-]+)@(?P<at>\d+(?:\.\d+)?)s"
    r"(?:\+(?P<duration>\d+(?:\.\d+)?)s)?(?:\*(?P<factor>\d+(?:\.\d+)?))?$"
)
_EXAMPLES = ("crash:replica-0-us-east-2@15s", "crash:lb-us-east-2@30s+10s", "restart:replica-0-us-east-2@25s",
             "partition:ap-northeast-1@20s+30s", "slow:replica-1-ap-northeast-1@10s*3")


class FaultError(ValueError):
    """A ``--fault`` that cannot be parsed or does not fit the system (the message says how)."""


@dataclass(frozen=True)
class FaultSpec:
    """One ``--fault`` as the user wrote it."""

    action: str
    target: str
    at_s: float
    duration_s: float | None = None
    factor: float | None = None
    text: str = ""

    @property
    def end_s(self) -> float | None:
        """When the fault is undone (seconds from the start), None = at the end."""
        return None if self.duration_s is None else self.at_s + self.duration_s


def parse_fault(text: str) -> FaultSpec:
    """Parse ``ACTION:TARGET@Ts[+Ds][*F]``; :class:`FaultError` says what is wrong."""
    raw = text.strip()
    match = _SYNTAX.match(raw)
    examples = ", ".join(_EXAMPLES)
    if match is None:
        raise FaultError(f"--fault {text!r}: expected ACTION:TARGET@<seconds>s[+<seconds>s][*<factor>] "
                         f"with ACTION one of {', '.join(ACTIONS)}; for example {examples}")
    action = match["action"]
    if action not in ACTIONS:
        raise FaultError(f"--fault {text!r}: unknown action {action!r}; valid: {', '.join(ACTIONS)}")
    duration = None if match["duration"] is None else float(match["duration"])
    factor = None if match["factor"] is None else float(match["factor"])
    if duration is not None and duration <= 0:
        raise FaultError(f"--fault {text!r}: the duration after '+' must be > 0 s")
    if action == "slow":
        if factor is None or factor <= 1:
            raise FaultError(f"--fault {text!r}: slow needs a factor above 1 after '*', e.g. "
                             f"slow:{match['target']}@{match['at']}s*3")
    elif factor is not None:
        raise FaultError(f"--fault {text!r}: only slow takes a '*factor'")
    if action == "partition" and duration is None:
        raise FaultError(f"--fault {text!r}: partition needs a duration, e.g. partition:{match['target']}"
                         f"@{match['at']}s+30s")
    if action == "restart" and duration is not None:
        raise FaultError(f"--fault {text!r}: restart takes no duration (crash:X@Ts+Ds restarts after D s)")
    return FaultSpec(action, match["target"], float(match["at"]), duration, factor, raw)


def parse_faults(texts: Iterable[str]) -> tuple[FaultSpec, ...]:
    """Every ``--fault`` (commas separate several in one option), in time order."""
    specs = [parse_fault(part) for text in texts for part in text.split(",") if part.strip()]
    return tuple(sorted(specs, key=lambda s: s.at_s))


@dataclass(frozen=True)
class FaultEvent:
    """One thing the driller does: at ``at_s`` seconds, ``action`` on ``target``."""

    at_s: float  # seconds from the start of the experiment's traffic
    action: str  # crash | restart | partition | heal | slow | unslow
    target: str
    factor: float | None = None
    spec: str = ""


#: The event that ends each fault (a ``+D`` duration, the end of the experiment, a later spec).
UNDO = {"crash": "restart", "partition": "heal", "slow": "unslow"}


def expand(specs: Sequence[FaultSpec]) -> list[FaultEvent]:
    """The events of ``specs`` (a fault with a duration is two events), in time order."""
    events: list[FaultEvent] = []
    for spec in specs:
        events.append(FaultEvent(spec.at_s, spec.action, spec.target, spec.factor, spec.text))
        if spec.end_s is not None and spec.action in UNDO:
            events.append(FaultEvent(spec.end_s, UNDO[spec.action], spec.target, None, spec.text))
    return sorted(events, key=lambda e: e.at_s)


def undone_at_s(log: Sequence[Mapping[str, Any]], event: Mapping[str, Any], t0: float) -> float | None:
    """When the fault of drill-log ``event`` was undone (the next restart, heal or unslow of its
    target, by its own ``+D`` or a separate spec), in seconds from ``t0``; None when it lasted
    to the end."""
    undo = UNDO[event["action"]]
    ends = [e["at"] - t0 for e in log
            if e["action"] == undo and e["target"] == event["target"] and e["at"] >= event["at"]]
    return min(ends) if ends else None


class FaultTarget(Protocol):
    """What a deployment offers the driller (the local backend implements it)."""

    def fault_targets(self) -> dict[str, list[str]]:
        """``{"crash": [component names], "partition": [regions], "slow": [replica names]}``."""

    def apply_fault(self, action: str, target: str, factor: float | None = None) -> dict[str, Any]:
        """Do one event (``crash``, ``restart``, ``partition``, ``heal``, ``slow``, ``unslow``)."""

    def entry_components(self) -> dict[str, str]:
        """Client region → the component its clients enter through."""

    def partition_cuts_clients(self, region: str) -> list[str]:
        """Client regions whose entry link a partition of ``region`` drops."""


def check_targets(specs: Sequence[FaultSpec], target: FaultTarget, system: str) -> None:
    """:class:`FaultError` when a fault names something this system does not have."""
    valid = target.fault_targets()
    for spec in specs:
        kind = "crash" if spec.action in ("crash", "restart") else spec.action
        names = valid.get(kind, [])
        if spec.target not in names:
            what = {"crash": "components", "partition": "regions", "slow": "simulated replicas"}[kind]
            raise FaultError(f"--fault {spec.text!r}: {system} has no {spec.target!r}; its {what} are: "
                             f"{', '.join(names) or '(none)'}")


@dataclass(frozen=True)
class ImpactWindow:
    """Failed requests overlapping ``[start, end]`` (wall seconds) were hit by ``spec``;
    ``client_regions`` limits it to those clients (None: every client)."""

    spec: str
    start: float
    end: float
    client_regions: frozenset[str] | None = None

    def covers(self, record: Mapping[str, Any]) -> bool:
        start = record.get("start")
        if not isinstance(start, (int, float)):
            return False
        end = record.get("failed_at") or record.get("end")
        end = end if isinstance(end, (int, float)) else start
        if self.client_regions is not None and record.get("client_region") not in self.client_regions:
            return False
        return start <= self.end and end >= self.start


@dataclass
class FaultDriller:
    """Runs a drill against ``target`` while an experiment's clients run (call :meth:`step`
    from the thread that started the deployment, since restarted processes must die with it)."""

    target: FaultTarget
    specs: Sequence[FaultSpec]
    grace_s: float = 5.0
    """Seconds after a fault (and after its end) whose failures the fault explains."""
    t0: float = field(default_factory=time.time)
    log: list[dict[str, Any]] = field(default_factory=list)
    _pending: list[FaultEvent] = field(default_factory=list)
    _active: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pending = expand(self.specs)

    def wall(self, offset_s: float) -> float:
        """The wall time ``offset_s`` seconds into the experiment."""
        return self.t0 + offset_s

    def step(self, now: float | None = None) -> None:
        """Do every event that is due."""
        now = time.time() if now is None else now
        while self._pending and self.wall(self._pending[0].at_s) <= now:
            self._do(self._pending.pop(0))

    def _do(self, event: FaultEvent, undo: bool = False) -> None:
        entry: dict[str, Any] = {
            "spec": event.spec, "action": event.action, "target": event.target, "factor": event.factor,
            "at_s": round(time.time() - self.t0, 3), "planned_s": event.at_s,
            "at": time.time(), "undo_at_end": undo,
        }
        try:
            entry["result"] = self.target.apply_fault(event.action, event.target, event.factor)
        except Exception as exc:  # recorded, never silent: the report and the log show it
            entry["error"] = f"{type(exc).__name__}: {exc}"
            log.error("fault %s %s failed: %s", event.action, event.target, entry["error"])
        entry["done"] = time.time()
        self.log.append(entry)
        key = ("crash" if event.action in ("crash", "restart") else
               "partition" if event.action in ("partition", "heal") else "slow", event.target)
        if event.action in ("crash", "partition", "slow"):
            self._active[key] = entry
        else:
            self._active.pop(key, None)

    def finish(self) -> list[dict[str, Any]]:
        """Undo whatever is still in effect (restart, heal, unslow); returns the full log."""
        self._pending.clear()
        for (_, target), entry in list(self._active.items()):
            self._do(FaultEvent(time.time() - self.t0, UNDO[entry["action"]], target, None, entry["spec"]),
                     undo=True)
        return self.log

    def windows(self, end_of_run: float | None = None) -> list[ImpactWindow]:
        """The impact windows of what happened (see the module docstring)."""
        grace = self.grace_s
        entries = self.target.entry_components()
        out: list[ImpactWindow] = []
        began: dict[tuple[str, str], dict[str, Any]] = {}
        last = end_of_run if end_of_run is not None else time.time()
        for item in self.log:
            action, target, at = item["action"], item["target"], float(item["at"])
            out.append(ImpactWindow(item["spec"], at, item["done"] + grace))
            if action in ("crash", "partition"):
                began[(action, target)] = item
            elif action in ("restart", "heal"):
                start = began.pop(("crash" if action == "restart" else "partition", target), None)
                if start is not None:
                    out += self._whole(start, at + grace, entries)
        for start in began.values():
            out += self._whole(start, last, entries)
        return out

    def _whole(self, start: dict[str, Any], end: float, entries: Mapping[str, str]) -> list[ImpactWindow]:
        if start["action"] == "crash":
            cut = [client for client, comp in entries.items() if comp == start["target"]]
        else:
            cut = self.target.partition_cuts_clients(start["target"])
        if not cut:
            return []
        return [ImpactWindow(start["spec"], float(start["at"]), end, frozenset(cut))]


def classify_failures(records: Iterable[Mapping[str, Any]], windows: Sequence[ImpactWindow]) -> dict[str, int]:
    """Count failed records: ``{"failed", "fault_hit", "unexplained"}``; mark each hit record
    with ``fault`` (the spec that explains it) in place when it is a dict."""
    failed = hit = 0
    for record in records:
        if not record.get("failed"):
            continue
        failed += 1
        window = next((w for w in windows if w.covers(record)), None)
        if window is not None:
            hit += 1
            if isinstance(record, dict):
                record["fault"] = window.spec
    return {"failed": failed, "fault_hit": hit, "unexplained": failed - hit}
