"""Settings of one gateway front end, with the defaults a real deployment would plausibly use.

The original GKE manifests are not available (reference §4.6), so the capacity and health-check
settings of the measured Gateway are unknown. The defaults below are chosen, not copied:

* ``max_rate_per_endpoint = 1.0`` req/s per replica. The Service annotation
  ``networking.gke.io/max-rate-per-endpoint`` takes requests per second. A chat request on one
  L4 running Llama-3.1-8B produces ~270 output tokens on average (the simulated profile: median
  180, log-normal σ 0.9), and one replica sustains roughly 200–500 output tokens/s
  (``reference/calibration.md`` §4.3), i.e. about 1–2 requests/s at saturation. An operator who
  wants spillover *before* queues build up sets the budget at the low end: 1 req/s.
* ``rate_window_s = 10`` s. At a budget of 1 req/s a shorter window quantises too coarsely
  (a 1 s window lets through "one request, then nothing"); 10 s smooths bursts of arrivals the
  way Google's capacity measurement (rates reported every few seconds) does, while still
  reacting within one benchmark phase.
* Health checks: Compute Engine's HTTP health-check defaults — every 5 s, 5 s timeout,
  2 consecutive failures to mark a backend unhealthy, 2 successes to mark it healthy again.
* Outlier detection (passive ejection) with the defaults of Compute Engine's backend-service
  ``outlierDetection``: ``consecutiveErrors`` 5 (a connection failure or a 5xx before the
  response starts counts), ``baseEjectionTime`` 30 s (times the number of ejections), at most
  ``maxEjectionPercent`` 50 % of the backends ejected. An ejected backend comes back when the
  ejection time is over, or earlier once ``healthy_threshold`` health checks in a row passed
  after the ejection (as Envoy's ``successful_active_health_check_uneject_host``, default on).
  Whether the measured Gateway had it on is unknown; ``--no-outlier-detection`` leaves only the
  health checks (a dead backend then takes requests for up to two check intervals).
* No retry by default; ``retry_before_first_byte`` sends a request that failed before its
  first byte once more, to another backend.
* Upstream timeouts as our LB: 10 s to connect, 120 s per read (never a total limit, so a long
  stream that keeps producing tokens is never cut).

Time scale: the budget and the window are *model* quantities. Under ``time_scale`` (replicas
run ``1/time_scale`` times faster) the gateway measures rates on a model clock
(wall seconds / time_scale), so a budget of 1 req/s means "one request per model second"
and the spill behaviour is the same at any scale. Health checks and upstream timeouts stay in
wall-clock seconds, like our LB's probe intervals: they are infrastructure, not the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig:
    """Knobs of one gateway front end.

    ``max_rate_per_endpoint`` and ``rate_window_s`` are in model time (see ``time_scale``);
    every other duration is in wall-clock seconds.
    """

    max_rate_per_endpoint: float = 1.0
    """Rate budget per healthy backend, requests/s, measured over ``rate_window_s``."""
    rate_window_s: float = 10.0
    """Length of the sliding window the request rate is measured over."""
    health_interval_s: float = 5.0
    """Seconds between two health-check rounds (``GET health_path`` on every backend)."""
    health_timeout_s: float | None = None
    """Per-probe timeout; None = ``min(5 s, health_interval_s)`` (as GCP: timeout ≤ interval)."""
    healthy_threshold: int = 2
    """Consecutive successful probes that make an unhealthy backend healthy again."""
    unhealthy_threshold: int = 2
    """Consecutive failed probes that make a healthy backend unhealthy."""
    health_path: str = "/health"
    """Path probed on every backend; any answer other than HTTP 200 counts as a failure."""
    outlier_detection: bool = True
    """Eject a backend after ``consecutive_errors`` failed requests in a row (see the module)."""
    consecutive_errors: int = 5
    """``outlierDetection.consecutiveErrors`` (GCP default)."""
    base_ejection_time_s: float = 30.0
    """``outlierDetection.baseEjectionTime`` (GCP default); model seconds, like the budget."""
    max_ejection_percent: float = 50.0
    """``outlierDetection.maxEjectionPercent`` (GCP default)."""
    retry_before_first_byte: bool = False
    """Our option: send a request whose backend failed before its first byte once more."""
    membership_wait_s: float = 30.0
    """How long a request that arrives before the first membership waits before a 503."""
    stream_timeout_s: float = 120.0
    """Upstream timeout per read (connect excluded), as the LB's ``stream_timeout_s``."""
    connect_timeout_s: float = 10.0
    """Upstream TCP connect timeout: fail fast with a 502."""
    time_scale: float = 1.0
    """Wall seconds per model second (the replicas' ``--time-scale``); rates use model time."""

    def __post_init__(self) -> None:
        for name in ("max_rate_per_endpoint", "rate_window_s", "health_interval_s",
                     "membership_wait_s", "stream_timeout_s", "connect_timeout_s", "time_scale",
                     "base_ejection_time_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.health_timeout_s is not None and not self.health_timeout_s > 0:
            raise ValueError(f"health_timeout_s must be positive, got {self.health_timeout_s!r}")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError(f"max_ejection_percent must be within [0, 100], got {self.max_ejection_percent!r}")
        for name in ("healthy_threshold", "unhealthy_threshold", "consecutive_errors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not self.health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {self.health_path!r}")

    @property
    def probe_timeout_s(self) -> float:
        """The effective per-probe timeout."""
        if self.health_timeout_s is not None:
            return self.health_timeout_s
        return min(5.0, self.health_interval_s)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``/conf`` and the start-up log."""
        out = asdict(self)
        out["health_timeout_s"] = self.probe_timeout_s
        return out
