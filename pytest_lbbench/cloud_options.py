"""The cloud backends' options (``--backend``, ``--endpoint``, ``--sky-*``, ``--gke-*``).

Declared apart from :mod:`pytest_lbbench.cloud_plugin`, which validates them and runs the
backends, so that registering options (every pytest start, ``--help`` included) imports only
the defaults, not SkyPilot's or Kubernetes' plumbing.
"""

from __future__ import annotations

from typing import Any

from pytest_lbbench.backends.sky.defaults import (
    DEFAULT_ACCELERATOR,
    DEFAULT_CLOUD,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_MODEL,
    DEFAULT_SGLANG_VERSION,
)


def add_options(group: Any) -> None:
    """Register the cloud options on the ``lbbench`` option group."""
    add = group.addoption
    add("--backend", dest="backend", default="local", metavar="NAME",
        help="where systems run: local (this machine, simulated replicas), sky (real clouds "
        "through SkyPilot; needs pytest-lbbench[sky]), gke (the GKE gateway on --gke-contexts), "
        "or one added by the pytest_lbbench_backends hook. Default: local")
    add("--lbbench-plan", dest="lbbench_plan", action="store_true", default=False,
        help="print what a --backend sky run would create (clusters, regions, instance types, "
        "commands) and its estimated hourly cost, then exit; provisions nothing")
    add("--keep-up", dest="keep_up", action="store_true", default=False,
        help="sky: leave clusters and services running at the end; a later run with the same "
        "--sky-prefix reuses them. Remove them with --lbbench-cleanup")
    add("--lbbench-cleanup", dest="lbbench_cleanup", action="store_true", default=False,
        help="remove everything the ledgers in --output-dir list as still running (local "
        "processes, sky clusters and services), then exit")
    add("--endpoint", dest="lbbench_endpoints", action="append", default=[], metavar="SYSTEM[@REGION]=URL",
        help="use an existing endpoint for SYSTEM instead of provisioning it; with @REGION only for "
        "that client region (repeatable)")
    add("--service-names", dest="service_names", nargs="+", default=None, metavar="NAME",
        help="existing SkyServe services, one per selected SkyPilot system in --systems order "
        "(as the original gen_cmd); their endpoints are used, nothing is provisioned")
    add("--gke-contexts", dest="gke_contexts", default=None, metavar="CTX1,CTX2",
        help="run gke_gateway on real GKE: kube contexts of the clusters (the first holds the "
        "Gateway); needs pip install 'pytest-lbbench[gke]'. Scaled to zero at the end")
    add("--gke-endpoint", dest="gke_endpoint", default=None, metavar="HOST:PORT",
        help="use an existing GKE gateway for gke_gateway, without touching it")
    add("--sky-cloud", dest="sky_cloud", default=DEFAULT_CLOUD, metavar="CLOUD",
        help=f"sky: cloud of every VM. Default: {DEFAULT_CLOUD}")
    add("--sky-accelerator", dest="sky_accelerator", default=DEFAULT_ACCELERATOR, metavar="NAME:N",
        help=f"sky: GPUs per replica. Default: {DEFAULT_ACCELERATOR}")
    add("--sky-model", dest="sky_model", default=DEFAULT_MODEL, metavar="HF_ID",
        help=f"sky: model the SGLang replicas serve. Default: {DEFAULT_MODEL}")
    add("--sky-sglang-version", dest="sky_sglang_version", default=DEFAULT_SGLANG_VERSION, metavar="VERSION",
        help=f"sky: SGLang version on the replicas. Default: {DEFAULT_SGLANG_VERSION}")
    add("--sky-prefix", dest="sky_prefix", default="lbb", metavar="PREFIX",
        help="sky: prefix of every cluster and service name (lowercase, <= 12 chars). Default: lbb")
    add("--sky-parallel", dest="sky_parallel", type=int, default=DEFAULT_MAX_PARALLEL, metavar="N",
        help="sky: SkyPilot requests in flight at once (a local API server runs 4 long requests "
        f"at a time). Default: {DEFAULT_MAX_PARALLEL}")
    add("--sky-launch-timeout", dest="sky_launch_timeout", type=float, default=3600.0, metavar="SECONDS",
        help="sky: deadline for all launches to finish. Default: 3600")
    add("--sky-ready-timeout", dest="sky_ready_timeout", type=float, default=3600.0, metavar="SECONDS",
        help="sky: deadline for every replica to be READY. Default: 3600")
    add("--sky-teardown-timeout", dest="sky_teardown_timeout", type=float, default=1800.0, metavar="SECONDS",
        help="sky: deadline for the teardown. Default: 1800")
    add("--sky-preflight-timeout", dest="sky_preflight_timeout", type=float, default=10.0, metavar="SECONDS",
        help="sky: bound on the start-up checks (API server health). Default: 10")
