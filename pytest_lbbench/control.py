"""The closed control plane of our servers: a per-run secret, allowed targets, a body limit.

Every process a run starts (LBs, gateways, replicas, delay links) takes the run's secret from
the environment variable :data:`CONTROL_TOKEN_ENV`, never from its command line (which ``ps``
shows) or a file. Control endpoints (membership, reset, steal, fault injection) answer 401
unless the request carries the secret in :data:`CONTROL_TOKEN_HEADER`. The process that
launched them holds the secret in memory and sends it; LBs send it to each other for stealing.

Membership may only name targets on hosts the run configured (:class:`AllowedTargets`; the
local backend: loopback), so a stolen secret still cannot point the benchmark's traffic off the
machine. A body over the limit gets 413 with a message naming the limit, not a dropped
connection. No pytest import here.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from pytest_lbbench.protocol import CONTROL_TOKEN_ENV, CONTROL_TOKEN_HEADER

__all__ = [
    "CONTROL_TOKEN_ENV",
    "CONTROL_TOKEN_HEADER",
    "LOOPBACK_TARGETS",
    "AllowedTargets",
    "control_headers",
    "control_middleware",
    "control_token_from_env",
    "new_control_token",
]

LOOPBACK_TARGETS = ("127.0.0.0/8", "::1/128", "localhost")
"""The targets a local run may configure: this machine only."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_control_token() -> str:
    """A fresh secret for one run (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def control_token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The run's secret as this process was given it, or None when none was given."""
    value = (os.environ if environ is None else environ).get(CONTROL_TOKEN_ENV, "").strip()
    return value or None


def control_headers(token: str | None) -> dict[str, str]:
    """The header that authorises a control request (empty without a token)."""
    return {} if token is None else {CONTROL_TOKEN_HEADER: token}


def _json_error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "lbbench_control", "code": status}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def control_middleware(token: str | None, protected: Iterable[str], *, max_body_bytes: int,
                       server: str) -> Middleware:
    """An aiohttp middleware: 401 on a ``protected`` path without the secret (every protected
    path refuses when the process has no secret: nobody can authorise), and a JSON 413 naming
    ``max_body_bytes`` for a body over the limit on any path."""
    paths = frozenset(protected)
    expected = None if token is None else token.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path in paths:
            given = request.headers.get(CONTROL_TOKEN_HEADER, "").encode()
            if expected is None:
                return _json_error(401, f"{server}: control endpoint {request.path} is closed: this "
                                        f"process was started without {CONTROL_TOKEN_ENV}, so no "
                                        f"request can be authorised; restart it with the run's secret "
                                        f"in that environment variable")
            if not hmac.compare_digest(given, expected):
                return _json_error(401, f"{server}: control endpoint {request.path} needs the run's "
                                        f"secret in the {CONTROL_TOKEN_HEADER} header"
                                        + (" (the one given is wrong)" if given else ""))
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return _too_large(server, length, max_body_bytes)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge as exc:  # a chunked body that grew past the limit
            return _too_large(server, _actual_size(exc), max_body_bytes)

    return middleware


def _actual_size(exc: web.HTTPRequestEntityTooLarge) -> int | None:
    text = exc.text or ""
    digits = [int(word) for word in text.replace(".", " ").split() if word.isdigit()]
    return digits[-1] if len(digits) >= 2 else None


def _too_large(server: str, size: int | None, limit: int) -> web.Response:
    got = "" if size is None else f" ({size} bytes)"
    response = _json_error(413, f"{server}: request body{got} is over the limit of {limit} bytes "
                                f"({limit / 2**20:g} MiB); send a smaller request")
    # The rest of the body may still be on its way: do not read it, end the connection.
    response.force_close()
    return response


@dataclass(frozen=True)
class AllowedTargets:
    """Hosts a server may be told to dial: IP networks (``10.0.0.0/8``), addresses or names."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    names: frozenset[str]

    @classmethod
    def parse(cls, specs: Iterable[str]) -> AllowedTargets:
        """From ``["127.0.0.0/8", "10.1.2.3", "lb.internal"]``; ``ValueError`` on an empty entry."""
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        names: set[str] = set()
        for raw in specs:
            spec = raw.strip()
            if not spec:
                raise ValueError("an allowed target host may not be empty")
            try:
                networks.append(ipaddress.ip_network(spec, strict=False))
            except ValueError:
                names.add(spec.lower())
        return cls(tuple(networks), frozenset(names))

    def describe(self) -> str:
        """The allowed hosts, for messages."""
        return ", ".join([str(n) for n in self.networks] + sorted(self.names))

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be a target (None when it may)."""
        host = (urlsplit(url).hostname or "").lower()
        if not host:
            return f"target {url!r} has no host"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if host in self.names:
                return None
        else:
            if any(address in network for network in self.networks):
                return None
        return f"target {url!r} is not on a host this run configured (allowed: {self.describe()})"
