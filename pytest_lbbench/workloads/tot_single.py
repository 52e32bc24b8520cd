"""``tot_single``: the tree-of-thought workload of :mod:`~pytest_lbbench.workloads.tot`, as the
original's ``tot_single`` ran it.

Same GSM8K data, selection, stage prompts and tree (``--num-branches``, default 2;
``--data-path``), with ``max_tokens`` 512 and ``--disable-parallel``, which sends one request
of a tree at a time (:class:`~pytest_lbbench.workloads.base.TreeShape` ``parallel=False``)
instead of all branches of a stage at once. ``x-hash-key`` = ``<region>-<user index>``, the
original's ``f'{seed}-{uid}'`` (its seed was the region name). Temperature 0.001, closed loop.
"""

from __future__ import annotations


from pytest_lbbench.workloads.base import TreeShape, WorkloadArgs, WorkloadOption
from pytest_lbbench.workloads.tot import DATA_PATH, NUM_BRANCHES, Tot

NAME = "tot_single"

DISABLE_PARALLEL = WorkloadOption(
    "--disable-parallel", "bool", False, "send a tree's requests one at a time",
)


class TotSingle(Tot):
    """The ``tot_single`` workload (see the module docstring)."""

    name = NAME
    options: tuple[WorkloadOption, ...] = (NUM_BRANCHES, DATA_PATH, DISABLE_PARALLEL)
    default_max_tokens = 512

    def tree(self, args: WorkloadArgs) -> TreeShape:
        return TreeShape(
            num_branches=int(getattr(args, "num_branches", NUM_BRANCHES.default)),
            parallel=not bool(getattr(args, "disable_parallel", False)),
        )
