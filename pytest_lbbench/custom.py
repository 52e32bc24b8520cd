"""Systems from a command: a user's own balancer, run behind our replicas and delay links.

``--custom-system 'NAME[@global|@regional]=COMMAND TEMPLATE'`` (repeatable, or ini
``lbbench_custom_system``, one per line) adds a system named NAME whose balancer is COMMAND. The
template is split like a shell command line (no shell runs it) and may use, in any word:

=================== ====================================================================
``{host}``           the address to bind: always 127.0.0.1
``{port}``           the port to listen on (free, chosen by the run)
``{region}``         the instance's region (us-east-2 for ``@global``)
``{name}``           the instance's name (``NAME`` or ``NAME-REGION``)
``{worker_urls}``    the URLs of the delay links to its replicas; as a whole word it
                     becomes one argument per URL, inside a word they are space-separated
``{worker_urls_csv}`` the same, comma-separated
``{worker_urls_json}`` the same, as a JSON list
``{peer_urls}``      ``@regional`` only: the other instances (through their delay links),
                     like ``{worker_urls}``; also ``{peer_urls_csv}``, ``{peer_urls_json}``
=================== ====================================================================

``@global`` (the default) runs one instance in us-east-2 over every replica, as the paper's
single-LB baselines; ``@regional`` one per replica region over that region's replicas, each
client going to its nearest instance. An instance is ready when ``GET /v1/models`` answers 200.
No pytest import here.
"""

from __future__ import annotations

import json
import re
import shlex
import string
from typing import Mapping, Sequence

from pytest_lbbench.systems import BalancerKind, Placement, SystemSpec

#: Placeholders a template may use (``peer_urls*`` only with ``@regional``).
PLACEHOLDERS = ("host", "port", "region", "name", "worker_urls", "worker_urls_csv", "worker_urls_json",
                "peer_urls", "peer_urls_csv", "peer_urls_json")
LIST_PLACEHOLDERS = ("worker_urls", "peer_urls")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_PLACEMENTS = {"global": Placement.GLOBAL, "regional": Placement.REGIONAL}


class CustomSystemError(ValueError):
    """A ``--custom-system`` that cannot be run, with what is valid."""


def parse_custom_system(text: str) -> SystemSpec:
    """``NAME[@global|@regional]=COMMAND`` → a :class:`SystemSpec` of kind ``custom``."""
    head, sep, command = text.partition("=")
    if not sep or not command.strip():
        raise CustomSystemError(
            f"--custom-system {text!r}: expected NAME=COMMAND or NAME@regional=COMMAND, e.g. "
            "'mylb=python my_lb.py --port {port} --workers {worker_urls}'")
    name, _, where = head.strip().partition("@")
    if not _NAME.fullmatch(name):
        raise CustomSystemError(
            f"--custom-system: name {name!r} must be lowercase letters, digits and '_' (starting "
            "with a letter, at most 40): test ids join parameters with '-'")
    placement = _PLACEMENTS.get(where or "global")
    if placement is None:
        raise CustomSystemError(f"--custom-system {name}: placement {where!r} must be one of "
                                f"{', '.join(_PLACEMENTS)} (NAME@regional=COMMAND)")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise CustomSystemError(f"--custom-system {name}: cannot split the command ({exc}): {command!r}") from None
    used = template_fields(words)
    unknown = sorted(used - set(PLACEHOLDERS))
    if unknown:
        raise CustomSystemError(
            f"--custom-system {name}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
            f"valid: {', '.join('{' + p + '}' for p in PLACEHOLDERS)} (write {{{{ and }}}} for braces)")
    if "port" not in used:
        raise CustomSystemError(f"--custom-system {name}: the command must listen on {{port}} "
                                "(the run picks a free port per instance and sends traffic there)")
    if placement is Placement.GLOBAL and any(u.startswith("peer_urls") for u in used):
        raise CustomSystemError(f"--custom-system {name}: {{peer_urls}} needs several instances; "
                                f"use {name}@regional=...")
    return SystemSpec(name=name, label=name, kind=BalancerKind.CUSTOM, placement=placement,
                      command=command.strip())


def template_fields(words: Sequence[str]) -> set[str]:
    """The placeholder names used in ``words`` (``{{`` and ``}}`` are literal braces)."""
    fields: set[str] = set()
    for word in words:
        try:
            parsed = list(string.Formatter().parse(word))
        except ValueError as exc:
            raise CustomSystemError(f"--custom-system: bad braces in {word!r} ({exc}); write {{{{ "
                                    "and }} for literal braces") from None
        fields.update(f for _, f, _, _ in parsed if f is not None)
    return fields


def render_command(command: str, values: Mapping[str, str | Sequence[str]]) -> list[str]:
    """The argv of one instance: each word of ``command`` with its placeholders filled. A word
    that is exactly ``{worker_urls}`` or ``{peer_urls}`` becomes one argument per URL."""
    scalars: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for key, value in values.items():
        if isinstance(value, str):
            scalars[key] = value
        else:
            lists[key] = list(value)
            scalars[key] = " ".join(value)
            scalars[f"{key}_csv"] = ",".join(value)
            scalars[f"{key}_json"] = json.dumps(list(value))
    argv: list[str] = []
    for word in shlex.split(command):
        bare = word[1:-1] if word.startswith("{") and word.endswith("}") else None
        if bare in lists:
            argv.extend(lists[bare])
        else:
            argv.append(word.format(**scalars))
    return argv


def parse_custom_systems(texts: Sequence[str], taken: Sequence[str]) -> list[SystemSpec]:
    """Every ``--custom-system`` value, checked against each other and the names ``taken``."""
    specs: list[SystemSpec] = []
    for text in texts:
        spec = parse_custom_system(text)
        if spec.name in taken or spec.name in [s.name for s in specs]:
            raise CustomSystemError(f"--custom-system: a system named {spec.name!r} already exists; "
                                    f"pick another name (taken: {', '.join([*taken, *(s.name for s in specs)])})")
        specs.append(spec)
    return specs
