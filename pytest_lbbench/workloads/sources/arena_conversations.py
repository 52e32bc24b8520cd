"""``lmsys/chatbot_arena_conversations``: Chatbot Arena battles, synthetic or real.

Row format (one battle, as on the Hub)::

    {"question_id": str, "model_a": str, "model_b": str, "winner": str, "judge": str,
     "conversation_a": [{"role": "user"|"assistant", "content": str}, ...],
     "conversation_b": [...], "turn": int, "anony": bool, "language": str,
     "tstamp": float (Unix seconds), "openai_moderation": {...}, "toxic_chat_tag": {...}}

The user is the ``judge``; the workloads send ``conversation_a``'s user messages.

Synthetic rows (:func:`synthetic_rows`) target these statistics (shape choices that resemble
the dump — short questions with a long tail, a few very active judges — not a calibration):

* judges: Zipf-like activity (weights ∝ 1/k^1.1) over ``n / 4`` judges, so the busiest judge
  owns ≥ 10× the conversations of the median one;
* multi-turn battles (the ones the workloads keep): ``turn`` = 2 + Geometric(0.55), capped
  at 8 (mean ≈ 2.8); single-turn battles are interleaved at ``SINGLE_TURN_FRACTION`` so the
  multi-turn filter is exercised;
* user messages: lognormal word counts, median 40, sigma 1.0, clamped to [3, 1500];
  assistant replies median 150 words (never sent; the server writes its own);
* 10 % of battles open with one of 64 popular prompts (Zipf-picked), as people try the same
  questions on the Arena: cross-user prefix sharing a cache-aware balancer can exploit;
* ``tstamp``: uniform over 30 days from 2023-04-24 (Unix seconds, 3 decimals).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from itertools import accumulate

from pytest_lbbench.workloads.base import Conversation, WorkloadArgs
from pytest_lbbench.workloads.sources import (
    Row,
    TextSynth,
    rows_for,
    take_shard,
    geometric_count,
    lognormal_int,
    num_shards,
    Moderation,
    zipf_weights,
)

DATASET_ID = "lmsys/chatbot_arena_conversations"
SPLIT = "train"

# Shape parameters, documented in the module docstring and checked by tests.
JUDGE_ZIPF_EXPONENT = 1.1
CONVERSATIONS_PER_JUDGE = 4.0  # mean; sets how many distinct judges a dataset has
TURNS_MIN = 2
TURNS_GEOMETRIC_P = 0.55
TURNS_MAX = 8
PROMPT_TOKENS_MEDIAN = 40
PROMPT_TOKENS_SIGMA = 1.0
PROMPT_TOKENS_MIN = 3
PROMPT_TOKENS_MAX = 1500
ANSWER_WORDS_MEDIAN = 150
SINGLE_TURN_FRACTION = 0.3
POPULAR_PROMPT_FRACTION = 0.1
POPULAR_PROMPTS = 64
DATASET_START_TS = 1682294400.0  # 2023-04-24T00:00:00Z
DATASET_SPAN_S = 30 * 24 * 3600.0

MODELS = (
    "vicuna-13b", "koala-13b", "alpaca-13b", "chatglm-6b", "oasst-pythia-12b", "gpt-3.5-turbo",
    "gpt-4", "claude-v1", "claude-instant-v1", "RWKV-4-Raven-14B", "fastchat-t5-3b",
    "stablelm-tuned-alpha-7b", "dolly-v2-12b", "llama-13b", "mpt-7b-chat", "palm-2",
    "vicuna-7b", "guanaco-33b", "wizardlm-13b", "gpt4all-13b-snoozy",
)
WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")


def _conversation(user_turns: list[str], answers: list[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for question, answer in zip(user_turns, answers):
        out.append({"role": "user", "content": question})
        out.append({"role": "assistant", "content": answer})
    return out


def synthetic_rows(seed: int, num_multi_turn: int) -> Iterator[Row]:
    """Arena battles in the Hub's row format, until ``num_multi_turn`` multi-turn ones were made.

    Reproducible from ``seed``; single-turn battles are interleaved (the real dump is mostly
    single-turn) so consumers must filter as they would on real data.
    """
    rng = random.Random(f"arena:{seed}")
    text = TextSynth(rng)
    moderation = Moderation(rng)
    num_judges = max(1, round(num_multi_turn / CONVERSATIONS_PER_JUDGE))
    judges = [f"arena_user_{seed}_{k:05d}" for k in range(num_judges)]
    # Cumulative weights let rng.choices skip its own O(n) accumulation on every call.
    judge_cum = list(accumulate(zipf_weights(num_judges, JUDGE_ZIPF_EXPONENT)))
    popular = [text.message(rng, lognormal_int(rng, 12, 0.5, 3, 60)) for _ in range(POPULAR_PROMPTS)]
    popular_cum = list(accumulate(zipf_weights(POPULAR_PROMPTS, 1.0)))
    made = 0
    while made < num_multi_turn:
        single = rng.random() < SINGLE_TURN_FRACTION
        turns = 1 if single else geometric_count(rng, TURNS_MIN, TURNS_GEOMETRIC_P, TURNS_MAX)
        questions = [
            text.message(rng, lognormal_int(
                rng, PROMPT_TOKENS_MEDIAN, PROMPT_TOKENS_SIGMA, PROMPT_TOKENS_MIN, PROMPT_TOKENS_MAX))
            for _ in range(turns)
        ]
        if rng.random() < POPULAR_PROMPT_FRACTION:
            questions[0] = rng.choices(popular, cum_weights=popular_cum)[0]
        model_a, model_b = rng.sample(MODELS, 2)
        answers_a = [text.answer(rng, lognormal_int(rng, ANSWER_WORDS_MEDIAN, 0.8, 1, 1000)) for _ in questions]
        answers_b = [text.answer(rng, lognormal_int(rng, ANSWER_WORDS_MEDIAN, 0.8, 1, 1000)) for _ in questions]
        yield {
            "question_id": f"{rng.getrandbits(128):032x}",
            "model_a": model_a,
            "model_b": model_b,
            "winner": rng.choice(WINNERS),
            "judge": rng.choices(judges, cum_weights=judge_cum)[0],
            "conversation_a": _conversation(questions, answers_a),
            "conversation_b": _conversation(questions, answers_b),
            "turn": turns,
            "anony": rng.random() < 0.8,
            "language": "English",
            "tstamp": round(DATASET_START_TS + rng.uniform(0.0, DATASET_SPAN_S), 3),
            "openai_moderation": moderation.pick(rng, 1)[0],
            "toxic_chat_tag": {
                "roberta-large": {"flagged": False, "probability": round(rng.random() * 0.01, 6)},
                "t5-large": {"flagged": False, "score": round(rng.random() * 0.01, 6)},
            },
        }
        made += 0 if single else 1


def to_conversation(row: Row) -> Conversation:
    """A battle as a :class:`Conversation`: the judge's messages to model A, at ``tstamp``."""
    turns = tuple(m["content"] for m in row["conversation_a"] if m.get("role") == "user")
    return Conversation(
        conv_id=str(row["question_id"]),
        user_key=str(row["judge"]),
        timestamp=float(row["tstamp"]),
        user_turns=turns,
    )


