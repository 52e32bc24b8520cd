"""Offered load as an axis of the matrix: users per client region, or requests per second.

``--num-users 10,50,100`` (closed loop) or ``--request-rate 1,2,4`` (open loop), per client
region as a single value is, runs each system at each load: every level is its own experiment,
with the load in its test id (``sky_walker-arena_syn-u50``) and in its result folder. One value
is no axis: ids and folders stay as they were. The SLA search (:mod:`pytest_lbbench.capacity`)
probes loads of the same two kinds. No pytest import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

LoadKind = Literal["users", "rate"]
#: Which option each kind sets, and the prefix of its id.
FLAGS: dict[str, str] = {"users": "--num-users", "rate": "--request-rate"}
_PREFIX: dict[str, str] = {"users": "u", "rate": "r"}


@dataclass(frozen=True)
class Load:
    """One offered load: ``users`` per client region (closed loop) or ``rate`` requests/s."""

    kind: LoadKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in FLAGS:
            raise ValueError(f"load kind must be one of {', '.join(FLAGS)}, got {self.kind!r}")
        if not self.value > 0:
            raise ValueError(f"{FLAGS[self.kind]} must be positive, got {self.value!r}")
        if self.kind == "users" and self.value != int(self.value):
            raise ValueError(f"--num-users must be a whole number, got {self.value!r}")

    @property
    def id(self) -> str:
        """``u50`` or ``r2`` / ``r0.5``: the test-id part and the result-folder suffix."""
        return f"{_PREFIX[self.kind]}{self.value:g}"

    @property
    def users(self) -> int | None:
        return int(self.value) if self.kind == "users" else None

    @property
    def rate(self) -> float | None:
        return self.value if self.kind == "rate" else None

    def describe(self) -> str:
        return f"{self.value:g} users per client region" if self.kind == "users" else \
            f"{self.value:g} requests/s per client region"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "id": self.id}

    @classmethod
    def from_dict(cls, data: Any) -> Load | None:
        if not isinstance(data, dict) or data.get("kind") not in FLAGS:
            return None
        return cls(data["kind"], float(data["value"]))


def parse_levels(text: str, kind: LoadKind) -> tuple[float, ...]:
    """``"10,50,100"`` → ``(10, 50, 100)``, each level checked; ``ValueError`` says what is wrong."""
    levels: list[float] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{FLAGS[kind]}: {part!r} is not a number (give one value or a "
                             f"comma-separated list, e.g. {FLAGS[kind]} 10,50,100)") from None
        Load(kind, value)  # checks it
        if value in levels:
            raise ValueError(f"{FLAGS[kind]}: {part} is given twice")
        levels.append(value)
    if not levels:
        raise ValueError(f"{FLAGS[kind]}: no value given")
    return tuple(levels)
