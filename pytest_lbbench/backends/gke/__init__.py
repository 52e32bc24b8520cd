"""The ``gke`` backend: system 6 (``gke_gateway``) on real GKE clusters.

* :mod:`.preflight` — is the ``gke`` extra installed, are the kube contexts configured?
  Standard library only, so it can run (and explain what to install) before anything else.
* :mod:`.render` — the shipped manifests (``manifests/*.yaml``) rendered for one run.
* :mod:`.kube` — the few Kubernetes operations used, behind a Protocol, and the adapter over
  the ``kubernetes`` client (imported lazily; every call bounded by a timeout).
* :mod:`.deployment` — :class:`~.deployment.GkeDeployment` (apply, scale, wait, scale to zero)
  and :class:`~.deployment.GkeEndpointDeployment` (``--gke-endpoint``: touches nothing).

Import the submodules directly; this package imports nothing so that a missing extra is
reported by :func:`.preflight.check_gke_backend`, not by an ImportError. No pytest import here.
"""