def multi_turn_conversations(rows: Iterable[Row]) -> Iterator[Conversation]:
    """The multi-turn battles (``turn > 1``), as the original kept, in row order."""
    for row in rows:
        if int(row.get("turn") or 0) > 1:
            conv = to_conversation(row)
            if conv.user_turns:
                yield conv


def region_conversations(args: WorkloadArgs, region_index: int) -> list[Conversation]:
    """One client region's ``--num-conv`` multi-turn battles (arena and arena_syn share this).

    Multi-turn battles are numbered in row order and battle ``i`` goes to the region with
    index ``i % 3`` (us-east-2 → 0, ap-northeast-1 → 1, eu-central-1 → 2, as the original's
    ``seed2idx``), so regions never share a conversation. Synthetic rows are generated for
    all shards, so a region's shard depends only on the seed, ``--num-conv`` and its index.
    """
    num_conv = int(args.num_conv)
    if num_conv < 1:
        raise ValueError(f"--num-conv must be >= 1, got {num_conv}")
    shards = num_shards(region_index)
    rows = rows_for(args, DATASET_ID, lambda: synthetic_rows(int(args.seed), num_conv * shards), split=SPLIT)
    shard: list[Conversation] = take_shard(multi_turn_conversations(rows), region_index, num_conv)
    if not shard:
        raise ValueError(f"no multi-turn {DATASET_ID} conversations for region index {region_index}")
    return shard
