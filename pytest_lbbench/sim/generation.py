"""What the simulated model answers: a deterministic function of (prompt tokens, seed).

Every replica of a system, and every system, must do the same work for the same prompt, or the
comparison between load balancers would be unfair. So the answer length and the answer text are
drawn from a random generator seeded by a hash of the prompt and the replica seed, never from
global randomness.

Answer pieces come from a small vocabulary of short lowercase words (``" word"``), a capitalised
first word without a leading space, and an occasional ``"."``. Each such piece is exactly one
token of :func:`pytest_lbbench.sim.tokenizer.tokenize`, so ``tokenize("".join(answer)) == answer``:
the round trip that keeps multi-turn prompts prefix-cacheable.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from collections.abc import Sequence

# Common English words. Only those of at most 5 letters are used: " " + word must stay within
# the tokenizer's 6-character piece limit to be a single token.
_COMMON_WORDS = """
    the of and to in is it you that he was for on are with as his they be at one have this
    from or had by hot word but what some we can out other were all there when up use your
    how said an each she which do their time if will way about many then them write would
    like so these her long make thing see him two has look more day could go come did
    number sound no most people my over know water than call first who may down side been
    now find any new work part take get place made live where after back
    little only round man year came show every good me give our under name very
    through just form great think say help low line differ turn cause much mean before
    move right boy old too same tell does set three want air well also play small end put
    home read hand port large spell add even land here must big high such follow act why
    ask men change went light kind off need house try us again
    point page letter mother answer found study still learn should world
"""
_WORDS: tuple[str, ...] = tuple(dict.fromkeys(w for w in _COMMON_WORDS.split() if len(w) <= 5))

_PERIOD_PROBABILITY = 0.07


@dataclass(frozen=True)
class Answer:
    """The answer to one prompt: its pieces and why it ended."""

    tokens: list[str]
    finish_reason: str  # "stop" (natural end) or "length" (hit max_new_tokens)


def prompt_seed(prompt_tokens: Sequence[str], seed: int | str) -> int:
    """A 64-bit seed from the prompt pieces and the replica seed (stable across processes).

    ``hash()`` would differ between processes (PYTHONHASHSEED), so a real digest is used.
    """
    digest = hashlib.blake2b(digest_size=8, person=b"lbbench-sim")
    digest.update(str(seed).encode())
    digest.update(b"\x00")
    # A separator that cannot occur inside a piece keeps ["ab","c"] and ["a","bc"] apart.
    digest.update("\x1f".join(prompt_tokens).encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "little")


def natural_length(rng: random.Random, median_tokens: float, sigma: float) -> int:
    """One draw of the natural answer length: lognormal, at least 1 token."""
    return max(1, round(rng.lognormvariate(math.log(median_tokens), sigma)))


def generate_answer(
    prompt_tokens: Sequence[str],
    *,
    seed: int | str,
    max_new_tokens: int,
    median_tokens: float,
    sigma: float,
    ignore_eos: bool = False,
) -> Answer:
    """The deterministic answer to ``prompt_tokens``.

    The length is drawn first, then the pieces one by one, so a smaller ``max_new_tokens`` gives a
    prefix of the same answer. ``ignore_eos`` (an SGLang extension) always produces exactly
    ``max_new_tokens`` tokens, which benchmarks use to fix the output length.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    rng = random.Random(prompt_seed(prompt_tokens, seed))
    natural = natural_length(rng, median_tokens, sigma)
    if ignore_eos or natural > max_new_tokens:
        length, finish_reason = max_new_tokens, "length"
    else:
        length, finish_reason = natural, "stop"
    words = _WORDS
    choice = rng.choice
    draw = rng.random
    tokens = [choice(words).capitalize()]
    capitalize_next = False
    for _ in range(length - 1):
        # Never two "." in a row: the tokenizer would merge ".." into one piece.
        if not capitalize_next and draw() < _PERIOD_PROBABILITY:
            tokens.append(".")
            capitalize_next = True
            continue
        word = choice(words)
        tokens.append(" " + (word.capitalize() if capitalize_next else word))
        capitalize_next = False
    return Answer(tokens=tokens, finish_reason=finish_reason)
