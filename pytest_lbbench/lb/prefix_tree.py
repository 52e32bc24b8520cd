"""The character-level radix "proximate tree" the prefix-tree policy routes with.

Behaviour follows the original (``sky/serve/prefix_tree.py``, itself a port of the SGLang
router's approximate tree): every node holds a piece of text and, per target (replica or LB),
the last time in ms that target touched the node. A target "has" a prefix when every node on
the path carries its timestamp; inserting a text for a target stamps the path, splitting an edge
where the text diverges. Per-target character counts drive LRU eviction of that target's leaves.

Implementation notes (why it looks the way it does):

* Edges are compared with ``str.startswith`` over slices and a binary search for the diverging
  position, so a 20k-character prompt costs a few C-level comparisons per node instead of a
  Python loop per character.
* Invariant kept by every operation: if a node carries a target, so does each of its ancestors.
  ``remove_target`` and eviction rely on it to find all of a target's nodes from the root.
* Single-threaded by design: one LB process runs one event loop, and no method awaits.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Collection
from itertools import count

__all__ = ["PrefixTree", "shared_prefix_length"]


def _wall_clock_ms() -> float:
    return time.time() * 1000.0


def shared_prefix_length(edge: str, text: str, start: int = 0) -> int:
    """Length of the common prefix of ``edge`` and ``text[start:]``, without copying ``text``.

    Binary search on the prefix length: each probe compares only the not-yet-confirmed part of
    the edge (``edge[lo:mid]``), so the total work is linear in the shared length and runs in C.
    """
    limit = min(len(edge), len(text) - start)
    if limit <= 0:
        return 0
    if text.startswith(edge if limit == len(edge) else edge[:limit], start):
        return limit
    lo, hi = 0, limit - 1  # edge[:lo] is known to match; edge[:limit] is known not to
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.startswith(edge[lo:mid], start + lo):
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Node:
    """One radix-tree node: an edge label, children by first character, per-target stamps."""

    __slots__ = ("text", "children", "access", "parent")

    def __init__(
        self, text: str, parent: _Node | None, access: dict[str, float] | None = None
    ) -> None:
        self.text = text
        self.children: dict[str, _Node] = {}
        self.access: dict[str, float] = dict(access) if access else {}
        self.parent = parent

    def is_leaf_of(self, target: str) -> bool:
        """True when ``target`` stamped this node but none of its children."""
        if target not in self.access:
            return False
        return all(target not in child.access for child in self.children.values())


class PrefixTree:
    """Approximate multi-target prefix tree (one per policy instance).

    ``char_count[target]`` is the number of characters of all nodes carrying ``target``: the
    size that :meth:`evict` bounds.
    """

    def __init__(self, clock_ms: Callable[[], float] = _wall_clock_ms) -> None:
        self.root = _Node("", None)
        self.char_count: dict[str, int] = {}
        # Access stamps (milliseconds) order the LRU eviction; the LB core hands in its own
        # clock so that the tree never reads wall time behind its back.
        self.clock_ms = clock_ms

    # ------------------------------------------------------------------ updates

    def insert(self, text: str, target: str) -> None:
        """Record that ``target`` now holds ``text`` (stamps the whole path, splits edges)."""
        now = self.clock_ms()
        node = self.root
        node.access[target] = now
        counts = self.char_count
        counts.setdefault(target, 0)
        idx, n = 0, len(text)
        while idx < n:
            first = text[idx]
            child = node.children.get(first)
            if child is None:
                leaf = _Node(text[idx:], node)
                leaf.access[target] = now
                node.children[first] = leaf
                counts[target] += n - idx
                return
            shared = shared_prefix_length(child.text, text, idx)
            if shared < len(child.text):
                # Split the edge: the shared part becomes a new parent that inherits every
                # target's stamp (they all held the whole edge), so char counts stay exact.
                mid = _Node(child.text[:shared], node, child.access)
                child.text = child.text[shared:]
                child.parent = mid
                mid.children[child.text[0]] = child
                node.children[first] = mid
                child = mid
            if target not in child.access:
                counts[target] += shared
            child.access[target] = now
            node = child
            idx += shared

    def remove_target(self, target: str) -> None:
        """Forget ``target`` entirely: strip its stamps and drop nodes nobody holds any more."""
        if target not in self.root.access and target not in self.char_count:
            return
        # Pre-order walk restricted to nodes carrying the target (ancestor invariant), then
        # process in reverse so children are emptied before their parents are inspected.
        order: list[_Node] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            if target not in node.access and node is not self.root:
                continue
            order.append(node)
            stack.extend(node.children.values())
        for node in reversed(order):
            node.access.pop(target, None)
            parent = node.parent
            if parent is not None and not node.children and not node.access:
                del parent.children[node.text[0]]
        self.char_count.pop(target, None)

    def evict(self, max_size: int) -> None:
        """For every target holding more than ``max_size`` characters, drop its least recently
        used leaves (oldest stamp first) until it fits, pruning nodes left empty."""
        over = {t for t, size in self.char_count.items() if size > max_size}
        if not over:
            return
        tie = count()  # heap tie-breaker: nodes are not comparable
        heap: list[tuple[float, int, str, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            for target in over:
                if node.is_leaf_of(target):
                    heapq.heappush(heap, (node.access[target], next(tie), target, node))
        counts = self.char_count
        while heap:
            _, _, target, node = heapq.heappop(heap)
            if counts.get(target, 0) <= max_size:
                continue
            if target in node.access:
                counts[target] -= len(node.text)
                del node.access[target]
            parent = node.parent
            if parent is None:
                continue
            if not node.children and not node.access:
                del parent.children[node.text[0]]
            if parent.is_leaf_of(target):
                heapq.heappush(heap, (parent.access[target], next(tie), target, parent))

    # ------------------------------------------------------------------ queries

    def prefix_match(
        self,
        text: str,
        available: Collection[str],
        load_of: Callable[[str], int],
        *,
        touch: bool = True,
    ) -> tuple[int, str | None]:
        """Longest cached prefix of ``text`` held by an available target.

        Walks down while the next node shares a prefix with the rest of ``text`` and carries at
        least one target in ``available``; a partial edge match counts its shared characters and
        stops. Among the available targets of the deepest node reached, the least loaded (by
        ``load_of``) wins. Returns ``(matched_chars, target)``; ``target`` is None when no
        available target holds even the root.

        With ``touch`` (the original's behaviour) the winner's stamps along the path are
        refreshed, which keeps hot prefixes alive under LRU eviction. Read-only scans, such as
        ranking queued requests for a thief, must pass ``touch=False``.
        """
        avail = available if isinstance(available, (set, frozenset)) else set(available)
        node = self.root
        idx, n = 0, len(text)
        while idx < n:
            child = node.children.get(text[idx])
            if child is None or avail.isdisjoint(child.access):
                break
            node = child
            shared = shared_prefix_length(child.text, text, idx)
            idx += shared
            if shared < len(child.text):
                break
        candidates = [t for t in node.access if t in avail]
        if not candidates:
            return idx, None
        target = min(candidates, key=load_of)
        if touch:
            now = self.clock_ms()
            walk: _Node | None = node
            while walk is not None:
                walk.access[target] = now
                walk = walk.parent
        return idx, target

    def size(self, target: str) -> int:
        """Characters currently held by ``target`` (the eviction measure)."""
        return self.char_count.get(target, 0)

    def targets(self) -> set[str]:
        """Targets known to the tree."""
        return set(self.char_count) | set(self.root.access)

    def used_size_per_target(self) -> dict[str, int]:
        """Recount sizes by walking the whole tree (slow; for checks and tests)."""
        sizes: dict[str, int] = {}
        stack = [self.root]
        while stack:
            node = stack.pop()
            for target in node.access:
                sizes[target] = sizes.get(target, 0) + len(node.text)
            stack.extend(node.children.values())
        return sizes

    def node_count(self) -> int:
        """Number of nodes, root included."""
        total, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            total += 1
            stack.extend(node.children.values())
        return total
