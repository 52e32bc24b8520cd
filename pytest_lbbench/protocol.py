"""The wire contract between the client, the balancers, the gateway and the simulated replicas.

Everything two of our processes say to each other over HTTP beyond the OpenAI API is defined
here, once: header names, the control paths, the membership payloads (as dataclasses with their
own validation) and the decision / timing headers a balancer adds to a response (as structured
values, written and parsed here, so no reader needs a regex of its own).

The decision and timing headers keep the original SkyPilot LB's names and prose
(``lb-decision-<n>: Select LB in region <r> (<url>)``, ``first-hop-sky-time-arrive``, …): result
files of the original and ours read alike. No pytest and no aiohttp import here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

__all__ = [
    "FROM_LB_HEADER",
    "GatewayDecision",
    "GatewayMembership",
    "HASH_KEY_HEADER",
    "HopTiming",
    "LbDecision",
    "LbMembership",
    "MEMBERSHIP_PATH",
    "MembershipError",
    "QUEUE_SIZE_HEADER",
    "REPLICA_HEADER",
    "RESET_PATH",
    "FAULT_PATH",
    "CONTROL_TOKEN_ENV",
    "CONTROL_TOKEN_HEADER",
    "ReplicaDecision",
    "Decision",
    "number_decisions",
    "parse_decisions",
    "served_by",
]

# ---------------------------------------------------------------------------- header names

#: Request header the client sets to the user's identity; consistent hashing keys on it
#: (the original benchmark's name).
HASH_KEY_HEADER = "x-hash-key"
#: Response header a simulated replica sets to its name, so the client knows who served it.
REPLICA_HEADER = "x-lbbench-replica"
#: Request header an LB sets when it pushes a request to a peer LB (the original's name): the
#: peer then places it on its own replicas instead of pushing it on.
FROM_LB_HEADER = "X-Sky-Serve-From-LB"
#: Request header with the queue size the pushing LB last saw at the peer (the original's name).
QUEUE_SIZE_HEADER = "X-Sky-Serve-Queue-Size"

# ---------------------------------------------------------------------------- control paths

#: ``POST`` the membership (:class:`LbMembership` / :class:`GatewayMembership`) to a balancer.
MEMBERSHIP_PATH = "/lbbench/membership"
#: ``GET``: an LB is up (the original LB's readiness path, reference §2.5); peers probe it too.
LB_HEALTH_PATH = "/sky-lb-health"
#: ``POST``: back to the state of a fresh process (409 while requests are in flight).
RESET_PATH = "/lbbench/reset"
CONTROL_TOKEN_ENV = "LBBENCH_CONTROL_TOKEN"
"""Environment variable that hands the run's control secret to every process it starts."""
CONTROL_TOKEN_HEADER = "X-Lbbench-Control-Token"
"""Request header that carries the secret to a control endpoint (see :mod:`pytest_lbbench.control`)."""
FAULT_PATH = "/lbbench/fault"
"""Fault drills: ``POST`` to a simulated replica (``{"slowdown": F}``) or to the delay links'
control port (``{"partition": [link names], "heal": [link names]}``); needs the run's secret."""


# ---------------------------------------------------------------------------- membership


class MembershipError(ValueError):
    """A membership payload that cannot be applied (the message says which field and why)."""


