"""The ``--scenario`` presets: the paper's setups, scaled, applied to the run's options."""

from __future__ import annotations

import pytest

from pytest_lbbench.regions import place_round_robin
from pytest_lbbench.scenarios import SCENARIOS, get_scenario
from pytest_lbbench.systems import SYSTEMS
from pytest_lbbench.workloads import WORKLOADS


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_preset_names_real_systems_and_workloads(name: str) -> None:
    scenario = SCENARIOS[name]
    assert set(scenario.systems) <= set(SYSTEMS)
    assert scenario.source and scenario.figure
    if scenario.workloads != ("mixed_tree",) or "mixed_tree" in WORKLOADS:
        assert set(scenario.workloads) <= set(WORKLOADS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("scale", [None, 1.0, 0.25])
def test_round_robin_placement_gives_the_scaled_layout(name: str, scale: float | None) -> None:
    layout = SCENARIOS[name].layout(scale)
    placed = place_round_robin(layout.total_replicas, layout.replica_regions)
    assert {r: placed.count(r) for r in layout.replica_regions} == layout.replicas
    assert all(n >= 1 for n in layout.clients.values())


def test_full_scale_is_the_papers_setup() -> None:
    arena = get_scenario("paper-fig8-arena").layout(1.0)
    assert arena.replicas == {"us-east-2": 3, "ap-northeast-1": 3, "eu-central-1": 2}
    assert arena.clients == {"us-east-2": 80, "ap-northeast-1": 80, "eu-central-1": 80}
    assert arena.replica_regions == ("us-east-2", "ap-northeast-1", "eu-central-1")
    fig9 = get_scenario("paper-fig9").layout()
    assert fig9.client_regions == ("us-east-2",) and fig9.replicas == {"us-east-2": 4}


def test_scaling_rounds_half_up_and_keeps_one() -> None:
    layout = get_scenario("paper-fig8-arena").layout(0.5)
    assert layout.replicas == {"us-east-2": 2, "ap-northeast-1": 2, "eu-central-1": 1}
    assert layout.clients == {"us-east-2": 40, "ap-northeast-1": 40, "eu-central-1": 40}
    tiny = get_scenario("paper-fig8-mixed-tree").layout(0.1)
    assert tiny.clients["us-east-2"] == 1 and min(tiny.replicas.values()) == 1
    assert layout.region_to_args()["eu-central-1"] == "--num-users 40"
    assert "clients per replica" in layout.describe()


def test_bad_scale_and_name_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        get_scenario("paper-fig9").layout(0)
    with pytest.raises(KeyError, match="paper-fig8-arena"):
        get_scenario("fig8")


def test_plugin_applies_a_preset(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--collect-only", "-q", "--scenario", "paper-fig9")
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    for system in SCENARIOS["paper-fig9"].systems:
        assert f"[{system}-tot]" in out
    result.stdout.fnmatch_lines([f"{len(SCENARIOS['paper-fig9'].systems)} tests collected*"])
    header = bench.runpytest("--collect-only", "--scenario", "paper-fig8-arena", "--scenario-scale", "0.25",
                             "--systems", "sgl")
    header.stdout.fnmatch_lines([
        "*clients=us-east-2,ap-northeast-1,eu-central-1 replicas=3 *users/region=20*",
        "*scenario paper-fig8-arena (Fig. 8a/8e/8i) at scale 0.25*",
        "*[[]sgl-arena_syn[]]*",
    ])


def test_plugin_refuses_an_unknown_preset(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--collect-only", "--scenario", "fig8")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown scenario 'fig8'*paper-fig8-arena*"])
    result = bench.runpytest("--collect-only", "--scenario-scale", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--scenario-scale needs --scenario*"])
