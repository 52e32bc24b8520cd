"""Dataset sources: rows in each Hugging Face dataset's own format, synthetic or real.

Every dataset behind a workload has one module here with

* ``DATASET_ID`` (and ``CONFIG``/``SPLIT`` where needed): the Hugging Face dataset;
* ``synthetic_rows(...)``: an offline generator that yields rows **in the real row format**
  (same field names and nesting), reproducible from a seed;
* a converter from rows to :class:`~pytest_lbbench.workloads.base.Conversation`.

So synthetic and real data go through the same filters, grouping and sharding, and a test
file in the real row format is just a few generated rows written as JSONL. Real rows come
from :mod:`.hub` (``datasets.load_dataset``, imported lazily).

This module holds what the generators share: a cheap text synthesiser, heavy-tailed
sampling helpers, and :func:`rows_for`, which picks synthetic or real rows from the common
options ``--dataset-source`` and ``--dataset-path``.
"""

from __future__ import annotations

import math
import operator
import os
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from pytest_lbbench.workloads.base import WorkloadArgs

Row = dict[str, Any]

DATASET_SOURCES = ("synthetic", "hf")

# The three original client/replica regions and their shard index (the original's seed2idx).
# A region's shard of a dataset depends only on its index, never on the other regions in a run.
MIN_SHARDS = 3

_SYLLABLES = (
    "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "an", "el", "io", "or", "um",
    "be", "da", "fi", "go", "hu", "ja", "pe", "qu", "ri", "su", "te", "wa", "xo", "yu",
)
_OPENERS = (
    "Explain", "Write", "How do I", "What is", "Summarize", "Compare", "Translate", "List",
    "Why does", "Can you", "Describe", "Give me", "Help me", "Fix", "Tell me about",
)
_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "self-harm",
    "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)


