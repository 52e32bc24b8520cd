"""Loading one experiment's result files and summarising them.

An experiment's files are ``metric/<exp>_<system>/<client-region>.json`` in the original
``sky.lbbench`` layout; this module reads them back, checks that every request sent has a
record, and produces the flat summary the plugin reports. No pytest import here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pytest_lbbench.report.metrics import DEFAULT_SLO, failure_reasons, goodput, measured, summarize
from pytest_lbbench.report.replicas import replica_counts, replica_shares
from pytest_lbbench.report.ttft_parts import Topology, add_parts, summarize_parts


@dataclass
class ExperimentResult:
    """All client regions of one experiment, with their records and summaries."""

    system: str
    workload: str
    exp_name: str
    files: dict[str, Path]
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The summary this experiment reported (``lbbench_run`` sets it: :meth:`properties` and
    #: the load, repetition and key).
    reported: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, system: str, workload: str, exp_name: str, files: dict[str, Path]) -> ExperimentResult:
        payloads = {region: json.loads(path.read_text()) for region, path in files.items()}
        return cls(system, workload, exp_name, dict(files), payloads)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record that counts (warm-up requests left out)."""
        return measured(r for payload in self.payloads.values() for r in payload["metrics"])

    @property
    def sent(self) -> int:
        return sum(int(p.get("sent", len(p["metrics"]))) for p in self.payloads.values())

    @property
    def recorded(self) -> int:
        return sum(len(p["metrics"]) for p in self.payloads.values())

    @property
    def client_bound(self) -> bool:
        return any(p.get("client", {}).get("client_bound") for p in self.payloads.values())

    def _attached(self, key: str) -> Any:
        """What :meth:`attach` stored under ``key`` (the same in every region file), or None."""
        return next((p[key] for p in self.payloads.values() if p.get(key) is not None), None)

    @property
    def host_lag(self) -> dict[str, Any] | None:
        """The host-lag verdict attached to the files (:mod:`pytest_lbbench.hostlag`), if any."""
        lag: dict[str, Any] | None = self._attached("host_lag")
        return lag

    @property
    def host_bound(self) -> bool:
        """The machine fell behind model time during this experiment (replicas, LBs or links)."""
        return bool((self.host_lag or {}).get("host_bound"))

    @property
    def replica_regions(self) -> dict[str, str]:
        """Replica name → region, from the deployment description attached to the files."""
        for payload in self.payloads.values():
            replicas = (payload.get("deployment") or {}).get("replicas") or []
            if replicas:
                return {r["name"]: r["region"] for r in replicas}
        return {}

    def summary(self) -> dict[str, Any]:
        return summarize(self.records, self.replica_regions)

    def region_summaries(self) -> dict[str, dict[str, Any]]:
        regions = self.replica_regions
        return {region: summarize(p["metrics"], regions) for region, p in self.payloads.items()}

    def add_ttft_parts(self, description: Mapping[str, Any]) -> int:
        """Give every record its ``ttft_parts`` (:mod:`~pytest_lbbench.report.ttft_parts`) from
        the deployment ``description``; in memory, written by the next :meth:`attach`. Returns
        how many records got parts (0 when the deployment has no emulated links)."""
        topo = Topology.from_description(description)
        if topo is None:
            return 0
        return sum(add_parts(p["metrics"], topo) for p in self.payloads.values())

    @property
    def connections(self) -> dict[str, int] | None:
        """New connections per delay link over the experiment (warm-up included), if counted."""
        counts: dict[str, int] | None = self._attached("connections")
        return counts

    def attach(self, key: str, value: Any) -> None:
        """Add ``key`` to every region file (e.g. the deployment's versions), atomically."""
        for region, path in self.files.items():
            self.payloads[region][key] = value
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.payloads[region]))
            os.replace(tmp, path)

    def _fault_summary(self) -> dict[str, Any] | None:
        faults = next(iter(self.payloads.values()), {}).get("faults")
        if not faults:
            return None
        return {key: faults.get(key) for key in ("drill", "counts", "recovery")}

    def properties(self, slo: Mapping[str, float] | None = None) -> dict[str, Any]:
        """A JSON-able summary for ``user_properties`` (travels to the xdist controller).

        ``overall`` holds every metric of :func:`summarize` and goodput / SLO attainment under
        ``slo`` (default :data:`DEFAULT_SLO`), so gates and SLA targets can name them."""
        overall = {**self.summary(), **goodput(self.records, slo or DEFAULT_SLO)}
        return {
            "system": self.system,
            "workload": self.workload,
            "exp_name": self.exp_name,
            "sent": self.sent,
            "recorded": self.recorded,
            "client_bound": self.client_bound,
            "host_bound": self.host_bound,
            "host_lag": self.host_lag,
            "loop_lag": {r: p.get("client", {}).get("loop_lag") for r, p in self.payloads.items()},
            "overall": overall,
            "regions": self.region_summaries(),
            "failure_reasons": failure_reasons(self.records),
            # Where TTFT went (parts, per-hop harness residual, new connections per hop).
            "ttft_parts": summarize_parts(self.records),
            "link_connections": self.connections,
            # Which replica served how much (the records' ``replica`` field), for the table.
            "replica_requests": replica_counts(self.records),
            "replica_share": replica_shares(self.records),
            # Per-request latencies of successful requests, for stored runs' statistics.
            "samples": {
                "ttft_s": [r["ttft"] for r in self.records if not r.get("failed") and r.get("ttft") is not None],
                "e2e_s": [
                    r["e2e_latency"] for r in self.records
                    if not r.get("failed") and r.get("e2e_latency") is not None
                ],
            },
            "files": {r: str(p) for r, p in self.files.items()},
            # A fault drill's counts and recovery (the timeline stays in the result files).
            "faults": self._fault_summary(),
            "versions": (next(iter(self.payloads.values()), {}).get("deployment") or {}).get("versions", {}),
        }
