"""Load-balancing policies: pick one target (replica or LB) out of the available ones.

The same classes serve both levels of the original design: the replica pool of an LB
(``--policy``) and the pool of LBs a pushing LB forwards to (``--meta-policy``). Targets are
plain strings; our LB uses membership *names* rather than URLs, so placements (notably the
consistent-hashing ring) do not change between runs that happen to get other loopback ports.

Behaviour follows ``sky/serve/load_balancing_policies.py`` of the multi-region branch:

* ``round_robin``: a rotating index over the available targets in the pool's order (the
  original's shuffle of ``ready_replicas`` never reached a decision; see the class).
* ``least_load``: fewest in-flight requests *this process* sent (pre/post hooks).
* ``prefix_tree``: least-load subclass; imbalance fallback (when enabled), else the longest
  cached prefix if it covers more than ``cache_threshold`` of the text, else least load.
* ``consistent_hashing``: least-load subclass; Envoy-style ring over ``x-hash-key``.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from .hashing import xxh64_intdigest
from .prefix_tree import PrefixTree

__all__ = [
    "POLICIES",
    "ConsistentHashingPolicy",
    "LeastLoadPolicy",
    "Policy",
    "PrefixTreeConfig",
    "PrefixTreePolicy",
    "RequestInfo",
    "RoundRobinPolicy",
    "make_policy",
    "request_text",
]


@dataclass(frozen=True)
class RequestInfo:
    """What a policy may look at: the routing text (prefix key) and the ``x-hash-key``."""

    text: str | None = None
    hash_key: str | None = None


def request_text(path: str, body: bytes | str | Mapping[str, Any] | None, method: str = "POST") -> str | None:
    """The prefix-tree key of a request, exactly as the original derives it.

    ``POST /v1/chat/completions`` → ``json.dumps(messages)`` (default separators, so the key
    matches the original byte for byte); ``POST /v1/completions`` → ``prompt`` when it is a
    string; anything else, or a body that is not a JSON object → None.
    """
    if method.upper() != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
        return None
    payload: Any
    if body is None:
        return None
    if isinstance(body, Mapping):
        payload = body
    else:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
    if not isinstance(payload, dict):
        return None
    if path == "/v1/chat/completions":
        messages = payload.get("messages")
        return None if messages is None else json.dumps(messages)
    prompt = payload.get("prompt")
    # The original returns any non-None prompt; a list of prompts cannot be a tree key, so
    # only strings count here.
    return prompt if isinstance(prompt, str) else None


class Policy:
    """Base class: load bookkeeping shared by every policy, selection left to subclasses.

    Call order per request: ``select``/``select_with_match`` over the currently available
    targets, then ``pre_execute`` on the chosen one when the request is sent, and
    ``post_execute`` when its response stream ends. ``load(target)`` is therefore the number of
    open streams this process has to the target.
    """

    name: ClassVar[str] = ""
    #: Whether selection or hooks read ``RequestInfo.text`` (lets callers skip parsing bodies).
    needs_text: ClassVar[bool] = False

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._load: dict[str, int] = {}
        self.load_balancing_enabled = False

    # --- membership -------------------------------------------------------------------

    def set_targets(self, targets: Sequence[str]) -> None:
        """Replace the set of known targets (the "ready" set; availability is per call)."""
        new = list(dict.fromkeys(targets))
        if set(new) == set(self.targets):
            return
        removed = set(self.targets) - set(new)
        self._on_targets_changed(new, removed)
        self.targets = new
        for target in removed:
            # Keep counters of removed targets with streams still open, so their post hooks
            # balance out; forget idle ones.
            if self._load.get(target, 0) <= 0:
                self._load.pop(target, None)
        for target in new:
            self._load.setdefault(target, 0)

    def _on_targets_changed(self, new: list[str], removed: set[str]) -> None:
        """Subclass hook, called before ``self.targets`` is replaced."""

    # --- selection --------------------------------------------------------------------

    def select(self, info: RequestInfo, available: Sequence[str]) -> str | None:
        """The target for this request among ``available`` (None when it is empty)."""
        return self.select_with_match(info, available)[0]

    def select_with_match(
        self, info: RequestInfo, available: Sequence[str], *, touch: bool = True
    ) -> tuple[str | None, float]:
        """Like :meth:`select`, also returning the prefix match rate (0.0 when not applicable).

        ``touch=False`` makes the call free of side effects on the policy state (for scans that
        only rank requests, such as choosing what a thief should steal).
        """
        if not available:
            return None, 0.0
        return self._select(info, available, touch=touch), 0.0

    def _select(self, info: RequestInfo, available: Sequence[str], *, touch: bool) -> str:
        raise NotImplementedError

    # --- hooks ------------------------------------------------------------------------

    def pre_execute(self, target: str, info: RequestInfo) -> None:
        """A request is being sent to ``target``."""
        self._load[target] = self._load.get(target, 0) + 1

    def post_execute(self, target: str, info: RequestInfo) -> None:
        """The response stream of a request sent to ``target`` ended (or failed)."""
        remaining = self._load.get(target, 0) - 1
        if remaining > 0 or target in self.targets:
            self._load[target] = max(0, remaining)
        else:
            self._load.pop(target, None)

    def load(self, target: str) -> int:
        """In-flight requests this process sent to ``target``."""
        return self._load.get(target, 0)

    def least_loaded(self, available: Sequence[str]) -> str:
        """The available target with the fewest in-flight requests (first one on ties)."""
        return min(available, key=self.load)

    def enable_load_balancing(self) -> None:
        """Turn on the imbalance fallback (only the prefix tree uses it)."""
        self.load_balancing_enabled = True

    # --- background work --------------------------------------------------------------

    @property
    def eviction_interval_s(self) -> float | None:
        """Seconds between :meth:`evict` calls, or None when the policy has nothing to evict."""
        return None

    def use_clock(self, clock_s: Callable[[], float]) -> None:
        """Take time from ``clock_s`` (seconds) instead of the wall clock, where the policy
        keeps time at all (the prefix tree's access stamps). Default: nothing to do."""

    def evict(self) -> None:
        """Periodic housekeeping (prefix-tree LRU eviction)."""

    def describe(self) -> dict[str, Any]:
        """The policy's effective configuration, for the "System Config" line and results."""
        return {"name": self.name, "load_balancing_enabled": self.load_balancing_enabled}

    def state_size(self) -> dict[str, int]:
        """How much state the policy holds per target (``GET /conf``), so that a soak can tell
        a bounded structure filling up from a leak. Default: none."""
        return {}


class RoundRobinPolicy(Policy):
    """Rotate through the available targets, in the order they are given.

    The original's ``RoundRobinPolicy`` shuffles ``ready_replicas`` when the set changes, but
    ``ClientPool.select_replica`` always goes through ``select_replica_from_subset``, which swaps
    ``ready_replicas`` for the pool's ``_available_replicas`` list (membership order, a replica
    re-appended at the end when it becomes available again) before ``_select_replica`` reads
    ``ready_replicas[index % len]``. So the shuffle never reaches a decision: the rotation runs
    over the available targets in the pool's order, and ``index`` restarts at 0 when the target
    set changes. ``seed`` is accepted for compatibility and unused.
    """

    name = "round_robin"

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__()
        del seed  # the shuffle had no effect on selection (see the class docstring)
        self._index = 0

    def _on_targets_changed(self, new: list[str], removed: set[str]) -> None:
        self._index = 0

    def _select(self, info: RequestInfo, available: Sequence[str], *, touch: bool) -> str:
        choice = available[self._index % len(available)]
        if touch:
            # ``self.index = (self.index + 1) % len(self.ready_replicas)`` over the subset.
            self._index = (self._index + 1) % len(available)
        return choice


class LeastLoadPolicy(Policy):
    """Fewest in-flight requests wins."""

    name = "least_load"

    def _select(self, info: RequestInfo, available: Sequence[str], *, touch: bool) -> str:
        return self.least_loaded(available)


@dataclass(frozen=True)
class PrefixTreeConfig:
    """The SGLang-router-derived constants of the original ``PrefixTreeConfig``."""

    cache_threshold: float = 0.5
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.0001
    eviction_interval_s: float = 60.0
    max_tree_size: int = 2**24
    least_load_fallback: bool = True
    """False = the later ``DISABLE_LEAST_LOAD_IN_PREFIX`` variant: always take the best match."""


class PrefixTreePolicy(LeastLoadPolicy):
    """Cache-aware routing: longest cached prefix, with least-load fallbacks."""

    name = "prefix_tree"
    needs_text = True

    def __init__(self, config: PrefixTreeConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = replace(config or PrefixTreeConfig(), **overrides)
        self.tree = PrefixTree()

    def use_clock(self, clock_s: Callable[[], float]) -> None:
        self.tree.clock_ms = lambda: clock_s() * 1000.0

    def _on_targets_changed(self, new: list[str], removed: set[str]) -> None:
        # New targets get a root stamp (an empty insert), so every available target can be
        # returned by a prefix match even before it served anything.
        for target in new:
            if target not in self.targets:
                self.tree.insert("", target)
        for target in removed:
            self.tree.remove_target(target)

    def is_imbalanced(self, available: Sequence[str]) -> bool:
        """``max − min > abs`` and ``max > rel × min`` over the loads of ``available``."""
        loads = [self.load(t) for t in available]
        lo, hi = min(loads), max(loads)
        return (
            hi - lo > self.config.balance_abs_threshold
            and hi > self.config.balance_rel_threshold * lo
        )

    def select_with_match(
        self, info: RequestInfo, available: Sequence[str], *, touch: bool = True
    ) -> tuple[str | None, float]:
        if not available:
            return None, 0.0
        text = info.text
        if not text:
            # No routing text (e.g. GET /v1/models). The original would divide by zero on an
            # empty prompt; treat it like a missing text.
            return self.least_loaded(available), 0.0
        if self.load_balancing_enabled and self.is_imbalanced(available):
            return self.least_loaded(available), 0.0
        matched, target = self.tree.prefix_match(text, available, self.load, touch=touch)
        rate = matched / len(text)
        if target is not None and (rate > self.config.cache_threshold or not self.config.least_load_fallback):
            return target, rate
        return self.least_loaded(available), rate

    def pre_execute(self, target: str, info: RequestInfo) -> None:
        super().pre_execute(target, info)
        if info.text:
            self.tree.insert(info.text, target)

    @property
    def eviction_interval_s(self) -> float | None:
        return self.config.eviction_interval_s

    def evict(self) -> None:
        self.tree.evict(self.config.max_tree_size)

    def state_size(self) -> dict[str, int]:
        # Characters held per target: what eviction bounds by ``max_tree_size`` (it may exceed
        # the bound by up to one eviction interval's inserts, as in sglang-router).
        return dict(self.tree.char_count)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **asdict(self.config)}


class ConsistentHashingPolicy(LeastLoadPolicy):
    """Envoy ring hash over ``x-hash-key``; least load for requests without a key."""

    name = "consistent_hashing"
    MIN_RING_SIZE: ClassVar[int] = 1024
    MAX_RING_SIZE: ClassVar[int] = 8 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self._ring_hashes: list[int] = []
        self._ring_targets: list[str] = []

    def _on_targets_changed(self, new: list[str], removed: set[str]) -> None:
        self._build_ring(new)

    def _build_ring(self, targets: list[str]) -> None:
        if not targets:
            self._ring_hashes, self._ring_targets = [], []
            return
        # Equal weights: each target gets ceil(MIN / n) points (Envoy's scale rule with
        # normalised weight 1/n), capped by the maximum ring size.
        per_target = min(math.ceil(self.MIN_RING_SIZE / len(targets)), self.MAX_RING_SIZE // len(targets))
        ring = sorted(
            (xxh64_intdigest(f"{target}{i}"), target) for target in targets for i in range(per_target)
        )
        self._ring_hashes = [h for h, _ in ring]
        self._ring_targets = [t for _, t in ring]

    @property
    def ring_size(self) -> int:
        """Number of points on the ring."""
        return len(self._ring_hashes)

    def target_for_key(self, key: str, available: Sequence[str]) -> str | None:
        """First ring point at or after ``hash(key)`` (wrapping) owned by an available target."""
        if not self._ring_hashes:
            return None
        avail = set(available)
        start = bisect.bisect_left(self._ring_hashes, xxh64_intdigest(key))
        targets = self._ring_targets
        n = len(targets)
        for step in range(n):
            candidate = targets[(start + step) % n]
            if candidate in avail:
                return candidate
        return None

    def _select(self, info: RequestInfo, available: Sequence[str], *, touch: bool) -> str:
        if info.hash_key:
            target = self.target_for_key(info.hash_key, available)
            if target is not None:
                return target
            # Available targets that are not on the ring (membership not applied yet):
            # the original would return None and stall; least load keeps the request moving.
        return self.least_loaded(available)


POLICIES: dict[str, Callable[..., Policy]] = {
    RoundRobinPolicy.name: RoundRobinPolicy,
    LeastLoadPolicy.name: LeastLoadPolicy,
    PrefixTreePolicy.name: PrefixTreePolicy,
    ConsistentHashingPolicy.name: ConsistentHashingPolicy,
}
"""Policy registry: name → class (called with the policy's keyword configuration)."""


def make_policy(name: str, **config: Any) -> Policy:
    """Build the policy registered as ``name``; unknown names raise ValueError listing valid ones."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown load-balancing policy {name!r}; valid policies: {', '.join(sorted(POLICIES))}"
        ) from None
    try:
        return factory(**config)
    except TypeError as exc:
        raise ValueError(f"invalid configuration for policy {name!r}: {exc}") from None
