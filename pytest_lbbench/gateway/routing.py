"""The routing decision of one gateway front end: nearest region with capacity, then spill.

Pure logic (no I/O, injectable clock), so it can be tested without processes. The rules follow
Google's documented behaviour for a global external Application Load Balancer whose backends
use the RATE balancing mode (what a multi-cluster Gateway with
``networking.gke.io/max-rate-per-endpoint`` configures):

1. Regions are tried nearest first (``region_order``, computed by the caller from the RTT matrix).
2. A region *accepts* a request when it has healthy backends and its request rate over the last
   ``window_s`` seconds is below ``max_rate_per_endpoint × healthy backends``. Its capacity
   shrinks as backends fail health checks.
3. A region in which more than half of the backends are unhealthy is skipped while another
   region can take the request (Google's KB "Multi Cluster Ingress traffic spillover", cause 2).
4. When every eligible region is at its budget, traffic is balanced over all of them in
   proportion to capacity (same KB, cause 3): the least utilised region (rate / capacity) gets
   the request, nearest first on ties. The gateway never rejects for capacity.
5. Outlier detection (optional, :meth:`Router.record_request`): a backend that failed
   ``consecutive_errors`` requests in a row is ejected for ``base_ejection_time × ejections``,
   as if unhealthy, while at most ``max_ejection_percent`` of the backends are ejected.
6. Within the chosen region, backends are taken round-robin. Nothing about the request is
   looked at: no prefix, hash key or queue awareness.

A request counts against a region's and a backend's rate when it is *sent*, and only in the
front end that sent it: our front ends do not share state, so each enforces the whole budget on
its own traffic. (The real product aggregates load reports across the Google front-end fleet,
so with several client regions our emulation admits up to one budget *per front end*.)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Backend", "Choice", "Router", "SlidingWindowCounter"]


class SlidingWindowCounter:
    """Events in the last ``window_s`` seconds (an exact sliding log, not fixed buckets)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        """Record one event at ``now`` (a monotonic clock reading)."""
        self._times.append(now)

    def count(self, now: float) -> int:
        """Events in ``(now − window_s, now]``."""
        horizon = now - self.window_s
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        return len(self._times)

    def rate(self, now: float) -> float:
        """Events per second over the window."""
        return self.count(now) / self.window_s


@dataclass
class Backend:
    """One backend (a replica) as this front end sees it."""

    name: str
    url: str
    region: str
    counter: SlidingWindowCounter
    # Optimistic start: the local backend only announces replicas that reported ready, and
    # starting unhealthy would send every request of the first health interval elsewhere.
    healthy: bool = True
    consecutive_ok: int = 0
    consecutive_failed: int = 0
    requests_total: int = 0
    consecutive_errors: int = 0  # requests failed in a row before their first byte
    ejected_until: float | None = None  # outlier detection (router clock)
    ejections: int = 0
    ok_since_ejection: int = 0  # health checks passed since the ejection

    def serving(self, now: float) -> bool:
        """Healthy by its health checks and not ejected by outlier detection."""
        return self.healthy and (self.ejected_until is None or now >= self.ejected_until)


@dataclass(frozen=True)
class Choice:
    """Where one request goes and why."""

    backend: str
    url: str
    region: str
    spill: bool
    """The region is not the nearest one that has backends at all (the "home" region)."""
    reason: str
    """``local``; or why home was passed over: ``capacity`` or ``health``; or ``overflow``
    when every eligible region was at its budget and this one was the least utilised."""
    over_capacity: bool
    """Every eligible region was at its budget when the request was placed."""


@dataclass
class _RegionView:
    name: str
    members: list[Backend]
    healthy: list[Backend]
    count: int
    capacity: float  # requests per window

    @property
    def usable(self) -> bool:
        return bool(self.healthy)

    @property
    def eligible(self) -> bool:
        # Rule 3: more than half unhealthy → fail over while other regions can serve.
        return bool(self.healthy) and 2 * len(self.healthy) >= len(self.members)

    @property
    def has_spare(self) -> bool:
        return self.count < self.capacity

    @property
    def utilisation(self) -> float:
        return self.count / self.capacity


@dataclass
class _Stats:
    requests_by_region: dict[str, int] = field(default_factory=dict)
    spill_by_region: dict[str, int] = field(default_factory=dict)
    spill_by_reason: dict[str, int] = field(default_factory=dict)
    spill_total: int = 0
    over_capacity_total: int = 0


