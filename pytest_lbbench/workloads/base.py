"""What every workload produces: simulated users, each with a script of conversations.

A workload is a generator of users and their requests. It returns a :class:`WorkloadPlan`:
the users of one client region, the sampling settings, how requests arrive
(:class:`Arrival`: closed loop, timestamp replay, or an open-loop rate) and, for tree-of-thought
workloads, the :class:`TreeShape` that turns each conversation into a tree of requests.
The client executes plans; it never needs the workload's code, so a plan can be built in the
pytest process (where a ``conftest.py`` workload lives) and run anywhere as JSON.

The client appends the server's own answer to the history, so the prompt of turn k+1 extends
turn k's prompt and answer exactly as a chat front end would. No pytest import here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

PLAN_SCHEMA_VERSION = 1

ARRIVAL_KINDS = ("closed", "replay", "rate")


@dataclass(frozen=True)
class Conversation:
    """One chat: the user's messages in order; the assistant's replies come from the server.

    In a tree workload (:class:`TreeShape`), ``user_turns`` are the stage prompts: every node
    of stage k gets ``user_turns[k]`` appended and is answered ``num_branches`` times.
    """

    conv_id: str
    user_key: str  # the user's identity; sent as ``x-hash-key`` (per user, never per region)
    timestamp: float  # seconds; orders a user's conversations and drives timestamp replay
    user_turns: tuple[str, ...]


@dataclass(frozen=True)
class UserScript:
    """One simulated user: the conversations it goes through, one after another, in a loop."""

    user_index: int
    conversations: tuple[Conversation, ...]


@dataclass(frozen=True)
class RequestSettings:
    """Per-request sampling settings the workload asks for."""

    max_tokens: int
    temperature: float


@dataclass(frozen=True)
class Arrival:
    """How one client region's requests arrive.

    * ``closed``: each user sends a turn when the previous answer has arrived, going through
      its conversations in a loop until the deadline. ``think_time_floor_s`` (the original
      wildchat's ``--open-loop-threshold``) makes a turn start no earlier than that many
      seconds after the previous turn of the same user started.
    * ``replay``: each user's conversations start at their recorded timestamps (gaps divided
      by ``max(1, span / replay_span_s)`` so the user fits the run), user *i* starting
      ``i * user_stagger_s`` late; conversations run concurrently, turns in order; one pass.
    * ``rate``: open loop. Requests arrive at ``request_rate`` per second with gamma-distributed
      gaps of shape ``burstiness`` (1 = Poisson; < 1 burstier), whatever the server does. Each
      arrival sends the next turn of a conversation whose previous answer has arrived (oldest
      first), or else the first turn of the next conversation.
    """

    kind: str = "closed"
    think_time_floor_s: float | None = None
    request_rate: float | None = None
    burstiness: float = 1.0
    replay_span_s: float | None = None
    user_stagger_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"arrival kind must be one of {', '.join(ARRIVAL_KINDS)}, got {self.kind!r}")
        if self.kind == "rate" and not (self.request_rate and self.request_rate > 0):
            raise ValueError(f"an open-loop arrival needs a request rate > 0, got {self.request_rate!r}")
        if self.burstiness <= 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness!r}")


@dataclass(frozen=True)
class TreeShape:
    """Tree of thoughts: every stage answers each surviving node ``num_branches`` times.

    With b branches and s stages a conversation costs b + b² + … + bˢ requests. Siblings share
    their whole prompt, and children extend their parent's prompt and answer, so the tree
    shares prefixes heavily. ``parallel=False`` sends one request at a time.
    """

    num_branches: int
    parallel: bool = True

    def __post_init__(self) -> None:
        if self.num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {self.num_branches}")


@dataclass(frozen=True)
class WorkloadPlan:
    """Everything a client needs to run one client region's share of a workload."""

    name: str
    users: tuple[UserScript, ...]
    settings: RequestSettings
    arrival: Arrival = field(default_factory=Arrival)
    tree: TreeShape | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The plan as JSON (inside the job file a client runs, :mod:`pytest_lbbench.client.job`)."""
        return json.dumps({"schema_version": PLAN_SCHEMA_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> WorkloadPlan:
        data = json.loads(text)
        version = data.pop("schema_version", None)
        if version != PLAN_SCHEMA_VERSION:
            raise ValueError(f"plan schema_version {version!r} is not {PLAN_SCHEMA_VERSION}")
        users = tuple(
            UserScript(
                user_index=u["user_index"],
                conversations=tuple(
                    Conversation(
                        conv_id=c["conv_id"], user_key=c["user_key"], timestamp=c["timestamp"],
                        user_turns=tuple(c["user_turns"]),
                    )
                    for c in u["conversations"]
                ),
            )
            for u in data["users"]
        )
        tree = data.get("tree")
        return cls(
            name=data["name"],
            users=users,
            settings=RequestSettings(**data["settings"]),
            arrival=Arrival(**data.get("arrival") or {}),
            tree=TreeShape(**tree) if tree else None,
            args=data.get("args") or {},
        )

    def request_sequence(self) -> list[tuple[int, str, str, int, str]]:
        """``(user, user_key, conv_id, turn, text)`` in script order: what the users will say.

        Two plans with the same sequence send the same prompts from the same users in the same
        order (answers, and so the assistant turns, come from the server).
        """
        return [
            (u.user_index, c.user_key, c.conv_id, k, text)
            for u in self.users
            for c in u.conversations
            for k, text in enumerate(c.user_turns)
        ]


@dataclass(frozen=True)
class WorkloadOption:
    """One workload-specific option, declared once for the client CLI and the pytest plugin.

    ``flag`` is the long option (``--num-branches``); both parsers store it under ``dest``
    (``num_branches``). ``type`` is ``"int"``, ``"float"``, ``"str"`` or ``"bool"`` (a switch).
    Two workloads may declare the same flag only with the same type and default.
    """

    flag: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def parser_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for argparse's ``add_argument`` or pytest's ``addoption``.

        ``choices`` are left out: the pytest plugin checks values itself, with a message that
        lists what is valid (see :meth:`add_to` for the client)."""
        if self.type == "bool":
            return {"action": "store_true", "default": bool(self.default), "help": self.help}
        kind: type = {"int": int, "float": float, "str": str}[self.type]
        # Show the default unless the help already says what it is (e.g. "default: --duration").
        shown = self.help if "default" in self.help.lower() else f"{self.help} (default: %(default)s)"
        return {"type": kind, "default": self.default, "metavar": self.metavar or self.type.upper(),
                "help": shown}

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Register this option on an argparse parser (the client CLI), with its choices."""
        kwargs = self.parser_kwargs()
        if self.type != "bool":
            kwargs["choices"] = self.choices
        parser.add_argument(self.flag, **kwargs)

    def to_argv(self, value: Any) -> list[str]:
        """The client arguments that pass ``value`` on (nothing for the default)."""
        if value is None or value == self.default:
            return []
        if self.type == "bool":
            return [self.flag] if value else []
        return [self.flag, str(value)]


@dataclass(frozen=True)
class WorkloadArgs:
    """What a workload's ``plan`` is given: one client region's settings, typed.

    ``options`` holds the values of the shared arrival/dataset options and of the workload's
    own :class:`WorkloadOption` s, by ``dest`` (defaults filled in). They read as attributes
    too (``args.num_conv``), so a workload written against the client's parsed options keeps
    working; an unknown name raises ``AttributeError`` listing the known ones.
    """

    num_users: int
    seed: int
    duration_s: float
    max_tokens: int | None  # None: the workload's own default
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, dest: str) -> Any:
        """The value of option ``dest`` (``KeyError`` names what is known)."""
        try:
            return self.options[dest]
        except KeyError:
            raise KeyError(f"no workload option {dest!r}; known: {', '.join(sorted(self.options))}") from None

    @property
    def dataset_source(self) -> str:
        """``"synthetic"`` or ``"hf"`` (``--dataset-source``)."""
        return str(self.options.get("dataset_source") or "synthetic")

    @property
    def dataset_path(self) -> str | None:
        """A local file or directory in the dataset's own row format (``--dataset-path``)."""
        path = self.options.get("dataset_path")
        return str(path) if path else None

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: the options, by dest.
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(
            f"WorkloadArgs has no {name!r}: fields num_users, seed, duration_s, max_tokens; "
            f"options {', '.join(sorted(options)) or '(none)'}")


