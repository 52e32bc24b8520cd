"""Unit tests of the radix "proximate tree" (pytest_lbbench.lb.prefix_tree)."""

from __future__ import annotations

import json
import random

import pytest

from pytest_lbbench.lb.prefix_tree import PrefixTree, shared_prefix_length


def _zero_load(target: str) -> int:
    return 0


@pytest.mark.parametrize(
    ("edge", "text", "start", "expected"),
    [
        ("abc", "abc", 0, 3),
        ("abc", "abcdef", 0, 3),
        ("abcdef", "abc", 0, 3),
        ("abcdef", "abxdef", 0, 2),
        ("abc", "zzabd", 2, 2),
        ("abc", "zz", 2, 0),
        ("", "abc", 0, 0),
        ("x", "abc", 0, 0),
        ("a" * 10_000 + "b", "a" * 10_000 + "c", 0, 10_000),
    ],
)
def test_shared_prefix_length(edge: str, text: str, start: int, expected: int) -> None:
    assert shared_prefix_length(edge, text, start) == expected


def test_shared_prefix_length_matches_naive_on_random_strings() -> None:
    rng = random.Random(7)
    for _ in range(500):
        edge = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 40)))
        text = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 40)))
        start = rng.randrange(0, len(text) + 1)
        naive = 0
        while naive < len(edge) and start + naive < len(text) and edge[naive] == text[start + naive]:
            naive += 1
        assert shared_prefix_length(edge, text, start) == naive


def test_insert_splits_nodes_and_counts_chars_per_target() -> None:
    tree = PrefixTree()
    tree.insert("hello world", "a")
    tree.insert("hello there", "b")
    tree.insert("hello", "a")
    # root → "hello" (a, b) → " " (a, b) → {"world" (a), "there" (b)}
    assert tree.size("a") == len("hello world")
    assert tree.size("b") == len("hello there")
    assert tree.used_size_per_target() == {"a": 11, "b": 11}
    hello = tree.root.children["h"]
    assert hello.text == "hello" and set(hello.access) == {"a", "b"}
    space = hello.children[" "]
    assert space.text == " " and set(space.access) == {"a", "b"}
    assert {c.text: set(c.access) for c in space.children.values()} == {
        "world": {"a"},
        "there": {"b"},
    }


def test_insert_of_a_strict_prefix_splits_the_edge() -> None:
    tree = PrefixTree()
    tree.insert("abcdef", "a")
    tree.insert("abc", "b")
    node = tree.root.children["a"]
    assert node.text == "abc" and set(node.access) == {"a", "b"}
    assert node.children["d"].text == "def" and set(node.children["d"].access) == {"a"}
    assert tree.size("a") == 6 and tree.size("b") == 3


def test_prefix_match_walks_to_the_deepest_available_node() -> None:
    tree = PrefixTree()
    tree.insert("the quick brown fox", "a")
    tree.insert("the quick red fox", "b")
    matched, target = tree.prefix_match("the quick brown dog", {"a", "b"}, _zero_load)
    assert target == "a"
    assert matched == len("the quick brown ")
    matched, target = tree.prefix_match("the quick red", {"a", "b"}, _zero_load)
    assert (matched, target) == (len("the quick red"), "b")


def test_prefix_match_stops_at_nodes_without_available_targets() -> None:
    tree = PrefixTree()
    tree.insert("shared prefix / only on a", "a")
    tree.insert("shared prefix / other", "b")
    matched, target = tree.prefix_match("shared prefix / only on a", {"b"}, _zero_load)
    # Both texts share "shared prefix / o"; the "nly on a" branch holds only a.
    assert target == "b"
    assert matched == len("shared prefix / o")


def test_prefix_match_picks_least_loaded_at_the_deepest_node() -> None:
    tree = PrefixTree()
    tree.insert("common text", "a")
    tree.insert("common text", "b")
    loads = {"a": 5, "b": 1}
    assert tree.prefix_match("common text!", {"a", "b"}, loads.__getitem__)[1] == "b"
    loads = {"a": 0, "b": 3}
    assert tree.prefix_match("common text!", {"a", "b"}, loads.__getitem__)[1] == "a"


def test_prefix_match_without_any_available_holder_returns_none() -> None:
    tree = PrefixTree()
    tree.insert("abc", "a")
    assert tree.prefix_match("abc", {"zzz"}, _zero_load) == (0, None)