def _string_map(payload: Mapping[str, Any], key: str) -> dict[str, str]:
    value = payload.get(key, {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise MembershipError(f"{key!r} must be an object of name → string")
    return dict(value)


def _check_addressee(payload: object, me: str, kind: str) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise MembershipError("membership must be a JSON object")
    named = payload.get("self", me)
    if named != me:
        raise MembershipError(f"membership is for {named!r}, but this {kind} is {me!r}")
    return payload


@dataclass(frozen=True)
class LbMembership:
    """Who an LB works with: ``{"self", "lbs", "replicas", "regions"}``.

    ``lbs`` lists every LB including the addressee (its own entry may be its direct URL);
    ``replicas`` are the replicas the addressee dispatches to; ``regions`` names the region of
    every component (LBs and replicas), shown in ``lb-decision`` headers.
    """

    self_name: str
    lbs: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, str] = field(default_factory=dict)
    regions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The payload to ``POST`` to :data:`MEMBERSHIP_PATH`."""
        return {"self": self.self_name, "lbs": dict(self.lbs), "replicas": dict(self.replicas),
                "regions": dict(self.regions)}

    @classmethod
    def from_json(cls, payload: object, me: str) -> LbMembership:
        """Validate a payload addressed to the LB named ``me`` (a missing ``self`` means ``me``).

        ``lb_regions`` is accepted as another name for ``regions`` (older launchers sent it).
        """
        data = _check_addressee(payload, me, "LB")
        return cls(
            self_name=me,
            lbs=_string_map(data, "lbs"),
            replicas=_string_map(data, "replicas"),
            regions={**_string_map(data, "regions"), **_string_map(data, "lb_regions")},
        )


@dataclass(frozen=True)
class GatewayMembership:
    """Who a gateway front end routes to: ``{"self", "backends", "regions", "region_order"}``.

    ``region_order`` lists regions nearest to the front end first; ``None`` (absent) means
    "the front end's own region, then the others by name".
    """

    self_name: str
    backends: dict[str, str] = field(default_factory=dict)
    regions: dict[str, str] = field(default_factory=dict)
    region_order: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The payload to ``POST`` to :data:`MEMBERSHIP_PATH`."""
        body: dict[str, Any] = {"self": self.self_name, "backends": dict(self.backends),
                                "regions": dict(self.regions)}
        if self.region_order is not None:
            body["region_order"] = list(self.region_order)
        return body

    @classmethod
    def from_json(cls, payload: object, me: str) -> GatewayMembership:
        """Validate a payload addressed to the gateway named ``me``."""
        data = _check_addressee(payload, me, "gateway")
        order = data.get("region_order")
        if order is not None and (not isinstance(order, list) or not all(isinstance(r, str) for r in order)):
            raise MembershipError("'region_order' must be a list of region names")
        return cls(
            self_name=me,
            backends=_string_map(data, "backends"),
            regions=_string_map(data, "regions"),
            region_order=None if order is None else tuple(order),
        )


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class LbDecision:
    """An LB hop: the request went through the LB of ``region`` at ``url``."""

    region: str
    url: str
    KEY = "lb-decision"

    def value(self) -> str:
        return f"Select LB in region {self.region} ({self.url})"


@dataclass(frozen=True)
class ReplicaDecision:
    """The LB that dispatched to a replica: which one (its id in the LB's pool) and where."""

    replica_id: int
    url: str
    KEY = "replica-decision"

    def value(self) -> str:
        return f"Select Replica with id {self.replica_id} ({self.url})"


@dataclass(frozen=True)
class GatewayDecision:
    """A gateway front end's choice: ``backend`` in ``region``, spilled past nearer regions or not."""

    backend: str
    region: str
    spill: bool
    KEY = "gateway-decision"

    def value(self) -> str:
        return f"Select backend {self.backend} in region {self.region} (spill: {'yes' if self.spill else 'no'})"


Decision = Union[LbDecision, ReplicaDecision, GatewayDecision]

_PARSERS: tuple[tuple[type[LbDecision] | type[ReplicaDecision] | type[GatewayDecision], re.Pattern[str]], ...] = (
    (LbDecision, re.compile(r"^Select LB in region (?P<region>\S+) \((?P<url>[^)]*)\)$")),
    (ReplicaDecision, re.compile(r"^Select Replica with id (?P<replica_id>-?\d+) \((?P<url>[^)]*)\)$")),
    (GatewayDecision, re.compile(
        r"^Select backend (?P<backend>\S+) in region (?P<region>\S+) \(spill: (?P<spill>yes|no)\)$")),
)
_NUMBERED = re.compile(r"^(?P<key>lb-decision|replica-decision|gateway-decision)-(?P<n>\d+)$", re.IGNORECASE)


def number_decisions(existing: Iterable[str], decisions: Iterable[Decision]) -> list[tuple[str, str]]:
    """Header items for ``decisions`` appended after those already in ``existing`` (header
    names): ``<key>-<n>`` with ``n`` counting every decision header of the response, so the
    hop nearest the replica has the lowest number (headers are added on the way back)."""
    n = sum(1 for key in existing if _NUMBERED.match(key))
    items = []
    for decision in decisions:
        items.append((f"{decision.KEY}-{n}", decision.value()))
        n += 1
    return items


def _parse_one(key: str, value: str) -> Decision | None:
    for cls, pattern in _PARSERS:
        if cls.KEY != key:
            continue
        match = pattern.match(value.strip())
        if match is None:
            return None
        fields = match.groupdict()
        if cls is ReplicaDecision:
            return ReplicaDecision(replica_id=int(fields["replica_id"]), url=fields["url"])
        if cls is GatewayDecision:
            return GatewayDecision(backend=fields["backend"], region=fields["region"], spill=fields["spill"] == "yes")
        return LbDecision(region=fields["region"], url=fields["url"])
    return None


def parse_decisions(headers: Mapping[str, str]) -> list[Decision]:
    """Every decision header of a response, in number order (the hop nearest the replica
    first); headers whose value is not in our format are skipped."""
    numbered: list[tuple[int, Decision]] = []
    for key, value in headers.items():
        match = _NUMBERED.match(key)
        if match is None:
            continue
        decision = _parse_one(match.group("key").lower(), value)
        if decision is not None:
            numbered.append((int(match.group("n")), decision))
    return [decision for _, decision in sorted(numbered, key=lambda item: item[0])]


def served_by(headers: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """Which replica (its :data:`REPLICA_HEADER`) and which LB / gateway regions, nearest the
    replica first, served a response."""
    lower = {k.lower(): v for k, v in headers.items()}
    regions = [d.region for d in parse_decisions(lower) if isinstance(d, (LbDecision, GatewayDecision))]
    return lower.get(REPLICA_HEADER), regions


# ---------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class HopTiming:
    """When an LB hop saw a request arrive and when it scheduled it (epoch seconds), and
    whether the request came on a connection opened for it (``None``: unknown).

    ``hop`` is ``"first"`` for the LB that dispatched to the replica and ``"second"`` for an LB
    that pushed to another LB: the original numbers hops on the way back ("first and second hop
    is inversed", its comment). The times keep the original's header names; the connection
    flag is ours (``<hop>-hop-lbbench-new-connection: 1`` or ``0``).
    """

    hop: Literal["first", "second"]
    time_arrive: float
    time_scheduled: float
    new_connection: bool | None = None

    def headers(self) -> tuple[tuple[str, str], ...]:
        items = (
            (f"{self.hop}-hop-sky-time-arrive", str(self.time_arrive)),
            (f"{self.hop}-hop-sky-time-scheduled", str(self.time_scheduled)),
        )
        if self.new_connection is None:
            return items
        return items + ((f"{self.hop}-hop-lbbench-new-connection", "1" if self.new_connection else "0"),)

    @classmethod
    def parse(cls, headers: Mapping[str, str], hop: Literal["first", "second"]) -> HopTiming | None:
        """The hop's timing from a response's headers, ``None`` if it is not there."""
        lower = {k.lower(): v for k, v in headers.items()}
        flag = {"1": True, "0": False}.get(lower.get(f"{hop}-hop-lbbench-new-connection", ""))
        try:
            return cls(hop, float(lower[f"{hop}-hop-sky-time-arrive"]),
                       float(lower[f"{hop}-hop-sky-time-scheduled"]), flag)
        except (KeyError, ValueError):
            return None
