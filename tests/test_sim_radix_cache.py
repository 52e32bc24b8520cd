"""The radix prefix cache: matching, splitting, locking, LRU eviction, capacity."""

from __future__ import annotations

import random

import pytest

from pytest_lbbench.sim.radix_cache import RadixCache, RadixNode


def toks(text: str) -> list[str]:
    return list(text)  # one character = one token keeps the cases readable


def test_match_insert_and_split() -> None:
    cache = RadixCache(100)
    assert cache.match_prefix(toks("hello")) == (0, cache.root)
    assert cache.insert(toks("hello world")) == 11
    assert cache.insert(toks("hello there")) == 5  # "hello " is shared
    assert cache.tree_tokens == 16 and cache.evictable_tokens == 16
    matched, node = cache.match_prefix(toks("hello wonder"))
    assert matched == 8  # "hello wo"
    # The node ends exactly at the match: the partly matching edge was split.
    path = []
    while node is not cache.root:
        path.append("".join(node.key))
        assert node.parent is not None
        node = node.parent
    assert "".join(reversed(path)) == "hello wo"
    assert cache.match_prefix(toks("hello world"), max_len=4)[0] == 4
    cache.check_invariants()


def test_lru_eviction_order() -> None:
    cache = RadixCache(30)
    for word in ("aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"):
        cache.insert(toks(word))
    cache.match_prefix(toks("aaaaaaaaaa"))  # "a" is now the most recently used
    assert cache.insert(toks("dddddddddd")) == 10  # full: evicts the LRU entry, "b"
    assert cache.match_prefix(toks("bbbbbbbbbb"))[0] == 0
    assert cache.match_prefix(toks("cccccccccc"))[0] == 10
    assert cache.match_prefix(toks("aaaaaaaaaa"))[0] == 10
    assert cache.insert(toks("eeeeeeeeee")) == 10  # now "d" is the oldest
    assert cache.match_prefix(toks("dddddddddd"))[0] == 0
    assert cache.evicted_tokens_total == 20
    cache.check_invariants()


def test_eviction_removes_leaves_before_their_shared_prefix() -> None:
    cache = RadixCache(14)
    cache.insert(toks("sharedXY"))
    cache.insert(toks("sharedZW"))  # tree: "shared" -> {"XY", "ZW"}: 10 tokens
    cache.match_prefix(toks("sharedZW"))
    cache.alloc(4)
    assert cache.free_tokens == 0
    assert cache.evict(1) == 2  # the LRU leaf "XY" goes whole; "shared" survives
    assert cache.match_prefix(toks("sharedZW"))[0] == 8
    assert cache.match_prefix(toks("sharedXY"))[0] == 6
    cache.check_invariants()


def test_locked_nodes_survive_eviction_and_allocation_refuses_beyond_capacity() -> None:
    cache = RadixCache(20)
    cache.insert(toks("locked-prefix"))  # 13 tokens
    matched, node = cache.match_prefix(toks("locked-prefix and more"))
    assert matched == 13
    cache.lock(node)
    assert cache.evictable_tokens == 0 and cache.protected_tokens == 13
    assert cache.evict(100) == 0
    assert not cache.alloc(8)  # only 7 free, nothing evictable
    assert cache.reserved_tokens == 0
    assert cache.alloc(7)
    # An insert that cannot fit is truncated, never over capacity.
    assert cache.insert(toks("zzzz")) == 0
    cache.release(7)
    assert cache.insert(toks("other")) == 5
    assert cache.match_prefix(toks("locked-prefix"))[0] == 13
    cache.unlock(node)
    assert cache.evictable_tokens == 18
    with pytest.raises(RuntimeError):
        cache.unlock(node)
    cache.check_invariants()


def test_insert_gives_back_the_callers_reservation() -> None:
    cache = RadixCache(30)
    # Two requests with the same prompt ran at the same time, each computing its own KV.
    assert cache.alloc(12) and cache.alloc(12)
    # The first to finish turns its 12 private tokens into tree tokens.
    assert cache.insert(toks("abcdefghijkl"), reserved_tokens=12) == 12
    assert cache.reserved_tokens == 12 and cache.tree_tokens == 12
    # The second one's copy is freed: shared, not duplicated.
    assert cache.insert(toks("abcdefghijkl"), reserved_tokens=12) == 0
    assert cache.used_tokens == 12 and cache.reserved_tokens == 0
    cache.check_invariants()


def test_random_workload_never_exceeds_capacity() -> None:
    rng = random.Random(1)
    cache = RadixCache(500)
    prefixes = ["".join(rng.choice("abc") for _ in range(rng.randint(5, 60))) for _ in range(8)]
    held: list[tuple[RadixNode, int]] = []
    for step in range(3000):
        op = rng.random()
        seq = toks(rng.choice(prefixes) + "".join(rng.choice("xyz") for _ in range(rng.randint(0, 80))))
        if op < 0.4:
            cache.insert(seq)
        elif op < 0.7:
            matched, node = cache.match_prefix(seq)
            cache.lock(node)
            extra = len(seq) - matched
            if cache.alloc(extra):
                held.append((node, extra))
            else:
                cache.unlock(node)
        elif held:
            node, extra = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.5:
                cache.insert(seq, reserved_tokens=extra)  # finish: private KV goes into the tree
            else:
                cache.release(extra)  # abort: private KV is dropped
            cache.unlock(node)
        assert cache.used_tokens <= cache.capacity
        if step % 100 == 0:
            cache.check_invariants()
    assert cache.peak_used_tokens <= cache.capacity
    assert cache.evicted_tokens_total > 0, "the workload should have exercised eviction"
    cache.check_invariants()
