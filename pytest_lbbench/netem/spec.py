"""Link specifications: what ``--links-json`` holds, parsed and validated in one place.

A spec is the plain data needed to start one delay link: a unique name, the target the link
forwards to, and the one-way delay. The backend builds specs from the region RTT matrix
(:meth:`LinkSpec.between`) and hands them to the ``python -m pytest_lbbench.netem`` process
as JSON (:func:`specs_to_json`), which parses them back with :func:`parse_link_specs`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from pytest_lbbench.regions import RttMatrix

LINKS_JSON_EXAMPLE = (
    '[{"name": "us-east-2->eu-central-1", "target_host": "127.0.0.1", '
    '"target_port": 8001, "one_way_ms": 48.5}]'
)

_REQUIRED_KEYS = ("name", "target_host", "target_port", "one_way_ms")
_OPTIONAL_KEYS = ("emulate_handshake",)

SPEC_FORMAT_HELP = (
    "expected a non-empty JSON list of objects with keys "
    '"name" (unique non-empty string), "target_host" (non-empty string), '
    '"target_port" (integer 1-65535), "one_way_ms" (finite number >= 0) and optionally '
    f'"emulate_handshake" (true/false, default true); for example {LINKS_JSON_EXAMPLE}'
)


class LinkSpecError(ValueError):
    """A link specification is malformed; the message says what is wrong and what is valid."""


@dataclass(frozen=True)
class LinkSpec:
    """One delay link: listen on a free loopback port, forward to ``target_host:target_port``."""

    name: str
    target_host: str
    target_port: int
    one_way_ms: float
    emulate_handshake: bool = True

    def __post_init__(self) -> None:
        # Checked here too, so specs built in Python fail as early as parsed ones.
        _check_spec(self.name, self.target_host, self.target_port, self.one_way_ms, self.emulate_handshake)

    @property
    def one_way_s(self) -> float:
        return self.one_way_ms / 1000.0

    def at_scale(self, time_scale: float) -> LinkSpec:
        """This link with its delay multiplied by ``time_scale`` (the run's ``--time-scale``: a
        spec states model time, the delay process runs it at this scale)."""
        return replace(self, one_way_ms=self.one_way_ms * time_scale)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form accepted by :func:`parse_link_specs`."""
        return asdict(self)

    @classmethod
    def between(
        cls,
        name: str,
        source_region: str,
        target_region: str,
        target_host: str,
        target_port: int,
        matrix: RttMatrix | None = None,
        *,
        emulate_handshake: bool = True,
    ) -> LinkSpec:
        """A link whose one-way delay (model time) is half the RTT between two regions."""
        rtt = (matrix or RttMatrix()).one_way_ms(source_region, target_region)
        return cls(name, target_host, target_port, rtt, emulate_handshake)


def _check_spec(name: Any, host: Any, port: Any, one_way_ms: Any, handshake: Any) -> None:
    if not isinstance(name, str) or not name:
        raise LinkSpecError(f'"name" must be a non-empty string, got {name!r}')
    if not isinstance(host, str) or not host:
        raise LinkSpecError(f'"target_host" must be a non-empty string, got {host!r}')
    # bool is an int subclass; `true` as a port is a mistake, not port 1.
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise LinkSpecError(f'"target_port" must be an integer from 1 to 65535, got {port!r}')
    if (
        isinstance(one_way_ms, bool)
        or not isinstance(one_way_ms, (int, float))
        or not math.isfinite(one_way_ms)
        or one_way_ms < 0
    ):
        raise LinkSpecError(f'"one_way_ms" must be a finite number >= 0, got {one_way_ms!r}')
    if not isinstance(handshake, bool):
        raise LinkSpecError(f'"emulate_handshake" must be true or false, got {handshake!r}')


def spec_from_dict(obj: Any) -> LinkSpec:
    """Validate one JSON object and build its :class:`LinkSpec` (raises :class:`LinkSpecError`)."""
    if not isinstance(obj, dict):
        raise LinkSpecError(f"each link must be a JSON object, got {type(obj).__name__} {obj!r}")
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise LinkSpecError(f"missing key(s) {', '.join(map(repr, missing))}")
    unknown = sorted(set(obj) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        raise LinkSpecError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)}"
        )
    handshake = obj.get("emulate_handshake", True)
    _check_spec(obj["name"], obj["target_host"], obj["target_port"], obj["one_way_ms"], handshake)
    return LinkSpec(
        name=obj["name"],
        target_host=obj["target_host"],
        target_port=obj["target_port"],
        one_way_ms=float(obj["one_way_ms"]),
        emulate_handshake=handshake,
    )


def parse_link_specs(text: str, source: str = "--links-json") -> list[LinkSpec]:
    """Parse and validate a JSON list of link specs.

    Raises :class:`LinkSpecError` whose message names ``source``, the offending item and the
    valid format, so a command-line user can fix the input without reading code.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LinkSpecError(f"{source}: invalid JSON ({exc}); {SPEC_FORMAT_HELP}") from None
    if not isinstance(data, list) or not data:
        raise LinkSpecError(f"{source}: got {type(data).__name__} {_short(data)}; {SPEC_FORMAT_HELP}")
    specs: list[LinkSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        label = f"link #{index}"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']!r})"
        try:
            spec = spec_from_dict(item)
        except LinkSpecError as exc:
            raise LinkSpecError(f"{source}: {label}: {exc}; {SPEC_FORMAT_HELP}") from None
        if spec.name in seen:
            raise LinkSpecError(f"{source}: {label}: duplicate name {spec.name!r}; link names must be unique")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def specs_to_json(specs: Sequence[LinkSpec]) -> str:
    """Serialise specs for ``--links-json`` (the inverse of :func:`parse_link_specs`)."""
    return json.dumps([spec.to_dict() for spec in specs])


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
