"""``arena``: Chatbot-Arena users replaying their recorded timestamps (open loop per user).

Same data, filter, sharding and grouping as :mod:`~pytest_lbbench.workloads.arena_syn`
(multi-turn ``lmsys/chatbot_arena_conversations`` battles, synthetic by default, real with
``--dataset-source hf``; ``i % 3`` sharding by region index; greedy grouping by judge), but
requests arrive as a timestamp replay
(:class:`~pytest_lbbench.workloads.base.Arrival` ``kind="replay"``):

* each user's conversations start at their recorded ``tstamp`` gaps, divided by
  ``max(1, span / --run-seconds)`` so the user's whole span fits the replay window;
  conversations run concurrently, the turns of one conversation in order; one pass;
* user *i* starts ``i × --user-stagger`` seconds late;
* requests: ``max_tokens`` 256, temperature 0, ``x-hash-key`` = the judge.

Options: ``--num-conv`` (default 1000, per client region), ``--run-seconds`` (default: the
run's ``--duration``; the original's fixed 120), ``--user-stagger`` (default
``min(10, duration / 2 / num_users)``).

Fixes to the original: ``x-hash-key`` is the judge, i.e. per simulated user (the original
sent its ``--uid`` argument, one key for every user of a client); the 10 s stagger of the
original is capped by default so every user starts within the first half of the run (with
150 users the original's last user started 25 minutes in); ``--num-conv`` is per region over
disjoint shards (the original took the same first ``--num-conv`` battles in every region).
"""

from __future__ import annotations


from pytest_lbbench.workloads.arena_syn import NUM_CONV
from pytest_lbbench.workloads.base import (
    WorkloadArgs,
    Arrival,
    RequestSettings,
    WorkloadOption,
    WorkloadPlan,
    group_into_users,
    users_from_groups,
)
from pytest_lbbench.workloads.sources import arena_conversations
from pytest_lbbench.workloads.sources.arena_conversations import region_conversations

NAME = "arena"
DEFAULT_MAX_TOKENS = 256
ORIGINAL_USER_STAGGER_S = 10.0

RUN_SECONDS = WorkloadOption(
    "--run-seconds", "float", None,
    "replay window: each user's timestamps are compressed to fit it (default: --duration)",
)
USER_STAGGER = WorkloadOption(
    "--user-stagger", "float", None,
    "seconds between user starts (default: min(10, duration / 2 / num_users))",
)


def default_user_stagger(duration_s: float, num_users: int) -> float:
    """The original's 10 s between users, capped so all users start in the run's first half."""
    return min(ORIGINAL_USER_STAGGER_S, duration_s / 2.0 / max(1, num_users))


class Arena:
    """The ``arena`` workload (see the module docstring)."""

    name = NAME
    options: tuple[WorkloadOption, ...] = (NUM_CONV, RUN_SECONDS, USER_STAGGER)
    hf_dataset: str | None = arena_conversations.DATASET_ID

    def plan(self, args: WorkloadArgs, region: str, region_index: int) -> WorkloadPlan:
        """Timestamp-replay users over this region's shard of multi-turn Arena battles."""
        duration = float(args.duration_s)
        run_seconds = getattr(args, "run_seconds", None)
        run_seconds = duration if run_seconds is None else float(run_seconds)
        if run_seconds <= 0:
            raise ValueError(f"--run-seconds must be > 0, got {run_seconds}")
        stagger = getattr(args, "user_stagger", None)
        stagger = default_user_stagger(duration, args.num_users) if stagger is None else float(stagger)
        if stagger < 0:
            raise ValueError(f"--user-stagger must be >= 0, got {stagger}")
        shard = region_conversations(args, region_index)
        max_tokens = args.max_tokens if args.max_tokens is not None else DEFAULT_MAX_TOKENS
        return WorkloadPlan(
            name=NAME,
            users=users_from_groups(group_into_users(shard, args.num_users)),
            settings=RequestSettings(max_tokens=max_tokens, temperature=0.0),
            arrival=Arrival(kind="replay", replay_span_s=run_seconds, user_stagger_s=stagger),
            args={
                "num_conv": args.num_conv, "region_index": region_index,
                "run_seconds": run_seconds, "user_stagger": stagger,
            },
        )
