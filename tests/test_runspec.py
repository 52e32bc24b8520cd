"""One typed run spec: every client knob is one declaration that reaches the client.

A knob is a field of :class:`pytest_lbbench.runspec.RunKnobs`. These tests walk every field, so
a knob added there is covered without touching them: its pytest option exists, a value given on
the command line reaches the job file the client reads (and the argv a cloud VM's client
parses), ``--region-to-args`` can override it, and no other place states its default.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import pytest_lbbench
from pytest_lbbench.backends.base import ExperimentSpec
from pytest_lbbench.client.job import ClientJob, job_from_args
from pytest_lbbench.client.planning import parse_args, parse_region_args
from pytest_lbbench.runconfig import build_config
from pytest_lbbench.runspec import RunKnobs, knob_fields

KNOBS = [f.name for f, _ in knob_fields()]
PACKAGE = Path(pytest_lbbench.__file__).parent


def other_value(name: str) -> Any:
    """A valid value of knob ``name`` that is not its default."""
    default = RunKnobs.__dataclass_fields__[name].default
    if default is None:
        return 7
    return type(default)(default * 2 + 1)


@pytest.mark.parametrize("name", KNOBS)
def test_a_knob_on_the_command_line_reaches_the_client(name: str, pytester: pytest.Pytester) -> None:
    f, decl = next((f, d) for f, d in knob_fields() if f.name == name)
    value = other_value(name)
    config = pytester.parseconfig(decl.flag, str(value), "--workloads", "arena_syn",
                                  "--num-conv", "10", "--regions", "us-east-2")
    cfg = build_config(config)
    spec = cfg.experiment_spec("sky_push_push", "arena_syn")
    job = spec.client_job("us-east-2", 0, "http://127.0.0.1:1", Path("out.json"))
    # The job file the local client reads, and the argv a cloud VM's client parses.
    assert getattr(ClientJob.from_json(job.to_json()).knobs, name) == value
    argv = spec.client_argv("us-east-2", 0, "http://127.0.0.1:1", Path("out.json"))
    assert getattr(job_from_args(parse_args(argv)).knobs, name) == value
    # Every other knob kept its one default.
    for other in KNOBS:
        if other != name:
            assert getattr(job.knobs, other) == RunKnobs.__dataclass_fields__[other].default


@pytest.mark.parametrize("name", KNOBS)
def test_region_to_args_overrides_a_knob_in_one_region(name: str) -> None:
    _, decl = next((f, d) for f, d in knob_fields() if f.name == name)
    value = other_value(name)
    spec = ExperimentSpec(
        system="s", workload="arena_syn", exp_name="e", client_regions=("us-east-2", "eu-central-1"),
        workload_options={"num_conv": 10},
        region_overrides={"eu-central-1": parse_region_args(f"{decl.flag} {value}")},
    )
    assert getattr(spec.region_settings("eu-central-1")[0], name) == value
    assert getattr(spec.region_settings("us-east-2")[0], name) == getattr(RunKnobs(), name)


def test_region_to_args_rejects_what_the_workload_does_not_take() -> None:
    spec = ExperimentSpec(system="s", workload="arena_syn", exp_name="e", client_regions=("us-east-2",),
                          region_overrides={"us-east-2": parse_region_args("--num-branches 3")})
    with pytest.raises(ValueError, match="arena_syn takes no option num_branches"):
        spec.region_settings("us-east-2")
    with pytest.raises(ValueError, match="unknown client arguments --bogus"):
        parse_region_args("--bogus 1")


def test_invalid_knob_values_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--num-users must be positive, got 0"):
        RunKnobs(num_users=0)
    with pytest.raises(ValueError, match="--drain-timeout must be >= 0"):
        RunKnobs(drain_timeout_s=-1)


def test_a_job_file_from_another_version_is_refused_with_a_reason() -> None:
    spec = ExperimentSpec(system="s", workload="arena_syn", exp_name="e", client_regions=("us-east-2",),
                          workload_options={"num_conv": 4})
    data = json.loads(spec.client_job("us-east-2", 0, "http://x", Path("o.json")).to_json())
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version 99"):
        ClientJob.from_json(json.dumps(data))


# The modules a client setting used to travel through (options → spec → argv → planning →
# client CLI → client settings); other programs (the simulator's own --seed, say) are not knobs.
HOPS = ("options.py", "cloud_plugin.py", "fixtures.py", "backends/base.py", "backends/local.py",
        "backends/sky/deployment.py", "client/__main__.py", "client/planning.py",
        "client/job.py", "client/runner.py")


def test_no_knob_default_is_stated_twice() -> None:
    """Only RunKnobs declares a knob: along the hops, no class field of a knob's name has a
    default, no option registration names a knob's flag with a default of its own, and no
    module constant holds a knob's default under a DEFAULT_ name."""
    flags = {decl.flag for _, decl in knob_fields()}
    names = set(KNOBS)
    found: list[str] = []
    for hop in HOPS:
        tree = ast.parse((PACKAGE / hop).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name != "RunKnobs":
                for item in node.body:
                    if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                            and item.target.id in names and item.value is not None):
                        found.append(f"{hop}: class {node.name} field {item.target.id} has a default")
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                if node.args[0].value in flags and any(k.arg == "default" for k in node.keywords):
                    found.append(f"{hop}:{node.lineno}: option {node.args[0].value} with a default")
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id.startswith("DEFAULT_") and any(
                        n.upper().removesuffix("_S").removesuffix("_MS") in t.id for n in names)
                    for t in node.targets):
                found.append(f"{hop}:{node.lineno}: a DEFAULT_ constant of a knob")
    assert not found, found


def test_run_knobs_is_the_only_dataclass_of_the_knobs() -> None:
    # The typed path: the experiment and the client settings hold a RunKnobs, not copies.
    from pytest_lbbench.client.runner import ClientSettings
    from pytest_lbbench.runconfig import LbbenchConfig

    for holder in (ExperimentSpec, ClientSettings, LbbenchConfig, ClientJob):
        fields = {f.name: f for f in dataclasses.fields(holder)}
        assert "knobs" in fields and not (set(fields) & set(KNOBS)), holder


def test_the_readme_options_table_shows_the_knob_defaults() -> None:
    # The README repeats defaults for readers; this keeps it from drifting from the one source.
    import re

    readme = (PACKAGE.parent / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(--[\w-]+)[^`|]*` \| ([^|]+?) \|", readme, re.M))
    checked = 0
    for f, decl in knob_fields():
        if decl.flag in rows and f.default is not None:
            assert rows[decl.flag] == f"{f.default:g}", (decl.flag, rows[decl.flag], f.default)
            checked += 1
    assert checked >= 3
