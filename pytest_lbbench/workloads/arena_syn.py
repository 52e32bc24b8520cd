"""``arena_syn``: Chatbot-Arena users in closed-loop multi-turn chats (the main experiment).

Data: ``lmsys/chatbot_arena_conversations`` battles — generated offline by default
(:func:`~pytest_lbbench.workloads.sources.arena_conversations.synthetic_rows`, whose
statistics are in :mod:`~pytest_lbbench.workloads.sources.arena_conversations`: Zipf-like
judge activity, 2 + Geometric(0.55) turns capped at 8, lognormal prompts of median 40 words,
10 % popular shared openers), or the real dump with ``--dataset-source hf`` / ``--dataset-path``.
Both go through the same converter, filter and sharding:

* multi-turn battles only (``turn > 1``), ``conversation_a``'s user messages;
* sharded over client regions by running index, ``i % 3`` for the three original regions
  (us-east-2 → 0, ap-northeast-1 → 1, eu-central-1 → 2), then the first ``--num-conv``;
* grouped into ``--num-users`` simulated users with the original's greedy grouping by judge
  (:func:`~pytest_lbbench.workloads.base.group_into_users`);
* closed loop: each user goes through its conversations turn by turn, each turn waiting for
  the previous answer, looping until the deadline;
* requests: ``max_tokens`` 512, temperature 0, ``x-hash-key`` = the judge.

Departures from the original, on purpose: ``--num-conv`` is honoured (the original ignored
it), and ``--seed`` is an integer with a working default (the original's ``default`` seed
raised ``ValueError``). The same seed gives the same conversations, users and order.
"""

from __future__ import annotations


from pytest_lbbench.workloads.base import (
    WorkloadArgs,
    Conversation,
    RequestSettings,
    WorkloadOption,
    WorkloadPlan,
    group_into_users,
    users_from_groups,
)
from pytest_lbbench.workloads.sources import arena_conversations
from pytest_lbbench.workloads.sources.arena_conversations import (
    PROMPT_TOKENS_MEDIAN,
    TURNS_MAX,
    TURNS_MIN,
    region_conversations,
)

__all__ = ["NAME", "NUM_CONV", "ArenaSyn", "generate_dataset",
           "PROMPT_TOKENS_MEDIAN", "TURNS_MAX", "TURNS_MIN"]

NAME = "arena_syn"

NUM_CONV = WorkloadOption(
    "--num-conv", "int", 1000, "multi-turn conversations per client region",
)


def generate_dataset(seed: int, num_conversations: int) -> list[Conversation]:
    """A reproducible synthetic Arena dump: ``num_conversations`` multi-turn chats."""
    rows = arena_conversations.synthetic_rows(seed, num_conversations)
    return list(arena_conversations.multi_turn_conversations(rows))


class ArenaSyn:
    """The ``arena_syn`` workload (see the module docstring for what it reproduces)."""

    name = NAME
    options: tuple[WorkloadOption, ...] = (NUM_CONV,)
    hf_dataset: str | None = arena_conversations.DATASET_ID

    def plan(self, args: WorkloadArgs, region: str, region_index: int) -> WorkloadPlan:
        """Closed-loop users over this region's shard of multi-turn Arena battles."""
        shard = region_conversations(args, region_index)
        max_tokens = args.max_tokens if args.max_tokens is not None else 512
        return WorkloadPlan(
            name=NAME,
            users=users_from_groups(group_into_users(shard, args.num_users)),
            settings=RequestSettings(max_tokens=max_tokens, temperature=0.0),
            args={"num_conv": args.num_conv, "region_index": region_index},
        )
