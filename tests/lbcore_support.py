"""Scripted-event helpers for tests of :class:`pytest_lbbench.lb.core.LbCore` (no sockets, no
event loop, a fake clock)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pytest_lbbench.lb.config import LbConfig
from pytest_lbbench.lb.core import LbCore
from pytest_lbbench.lb.policies import RequestInfo, request_text
from pytest_lbbench.lb.queue import ClientRequest, RequestEntry
from pytest_lbbench.protocol import LbMembership

CHAT_PATH = "/v1/chat/completions"


class FakeClock:
    """A clock that moves only when told to (seconds since the epoch)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_core(config: LbConfig, *, name: str = "lb-a", region: str = "us-east-2",
              clock: FakeClock | None = None) -> LbCore:
    """An LB core on a fake clock."""
    return LbCore(config, name=name, region=region, clock=clock or FakeClock())


def apply(core: LbCore, payload: Mapping[str, Any]) -> None:
    """Apply a membership payload as the LB's HTTP endpoint would (validated)."""
    core.apply_membership(LbMembership.from_json(payload, core.name))


def chat_request(text: str) -> ClientRequest:
    """A chat-completions request whose single user message is ``text``."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    return ClientRequest("POST", CHAT_PATH, (("Content-Type", "application/json"),), body)


def arrive(core: LbCore, text: str, *, from_lb: bool = False, hash_key: str | None = None) -> RequestEntry:
    """The event "a request arrived now": queued at the tail, as the HTTP shell does it."""
    return core.arrive(chat_request(text), from_lb=from_lb, hash_key=hash_key, time_arrive=core.clock())


def entry_for(text: str, *, from_lb: bool = False, hash_key: str | None = None,
              time_arrive: float = 0.0) -> RequestEntry:
    """A request entry not queued anywhere (for the pure rules that rank entries)."""
    return RequestEntry(request=chat_request(text), info=RequestInfo(text=text, hash_key=hash_key),
                        from_lb=from_lb, time_arrive=time_arrive)


def chat_info(text: str, hash_key: str | None = None) -> RequestInfo:
    """The policy input the core derives from :func:`chat_request` ``(text)``."""
    return RequestInfo(text=request_text(CHAT_PATH, chat_request(text).body), hash_key=hash_key)
