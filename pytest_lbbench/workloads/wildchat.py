"""``wildchat``: WildChat users (by IP) in closed-loop multi-turn chats, filtered by region.

Data: ``allenai/WildChat-1M`` rows ``train[k·100000 : (k+1)·100000]`` for ``--start-index k``
with ``--dataset-source hf``, or the offline generator
(:mod:`~pytest_lbbench.workloads.sources.wildchat`: Zipf-like IP activity, per-IP country and
state, 5 % of IPs sharing long prompt templates, lognormal prompts of median 45 words).
Both go through the original's filters and grouping:

* rows with ``turn ≥ 2``, ``len(conversation) ≥ 4``, a known ``hashed_ip``, and a location
  the client's region serves (the corrected lists in
  :data:`~pytest_lbbench.workloads.sources.wildchat.REGION_FILTERS`; another region name
  keeps every location);
* the first ``--num-conv`` kept conversations in row order (default 1000; 0 = all of the
  slice, the original's behaviour on real data);
* users = ``hashed_ip``, grouped greedily into ``--num-users`` simulated users, each going
  through its conversations in timestamp order (closed loop, looping until the deadline);
* requests: ``max_tokens`` 512, temperature 0, ``x-hash-key`` = ``hashed_ip``.

The original's think-time floor ``--open-loop-threshold`` is a common client option
(:attr:`~pytest_lbbench.workloads.base.Arrival.think_time_floor_s`), not a workload option.
"""

from __future__ import annotations


from pytest_lbbench.workloads.base import (
    WorkloadArgs,
    RequestSettings,
    WorkloadOption,
    WorkloadPlan,
    group_into_users,
    users_from_groups,
)
from pytest_lbbench.workloads.sources import rows_for, uses_real_rows
from pytest_lbbench.workloads.sources import wildchat as source

NAME = "wildchat"
DEFAULT_MAX_TOKENS = 512

NUM_CONV = WorkloadOption(
    "--num-conv", "int", 1000,
    "multi-turn conversations per client region (wildchat: 0 = the whole slice, real data only)",
)
START_INDEX = WorkloadOption(
    "--start-index", "int", 0, "which 100,000-row slice of the dataset to read",
)


class WildChat:
    """The ``wildchat`` workload (see the module docstring)."""

    name = NAME
    options: tuple[WorkloadOption, ...] = (NUM_CONV, START_INDEX)
    hf_dataset: str | None = source.DATASET_ID

    def plan(self, args: WorkloadArgs, region: str, region_index: int) -> WorkloadPlan:
        """Closed-loop users over this region's WildChat conversations."""
        num_conv = int(getattr(args, "num_conv", NUM_CONV.default))
        if num_conv < 0:
            raise ValueError(f"--num-conv must be >= 0 (0: the whole slice), got {num_conv}")
        start_index = int(getattr(args, "start_index", START_INDEX.default))
        split = source.split_for(start_index)
        if num_conv == 0 and not uses_real_rows(args):
            raise ValueError("--num-conv 0 (the whole slice) needs real rows: use --dataset-source hf")
        rows = rows_for(
            args, source.DATASET_ID,
            lambda: source.synthetic_rows(int(args.seed), start_index, kept_for=region), split=split,
        )
        convs = source.region_conversations(rows, region, num_conv)
        if not convs:
            raise ValueError(
                f"no {source.DATASET_ID} conversations pass the filters for region {region!r} "
                f"in slice {split!r}"
            )
        max_tokens = args.max_tokens if args.max_tokens is not None else DEFAULT_MAX_TOKENS
        return WorkloadPlan(
            name=NAME,
            users=users_from_groups(group_into_users(convs, args.num_users)),
            settings=RequestSettings(max_tokens=max_tokens, temperature=0.0),
            args={"num_conv": num_conv, "start_index": start_index, "region_index": region_index},
        )
