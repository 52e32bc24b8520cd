"""A pool of dial targets (the replicas of an LB, or the LBs it pushes to).

Counterpart of the original ``ClientPool``: which targets are known ("ready"), which of them
are healthy (answer their health probe and did not just fail a request before its first byte),
which are currently eligible ("available": healthy, and the mode's availability rule says yes),
how many requests are in flight to each, and the policy that chooses among the available ones. Targets are identified by membership name; the URL is
what the LB dials (a delay-link proxy in the local deployment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .policies import Policy, RequestInfo

__all__ = ["Ejection", "TargetPool"]


@dataclass(frozen=True)
class Ejection:
    """Why and since when a target is out of the pool (until a health probe answers again)."""

    reason: str
    since: float


class TargetPool:
    """Known targets, their availability and in-flight counts, and the policy over them."""

    def __init__(
        self, kind: str, policy: Policy, *, concurrency_cap: int | None = None,
        dispatches_per_probe: int | None = None,
    ) -> None:
        self.kind = kind
        self.policy = policy
        # ``ReplicaMode.CAP``: a target with this many requests in flight is unavailable until
        # one of them ends (the original flipped availability in the pre/post hooks; computing
        # it on read gives the same answer at every decision).
        self.concurrency_cap = concurrency_cap
        # ``ReplicaMode.PULL``: dispatches left to a target until its next "available" probe
        # result (None = unlimited). See ``LbConfig.pull_dispatches_per_probe``.
        self.dispatches_per_probe = dispatches_per_probe
        self._budget: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        # Stable ordinal per name in order of first appearance, like the original's
        # ``_replica2id``; it names the replica in the ``replica-decision`` header.
        self.ids: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self._available: dict[str, None] = {}  # ordered set
        # Targets taken out for failing (health is orthogonal to availability: a pull replica
        # may be available by its queue and still be dead). Absent = healthy.
        self.ejected: dict[str, Ejection] = {}
        self.ejections_total: dict[str, int] = {}
        self.known = False  # becomes True with the first membership update

    def update(self, targets: Mapping[str, str]) -> None:
        """Apply a membership snapshot ``{name: url}``: new targets start available."""
        self.known = True
        for name, url in targets.items():
            if name not in self.ids:
                self.ids[name] = len(self.ids)
            if name not in self.urls:
                self._available[name] = None
            self.urls[name] = url
            self.in_flight.setdefault(name, 0)
        for name in [n for n in self.urls if n not in targets]:
            del self.urls[name]
            self._available.pop(name, None)
            self.ejected.pop(name, None)
            if self.in_flight.get(name, 0) <= 0:
                self.in_flight.pop(name, None)
        self.policy.set_targets(list(self.urls))

    def reset(self, policy: Policy) -> None:
        """Start over with a fresh ``policy`` over the same targets (``POST /lbbench/reset``):
        every target healthy and available again, as a fresh LB's targets start, with a full per-probe budget,
        and no in-flight counts (the caller checked there are none). Ids are kept: they name
        membership, which a reset keeps."""
        self.policy = policy
        self._budget.clear()
        # As a fresh process: every target healthy until its first probe or failure says not.
        self.ejected.clear()
        self.ejections_total.clear()
        self._available = dict.fromkeys(self.urls)
        self.in_flight = dict.fromkeys(self.urls, 0)
        policy.set_targets(list(self.urls))

    # --- availability -----------------------------------------------------------------

    def available(self) -> list[str]:
        """Targets eligible for selection right now (healthy and available), in membership order."""
        cap = self.concurrency_cap
        ejected = self.ejected
        return [
            name for name in self._available
            if name not in ejected and (cap is None or self.in_flight.get(name, 0) < cap)
        ]

    def healthy(self) -> list[str]:
        """Known targets that are not ejected, in membership order."""
        return [name for name in self.urls if name not in self.ejected]

    def eject(self, name: str, reason: str, now: float) -> bool:
        """Take a known target out until :meth:`readmit`; True when it was healthy until now."""
        if name not in self.urls or name in self.ejected:
            return False
        self.ejected[name] = Ejection(reason, now)
        self.ejections_total[name] = self.ejections_total.get(name, 0) + 1
        return True

    def readmit(self, name: str) -> bool:
        """Put an ejected target back (its health probe answered); True when it was ejected."""
        return self.ejected.pop(name, None) is not None

    def health_report(self, now: float) -> dict[str, dict[str, object]]:
        """``{name: {"healthy", "reason", "for_s", "ejections"}}`` over the known targets."""
        out: dict[str, dict[str, object]] = {}
        for name in self.urls:
            ejection = self.ejected.get(name)
            out[name] = {
                "healthy": ejection is None,
                "reason": None if ejection is None else ejection.reason,
                "for_s": None if ejection is None else round(now - ejection.since, 3),
                "ejections": self.ejections_total.get(name, 0),
            }
        return out

    def set_available(self, name: str, available: bool) -> None:
        """Mark a known target (un)available; unknown names are ignored."""
        if name not in self.urls:
            return
        if available:
            self._available[name] = None
            if self.dispatches_per_probe is not None:
                self._budget[name] = self.dispatches_per_probe
        else:
            self._available.pop(name, None)

    def is_available(self, name: str) -> bool:
        """Whether ``name`` is currently eligible."""
        if name not in self._available or name in self.ejected:
            return False
        return self.concurrency_cap is None or self.in_flight.get(name, 0) < self.concurrency_cap

    # --- selection and hooks ----------------------------------------------------------

    def select(self, info: RequestInfo) -> str | None:
        """The policy's choice among the available targets (None when none is available)."""
        available = self.available()
        if not available:
            return None
        return self.policy.select(info, available)

    def select_among(self, info: RequestInfo, candidates: list[str]) -> str | None:
        """The policy's choice among ``candidates`` (a subset the caller vetted; None if empty)."""
        if not candidates:
            return None
        return self.policy.select(info, candidates)

    def acquire(self, name: str, info: RequestInfo) -> None:
        """A request is being sent to ``name``: count it and run the policy's pre hook."""
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        if self.dispatches_per_probe is not None and name in self._available:
            left = self._budget.get(name, self.dispatches_per_probe) - 1
            self._budget[name] = left
            if left <= 0:
                self._available.pop(name, None)  # until the next probe finds its queue empty
        self.policy.pre_execute(name, info)

    def release(self, name: str, info: RequestInfo) -> None:
        """The request's stream to ``name`` ended: undo :meth:`acquire`."""
        remaining = self.in_flight.get(name, 0) - 1
        if remaining > 0 or name in self.urls:
            self.in_flight[name] = max(0, remaining)
        else:
            self.in_flight.pop(name, None)
        self.policy.post_execute(name, info)

    def url_of(self, name: str) -> str:
        """The URL to dial for ``name``."""
        return self.urls[name]

    def in_flight_by_url(self) -> dict[str, int]:
        """``{url: in_flight}`` over the known targets (the original ``replica_queue``)."""
        return {url: self.in_flight.get(name, 0) for name, url in self.urls.items()}