def test_prefix_match_touches_only_when_asked() -> None:
    now = [1000.0]
    tree = PrefixTree(clock_ms=lambda: now[0])
    tree.insert("abcdef", "a")
    node = tree.root.children["a"]
    now[0] = 2000.0
    tree.prefix_match("abcdef", {"a"}, _zero_load, touch=False)
    assert node.access["a"] == 1000.0 and tree.root.access["a"] == 1000.0
    tree.prefix_match("abcdef", {"a"}, _zero_load)
    assert node.access["a"] == 2000.0 and tree.root.access["a"] == 2000.0


def test_remove_target_strips_stamps_and_prunes_empty_nodes() -> None:
    tree = PrefixTree()
    tree.insert("alpha beta", "a")
    tree.insert("alpha gamma", "b")
    tree.remove_target("a")
    assert tree.used_size_per_target() == {"b": len("alpha gamma")}
    assert "a" not in tree.char_count
    # Only root → "alpha " → "gamma" remain.
    assert tree.node_count() == 3
    assert tree.prefix_match("alpha beta", {"a", "b"}, _zero_load)[1] == "b"
    tree.remove_target("a")  # idempotent


def test_evict_drops_least_recently_used_leaves_until_under_the_limit() -> None:
    now = [0.0]
    tree = PrefixTree(clock_ms=lambda: now[0])
    for i, text in enumerate(["old-" + "x" * 20, "mid-" + "y" * 20, "new-" + "z" * 20]):
        now[0] = float(i)
        tree.insert(text, "a")
    tree.insert("9 other target", "b")
    assert tree.size("a") == 72
    tree.evict(max_size=50)
    # The oldest leaf goes first; one eviction (24 chars) brings a to 48 ≤ 50.
    assert tree.size("a") == 48
    assert tree.prefix_match("old-" + "x" * 20, {"a"}, _zero_load, touch=False)[0] == 0
    assert tree.prefix_match("new-" + "z" * 20, {"a"}, _zero_load, touch=False)[0] == 24
    assert tree.size("b") == len("9 other target")  # under the limit: untouched
    assert tree.used_size_per_target() == {"a": 48, "b": 14}


def test_evict_walks_up_to_parents_that_become_leaves() -> None:
    now = [0.0]
    tree = PrefixTree(clock_ms=lambda: now[0])
    tree.insert("prefix-one", "a")
    now[0] = 1.0
    tree.insert("prefix-two", "a")
    tree.evict(max_size=0)
    assert tree.size("a") == 0
    assert tree.node_count() == 1  # everything pruned but the root
    # The root stamp costs nothing, so eviction stops before removing it (size 0 ≤ 0).
    assert tree.used_size_per_target() == {"a": 0}


def test_char_counts_stay_consistent_under_random_operations() -> None:
    rng = random.Random(3)
    tree = PrefixTree()
    words = ["ab", "abc", "b", "ba", "abab", "c"]
    for step in range(400):
        target = rng.choice("xyz")
        text = "".join(rng.choice(words) for _ in range(rng.randrange(0, 6)))
        op = rng.random()
        if op < 0.7:
            tree.insert(text, target)
        elif op < 0.85:
            tree.prefix_match(text, {"x", "y", "z"}, _zero_load)
        elif op < 0.95:
            tree.evict(max_size=rng.randrange(0, 30))
        else:
            tree.remove_target(target)
        recount = tree.used_size_per_target()
        for t in "xyz":
            assert tree.size(t) == recount.get(t, 0), (step, t)


def test_large_conversation_texts() -> None:
    """~20k-char chat keys, as long conversations produce: exact matches on every turn.

    (Speed is a benchmark concern, not asserted here; this loop takes ~10 ms with slicing.)"""
    tree = PrefixTree()
    messages = [{"role": "system", "content": "You are helpful. " * 40}]
    texts = []
    for turn in range(40):
        messages = messages + [
            {"role": "user", "content": f"question {turn} " + "lorem ipsum " * 20},
            {"role": "assistant", "content": f"answer {turn} " + "dolor sit amet " * 20},
        ]
        texts.append(json.dumps(messages))
    assert len(texts[-1]) > 20_000
    for i, text in enumerate(texts * 5):
        tree.insert(text, f"r{i % 4}")
        matched, target = tree.prefix_match(text, {"r0", "r1", "r2", "r3"}, _zero_load)
        assert matched == len(text) and target is not None
    # Each turn extends the previous JSON except for its closing "]", so the next turn's key
    # matches all but the tail of the previous one.
    fresh = PrefixTree()
    fresh.insert(texts[10], "r0")
    matched, target = fresh.prefix_match(texts[11], {"r0", "r1"}, _zero_load)
    assert target == "r0" and matched == len(texts[10]) - 1
