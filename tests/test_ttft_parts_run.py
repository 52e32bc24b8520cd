"""Where TTFT goes, on real runs: every request of three kinds of system (the real
``sglang-router``, our LBs, the gateway) gets its decomposition, the parts add up to its TTFT,
no hop is charged a delay it did not pay, and the links' connection counts are in the summary
beside the "where TTFT goes" figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.report.ttft_parts import PARTS

MATRIX = '''
from pytest_lbbench.benchmarks.test_systems import test_benchmark  # noqa: F401
'''
SYSTEMS = ("sgl", "sky_push_push", "gke_gateway")
#: How early a link may hand over a chunk (its timers run at 1 ms resolution) plus time.time()
#: precision: a hop residual below minus this charged the request a delay it never paid.
EARLY_S = 1.5e-3


def _payloads(out: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "latest" / "metric").glob("*/*.json")):
        found.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    return found


def test_every_request_of_a_real_run_has_parts_that_add_up_to_its_ttft(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_matrix=MATRIX)
    out = pytester.path / "results"
    result = pytester.runpytest_subprocess(
        "--systems", ",".join(SYSTEMS), "--regions", "us-east-2,eu-central-1", "--replicas", "2",
        "--time-scale", "0.1", "--duration", "4", "--num-users", "3", "--max-tokens", "12",
        "--drain-timeout", "30", "--output-dir", str(out), "-p", "no:cacheprovider", timeout=400)
    result.assert_outcomes(passed=len(SYSTEMS))
    result.stdout.fnmatch_lines(["*where TTFT goes (mean ms per request*",
                                 "*experiment*emulated WAN delay*harness residual*residual p50*",
                                 "*sgl-arena_syn*"])
    experiments = _payloads(out)
    assert len(experiments) == len(SYSTEMS), sorted(experiments)
    for exp_name, payloads in experiments.items():
        description = payloads[0]["deployment"]
        scale = float(description["time_scale"])
        delay = {(link["name"].split(">")[0], link["target"]): link["one_way_ms"] * scale / 1e3
                 for link in description["links"]}
        entry = description["entry_points"]
        ok = [r for p in payloads for r in p["metrics"] if not r["failed"] and not r["warmup"]]
        assert ok, exp_name
        for record in ok:
            parts = record["ttft_parts"]
            assert parts is not None, (exp_name, record)
            assert sum(parts["parts"][name] for name in PARTS) == pytest.approx(record["ttft"], abs=1e-5)
            for hop, values in parts["hops"].items():
                assert values["residual"] >= -EARLY_S, (exp_name, hop, values, record)
            # The emulated delays are those of the path the request took, both ways.
            if exp_name.endswith("_sgl") or exp_name.endswith("_gke_gateway"):
                client = "client@" + record["client_region"]
                router = entry[record["client_region"]]
                expected = delay[(client, router)] + delay[(router, record["replica"])]
                assert parts["parts"]["wan"] == pytest.approx(2 * expected, abs=1e-6), (exp_name, record)
                assert parts["parts"]["lb_queue"] == 0.0
        # Our LBs stamp every hop, so their requests are split into to_entry and to_replica.
        if exp_name.endswith("_sky_push_push"):
            assert all({"to_entry", "to_replica"} <= set(r["ttft_parts"]["hops"]) for r in ok)
        # Every connection a request opened passed a link that counted it.
        counts = payloads[0]["connections"]
        client_links = sum(n for name, n in counts.items() if name.startswith("client@"))
        opened = sum(1 for p in payloads for r in p["metrics"] if r.get("new_connection"))
        assert 0 < opened <= client_links, (exp_name, opened, counts)
    summary = json.loads((out / "latest" / "summary.json").read_text())
    for entry_ in summary["experiments"]:
        assert entry_["ttft_parts"]["requests"] > 0 and entry_["link_connections"], entry_["exp_name"]
    rows = [r for r in summary["records"] if r["client_region"] == "all"]
    assert all(r["ttft_residual_p50_s"] is not None for r in rows)
    assert (out / "latest" / "fig" / "arena_syn_ttft_parts.png").stat().st_size > 10_000
