"""What every workload produces: simulated users, each with a script of conversations.

A workload is a generator of users and their requests. The client drives each user in a
closed loop (a turn is sent when the previous answer has arrived), appending the server's own
answer to the conversation history, so the prompt of turn k+1 extends turn k's prompt and
answer exactly as a chat front end would. No pytest import here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Conversation:
    """One chat: the user's messages in order; the assistant's replies come from the server."""

    conv_id: str
    user_key: str
    timestamp: float
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
class WorkloadPlan:
    """Everything a client needs to run one client region's share of a workload."""

    name: str
    users: tuple[UserScript, ...]
    settings: RequestSettings
    args: dict[str, Any] = field(default_factory=dict)


class Workload(Protocol):
    """A workload module's contract (see :mod:`pytest_lbbench.workloads.arena_syn`)."""

    name: str

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """Add this workload's own options to the client's argument parser."""

    def plan(self, args: argparse.Namespace, region: str, region_index: int) -> WorkloadPlan:
        """Build the users of one client region from parsed options."""


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
