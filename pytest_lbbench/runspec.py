"""The knobs of an experiment's clients, declared once: flag, help, default and check of each.

The pytest plugin registers every knob as a command-line option (``--duration``,
``--num-users``, ...); the client CLI registers the same declarations; :class:`RunKnobs` holds
the values, travels typed in :class:`~pytest_lbbench.backends.base.ExperimentSpec` and in the job
file the client reads (:mod:`pytest_lbbench.client.job`). A knob's default is stated only on its
field below: both command lines register it with ``default=None`` ("not given") and fill the
field's default in :func:`knobs_from`.

Adding a knob is one field here and the line that reads it (e.g. ``job.knobs.my_knob`` in the
client): the pytest option, the client option, the per-region override (``--region-to-args``),
the validation, the job file and the client argv of cloud backends all follow from the field.

No pytest import here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Check = Literal["positive", "non_negative", "at_least_one"]


@dataclass(frozen=True)
class KnobDecl:
    """How one :class:`RunKnobs` field appears on a command line."""

    flag: str
    help: str
    metavar: str
    check: Check | None = None


def _knob(default: Any, flag: str, help: str, metavar: str, check: Check | None = None) -> Any:
    return field(default=default, metadata={"knob": KnobDecl(flag, help, metavar, check)})


@dataclass(frozen=True)
class RunKnobs:
    """What every client of one experiment is told (one client region's values after
    ``--region-to-args``). Invalid values raise ``ValueError`` naming the flag."""

    duration_s: float = _knob(
        60.0, "--duration", "seconds during which users start new turns; turns in flight then finish",
        "SECONDS", "positive")
    num_users: int = _knob(50, "--num-users", "simulated users per client region", "N", "positive")
    seed: int = _knob(0, "--seed", "workload seed (with the region: the open-loop arrival times too)",
                      "INT")
    max_tokens: int | None = _knob(
        None, "--max-tokens", "override the workload's max_tokens (None: the workload's own; "
        "arena_syn: 512)", "N", "at_least_one")
    # The original client's per-request timeout.
    request_timeout_s: float = _knob(100.0, "--request-timeout", "per-request client timeout",
                                     "SECONDS", "positive")
    drain_timeout_s: float = _knob(
        100.0, "--drain-timeout", "how long turns in flight at the end of --duration may take",
        "SECONDS", "non_negative")
    lag_threshold_ms: float = _knob(
        10.0, "--lag-threshold-ms", "client event-loop lag p99 above which a run is flagged "
        "client-bound", "MS")
    ready_timeout_s: float = _knob(
        30.0, "--ready-timeout", "how long a client waits for its endpoint to answer /v1/models "
        "before it gives up (exit 3)", "SECONDS", "positive")
    warmup_s: float = _knob(
        0.0, "--warmup", "run each experiment this long before --duration; requests started then "
        "are recorded (warmup=true) but left out of every metric", "SECONDS", "non_negative")

    def __post_init__(self) -> None:
        for f, decl in knob_fields():
            value = getattr(self, f.name)
            problem = _check(decl.check, value)
            if problem:
                raise ValueError(f"{decl.flag} must be {problem}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunKnobs:
        """The inverse of :meth:`to_dict` (unknown keys are an error: a newer writer)."""
        names = {f.name for f, _ in knob_fields()}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown run knobs {unknown}; known: {sorted(names)}")
        return cls(**data)


def _check(check: Check | None, value: Any) -> str | None:
    """What ``value`` should be, or None when it passes (``None`` values pass: not set)."""
    if check is None or value is None:
        return None
    if check == "positive" and not value > 0:
        return "positive"
    if check == "non_negative" and not value >= 0:
        return ">= 0"
    if check == "at_least_one" and not value >= 1:
        return "at least 1"
    return None


def knob_fields() -> tuple[tuple[dataclasses.Field[Any], KnobDecl], ...]:
    """Every knob's dataclass field and declaration, in declaration order."""
    return tuple((f, f.metadata["knob"]) for f in dataclasses.fields(RunKnobs))


def knob_type(f: dataclasses.Field[Any]) -> type:
    """``int`` or ``float``: the value type of a knob (from its annotation)."""
    annotation = str(f.type).replace(" | None", "")
    return {"int": int, "float": float}[annotation]


def knob_for_flag(flag: str) -> tuple[dataclasses.Field[Any], KnobDecl] | None:
    for f, decl in knob_fields():
        if decl.flag == flag:
            return f, decl
    return None


def add_knob_options(add: Callable[..., Any]) -> None:
    """Register every knob with ``add`` (argparse's ``add_argument`` or pytest's ``addoption``):
    ``dest`` is the field name and ``default`` is ``None`` (not given); the help shows the
    field's default."""
    for f, decl in knob_fields():
        add(decl.flag, type=knob_type(f), default=None, dest=f.name, metavar=decl.metavar,
            help=f"{decl.help}. Default: {f.default}")


def knobs_from(values: Mapping[str, Any], base: RunKnobs | None = None) -> RunKnobs:
    """``base`` (default: every field's default) with the knobs in ``values`` (field name →
    value) that are not ``None``. Other keys are ignored. ``ValueError`` on an invalid value."""
    given = {f.name: values[f.name] for f, _ in knob_fields()
             if values.get(f.name) is not None}
    return dataclasses.replace(base or RunKnobs(), **given)


def knob_argv(knobs: RunKnobs) -> list[str]:
    """Client arguments that state every knob explicitly (``None`` ones left out)."""
    argv: list[str] = []
    for f, decl in knob_fields():
        value = getattr(knobs, f.name)
        if value is not None:
            argv += [decl.flag, str(value)]
    return argv
