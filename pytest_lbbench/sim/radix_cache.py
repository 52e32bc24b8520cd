"""A token-level radix prefix cache with a token capacity, modelled on SGLang's ``RadixCache``.

The cache also does the KV-pool accounting of the whole engine, because on a real engine the
prefix cache and the running requests share one pool of ``capacity`` token slots:

* **tree tokens**: KV of finished sequences (and of prefixes shared with running requests),
  stored in the tree. A node is *protected* while a running request holds a lock on it
  (``lock_ref > 0``) and *evictable* otherwise.
* **reserved tokens**: KV of running requests that is not (yet) in the tree, allocated with
  :meth:`RadixCache.alloc` and given back with :meth:`RadixCache.release` or turned into tree
  tokens by :meth:`RadixCache.insert`.

``tree_tokens + reserved_tokens <= capacity`` always holds: allocation and insertion evict
least-recently-used unlocked leaves first and refuse (or truncate) when that is not enough.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

Token = str


class RadixNode:
    """One edge of the tree: a run of tokens, its children keyed by their first token."""

    __slots__ = ("key", "children", "parent", "lock_ref", "last_access", "serial")

    _serials = itertools.count()

    def __init__(self, key: list[Token], parent: RadixNode | None) -> None:
        self.key = key
        self.children: dict[Token, RadixNode] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = 0
        # Tie-breaker for equal access times: the older node is evicted first, deterministically.
        self.serial = next(RadixNode._serials)

    def __repr__(self) -> str:
        return f"RadixNode(len={len(self.key)}, lock_ref={self.lock_ref}, children={len(self.children)})"


class RadixCache:
    """Prefix cache over token sequences plus the KV-pool accounting (see the module docstring)."""

    def __init__(self, capacity_tokens: int) -> None:
        if capacity_tokens <= 0:
            raise ValueError(f"capacity_tokens must be > 0, got {capacity_tokens}")
        self.capacity = capacity_tokens
        self.root = RadixNode([], None)
        self.root.lock_ref = 1  # the root is never evicted
        self._tree_tokens = 0
        self._evictable_tokens = 0
        self._reserved_tokens = 0
        self._tick = 0
        #: Highest ``tree_tokens + reserved_tokens`` ever reached (for the capacity invariant).
        self.peak_used_tokens = 0
        #: Total tokens evicted so far.
        self.evicted_tokens_total = 0

    # ---- sizes ----

    @property
    def tree_tokens(self) -> int:
        """Tokens stored in the tree (protected + evictable)."""
        return self._tree_tokens

    @property
    def evictable_tokens(self) -> int:
        """Tree tokens no running request holds: they may be evicted."""
        return self._evictable_tokens

    @property
    def protected_tokens(self) -> int:
        """Tree tokens locked by running requests."""
        return self._tree_tokens - self._evictable_tokens

    @property
    def reserved_tokens(self) -> int:
        """Tokens allocated to running requests outside the tree."""
        return self._reserved_tokens

    @property
    def used_tokens(self) -> int:
        """Occupied slots: everything in the tree plus reservations."""
        return self._tree_tokens + self._reserved_tokens

    @property
    def in_use_tokens(self) -> int:
        """Slots running requests need (protected + reserved); SGLang's ``num_used`` tokens."""
        return self.protected_tokens + self._reserved_tokens

    @property
    def free_tokens(self) -> int:
        """Slots holding nothing at all."""
        return self.capacity - self._tree_tokens - self._reserved_tokens

    @property
    def available_tokens(self) -> int:
        """Slots that could be handed out now: free plus evictable."""
        return self.free_tokens + self._evictable_tokens

    # ---- lookup and insertion ----

    def match_prefix(self, tokens: Sequence[Token], max_len: int | None = None) -> tuple[int, RadixNode]:
        """Longest cached prefix of ``tokens[:max_len]``: ``(length, node ending exactly there)``.

        A node that matches only partly is split so that the returned node ends at the match, as
        in SGLang; lock that node to keep the prefix while a request uses it. Every node on the
        path counts as used now (LRU).
        """
        n = len(tokens) if max_len is None else min(len(tokens), max_len)
        self._tick += 1
        tick = self._tick
        node = self.root
        i = 0
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                break
            child.last_access = tick
            key = child.key
            klen = len(key)
            # Fast path: whole edge equal, compared by one C-level list comparison.
            if i + klen <= n and tokens[i : i + klen] == key:
                i += klen
                node = child
                continue
            j = self._mismatch(key, tokens, i, n)
            node = self._split(child, j)
            i += j
            break
        return i, node

    def insert(self, tokens: Sequence[Token], reserved_tokens: int = 0) -> int:
        """Store ``tokens`` in the tree; return how many tokens were newly added.

        ``reserved_tokens`` of the caller's reservation are given back first: a finishing request
        turns its private KV into tree tokens. The tokens already in the tree are shared, never
        duplicated. If the new part does not fit even after eviction, only the prefix that fits is
        stored, so the capacity is never exceeded.
        """
        self.release(reserved_tokens)
        n = len(tokens)
        self._tick += 1
        tick = self._tick
        node = self.root
        i = 0
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                break
            child.last_access = tick
            key = child.key
            klen = len(key)
            if i + klen <= n and tokens[i : i + klen] == key:
                i += klen
                node = child
                continue
            j = self._mismatch(key, tokens, i, n)
            node = self._split(child, j)
            i += j
            break
        new = n - i
        if new <= 0:
            return 0
        if self.free_tokens < new:
            # Lock the attachment point so eviction cannot remove the node we attach to.
            self.lock(node)
            self.evict(new - self.free_tokens)
            self.unlock(node)
            new = min(new, self.free_tokens)
            if new <= 0:
                return 0
        leaf = RadixNode(list(tokens[i : i + new]), node)
        leaf.last_access = tick
        node.children[leaf.key[0]] = leaf
        self._tree_tokens += new
        # A new leaf starts unlocked (a lock on its parent does not cover it), so it is evictable.
        self._evictable_tokens += new
        self._note_peak()
        return new

    @staticmethod
    def _mismatch(key: list[Token], tokens: Sequence[Token], start: int, end: int) -> int:
        # The first token matched through the children dict, so the answer is >= 1.
        limit = min(len(key), end - start)
        j = 1
        while j < limit and key[j] == tokens[start + j]:
            j += 1
        return j

    def _split(self, child: RadixNode, at: int) -> RadixNode:
        """Cut ``child``'s edge after ``at`` tokens; return the new upper node."""
        if at >= len(child.key):
            return child
        parent = child.parent
        assert parent is not None
        upper = RadixNode(child.key[:at], parent)
        # The upper half covers the same tokens as before, so it inherits lock and recency.
        upper.lock_ref = child.lock_ref
        upper.last_access = child.last_access
        upper.children = {child.key[at]: child}
        parent.children[upper.key[0]] = upper
        child.key = child.key[at:]
        child.parent = upper
        return upper

    # ---- locking ----

    def lock(self, node: RadixNode) -> None:
        """Protect ``node`` and its ancestors from eviction (reference counted)."""
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable_tokens -= len(node.key)
            node.lock_ref += 1
            parent = node.parent
            assert parent is not None
            node = parent

    def unlock(self, node: RadixNode) -> None:
        """Undo one :meth:`lock` of ``node``."""
        while node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError(f"unlock of an unlocked node {node!r}")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable_tokens += len(node.key)
            parent = node.parent
            assert parent is not None
            node = parent

    # ---- allocation and eviction ----

    def alloc(self, num_tokens: int) -> bool:
        """Reserve ``num_tokens`` slots for a running request, evicting LRU leaves if needed.

        Returns False (and reserves nothing) when free + evictable slots are not enough.
        """
        if num_tokens <= 0:
            return True
        if self.free_tokens < num_tokens:
            if self.available_tokens < num_tokens:
                return False
            self.evict(num_tokens - self.free_tokens)
        self._reserved_tokens += num_tokens
        self._note_peak()
        return True

    def release(self, num_tokens: int) -> None:
        """Give back ``num_tokens`` reserved slots."""
        if num_tokens < 0 or num_tokens > self._reserved_tokens:
            raise RuntimeError(f"release of {num_tokens} tokens, only {self._reserved_tokens} reserved")
        self._reserved_tokens -= num_tokens

    def evict(self, num_tokens: int) -> int:
        """Evict least-recently-used unlocked leaves until ``num_tokens`` are freed (or none is
        left); return the number of tokens evicted. Whole nodes go, so it may free a bit more.
        """
        if num_tokens <= 0:
            return 0
        heap = [(leaf.last_access, leaf.serial, leaf) for leaf in self._evictable_leaves()]
        heapq.heapify(heap)
        evicted = 0
        while evicted < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            size = len(leaf.key)
            evicted += size
            self._tree_tokens -= size
            self._evictable_tokens -= size
            leaf.parent = None
            # The parent may have just become an evictable leaf itself.
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, parent.serial, parent))
        self.evicted_tokens_total += evicted
        return evicted

    def evict_all(self) -> int:
        """Drop every unlocked entry (``/flush_cache``); return the tokens evicted."""
        return self.evict(self._evictable_tokens)

    def _evictable_leaves(self) -> list[RadixNode]:
        leaves = []
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node.lock_ref == 0:
                leaves.append(node)
        return leaves

    def _note_peak(self) -> None:
        used = self._tree_tokens + self._reserved_tokens
        if used > self.peak_used_tokens:
            self.peak_used_tokens = used

    # ---- checks ----

    def check_invariants(self) -> None:
        """Recount the tree and raise ``AssertionError`` if any bookkeeping is off (for tests)."""
        total = 0
        evictable = 0
        stack = [(child, self.root) for child in self.root.children.values()]
        while stack:
            node, parent = stack.pop()
            if node.parent is not parent:
                raise AssertionError(f"{node!r} has a wrong parent link")
            if not node.key:
                raise AssertionError("empty edge in the radix tree")
            if parent.children.get(node.key[0]) is not node:
                raise AssertionError(f"{node!r} is filed under the wrong first token")
            if node.lock_ref < 0:
                raise AssertionError(f"{node!r} has a negative lock count")
            if parent is not self.root and node.lock_ref > parent.lock_ref:
                raise AssertionError(f"{node!r} is locked more often than its parent")
            total += len(node.key)
            if node.lock_ref == 0:
                evictable += len(node.key)
            stack.extend((child, node) for child in node.children.values())
        if total != self._tree_tokens:
            raise AssertionError(f"tree holds {total} tokens, bookkeeping says {self._tree_tokens}")
        if evictable != self._evictable_tokens:
            raise AssertionError(f"{evictable} evictable tokens, bookkeeping says {self._evictable_tokens}")
        if self._reserved_tokens < 0:
            raise AssertionError(f"negative reservation {self._reserved_tokens}")
        if self.used_tokens > self.capacity or self.peak_used_tokens > self.capacity:
            raise AssertionError(
                f"KV capacity exceeded: used {self.used_tokens}, peak {self.peak_used_tokens}, "
                f"capacity {self.capacity}"
            )
