"""wildchat: corrected region filters, the original's filters and grouping, statistics."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.workloads.base import WorkloadPlan
from pytest_lbbench.workloads.sources import wildchat as wc
from pytest_lbbench.workloads.wildchat import WildChat
from pytest_lbbench.workloads.base import WorkloadArgs
from workload_support import workload_args

DATA = Path(__file__).parent / "data" / "wildchat_1m.jsonl"
REGIONS = ("us-east-2", "ap-northeast-1", "eu-central-1")
ROW_KEYS = {"conversation_hash", "model", "timestamp", "conversation", "turn", "language",
            "openai_moderation", "detoxify_moderation", "toxic", "redacted", "state", "country",
            "hashed_ip", "header"}


def args(**overrides: Any) -> WorkloadArgs:
    values: dict[str, Any] = {
        "num_users": 10, "seed": 0, "duration": 120.0, "max_tokens": None,
        "dataset_source": "synthetic", "dataset_path": None, "num_conv": 300, "start_index": 0,
    }
    values.update(overrides)
    return workload_args(values)


def wild_plan(region: str = "us-east-2", **overrides: Any) -> WorkloadPlan:
    return WildChat().plan(args(**overrides), region, REGIONS.index(region) if region in REGIONS else 0)


def test_region_lists_are_fixed() -> None:
    for name in ("US_EAST_CENTRAL_STATES", "CANADA_EAST_CENTRAL_PROVINCES",
                 "AP_NORTHEAST_COUNTRIES", "EU_CENTRAL_COUNTRIES"):
        values = getattr(wc, name)
        assert len(values) == len(set(values)), f"duplicates in {name}"
        assert not any(a + b in values for a in values for b in values)  # no merged names
    assert len(wc.US_EAST_CENTRAL_STATES) == 20
    ap = wc.REGION_FILTERS["ap-northeast-1"]
    assert ap.accepts("Singapore", None) and ap.accepts("Pakistan", "Punjab")
    assert not ap.accepts("PakistanSingapore", None)
    us = wc.REGION_FILTERS["us-east-2"]
    assert us.accepts("United States", "Ohio") and not us.accepts("United States", "California")
    assert not us.accepts("United States", None)  # the state list now has an effect
    assert us.accepts("Canada", "Ontario") and not us.accepts("Canada", "British Columbia")
    assert not us.accepts("Japan", None)
    eu = wc.REGION_FILTERS["eu-central-1"]
    assert eu.accepts("Romania", None) and eu.accepts("Norway", None) and not eu.accepts(None, None)
    assert wc.region_filter("us-west-2") is None  # other regions keep everything


def test_filters_and_grouping() -> None:
    p = wild_plan("us-east-2", num_users=6)
    assert p.settings.max_tokens == 512 and p.arrival.kind == "closed"
    rows = list(wc.synthetic_rows(0, 0, 3000))
    by_hash = {r["conversation_hash"]: r for r in rows}
    kept = [c for u in p.users for c in u.conversations]
    assert len(kept) == 300
    for c in kept:
        row = by_hash.get(c.conv_id.rsplit("-", 1)[0])
        if row is None:
            continue  # beyond the 3000 rows checked here
        assert row["turn"] >= 2 and len(row["conversation"]) >= 4 and row["hashed_ip"]
        assert wc.REGION_FILTERS["us-east-2"].accepts(row["country"], row["state"])
        assert c.user_key == row["hashed_ip"]
    for u in p.users:
        stamps = [c.timestamp for c in u.conversations]
        assert stamps == sorted(stamps)
    owners = [{c.user_key for c in u.conversations} for u in p.users]
    assert sum(len(o) for o in owners) == len(set().union(*owners))  # an IP stays with one user


def test_each_filter_removes_rows() -> None:
    rows = list(wc.synthetic_rows(1, 0, 4000))
    assert any(r["turn"] == 1 for r in rows)
    assert any(r["turn"] >= 2 and len(r["conversation"]) < 4 for r in rows)
    assert any(r["turn"] >= 2 and r["hashed_ip"] is None for r in rows)
    shares = {region: sum(wc.REGION_FILTERS[region].accepts(r["country"], r["state"]) for r in rows) / len(rows)
              for region in REGIONS}
    assert 0.22 <= shares["us-east-2"] <= 0.34
    assert 0.30 <= shares["ap-northeast-1"] <= 0.46
    assert 0.12 <= shares["eu-central-1"] <= 0.26
    assert 1 - sum(shares.values()) >= 0.08  # rows no region serves


def test_fast_path_yields_exactly_the_kept_rows() -> None:
    for region in (*REGIONS, "none"):
        full = wc.region_conversations(wc.synthetic_rows(2, 1, 1500), region, 0)
        fast = wc.region_conversations(wc.synthetic_rows(2, 1, 1500, kept_for=region), region, 0)
        assert full == fast and full


def test_synthetic_statistics_match_the_docstring() -> None:
    rows = list(wc.synthetic_rows(3, 0, 6000))
    for r in rows[:50]:
        assert set(r) == ROW_KEYS
        assert r["timestamp"].tzinfo is not None
        json.dumps(wc_jsonable(r))
    single = sum(r["turn"] == 1 for r in rows) / len(rows)
    assert abs(single - wc.SINGLE_TURN_FRACTION) < 0.03
    multi = [r["turn"] for r in rows if r["turn"] > 1]
    assert 2.9 <= statistics.mean(multi) <= 3.5
    counts = sorted(Counter(r["hashed_ip"] for r in rows if r["hashed_ip"]).values(), reverse=True)
    assert counts[0] >= 10 * statistics.median(counts) and statistics.median(counts) == 1
    words = sorted(len(m["content"].split()) for r in rows for m in r["conversation"][2::2])
    assert 38 <= statistics.median(words) <= 54  # follow-up turns: no templates
    assert 90 <= statistics.mean(words) <= 150
    firsts = Counter(" ".join(r["conversation"][0]["content"].split()[:50]) for r in rows)
    assert max(firsts.values()) >= 20  # long templates shared across IPs
    span = max(r["timestamp"] for r in rows) - min(r["timestamp"] for r in rows)
    assert 29 <= span.days <= 31
    later = list(wc.synthetic_rows(3, 2, 50))
    assert min(r["timestamp"] for r in later) - min(r["timestamp"] for r in rows) > span
    assert {r["hashed_ip"] for r in later} & {r["hashed_ip"] for r in rows}  # same people


def wc_jsonable(row: dict[str, Any]) -> Any:
    from pytest_lbbench.workloads.sources import jsonable

    return jsonable(row)


def test_start_index_selects_another_slice() -> None:
    assert wild_plan(start_index=1).request_sequence() != wild_plan().request_sequence()
    assert wc.split_for(2) == "train[200000:300000]"
    with pytest.raises(ValueError, match="--start-index"):
        wild_plan(start_index=-1)
    with pytest.raises(ValueError, match="real rows"):
        wild_plan(num_conv=0)


def test_hf_path_reads_a_local_copy_through_datasets() -> None:
    pytest.importorskip("datasets")
    expected = [json.loads(line) for line in DATA.read_text().splitlines()]
    total = 0
    for region in (*REGIONS, "none"):
        flt = wc.region_filter(region)
        want = [r for r in expected if wc.keep_row(r, flt)]
        if not want:
            with pytest.raises(ValueError, match="no allenai/WildChat-1M conversations"):
                wild_plan(region, dataset_source="hf", dataset_path=str(DATA), num_conv=0, num_users=1)
            continue
        p = wild_plan(region, dataset_source="hf", dataset_path=str(DATA), num_conv=0, num_users=1)
        got = sorted(c.conv_id.rsplit("-", 1)[0] for u in p.users for c in u.conversations)
        assert got == sorted(r["conversation_hash"] for r in want)
        conv = p.users[0].conversations[0]
        row = next(r for r in want if r["conversation_hash"] == conv.conv_id.rsplit("-", 1)[0])
        assert conv.user_key == row["hashed_ip"]
        assert conv.user_turns == tuple(m["content"] for m in row["conversation"] if m["role"] == "user")
        total += len(got) if region != "none" else 0
    assert total > 0
