"""Backends as plugins: the registry, the ``pytest_lbbench_backends`` hook, ``--backend``
validation and the start-up refusal of ``--time-scale`` by backends on real clocks."""

from __future__ import annotations

import json

import pytest

from pytest_lbbench.backends.local import LocalBackend
from pytest_lbbench.backends.registry import Backend, BackendRegistry
from pytest_lbbench.cloud_plugin import GkeBackend, SkyBackend

from test_plugin import FAST


def test_the_built_in_backends_satisfy_the_protocol() -> None:
    for backend in (LocalBackend(), SkyBackend(), GkeBackend()):
        assert isinstance(backend, Backend), backend
    assert LocalBackend.scales_time and not SkyBackend.scales_time and not GkeBackend.scales_time


def test_the_registry_refuses_a_taken_name_and_a_non_backend() -> None:
    registry = BackendRegistry([LocalBackend()])
    with pytest.raises(ValueError, match="'local' already exists"):
        registry.add(LocalBackend())

    class Half:
        name = "half"

        def deployment(self) -> None: ...

    with pytest.raises(ValueError, match="lacks summary, scales_time, client_launcher, plan, cleanup, close"):
        registry.add(Half())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend 'nope'. Valid backends: local"):
        registry.get("nope")
    assert registry.names() == ["local"]


def test_close_all_reaches_every_backend_and_collects_errors() -> None:
    closed: list[str] = []

    class Closing(LocalBackend):
        def __init__(self, name: str, fail: bool) -> None:
            self.name, self.fail = name, fail

        def close(self) -> list[str]:
            closed.append(self.name)
            if self.fail:
                raise RuntimeError("session gone")
            return []

    registry = BackendRegistry([Closing("a", True), Closing("b", False)])
    assert registry.close_all() == ["a: session gone"]
    assert closed == ["a", "b"]


HOOK_BACKEND = """
import json
from pathlib import Path

from pytest_lbbench.backends.local import LocalBackend

class Recording(LocalBackend):
    name = "recording"
    summary = "the local backend, recording what it was asked to run"

    def __init__(self):
        self.closed = False

    def deployment(self, system, ctx):
        with (ctx.config.output_dir.parent / "deployed.txt").open("a") as f:
            f.write(system.name + "\\n")
        return super().deployment(system, ctx)

    def close(self):
        Path("closed.txt").write_text("yes")
        return []

def pytest_lbbench_backends(config):
    return [Recording()]
"""


def test_a_conftest_backend_runs_a_system_end_to_end(bench: pytest.Pytester) -> None:
    bench.makeconftest(HOOK_BACKEND)
    out = bench.path / "results"
    result = bench.runpytest("--backend", "recording", "--systems", "sky_push_push",
                             "--regions", "us-east-2", "--output-dir", str(out), *FAST)
    result.assert_outcomes(passed=1)
    assert (bench.path / "deployed.txt").read_text().split() == ["sky_push_push"]
    assert (bench.path / "closed.txt").read_text() == "yes"
    data = json.loads((out / "latest" / "metric" / "arena_syn_sky_push_push" / "us-east-2.json").read_text())
    assert data["metrics"] and all(not r.get("failed") for r in data["metrics"])
    assert data["deployment"]["backend"] == "recording"


def test_a_conftest_backend_may_not_take_a_built_in_name(bench: pytest.Pytester) -> None:
    bench.makeconftest(HOOK_BACKEND.replace('name = "recording"', 'name = "sky"'))
    result = bench.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest_lbbench_backends: a backend named 'sky' already exists*"])


def test_an_unknown_backend_lists_the_valid_ones(bench: pytest.Pytester) -> None:
    bench.makeconftest(HOOK_BACKEND)
    result = bench.runpytest("--collect-only", "--backend", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--backend: unknown backend 'nope'. Valid backends: local, sky, gke, recording*"])


@pytest.mark.parametrize("args, backend", [
    (("--backend", "sky"), "sky"),
    (("--backend", "gke"), "gke"),
    (("--systems", "gke_gateway", "--gke-contexts", "ctx-a,ctx-b"), "gke"),
])
def test_backends_on_real_clocks_refuse_a_time_scale(bench: pytest.Pytester, args: tuple[str, ...],
                                                    backend: str) -> None:
    result = bench.runpytest("--collect-only", "--time-scale", "0.05", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--time-scale 0.05: the {backend} backend runs real engines on real clocks*"])


def test_the_gke_backend_skips_systems_it_cannot_run(bench: pytest.Pytester) -> None:
    result = bench.runpytest("--backend", "gke", "--systems", "sgl", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*sgl: the gke backend runs the GKE gateway only*"])
