"""The simulated replica: an SGLang-compatible HTTP API over an engine model (no pytest import).

Run one with ``python -m pytest_lbbench.sim --port 0 --name replica-0 --time-scale 1.0``; it
prints ``LBBENCH_READY {"port": ..., "name": ..., "url": ...}`` once it serves.
In-process: ``async with SimReplica(ReplicaConfig(profile=load_profile(...))) as replica: ...``.

Modules, one concern each: :mod:`.tokenizer` (offline tokenizer and Llama-3 chat template),
:mod:`.generation` (deterministic answers), :mod:`.profile` (timing data), :mod:`.radix_cache`
(prefix cache and KV accounting), :mod:`.engine` (the scheduler), :mod:`.server` (HTTP).
"""

from __future__ import annotations

from .engine import ENGINE_METRICS, Engine, EngineBusy, EngineGauges, EngineStats, RequestRejected, SimRequest
from .profile import DEFAULT_PROFILE, PROFILES, EngineProfile, load_profile
from .server import ReplicaConfig, SimReplica, run_server

__all__ = [
    "DEFAULT_PROFILE",
    "ENGINE_METRICS",
    "PROFILES",
    "Engine",
    "EngineBusy",
    "EngineGauges",
    "EngineProfile",
    "EngineStats",
    "ReplicaConfig",
    "RequestRejected",
    "SimReplica",
    "SimRequest",
    "load_profile",
    "run_server",
]
