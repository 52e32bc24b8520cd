"""Our load balancers: the SkyPilot multi-region LB algorithm, reimplemented on aiohttp.

Run one with ``python -m pytest_lbbench.lb`` (see ``__main__``). The pieces:

* :mod:`.prefix_tree`: the radix "proximate tree";
* :mod:`.policies`: round robin, least load, prefix tree, consistent hashing;
* :mod:`.config`: LB-level × replica-level modes and the original constants;
* :mod:`.peers`: LB↔LB cooperation rules (V1 fair share, steal ranking, rate-limit rule);
* :mod:`.pool`, :mod:`.queue`: dial targets with their availability, the FIFO of requests;
* :mod:`.core`: every decision of one LB (admission, placement, push, rate-limited push,
  stealing on both sides, availability from probes) as events in, actions out, on a clock it
  is given: no I/O, so it runs as well under a virtual clock;
* :mod:`.server`: the HTTP shell around the core (handlers, periodic loops, LB↔LB calls of
  :mod:`.rpc`, streaming of :mod:`.proxy`); :mod:`.probe`: the engine-queue probe;
* :mod:`.lag`: how late the periodic loops wake (host-lag telemetry in ``/conf``).

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