class TextSynth:
    """Made-up words that read like text; one per dataset seed.

    ``message`` draws every word independently, so two prompts share a prefix only when a
    generator makes them share one on purpose (prefix sharing is part of what we model).
    ``answer`` slices a fixed random text by characters: assistant turns in the rows are never
    sent (the server writes its own answers), so they only need about the right length, and a
    slice costs next to nothing.
    """

    # 4096 distinct words, each listed 16 times, so 16 random bits index a word directly and
    # ``itemgetter`` picks a whole message in C (about 10x faster than ``rng.choices``).
    _DISTINCT = 4096
    _SLOTS = 65536

    def __init__(self, rng: random.Random, corpus_words: int = 20000) -> None:
        words: set[str] = set()
        while len(words) < self._DISTINCT:
            words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
        self.vocab = sorted(words)
        self._slots = self.vocab * (self._SLOTS // self._DISTINCT)
        self._corpus_text = " ".join(self.words(rng, corpus_words)) + "."
        self._chars_per_word = max(1, round(len(self._corpus_text) / corpus_words))

    def words(self, rng: random.Random, n: int) -> list[str]:
        """``n`` words drawn uniformly (with replacement) from the vocabulary."""
        if n <= 0:
            return []
        # Little-endian is assumed for the 16-bit view; every platform we run on is.
        picks = operator.itemgetter(*memoryview(rng.randbytes(2 * n)).cast("H"))(self._slots)
        return [picks] if n == 1 else list(picks)

    def message(self, rng: random.Random, num_words: int, opener: bool = True) -> str:
        """A user message of ``num_words`` made-up words (plus an opener such as "Explain")."""
        words = self.words(rng, num_words)
        # Sentence breaks every ~14 words give the tokenizer punctuation to split on.
        for i in range(13, len(words) - 1, 14):
            words[i] += "."
        text = " ".join(words)
        return f"{rng.choice(_OPENERS)} {text}?" if opener else text + "."

    def answer(self, rng: random.Random, num_words: int) -> str:
        """An assistant reply of about ``num_words`` words (a slice of the corpus text)."""
        size = min(len(self._corpus_text), num_words * self._chars_per_word)
        start = rng.randrange(len(self._corpus_text) - size + 1)
        return self._corpus_text[start:start + size]


def lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    """A lognormal draw with the given median, rounded down and clamped to ``[lo, hi]``."""
    return max(lo, min(hi, int(rng.lognormvariate(math.log(median), sigma))))


def geometric_count(rng: random.Random, lo: int, p_stop: float, hi: int) -> int:
    """``lo`` + Geometric(``p_stop``) failures, capped at ``hi`` (mean ≈ lo + (1-p)/p)."""
    n = lo
    while n < hi and rng.random() > p_stop:
        n += 1
    return n


def zipf_weights(n: int, exponent: float) -> list[float]:
    """Weights ∝ 1/k^exponent for ranks 1..n: a few keys get most of the draws."""
    return [1.0 / (k ** exponent) for k in range(1, n + 1)]


class Moderation:
    """OpenAI-moderation records in the datasets' nesting, drawn from a small fixed pool.

    Nothing reads them; they exist so rows have the real shape. A pool (records shared
    between rows, never mutated) keeps the generators fast. About 2 % are flagged.
    """

    def __init__(self, rng: random.Random, size: int = 50) -> None:
        self.pool: list[dict[str, Any]] = []
        for k in range(size):
            flagged = k == 0
            self.pool.append({
                "categories": {c: flagged and c == "harassment" for c in _MODERATION_CATEGORIES},
                "category_scores": {c: round(rng.random() * (0.9 if flagged else 1e-3), 8)
                                    for c in _MODERATION_CATEGORIES},
                "flagged": flagged,
            })

    def pick(self, rng: random.Random, n: int) -> list[dict[str, Any]]:
        """``n`` records (one per message)."""
        return rng.choices(self.pool, k=n)


def jsonable(value: Any) -> Any:
    """A row (or any value in one) with datetimes as ISO-8601 strings, for writing JSONL."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def num_shards(region_index: int) -> int:
    """How many shards the data is split into: the three original regions, or more."""
    if region_index < 0:
        raise ValueError(f"region index must be >= 0, got {region_index}")
    return max(MIN_SHARDS, region_index + 1)


def take_shard(items: Iterable[Any], region_index: int, limit: int | None) -> list[Any]:
    """Items whose running index ``i`` has ``i % num_shards == region_index``, at most ``limit``."""
    shards = num_shards(region_index)
    out: list[Any] = []
    for i, item in enumerate(items):
        if limit is not None and len(out) >= limit:
            break
        if i % shards == region_index:
            out.append(item)
    return out


def dataset_choice(args: WorkloadArgs) -> tuple[str, str | None]:
    """``(source, local path)`` from the common options; the client may predate them."""
    source = getattr(args, "dataset_source", None) or "synthetic"
    if source not in DATASET_SOURCES:
        raise ValueError(
            f"--dataset-source must be one of {', '.join(DATASET_SOURCES)}, got {source!r}"
        )
    path = getattr(args, "dataset_path", None)
    return source, (str(path) if path else None)


def uses_real_rows(args: WorkloadArgs, path: str | None = None) -> bool:
    """True when rows come through ``datasets``: ``--dataset-source hf`` or a local path."""
    source, dataset_path = dataset_choice(args)
    return source == "hf" or bool(path or dataset_path)


def rows_for(
    args: WorkloadArgs,
    dataset_id: str,
    synthetic: Callable[[], Iterable[Row]],
    *,
    config: str | None = None,
    split: str = "train",
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterable[Row]:
    """The rows a workload reads: synthetic, a local file/directory, or the Hub.

    A local path (``--dataset-path``, or ``path`` for a workload's own alias such as tot's
    ``--data-path``) always wins, whatever ``--dataset-source`` says: it is loaded through
    the same ``datasets`` call as the Hub, so it must be in the dataset's row format.
    """
    source, dataset_path = dataset_choice(args)
    local = path or dataset_path
    if source == "synthetic" and not local:
        return synthetic()
    from pytest_lbbench.workloads.sources import hub

    return hub.load_rows(
        dataset_id, config=config, split=split, dataset_path=local,
        environ=os.environ if environ is None else environ,
    )
