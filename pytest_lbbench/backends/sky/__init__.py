"""The ``sky`` backend: systems under test on real clouds through the SkyPilot Python SDK.

Modules, from the bottom up (none imports pytest, and none imports ``sky`` at module level,
so ``--lbbench-plan`` works without the ``pytest-lbbench[sky]`` extra):

* :mod:`.render` — the SkyPilot task YAMLs of every component (service replicas, our LBs,
  the sglang-router, client clusters, client jobs), from the system catalog;
* :mod:`.plan` — what a run would create and its estimated hourly cost (offline price table);
* :mod:`.sdk` — the module boundary: a small protocol of the asynchronous SDK operations used,
  and the adapter over the real ``sky`` package;
* :mod:`.provision` — the provisioning state machine (bounded parallel submission, waits with
  timeouts, teardown on success/failure/Ctrl-C, ``--keep-up`` reuse) and the cloud ledger;
* :mod:`.preflight` — is the extra installed, are credentials configured (bounded, never hangs);
* :mod:`.deployment` — :class:`SkyDeployment` and :class:`SkyClientLauncher`;
* :mod:`.endpoints` — existing endpoints (``--endpoint``, ``--service-names``), nothing provisioned.
"""
