"""LB configuration, CLI, engine-queue parsing and proxy header rules (no network)."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from pytest_lbbench.lb.__main__ import build_parser, config_from_args
from pytest_lbbench.lb.config import LOOP_FLOORS_S, LbConfig, LbMode, ReplicaMode
from pytest_lbbench.lb.probe import parse_queue_length
from pytest_lbbench.lb.proxy import client_response_headers, upstream_request_headers
from pytest_lbbench.lb.queue import Dispatch
from pytest_lbbench.protocol import HopTiming, LbDecision


def test_defaults_are_the_original_constants() -> None:
    config = LbConfig()
    assert config.tick_s == 0.01
    assert config.probe_interval_s == 0.1
    assert config.steal_threshold == 10
    assert config.stream_timeout_s == 120
    assert config.max_concurrent_requests == 10
    # The original's timing (issue 11 part 3): one pop per tick, peer availability decided at
    # probe time, own pushes not counted.
    assert config.dispatch_all_placeable is False
    assert config.rate_limit_availability == "probe"
    assert config.rate_limit_count_own_pushes is False


def test_to_dict_is_plain_json_and_records_the_fixes() -> None:
    data = LbConfig(lb_mode=LbMode.PUSH, replica_mode=ReplicaMode.PUSH).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["lb_mode"] == "push" and data["replica_mode"] == "push"
    assert data["requeue_unscheduled"] is True
    assert data["dispatch_per_tick"] == "one"
    assert LbConfig(dispatch_all_placeable=True).to_dict()["dispatch_per_tick"] == "all_placeable"


def test_config_accepts_strings_and_is_frozen() -> None:
    config = LbConfig(lb_mode="push", replica_mode="pull")  # type: ignore[arg-type]
    assert config.lb_mode is LbMode.PUSH and config.replica_mode is ReplicaMode.PULL
    with pytest.raises(AttributeError):
        config.tick_s = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="'nope' is not a valid LbMode"):
        LbConfig(lb_mode="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tick_s must be > 0"):
        LbConfig(tick_s=0)


def test_the_lb_scales_its_own_loop_periods_from_the_time_scale() -> None:
    # The periods are model seconds (the original's constants); --time-scale runs them faster,
    # down to a floor, and leaves the timeouts alone (they bound hung peers, they model nothing).
    assert LbConfig().loop_interval_s("tick_s") == 0.01
    scaled = LbConfig(time_scale=0.5)
    assert scaled.loop_interval_s("tick_s") == pytest.approx(0.005)
    assert scaled.loop_interval_s("lb_probe_interval_s") == pytest.approx(0.05)
    assert scaled.probe_timeout_s == LbConfig().probe_timeout_s
    tiny = LbConfig(time_scale=0.001)
    assert {name: tiny.loop_interval_s(name) for name in LOOP_FLOORS_S} == LOOP_FLOORS_S
    args = build_parser().parse_args(["--time-scale", "0.05"])
    assert config_from_args(args).time_scale == 0.05
    assert config_from_args(build_parser().parse_args(scaled.to_argv())) == scaled
    with pytest.raises(ValueError, match="time_scale must be > 0"):
        LbConfig(time_scale=0)
    for bad in ("0", "-1", "nan", "inf", "fast"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--time-scale", bad])


def test_mode_properties() -> None:
    assert LbMode.PUSH.pushes_user_requests and LbMode.PUSH.meta_load_balancing
    assert not LbMode.RATE_LIMITED_PUSH.pushes_user_requests
    assert LbMode.STEAL_V1.steals and LbMode.STEAL_V2.steals and not LbMode.GLOBAL.steals
    assert ReplicaMode.PULL.probes_engine_queue and not ReplicaMode.PUSH.probes_engine_queue


def test_cli_round_trips_through_to_argv() -> None:
    config = LbConfig(
        lb_mode=LbMode.PUSH,
        replica_mode=ReplicaMode.PUSH,
        policy="consistent_hashing",
        meta_policy="least_load",
        dispatch_all_placeable=True,
        rate_limit_availability="dispatch",
        rate_limit_count_own_pushes=True,
        stream_timeout_s=30.0,
    )
    args = build_parser().parse_args(["--name", "lb-x", *config.to_argv()])
    assert config_from_args(args) == config
    assert config_from_args(build_parser().parse_args([])) == LbConfig()
    assert args.name == "lb-x" and args.port == 0 and args.host == "127.0.0.1"


def test_cli_names_of_the_variants_and_the_old_flags_still_parse() -> None:
    parse = build_parser().parse_args
    variant = config_from_args(parse([
        "--dispatch-all-placeable", "--rate-limit-availability", "dispatch", "--rate-limit-count-own-pushes",
    ]))
    assert variant.dispatch_all_placeable and variant.rate_limit_count_own_pushes
    assert variant.rate_limit_availability == "dispatch"
    # Launch lines written before the defaults changed: both now ask for the default.
    old = config_from_args(parse(["--mimic-one-dispatch-per-tick", "--no-rate-limit-count-own-pushes"]))
    assert old == LbConfig()
    with pytest.raises(SystemExit):
        parse(["--rate-limit-availability", "sometimes"])
    with pytest.raises(ValueError, match="rate_limit_availability must be one of probe, dispatch"):
        LbConfig(rate_limit_availability="sometimes")


def test_cli_rejects_unknown_policy_and_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--policy", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--lb-mode", "pull"])
    assert "steal_v1" in capsys.readouterr().err


METRICS = """\
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs_total{model_name="m"} 99.0
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
sglang:num_queue_reqs{model_name="other"} 0.0
sglang:num_running_reqs{model_name="m"} 7.0
"""


def test_parse_queue_length_takes_the_first_sample() -> None:
    assert parse_queue_length(METRICS) == 3.0
    assert parse_queue_length("sglang:num_queue_reqs 0\n") == 0.0
    assert parse_queue_length('vllm:num_requests_waiting{a="b c"} 2 1700000000\n') == 2.0
    assert parse_queue_length("sglang:num_running_reqs 4\n") is None
    assert parse_queue_length("") is None


def test_upstream_request_headers_drop_hop_by_hop_and_keep_the_rest() -> None:
    client = [
        ("Host", "lb:8000"),
        ("Content-Length", "12"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "secret-hop"),
        ("Transfer-Encoding", "chunked"),
        ("x-hash-key", "user-1"),
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer placeholder"),
    ]
    out = upstream_request_headers(client, [("X-Sky-Serve-From-LB", "true")])
    assert dict(out) == {
        "x-hash-key": "user-1",
        "Content-Type": "application/json",
        "Authorization": "Bearer placeholder",
        "X-Sky-Serve-From-LB": "true",
    }


def test_response_headers_number_decisions_after_the_upstream_ones() -> None:
    upstream = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "text/event-stream"),
                ("Content-Length", "100"),
                ("Transfer-Encoding", "chunked"),
                ("x-lbbench-replica", "replica-0"),
                ("replica-decision-0", "Select Replica with id 0 (http://r0)"),
            ]
        )
    )
    dispatch = Dispatch(
        name="lb-b",
        url="http://lb-b",
        to_lb=True,
        timing=(HopTiming("second", 1.0, 1.5),),
        decisions=(LbDecision("ap", "http://lb-b"),),
    )
    out = client_response_headers(upstream, dispatch)
    assert "Content-Length" not in out and "Transfer-Encoding" not in out
    assert out["replica-decision-0"] == "Select Replica with id 0 (http://r0)"
    assert out["lb-decision-1"] == "Select LB in region ap (http://lb-b)"
    assert out["second-hop-sky-time-arrive"] == "1.0"
    assert out["second-hop-sky-time-scheduled"] == "1.5"
    assert out["x-lbbench-replica"] == "replica-0"


def test_policy_knobs_round_trip_and_reach_both_prefix_trees() -> None:
    from pytest_lbbench.lb.server import LoadBalancer

    config = LbConfig(
        lb_mode=LbMode.RATE_LIMITED_PUSH,
        replica_mode=ReplicaMode.CAP,
        cache_threshold=0.3,
        balance_abs_threshold=64,
        balance_rel_threshold=1.5,
        least_load_fallback=False,
        rate_limit_count_own_pushes=True,
        max_concurrent_requests=40,
    )
    argv = config.to_argv()
    assert "--no-least-load-fallback" in argv and "--rate-limit-count-own-pushes" in argv
    assert argv[argv.index("--replica-mode") + 1] == "cap"
    assert config_from_args(build_parser().parse_args(argv)) == config
    lb = LoadBalancer(config, name="lb", region="r")
    for key in ("replica_policy_config", "meta_policy_config"):
        described = lb.core.describe()[key]
        assert described["cache_threshold"] == 0.3 and described["balance_abs_threshold"] == 64
        assert described["least_load_fallback"] is False
    data = config.to_dict()
    assert data["replica_availability"] == "in_flight_below_max_concurrent_requests"
    assert data["meta_records_self"] is True and data["steals"] is False


def test_cli_flags_for_policy_knobs() -> None:
    args = build_parser().parse_args(
        ["--cache-threshold", "0.7", "--balance-abs-threshold", "8", "--balance-rel-threshold",
         "2", "--no-least-load-fallback", "--lb-mode", "steal_v2", "--steal-v2-batch-factor", "5"]
    )
    config = config_from_args(args)
    assert (config.cache_threshold, config.balance_abs_threshold) == (0.7, 8)
    assert config.balance_rel_threshold == 2.0 and config.least_load_fallback is False
    assert config.lb_mode is LbMode.STEAL_V2 and config.steal_v2_batch_factor == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--steal-threshold", "-1"])
