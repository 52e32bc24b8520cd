"""The LB's FIFO request queue and what a queued request carries.

The HTTP shell turns a client request into a :class:`RequestEntry` (through
:meth:`.core.LbCore.arrive`); the core's queue processor pops entries, decides, and settles
``entry.outcome`` with a :class:`Dispatch` (send it there) or a :class:`Failure` (answer with
this error). Entries that cannot be placed go back to the head, so nothing is ever dropped.
Plain data: no event loop, no sockets, no clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from pytest_lbbench.protocol import Decision, HopTiming

from .policies import RequestInfo

if TYPE_CHECKING:
    from .pool import TargetPool

__all__ = ["ClientRequest", "Dispatch", "Failure", "LbHop", "Outcome", "RequestEntry", "RequestQueue"]


@dataclass(frozen=True)
class ClientRequest:
    """The HTTP request as the client sent it, to be proxied upstream unchanged."""

    method: str
    path_qs: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Dispatch:
    """Send the request to ``name`` at ``url`` (a replica, or another LB when ``to_lb``)."""

    name: str
    url: str
    to_lb: bool
    extra_request_headers: tuple[tuple[str, str], ...] = ()
    # Added to the response on its way back: timing headers as they are, decision headers
    # numbered after those already present (:func:`pytest_lbbench.protocol.number_decisions`).
    timing: tuple[HopTiming, ...] = ()
    decisions: tuple[Decision, ...] = ()


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

    request: ClientRequest
    info: RequestInfo
    from_lb: bool
    time_arrive: float
    id: int = field(default_factory=lambda: next(_ids))
    outcome: Outcome | None = None
    time_scheduled: float | None = None
    lb_hop: LbHop | None = None
    # (pool, target) pairs whose pre hook ran for this request; released exactly once when
    # the request finishes, whatever the path (stream end, upstream error, client gone).
    holds: list[tuple[TargetPool, str]] = field(default_factory=list)
    in_queue: bool = False
    left: bool = False  # the client went away (or the request finished) before a decision
    # The core's count of ticks that could not place their queue head, when this arrived: if
    # the count moved before the decision, the request was held (``LbCore.held_total``).
    declines_at_arrival: int = 0
    retries: int = 0  # times the request was decided again after its upstream failed early
    #: The request came on a connection opened for it (None: the server could not tell); shown
    #: in this LB's timing header, for the TTFT decomposition's connection-setup part.
    new_connection: bool | None = None

    @property
    def is_user_request(self) -> bool:
        """Came straight from a client (no from-LB header, not yet pushed to this LB by itself)."""
        return not self.from_lb and self.lb_hop is None

    @property
    def settled(self) -> bool:
        """Decided, or no longer wanted: the queue processor must not place it."""
        return self.outcome is not None or self.left

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
    """FIFO of :class:`RequestEntry` with put-back-at-head (head-of-line order is kept).

    ``on_fill`` is called whenever an entry goes into an empty queue, so a queue processor can
    sleep while there is nothing to place instead of polling."""

    def __init__(self, on_fill: Callable[[], None] | None = None) -> None:
        self._items: deque[RequestEntry] = deque()
        self._on_fill = on_fill

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[RequestEntry]:
        return iter(self._items)

    def append(self, entry: RequestEntry) -> None:
        """Enqueue at the tail (new arrivals)."""
        entry.in_queue = True
        self._items.append(entry)
        if self._on_fill is not None and len(self._items) == 1:
            self._on_fill()

    def put_head(self, entry: RequestEntry) -> None:
        """Return an entry that could not be placed to the head."""
        entry.in_queue = True
        self._items.appendleft(entry)
        if self._on_fill is not None and len(self._items) == 1:
            self._on_fill()

    def pop_head(self) -> RequestEntry | None:
        """Take the head entry, or None when the queue is empty."""
        if not self._items:
            return None
        entry = self._items.popleft()
        entry.in_queue = False
        return entry

    def remove(self, entry: RequestEntry) -> bool:
        """Remove a specific entry (client disconnected, or stolen). False if absent."""
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
