"""``tot``: tree of thoughts on GSM8K — a closed-loop workload with heavy prefix sharing.

Data: ``openai/gsm8k`` (config ``main``, train split) with ``--dataset-source hf``; a local
copy with ``--data-path PATH`` (the original's ``wget``-ed ``train.jsonl``, any file in the row
format; an alias of ``--dataset-path``); otherwise the offline generator
(:mod:`~pytest_lbbench.workloads.sources.gsm8k`: 7,473 template problems, median 45 words).

* Question ``i`` (row order) belongs to the region with index ``i % 3`` (us-east-2 → 0,
  ap-northeast-1 → 1, eu-central-1 → 2); the region keeps at most ``100 × --num-users`` and
  deals them round-robin to its users, who solve theirs one after another, looping until the
  deadline.
* Each question is one conversation of four stage prompts (:data:`STAGE_PROMPTS`): propose a
  plan in at most 80 words (the only prompt holding the question), execute it, reflect and
  score it 1–5, give the final answer. With :class:`~pytest_lbbench.workloads.base.TreeShape`
  every stage answers each surviving node ``--num-branches`` times (default 2), in parallel:
  b + b² + b³ + b⁴ requests per question (30 for b = 2), all sharing the question's prefix.
* Requests: ``max_tokens`` 256, temperature 0.001, ``x-hash-key`` = the question's id
  (``gsm8k-<row>``): "The question ID in the dataset is used as the consistent hashing key"
  (SkyWalker, EuroSys '26, section 5.1), so a whole tree hashes to one replica.

Fixes to the original: the hash key is the question (the original sent the region name, so
consistent hashing pinned a whole region to one replica); the default seed works; the data
file is not mislabelled (the original saved the train split as ``test.jsonl``) and is never
downloaded at run time; the run length is the common ``--duration`` (the original's ``tot``
defaulted to 10 s).
"""

from __future__ import annotations


from pytest_lbbench.workloads.base import (
    WorkloadArgs,
    Conversation,
    RequestSettings,
    TreeShape,
    UserScript,
    WorkloadOption,
    WorkloadPlan,
)
from pytest_lbbench.workloads.sources import Row, gsm8k, rows_for, take_shard

NAME = "tot"
QUESTIONS_PER_USER = 100
TEMPERATURE = 0.001

# Our own wording of the original's four stages; only the first carries the question.
STAGE_PROMPTS = (
    "Solve the following grade-school math problem. First, propose a plan: describe in at most "
    "80 words the steps you will take to solve it. Do not compute the answer yet.\n\n"
    "Problem: {question}",
    "Now carry out your plan step by step, showing each calculation.",
    "Reflect on your solution: check every step for mistakes, then rate how likely the result "
    "is to be correct on a scale from 1 (certainly wrong) to 5 (certainly right). Reply with "
    "the score and one sentence of justification.",
    "Give the final answer as a single number on the last line, in the form 'Answer: <number>'.",
)

NUM_BRANCHES = WorkloadOption(
    "--num-branches", "int", 2, "completions per node at every stage of the tree",
)
DATA_PATH = WorkloadOption(
    "--data-path", "str", None,
    "local GSM8K file in its row format, e.g. grade-school-math's train.jsonl (alias of --dataset-path)",
)


def stage_prompts(question: str) -> tuple[str, ...]:
    """The four user turns of one question."""
    return (STAGE_PROMPTS[0].format(question=question.strip()), *STAGE_PROMPTS[1:])


def tot_users(args: WorkloadArgs, region: str, region_index: int) -> tuple[UserScript, ...]:
    """This region's questions, dealt round-robin to ``--num-users`` users (tot and tot_single)."""
    num_users = int(args.num_users)
    if num_users < 1:
        raise ValueError(f"--num-users must be >= 1, got {num_users}")
    data_path = getattr(args, "data_path", None)
    dataset_path = getattr(args, "dataset_path", None)
    if data_path and dataset_path and str(data_path) != str(dataset_path):
        raise ValueError("--data-path is an alias of --dataset-path; give one of them, not both")
    rows = rows_for(
        args, gsm8k.DATASET_ID, lambda: gsm8k.synthetic_rows(int(args.seed)),
        config=gsm8k.CONFIG, split=gsm8k.SPLIT, path=data_path,
    )
    picked: list[tuple[int, Row]] = take_shard(enumerate(rows), region_index, QUESTIONS_PER_USER * num_users)
    if len(picked) < num_users:
        raise ValueError(
            f"only {len(picked)} GSM8K questions for region index {region_index}, fewer than "
            f"--num-users {num_users}"
        )
    convs: list[list[Conversation]] = [[] for _ in range(num_users)]
    for k, (row_index, row) in enumerate(picked):
        user = k % num_users
        convs[user].append(Conversation(
            conv_id=f"gsm8k-{row_index}",
            user_key=f"gsm8k-{row_index}",  # the paper's CH key: the question id
            timestamp=float(len(convs[user])),  # the order the user solves them in
            user_turns=stage_prompts(str(row["question"])),
        ))
    return tuple(UserScript(user_index=u, conversations=tuple(c)) for u, c in enumerate(convs))


class Tot:
    """The ``tot`` workload (see the module docstring)."""

    name = NAME
    options: tuple[WorkloadOption, ...] = (NUM_BRANCHES, DATA_PATH)
    hf_dataset: str | None = gsm8k.DATASET_ID
    default_max_tokens = 256

    def tree(self, args: WorkloadArgs) -> TreeShape:
        return TreeShape(num_branches=int(getattr(args, "num_branches", NUM_BRANCHES.default)))

    def plan(self, args: WorkloadArgs, region: str, region_index: int) -> WorkloadPlan:
        """Closed-loop users, each working through its questions as trees of thought."""
        tree = self.tree(args)
        users = tot_users(args, region, region_index)
        max_tokens = args.max_tokens if args.max_tokens is not None else self.default_max_tokens
        return WorkloadPlan(
            name=self.name,
            users=users,
            settings=RequestSettings(max_tokens=max_tokens, temperature=TEMPERATURE),
            tree=tree,
            args={"num_branches": tree.num_branches, "parallel": tree.parallel,
                  "region_index": region_index},
        )
