"""``mixed_tree``: trees of thought whose branching depends on the client region.

Source: SkyWalker (EuroSys '26, arXiv 2505.24095) section 5.1, the "Mixed Tree" workload of
Fig. 8d/8h/8l: the US runs 4-branch trees with two clients, Europe and Asia 2-branch trees
with 20 clients each, on 12 replicas (four per region). A few very wide trees in one region
and many narrow ones elsewhere: an LB that pins a prefix to one replica (consistent hashing,
the SGLang router's cache-aware policy) piles a whole 4-branch tree onto it, one that ignores
prefixes (RR, LL) splits every tree's siblings over replicas and loses their shared prefix.
The paper reports cache hit LL/RR 58.66-59.32 % vs SkyWalker 89.56-90.01 %, and an
outstanding-request spread over replicas of 3.36x for CH and 2.22x for SGL (fidelity.md §1).

Everything but the branching is :mod:`~pytest_lbbench.workloads.tot`'s: the same GSM8K
questions and per-region selection (``--data-path`` / ``--dataset-source`` /
``--dataset-path``), the same four stage prompts, ``max_tokens`` 256, temperature 0.001,
closed-loop users, ``x-hash-key`` = ``<region>-<user index>``.

* ``--branches-by-region REGION=B,...,default=B`` (default ``us-east-2=4,default=2``, the
  paper's): the branch factor of this client region's trees. The number of users per region
  comes from the usual ``--num-users`` / ``--region-to-args`` (the ``paper-fig8-mixed-tree``
  preset sets 2 in us-east-2 and 20 elsewhere).
* Tree size. The paper counts 85 requests for a 4-branch tree (1 + 4 + 16 + 64: one root
  request, then four answers to every node at each of the next three stages) and, for the
  2-branch ToT trees, 15 (1 + 2 + 4 + 8). Our tree runner
  (:class:`~pytest_lbbench.workloads.base.TreeShape`, as the original ``sky/lbbench/workloads/
  tot.py`` whose ``_tree_search`` answers even the first prompt ``num_branches`` times) sends
  b + b² + b³ + b⁴ requests: 340 for b = 4 and 30 for b = 2. :func:`requests_per_tree` gives
  both counts; ``plan.args`` records them. Until the tree runner can answer the first stage
  once, our US trees are 4x and the others 2x the paper's size.
"""

from __future__ import annotations


from pytest_lbbench.workloads.base import (
    WorkloadArgs,
    RequestSettings,
    TreeShape,
    WorkloadOption,
    WorkloadPlan,
)
from pytest_lbbench.workloads.sources import gsm8k
from pytest_lbbench.workloads.tot import DATA_PATH, STAGE_PROMPTS, TEMPERATURE, tot_users

NAME = "mixed_tree"

#: The paper's mixed-tree branching (section 5.1): 4 branches in the US, 2 elsewhere.
DEFAULT_BRANCHES_BY_REGION = "us-east-2=4,default=2"
DEFAULT_KEY = "default"

BRANCHES_BY_REGION = WorkloadOption(
    "--branches-by-region", "str", DEFAULT_BRANCHES_BY_REGION,
    "tree branch factor per client region, REGION=B,...,default=B",
    metavar="SPEC",
)


def parse_branches_by_region(spec: str) -> dict[str, int]:
    """``"us-east-2=4,default=2"`` → ``{"us-east-2": 4, "default": 2}``; ``ValueError`` if bad."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        region, sep, value = part.partition("=")
        region = region.strip()
        if not sep or not region:
            raise ValueError(
                f"--branches-by-region: {part!r} is not REGION=BRANCHES; give e.g. "
                f"{DEFAULT_BRANCHES_BY_REGION!r}"
            )
        try:
            branches = int(value)
        except ValueError:
            raise ValueError(
                f"--branches-by-region: {part!r}: {value.strip()!r} is not a whole number of branches"
            ) from None
        if branches < 1:
            raise ValueError(f"--branches-by-region: {part!r}: branches must be >= 1")
        if region in out:
            raise ValueError(f"--branches-by-region: region {region!r} is given twice in {spec!r}")
        out[region] = branches
    if not out:
        raise ValueError(f"--branches-by-region is empty; give e.g. {DEFAULT_BRANCHES_BY_REGION!r}")
    return out


def branches_for(spec: str, region: str) -> int:
    """The branch factor of ``region``'s trees under ``spec`` (its own entry, else ``default``)."""
    table = parse_branches_by_region(spec)
    if region in table:
        return table[region]
    if DEFAULT_KEY in table:
        return table[DEFAULT_KEY]
    raise ValueError(
        f"--branches-by-region {spec!r} has no entry for client region {region!r} and no "
        f"'{DEFAULT_KEY}=B'; add {region}=B or {DEFAULT_KEY}=B"
    )


def requests_per_tree(branches: int, stages: int = len(STAGE_PROMPTS), root_once: bool = False) -> int:
    """Requests in one tree: b + b² + … + bˢ (our runner), or 1 + b + … + bˢ⁻¹ (the paper's)."""
    if root_once:
        return sum(branches ** k for k in range(stages))
    return sum(branches ** k for k in range(1, stages + 1))


class MixedTree:
    """The ``mixed_tree`` workload (see the module docstring)."""

    name = NAME
    options: tuple[WorkloadOption, ...] = (BRANCHES_BY_REGION, DATA_PATH)
    hf_dataset: str | None = gsm8k.DATASET_ID
    default_max_tokens = 256

    def tree(self, args: WorkloadArgs, region: str) -> TreeShape:
        spec = getattr(args, "branches_by_region", None) or DEFAULT_BRANCHES_BY_REGION
        return TreeShape(num_branches=branches_for(str(spec), region))

    def plan(self, args: WorkloadArgs, region: str, region_index: int) -> WorkloadPlan:
        """Closed-loop users solving GSM8K questions as trees of this region's branch factor."""
        tree = self.tree(args, region)
        users = tot_users(args, region, region_index)
        max_tokens = args.max_tokens if args.max_tokens is not None else self.default_max_tokens
        return WorkloadPlan(
            name=self.name,
            users=users,
            settings=RequestSettings(max_tokens=max_tokens, temperature=TEMPERATURE),
            tree=tree,
            args={
                "branches_by_region": str(getattr(args, "branches_by_region", None)
                                          or DEFAULT_BRANCHES_BY_REGION),
                "num_branches": tree.num_branches,
                "parallel": tree.parallel,
                "requests_per_tree": requests_per_tree(tree.num_branches),
                "paper_requests_per_tree": requests_per_tree(tree.num_branches, root_once=True),
                "region_index": region_index,
            },
        )
