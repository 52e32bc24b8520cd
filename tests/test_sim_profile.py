"""Engine profiles: the default L4 calibration, JSON loading, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_lbbench.sim.profile import DEFAULT_PROFILE, PROFILES, EngineProfile, load_profile


def test_default_profile_matches_the_l4_calibration() -> None:
    profile = PROFILES[DEFAULT_PROFILE]
    assert profile.kv_capacity_tokens == 22000
    assert profile.chunked_prefill_tokens == 2048
    # SGLang 0.4.5 derivations: min(pool // 2, req_to_token_pool 2048); Llama-3.1 context 131072.
    assert profile.max_running_requests == 2048
    assert profile.max_context_tokens == 131072
    # The KV pool bounds the input: min(131071, 21999) - 5.
    assert profile.max_req_input_len == 21994
    # global_config.py: 0.7, floor 0.7 × 0.14, over 600 decode steps; CLIP 4096; L4 graphs up to 8.
    assert profile.init_new_token_ratio == 0.7
    assert profile.min_new_token_ratio == pytest.approx(0.098)
    assert profile.new_token_ratio_decay == pytest.approx((0.7 - 0.098) / 600)
    assert profile.clip_max_new_tokens == 4096 and profile.cuda_graph_max_bs == 8
    # calibration.md §4.3: batch 1 with a short context ≈ 65–75 ms per step; Σctx 20k ≈ 75–85 ms.
    assert 65 < profile.decode_step_ms(100) < 75
    assert 75 < profile.decode_step_ms(20_000) < 85
    # Prefill: 512 tokens ≈ 300 ms on an L4 (the SkyWalker paper, section 2.1).
    assert profile.prefill_ms(512) == pytest.approx(300, abs=1)


def test_decode_step_grows_with_the_batch_context_and_prefill_with_uncached_tokens() -> None:
    profile = PROFILES[DEFAULT_PROFILE]
    steps = [profile.decode_step_ms(ctx) for ctx in (0, 1_000, 5_000, 20_000)]
    assert steps == sorted(steps) and len(set(steps)) == 4
    per_token = (
        profile.kv_bytes_per_token / (profile.bandwidth_efficiency * profile.mem_bandwidth_bytes_per_s) * 1000
    )
    assert steps[3] - steps[0] == pytest.approx(20_000 * per_token)
    assert profile.prefill_ms(0) == profile.prefill_overhead_ms
    assert profile.prefill_ms(1000) - profile.prefill_ms(0) == pytest.approx(537.0)
    # Above cuda_graph_max_bs (8) a decode step runs eagerly and pays the documented overhead.
    graph = profile.decode_step_ms(1000, batch_size=8)
    assert profile.decode_step_ms(1000, batch_size=9) - graph == pytest.approx(profile.eager_decode_overhead_ms)


def test_load_profile_from_json_with_a_base(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(
        json.dumps({"base": DEFAULT_PROFILE, "kv_capacity_tokens": 3000, "max_running_requests": 4})
    )
    profile = load_profile(path, time_scale=0.1)
    assert profile.name == "tiny"
    assert (
        profile.kv_capacity_tokens == 3000 and profile.max_running_requests == 4 and profile.time_scale == 0.1
    )
    assert profile.prefill_ms_per_token == PROFILES[DEFAULT_PROFILE].prefill_ms_per_token
    # A full profile without a base round-trips through to_dict().
    full = tmp_path / "full.json"
    full.write_text(json.dumps(profile.to_dict()))
    assert load_profile(full) == profile


def test_bad_profiles_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown engine profile 'nope'.*l4-llama3\.1-8b"):
        load_profile("nope")
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"base": DEFAULT_PROFILE, "kv_capacity": 5}))
    with pytest.raises(ValueError, match=r"unknown engine profile field\(s\) \['kv_capacity'\]"):
        load_profile(typo)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"decode_fixed_ms": 1.0}))
    with pytest.raises(ValueError, match="missing field"):
        load_profile(partial)
    with pytest.raises(ValueError, match="time_scale=0 must be > 0"):
        PROFILES[DEFAULT_PROFILE].replace(time_scale=0)
    with pytest.raises(ValueError, match="is negative"):
        EngineProfile.from_dict({"prefill_ms_per_token": -1.0}, base=PROFILES[DEFAULT_PROFILE])
