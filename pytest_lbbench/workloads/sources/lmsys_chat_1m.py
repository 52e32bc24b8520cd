"""``lmsys/lmsys-chat-1m``: one million single-model chats, synthetic or real.

Row format (as on the Hub; the dataset is gated, so real rows need ``HF_TOKEN``)::

    {"conversation_id": str (32 hex), "model": str,
     "conversation": [{"content": str, "role": "user"|"assistant"}, ...],
     "turn": int, "language": str, "openai_moderation": [{...} per message], "redacted": bool}

There is **no user and no timestamp field** (the original ``arena_1m`` grouped on
``conv['user']`` and sorted on ``conv['tstamp']`` and crashed with ``KeyError``); see
:mod:`~pytest_lbbench.workloads.arena_1m` for the grouping used instead.

Synthetic rows (:func:`synthetic_rows`) target these statistics (shape choices, not a
calibration against the dump):

* ``turn``: 1 with probability ``SINGLE_TURN_FRACTION`` (0.5; the dump is mostly single-turn
  and the workload filters them out), else 2 + Geometric(0.5), capped at 10 (mean ≈ 3.0);
* user messages: lognormal word counts, median 50, sigma 1.2, clamped to [2, 3000] — a longer
  tail than the Arena (pasted documents and code); assistant replies median 180 words;
* languages: 78 % English, then Chinese, Russian, Spanish, German, …;
* 25 models, vicuna-13b most frequent (Zipf-like).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from pytest_lbbench.workloads.base import Conversation
from pytest_lbbench.workloads.sources import (
    Row,
    TextSynth,
    geometric_count,
    lognormal_int,
    Moderation,
    zipf_weights,
)

DATASET_ID = "lmsys/lmsys-chat-1m"
# The original read only the first 50,000 rows.
SPLIT = "train[:50000]"

SINGLE_TURN_FRACTION = 0.5
TURNS_MIN = 2
TURNS_GEOMETRIC_P = 0.5
TURNS_MAX = 10
PROMPT_TOKENS_MEDIAN = 50
PROMPT_TOKENS_SIGMA = 1.2
PROMPT_TOKENS_MIN = 2
PROMPT_TOKENS_MAX = 3000
ANSWER_WORDS_MEDIAN = 180

MODELS = (
    "vicuna-13b", "koala-13b", "alpaca-13b", "chatglm-6b", "llama-2-13b-chat", "vicuna-33b",
    "oasst-pythia-12b", "claude-1", "wizardlm-13b", "mpt-7b-chat", "vicuna-7b", "palm-2",
    "fastchat-t5-3b", "gpt-3.5-turbo", "gpt-4", "dolly-v2-12b", "RWKV-4-Raven-14B",
    "stablelm-tuned-alpha-7b", "claude-instant-1", "llama-13b", "guanaco-33b", "mpt-30b-chat",
    "gpt4all-13b-snoozy", "claude-2", "llama-2-7b-chat",
)
LANGUAGES = (("English", 0.78), ("Chinese", 0.05), ("Russian", 0.04), ("Spanish", 0.03),
             ("German", 0.02), ("French", 0.02), ("Portuguese", 0.02), ("Japanese", 0.02),
             ("Italian", 0.01), ("Korean", 0.01))


def synthetic_rows(seed: int, num_rows: int) -> Iterator[Row]:
    """``num_rows`` chats in the Hub's row format, reproducible from ``seed``."""
    rng = random.Random(f"lmsys-chat-1m:{seed}")
    text = TextSynth(rng)
    moderation = Moderation(rng)
    model_weights = zipf_weights(len(MODELS), 1.0)
    languages = [name for name, _ in LANGUAGES]
    language_weights = [w for _, w in LANGUAGES]
    for _ in range(num_rows):
        turns = 1 if rng.random() < SINGLE_TURN_FRACTION else geometric_count(
            rng, TURNS_MIN, TURNS_GEOMETRIC_P, TURNS_MAX)
        conversation: list[dict[str, str]] = []
        for _ in range(turns):
            words = lognormal_int(rng, PROMPT_TOKENS_MEDIAN, PROMPT_TOKENS_SIGMA,
                                  PROMPT_TOKENS_MIN, PROMPT_TOKENS_MAX)
            conversation.append({"content": text.message(rng, words), "role": "user"})
            answer = lognormal_int(rng, ANSWER_WORDS_MEDIAN, 0.8, 1, 1500)
            conversation.append({"content": text.answer(rng, answer), "role": "assistant"})
        yield {
            "conversation_id": f"{rng.getrandbits(128):032x}",
            "model": rng.choices(MODELS, weights=model_weights)[0],
            "conversation": conversation,
            "turn": turns,
            "language": rng.choices(languages, weights=language_weights)[0],
            "openai_moderation": moderation.pick(rng, len(conversation)),
            "redacted": rng.random() < 0.05,
        }


def multi_turn(rows: Iterable[Row]) -> Iterator[Row]:
    """Rows with ``turn > 1`` (the original kept multi-turn chats only)."""
    for row in rows:
        if int(row.get("turn") or 0) > 1:
            yield row


def to_conversation(row: Row, user_key: str, timestamp: float) -> Conversation:
    """A chat as a :class:`Conversation`; the dataset has no user or time, so both are given."""
    turns = tuple(m["content"] for m in row["conversation"] if m.get("role") == "user")
    return Conversation(
        conv_id=str(row["conversation_id"]), user_key=user_key, timestamp=timestamp, user_turns=turns,
    )