class Workload(Protocol):
    """A workload module's contract (see :mod:`pytest_lbbench.workloads.arena_syn`).

    ``plan`` gets one client region's :class:`WorkloadArgs`: ``num_users``, ``seed``,
    ``duration_s``, ``max_tokens`` (``None``: the workload's default), ``dataset_source``
    (``"synthetic"`` or ``"hf"``), ``dataset_path`` (a local file or directory in the dataset's
    own row format, or ``None``) and its own ``options`` by dest. It must be deterministic in them.
    """

    name: str
    options: tuple[WorkloadOption, ...]
    # The Hugging Face dataset behind ``--dataset-source hf`` (None: synthetic only).
    hf_dataset: str | None

    def plan(self, args: WorkloadArgs, region: str, region_index: int) -> WorkloadPlan:
        """Build the users of one client region."""


def group_into_users(
    conversations: list[Conversation], num_users: int
) -> list[list[Conversation]]:
    """The original grouping: bucket conversations by user key, sort buckets by size (largest
    first, ties by key), and hand each bucket whole to whichever group is smallest so far.
    Each group's conversations are then ordered by timestamp."""
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    buckets: dict[str, list[Conversation]] = {}
    for conv in conversations:
        buckets.setdefault(conv.user_key, []).append(conv)
    ordered = sorted(buckets.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    groups: list[list[Conversation]] = [[] for _ in range(num_users)]
    for _, convs in ordered:
        smallest = min(range(num_users), key=lambda i: (len(groups[i]), i))
        groups[smallest].extend(convs)
    for group in groups:
        group.sort(key=lambda c: (c.timestamp, c.conv_id))
    return groups


def users_from_groups(groups: list[list[Conversation]]) -> tuple[UserScript, ...]:
    """One :class:`UserScript` per group, indexed in order."""
    return tuple(UserScript(user_index=i, conversations=tuple(g)) for i, g in enumerate(groups))
