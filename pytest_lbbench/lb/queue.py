"""The LB's FIFO request queue and what a queued request carries.

A request handler builds a :class:`RequestEntry`, appends it to the :class:`RequestQueue` and
awaits ``entry.outcome``; the queue processor pops entries, decides, and resolves the outcome
with a :class:`Dispatch` (send it there) or a :class:`Failure` (answer with this error).
Entries that cannot be placed go back to the head, so nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from .policies import RequestInfo

if TYPE_CHECKING:
    from .pool import TargetPool

__all__ = ["Dispatch", "Failure", "LbHop", "Outcome", "RequestEntry", "RequestQueue"]


@dataclass(frozen=True)
class Dispatch:
    """Send the request to ``name`` at ``url`` (a replica, or another LB when ``to_lb``)."""

    name: str
    url: str
    to_lb: bool
    extra_request_headers: tuple[tuple[str, str], ...] = ()
    # Timing and decision headers to add to the response; a decision header's final name gets
    # ``-<n>`` appended, n = decision headers already present in the upstream response.
    timing_headers: tuple[tuple[str, str], ...] = ()
    decision_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Failure:
    """Answer the request with an error instead of proxying it."""

    status: int
    message: str


Outcome = Union[Dispatch, Failure]


@dataclass
class LbHop:
    """The LB-level decision for a request this LB pushed to itself (handled without a hop)."""

    name: str
    url: str
    region: str
    time_scheduled: float


_ids = itertools.count()


@dataclass(eq=False)
class RequestEntry:
    """One client request waiting for (or past) its scheduling decision."""

    method: str
    path_qs: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    info: RequestInfo
    from_lb: bool
    time_arrive: float
    outcome: asyncio.Future[Outcome]
    id: int = field(default_factory=lambda: next(_ids))
    time_scheduled: float | None = None
    lb_hop: LbHop | None = None
    # (pool, target) pairs whose pre hook ran for this request; released exactly once when
    # the request finishes, whatever the path (stream end, upstream error, client gone).
    holds: list[tuple[TargetPool, str]] = field(default_factory=list)
    in_queue: bool = False

    @property
    def is_user_request(self) -> bool:
        """Came straight from a client (no from-LB header, not yet pushed to this LB by itself)."""
        return not self.from_lb and self.lb_hop is None

    @property
    def abandoned(self) -> bool:
        """The outcome is already settled (resolved, or cancelled because the client left)."""
        return self.outcome.done()

    def acquire(self, pool: TargetPool, name: str) -> None:
        """Run ``pool``'s pre hook for ``name`` and remember to undo it."""
        pool.acquire(name, self.info)
        self.holds.append((pool, name))

    def release_all(self) -> None:
        """Run the post hooks of every acquisition (idempotent)."""
        holds, self.holds = self.holds, []
        for pool, name in reversed(holds):
            pool.release(name, self.info)


class RequestQueue:
    """FIFO of :class:`RequestEntry` with put-back-at-head (head-of-line order is kept)."""

    def __init__(self) -> None:
        self._items: deque[RequestEntry] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[RequestEntry]:
        return iter(self._items)

    def append(self, entry: RequestEntry) -> None:
        """Enqueue at the tail (new arrivals)."""
        entry.in_queue = True
        self._items.append(entry)

    def put_head(self, entry: RequestEntry) -> None:
        """Return an entry that could not be placed to the head."""
        entry.in_queue = True
        self._items.appendleft(entry)

    def pop_head(self) -> RequestEntry | None:
        """Take the head entry, or None when the queue is empty."""
        if not self._items:
            return None
        entry = self._items.popleft()
        entry.in_queue = False
        return entry

    def remove(self, entry: RequestEntry) -> bool:
        """Remove a specific entry (client disconnected; later: stolen). False if absent."""
        if not entry.in_queue:
            return False
        try:
            self._items.remove(entry)
        except ValueError:
            return False
        entry.in_queue = False
        return True

    def user_count(self) -> int:
        """Entries that came straight from clients (``/conf`` ``queue_size_actual``)."""
        return sum(1 for entry in self._items if entry.is_user_request)