class Router:
    """Membership, health state, rate accounting and the per-request choice of one front end."""

    def __init__(
        self,
        *,
        max_rate_per_endpoint: float,
        window_s: float,
        healthy_threshold: int = 2,
        unhealthy_threshold: int = 2,
        consecutive_errors: int | None = None,
        base_ejection_time_s: float = 30.0,
        max_ejection_percent: float = 50.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` is a monotonic clock in the seconds the budget and window are given in;
        ``consecutive_errors=None`` turns outlier detection off."""
        self.consecutive_errors = consecutive_errors
        self.base_ejection_time_s = base_ejection_time_s
        self.max_ejection_percent = max_ejection_percent
        self.max_rate_per_endpoint = max_rate_per_endpoint
        self.window_s = window_s
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self._clock = clock
        self.backends: dict[str, Backend] = {}
        self.region_order: list[str] = []
        self._region_counters: dict[str, SlidingWindowCounter] = {}
        self._cursors: dict[str, int] = {}
        self.stats = _Stats()

    # ------------------------------------------------------------------ membership

    def set_membership(
        self,
        backends: Mapping[str, str],
        regions: Mapping[str, str],
        region_order: Sequence[str],
    ) -> list[str]:
        """Replace the backend set. Returns the regions that had to be appended to the order.

        ``backends`` maps name → URL, ``regions`` name → region (every backend needs one),
        ``region_order`` lists regions nearest first. Regions that host backends but are
        missing from the order are appended (sorted), so no backend is unreachable. A backend
        that stays (same name and URL) keeps its health state and rate history.
        """
        missing = sorted(name for name in backends if name not in regions)
        if missing:
            raise ValueError(f"no region given for backend(s) {', '.join(missing)}")
        order: list[str] = []
        for region in region_order:
            if region not in order:
                order.append(region)
        appended = sorted({regions[name] for name in backends} - set(order))
        order.extend(appended)
        new: dict[str, Backend] = {}
        for name, url in backends.items():
            old = self.backends.get(name)
            if old is not None and old.url == url and old.region == regions[name]:
                new[name] = old
            else:
                new[name] = Backend(name, url, regions[name], SlidingWindowCounter(self.window_s))
        self.backends = new
        self.region_order = order
        for region in order:
            self._region_counters.setdefault(region, SlidingWindowCounter(self.window_s))
        return appended

    @property
    def home_region(self) -> str | None:
        """The nearest region that has any backend: traffic there is not a spill."""
        occupied = {b.region for b in self.backends.values()}
        return next((r for r in self.region_order if r in occupied), None)

    # ------------------------------------------------------------------ health

    def record_probe(self, name: str, ok: bool) -> bool:
        """Apply one health-check result; True when the backend's health state flipped."""
        backend = self.backends.get(name)
        if backend is None:  # removed by a membership update while the probe ran
            return False
        if ok:
            backend.consecutive_ok += 1
            backend.consecutive_failed = 0
            if backend.ejected_until is not None:
                backend.ok_since_ejection += 1
                if backend.ok_since_ejection >= self.healthy_threshold:
                    backend.ejected_until = None  # uneject on passing health checks (Envoy's default)
                    return True
            if not backend.healthy and backend.consecutive_ok >= self.healthy_threshold:
                backend.healthy = True
                return True
        else:
            backend.consecutive_failed += 1
            backend.consecutive_ok = 0
            if backend.healthy and backend.consecutive_failed >= self.unhealthy_threshold:
                backend.healthy = False
                return True
        return False

    def record_request(self, name: str, ok: bool) -> bool:
        """Outlier detection: a request to ``name`` started (``ok``) or failed before its first
        byte. True when this ejected the backend."""
        backend = self.backends.get(name)
        if backend is None or self.consecutive_errors is None:
            return False
        if ok:
            backend.consecutive_errors = 0
            return False
        backend.consecutive_errors += 1
        now = self._clock()
        if backend.consecutive_errors < self.consecutive_errors or not backend.serving(now):
            return False
        ejected = sum(1 for b in self.backends.values() if b.ejected_until is not None and now < b.ejected_until)
        if 100.0 * (ejected + 1) > self.max_ejection_percent * len(self.backends):
            return False
        backend.ejections += 1
        backend.ejected_until = now + self.base_ejection_time_s * backend.ejections
        backend.ok_since_ejection = 0
        backend.consecutive_errors = 0
        return True

    # ------------------------------------------------------------------ routing

    def _views(self, now: float) -> list[_RegionView]:
        views = []
        for region in self.region_order:
            members = sorted(
                (b for b in self.backends.values() if b.region == region), key=lambda b: b.name
            )
            if not members:
                continue
            healthy = [b for b in members if b.serving(now)]
            views.append(
                _RegionView(
                    name=region,
                    members=members,
                    healthy=healthy,
                    count=self._region_counters[region].count(now),
                    capacity=self.max_rate_per_endpoint * len(healthy) * self.window_s,
                )
            )
        return views

    @staticmethod
    def _pick(views: list[_RegionView]) -> tuple[_RegionView, bool]:
        """Nearest region with spare capacity; else the least utilised (True = all full)."""
        for view in views:
            if view.has_spare:
                return view, False
        # ``min`` keeps the first of equals, and ``views`` is nearest first.
        return min(views, key=lambda v: v.utilisation), True

    def choose(self, exclude: frozenset[str] = frozenset()) -> Choice | None:
        """Pick the backend for the next request and account for it; None = nothing healthy.
        ``exclude``: backends not to pick (a retry never goes back to the one that failed)."""
        now = self._clock()
        views = self._views(now)
        if exclude:
            for view in views:
                view.healthy = [b for b in view.healthy if b.name not in exclude]
        candidates = [v for v in views if v.eligible] or [v for v in views if v.usable]
        if not candidates:
            return None
        view, over_capacity = self._pick(candidates)
        home = views[0]
        cursor = self._cursors.get(view.name, 0)
        backend = view.healthy[cursor % len(view.healthy)]
        self._cursors[view.name] = (cursor + 1) % len(view.healthy)

        spill = view.name != home.name
        if not spill:
            reason = "local"
        elif over_capacity:
            reason = "overflow"
        elif not home.eligible:
            reason = "health"
        else:
            reason = "capacity"

        self._region_counters[view.name].add(now)
        backend.counter.add(now)
        backend.requests_total += 1
        stats = self.stats
        stats.requests_by_region[view.name] = stats.requests_by_region.get(view.name, 0) + 1
        if spill:
            stats.spill_total += 1
            stats.spill_by_region[view.name] = stats.spill_by_region.get(view.name, 0) + 1
            stats.spill_by_reason[reason] = stats.spill_by_reason.get(reason, 0) + 1
        if over_capacity:
            stats.over_capacity_total += 1
        return Choice(backend.name, backend.url, view.name, spill, reason, over_capacity)

    # ------------------------------------------------------------------ reporting

    def describe(self) -> dict[str, Any]:
        """Per-region and per-backend state for ``/conf`` (rates per second of ``clock``)."""
        now = self._clock()
        regions: dict[str, Any] = {}
        for view in self._views(now):
            regions[view.name] = {
                "backends": [b.name for b in view.members],
                "healthy": [b.name for b in view.healthy],
                "eligible": view.eligible,
                "budget_rps": view.capacity / self.window_s,
                "rate_rps": view.count / self.window_s,
                "requests_total": self.stats.requests_by_region.get(view.name, 0),
                "spill_in_total": self.stats.spill_by_region.get(view.name, 0),
            }
        return {
            "region_order": list(self.region_order),
            "home_region": self.home_region,
            "regions": regions,
            "healthy_backends": sorted(b.name for b in self.backends.values() if b.serving(now)),
            "backend_health": {
                b.name: {
                    "healthy": b.serving(now),
                    "health_check": "healthy" if b.healthy else "unhealthy",
                    "ejected_for_s": None if b.ejected_until is None or now >= b.ejected_until
                    else round(b.ejected_until - now, 3),
                    "ejections": b.ejections,
                }
                for b in self.backends.values()
            },
            "backend_regions": {b.name: b.region for b in self.backends.values()},
            "backend_rate_rps": {b.name: b.counter.rate(now) for b in self.backends.values()},
            "backend_requests_total": {b.name: b.requests_total for b in self.backends.values()},
            "spill_total": self.stats.spill_total,
            "spill_by_region": dict(self.stats.spill_by_region),
            "spill_by_reason": dict(self.stats.spill_by_reason),
            "over_capacity_total": self.stats.over_capacity_total,
        }
