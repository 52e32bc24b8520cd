"""System 6 on the local backend: an emulated GKE multi-cluster Gateway (``gke_gateway``).

The real system is a Google global external Application Load Balancer in front of GKE clusters
in several regions (reference §1.2 "System 6", §4.6): a client reaches the Google front end
nearest to it, which sends each request, without looking at it, to the closest region that has
healthy backends with spare capacity, spilling over to the next-nearest region when the local
backends exceed their per-endpoint rate budget (``max-rate-per-endpoint``) or fail health checks.

Here, one front-end process per client region (``python -m pytest_lbbench.gateway``) does the
same over loopback:

* :mod:`.config`: the knobs and the defaults chosen for an LLM chat service;
* :mod:`.routing`: the decision (region order, sliding-window rate budget, health, round robin);
* :mod:`.server`: the HTTP front end (health checks, ``/conf``, membership, streaming proxy
  shared with our LB).

No pytest import anywhere below this package.
"""

from __future__ import annotations

from .config import GatewayConfig
from .routing import Choice, Router, SlidingWindowCounter
from .server import DECISION_HEADER, Gateway, serve

__all__ = [
    "DECISION_HEADER",
    "Choice",
    "Gateway",
    "GatewayConfig",
    "Router",
    "SlidingWindowCounter",
    "serve",
]
