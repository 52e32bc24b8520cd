"""``arena_1m``: LMSYS-Chat-1M chats in closed-loop multi-turn users.

Data: ``lmsys/lmsys-chat-1m`` (gated: ``HF_TOKEN`` and accepted terms for
``--dataset-source hf``), the first 50,000 rows as the original; or the offline generator
(:mod:`~pytest_lbbench.workloads.sources.lmsys_chat_1m`: 2 + Geometric(0.5) turns, lognormal
prompts of median 50 words). Selection and grouping:

1. multi-turn chats only (``turn > 1``), in row order;
2. shuffled with ``random.Random(seed)`` (the original shuffled with its seed too);
3. sharded over client regions by running index (``i % 3``: us-east-2 → 0,
   ap-northeast-1 → 1, eu-central-1 → 2; the original drew overlapping random subsets), then
   the first ``--num-conv`` (default 1000);
4. grouping: the dataset has no user and no timestamp (the original crashed with
   ``KeyError`` on ``conv['user']``/``conv['tstamp']``), so **each chat is its own user key**
   (its ``conversation_id``, sent as ``x-hash-key``) and its **timestamp is its position in
   the shuffled order**. The original greedy grouping then deals chats round-robin-like to
   the ``--num-users`` simulated users, each going through its chats in shuffled order.

Closed loop, ``max_tokens`` 256, temperature 0. Nothing is loaded at import time (the
original downloaded the dataset when the module was imported).
"""

from __future__ import annotations

import random

from pytest_lbbench.workloads.arena_syn import NUM_CONV
from pytest_lbbench.workloads.base import (
    WorkloadArgs,
    RequestSettings,
    WorkloadOption,
    WorkloadPlan,
    group_into_users,
    users_from_groups,
)
from pytest_lbbench.workloads.sources import lmsys_chat_1m, num_shards, rows_for, take_shard

NAME = "arena_1m"
DEFAULT_MAX_TOKENS = 256


class Arena1M:
    """The ``arena_1m`` workload (see the module docstring)."""

    name = NAME
    options: tuple[WorkloadOption, ...] = (NUM_CONV,)
    hf_dataset: str | None = lmsys_chat_1m.DATASET_ID

    def plan(self, args: WorkloadArgs, region: str, region_index: int) -> WorkloadPlan:
        """Closed-loop users over this region's shard of shuffled multi-turn chats."""
        num_conv = int(args.num_conv)
        if num_conv < 1:
            raise ValueError(f"--num-conv must be >= 1, got {num_conv}")
        shards = num_shards(region_index)
        # Synthetic: enough rows that every shard can fill --num-conv after the multi-turn
        # filter (half the rows are single-turn), with margin so it rarely falls short.
        rows = rows_for(
            args, lmsys_chat_1m.DATASET_ID,
            lambda: lmsys_chat_1m.synthetic_rows(int(args.seed), int(num_conv * shards * 2.2)),
            split=lmsys_chat_1m.SPLIT,
        )
        chats = list(lmsys_chat_1m.multi_turn(rows))
        random.Random(f"arena_1m:{args.seed}").shuffle(chats)
        shard = take_shard(chats, region_index, num_conv)
        if not shard:
            raise ValueError(f"no multi-turn {lmsys_chat_1m.DATASET_ID} chats for region index {region_index}")
        convs = [
            lmsys_chat_1m.to_conversation(row, user_key=str(row["conversation_id"]), timestamp=float(k))
            for k, row in enumerate(shard)
        ]
        max_tokens = args.max_tokens if args.max_tokens is not None else DEFAULT_MAX_TOKENS
        return WorkloadPlan(
            name=NAME,
            users=users_from_groups(group_into_users(convs, args.num_users)),
            settings=RequestSettings(max_tokens=max_tokens, temperature=0.0),
            args={"num_conv": num_conv, "region_index": region_index},
        )
