"""Our load balancers: the SkyPilot multi-region LB algorithm, reimplemented on aiohttp.

Run one with ``python -m pytest_lbbench.lb`` (see ``__main__``). The pieces:

* :mod:`.prefix_tree`: the radix "proximate tree";
* :mod:`.policies`: round robin, least load, prefix tree, consistent hashing;
* :mod:`.config`: LB-level × replica-level modes and the original constants;
* :mod:`.peers`: LB↔LB cooperation rules (V1 fair share, steal ranking, rate-limit rule);
* :mod:`.lag`: how late the periodic loops wake (host-lag telemetry in ``/conf``);
* :mod:`.server`: one LB process (queue processor, dispatch, stealing, endpoints, reset).

No pytest import anywhere below this package.
"""

from __future__ import annotations

from .config import LbConfig, LbMode, ReplicaMode
from .policies import POLICIES, Policy, PrefixTreeConfig, RequestInfo, make_policy, request_text
from .prefix_tree import PrefixTree

__all__ = [
    "POLICIES",
    "LbConfig",
    "LbMode",
    "Policy",
    "PrefixTree",
    "PrefixTreeConfig",
    "ReplicaMode",
    "RequestInfo",
    "make_policy",
    "request_text",
]
