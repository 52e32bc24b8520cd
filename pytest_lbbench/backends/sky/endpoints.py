"""Existing endpoints: a system that is already running somewhere, given by URL.

``--endpoint SYSTEM=URL`` (every client region uses URL) or ``--endpoint SYSTEM@REGION=URL``
(per client region), and ``--service-names`` — SkyServe services whose endpoints are looked up
once with ``sky.serve.status`` — as the original ``gen_cmd`` took them. Nothing is provisioned
and nothing is torn down. No pytest import here.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

from pytest_lbbench.backends.base import Deployment
from pytest_lbbench.backends.sky.provision import RequestRunner
from pytest_lbbench.backends.sky.sdk import ServiceInfo, SkySdk
from pytest_lbbench.systems import BalancerKind, SystemSpec

HttpFn = Callable[[str, str, "Any | None", float], "tuple[int, Any]"]
ANY_REGION = "*"


def normalise_url(url: str) -> str:
    """``1.2.3.4:8000`` (the original's form) → ``http://1.2.3.4:8000``; no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def parse_endpoint(text: str) -> tuple[str, str, str]:
    """``SYSTEM[@REGION]=URL`` → ``(system, region or "*", url)``; ``ValueError`` explains the grammar."""
    key, sep, url = text.partition("=")
    if not sep or not key.strip() or not url.strip():
        raise ValueError(
            f"{text!r} is not SYSTEM=URL or SYSTEM@REGION=URL (e.g. sky_push_pull=http://1.2.3.4:8000)"
        )
    system, _, region = key.strip().partition("@")
    return system, region or ANY_REGION, normalise_url(url)


class EndpointDeployment(Deployment):
    """A system reached at given URLs; :meth:`start` only checks that they answer."""

    def __init__(self, system: SystemSpec, urls: Mapping[str, str], *, ready_timeout_s: float = 60.0,
                 http: HttpFn | None = None, source: str = "--endpoint") -> None:
        if not urls:
            raise ValueError(f"no URL given for system {system.name!r}")
        self.system = system
        self.urls = dict(urls)
        self.ready_timeout_s = ready_timeout_s
        self.source = source
        if http is None:
            from pytest_lbbench.backends.sky.deployment import http_json

            http = http_json
        self.http = http

    def start(self) -> None:
        for url in dict.fromkeys(self.urls.values()):
            deadline = time.monotonic() + self.ready_timeout_s
            while True:
                status, body = self.http("GET", f"{url}/v1/models", None, min(10.0, self.ready_timeout_s))
                if status == 200:
                    break
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"{self.system.name}: endpoint {url} (from {self.source}) did not answer GET "
                        f"/v1/models with 200 within {self.ready_timeout_s:.0f} s (last: {status} {body}). "
                        "Check the URL and that the service is up."
                    )
                time.sleep(1.0)

    def endpoint_for(self, client_region: str) -> str:
        url = self.urls.get(client_region) or self.urls.get(ANY_REGION)
        if url is None:
            raise KeyError(f"{self.system.name}: no endpoint for client region {client_region!r}; "
                           f"given for: {', '.join(sorted(self.urls))}")
        return url

    def telemetry_targets(self) -> list[dict[str, str]]:
        kind = {BalancerKind.SKY_LB: "sky_lb", BalancerKind.SGLANG_ROUTER: "sglang_router"}.get(self.system.kind)
        if kind is None:
            return []  # a managed L7 gateway exposes no queue (the original skipped it too)
        return [{"name": f"{self.system.name}-{i}", "url": url, "kind": kind}
                for i, url in enumerate(dict.fromkeys(self.urls.values()))]

    def describe(self) -> dict[str, Any]:
        return {"backend": "endpoints", "source": self.source, "system": self.system.to_dict(),
                "urls": dict(self.urls)}

    def stop(self) -> None:
        """Nothing to stop: the endpoint belongs to someone else."""


def service_endpoints(sdk: SkySdk, names: Sequence[str], timeout_s: float = 60.0,
                      runner: RequestRunner | None = None) -> dict[str, str]:
    """Service name → endpoint URL, from one ``sky.serve.status`` request."""
    runner = runner or RequestRunner(sdk, 1, poll_s=1.0)
    infos: list[ServiceInfo] = runner.one("serve status", lambda: sdk.serve_status(list(names)), timeout_s)
    found = {i.name: i for i in infos}
    missing = [n for n in names if n not in found or not found[n].endpoint]
    if missing:
        raise ValueError(f"--service-names: no endpoint for {', '.join(missing)} "
                         f"(known services: {', '.join(sorted(found)) or 'none'}); check `sky serve status`.")
    return {n: str(found[n].endpoint) for n in names}
