"""Can ``--backend sky`` run here? Checked at start-up, offline where possible, never hanging.

* The extra: ``skypilot`` must be importable (``pip install 'pytest-lbbench[sky]'``); found by
  ``importlib.util.find_spec``, without importing it.
* Where requests go: a remote API server (``SKYPILOT_API_SERVER_ENDPOINT`` or ``api_server.endpoint``
  in ``~/.sky/config.yaml``) holds the cloud credentials itself, so we only check it answers
  ``/api/health`` within the timeout. Otherwise the local API server uses this machine's
  credentials, so they must exist for the chosen cloud (files and environment variables only:
  ``sky check`` would start an API server and can take a minute).
* ``HF_TOKEN`` for a gated model (meta-llama/*), since the replicas download it.

Every check is bounded: file and environment look-ups, and one HTTP GET with ``timeout_s``.
No pytest import here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

INSTALL_HINT = "pip install 'pytest-lbbench[sky]'  (installs skypilot)"
GATED_MODEL_PREFIXES = ("meta-llama/",)


@dataclass(frozen=True)
class PreflightResult:
    """Problems (each one sentence with the fix) and informational notes."""

    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def api_server_endpoint(env: Mapping[str, str]) -> str | None:
    """The remote API server this machine is logged in to, if any."""
    if env.get("SKYPILOT_API_SERVER_ENDPOINT"):
        return env["SKYPILOT_API_SERVER_ENDPOINT"].rstrip("/")
    config = Path(env.get("SKYPILOT_GLOBAL_CONFIG") or _home(env) / ".sky" / "config.yaml")
    try:
        text = config.read_text()
    except OSError:
        return None
    # A two-level look-up; no YAML parser needed (the extra may be missing).
    match = re.search(r"^api_server:\s*\n(?:[ \t]+.*\n)*?[ \t]+endpoint:\s*['\"]?([^'\"\s#]+)", text, re.M)
    return match.group(1).rstrip("/") if match else None


def _aws_credentials(env: Mapping[str, str]) -> bool:
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    home = _home(env)
    files = [Path(env["AWS_SHARED_CREDENTIALS_FILE"])] if env.get("AWS_SHARED_CREDENTIALS_FILE") else []
    files += [home / ".aws" / "credentials"]
    if any(f.is_file() and f.stat().st_size > 0 for f in files):
        return True
    config = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    try:  # SSO / credential_process profiles live in the config file
        text = config.read_text()
    except OSError:
        return False
    return bool(re.search(r"^\s*(sso_|credential_process|role_arn)", text, re.M))


def _gcp_credentials(env: Mapping[str, str]) -> bool:
    if env.get("GOOGLE_APPLICATION_CREDENTIALS") and Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).is_file():
        return True
    gcloud = _home(env) / ".config" / "gcloud"
    return (gcloud / "application_default_credentials.json").is_file() or (gcloud / "credentials.db").is_file()


CREDENTIAL_CHECKS = {
    "aws": (_aws_credentials,
            "run `aws configure` (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), then `sky check aws`"),
    "gcp": (_gcp_credentials,
            "run `gcloud auth application-default login`, then `sky check gcp`"),
    "kubernetes": (lambda env: Path(env.get("KUBECONFIG") or _home(env) / ".kube" / "config").is_file(),
                   "point KUBECONFIG at a cluster, then `sky check kubernetes`"),
}


def check_api_server(endpoint: str, timeout_s: float) -> str | None:
    """``None`` if ``<endpoint>/api/health`` answers within ``timeout_s``, else why not."""
    try:
        with urllib.request.urlopen(f"{endpoint}/api/health", timeout=timeout_s) as resp:
            body = resp.read(4096)
        status = json.loads(body or b"{}").get("status", "healthy")
        return None if str(status).lower() == "healthy" else f"it reports status {status!r}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def preflight(cloud: str, model: str, *, env: Mapping[str, str] | None = None, timeout_s: float = 10.0,
              need_hf_token: bool = True) -> PreflightResult:
    """Everything ``--backend sky`` needs before it submits anything (see the module docstring)."""
    env = dict(os.environ if env is None else env)
    problems: list[str] = []
    notes: list[str] = []
    if importlib.util.find_spec("sky") is None:
        problems.append(f"SkyPilot is not installed: {INSTALL_HINT}.")
    endpoint = api_server_endpoint(env)
    if endpoint:
        reason = check_api_server(endpoint, timeout_s)
        if reason:
            problems.append(
                f"the SkyPilot API server {endpoint} did not answer /api/health within "
                f"{timeout_s:g} s ({reason}); check `sky api info`, or `sky api logout` to use a "
                "local server with this machine's credentials."
            )
        else:
            notes.append(f"using the remote SkyPilot API server {endpoint} (credentials are on the server)")
    else:
        check = CREDENTIAL_CHECKS.get(cloud)
        if check is None:
            notes.append(f"cannot verify credentials for cloud {cloud!r} offline; run `sky check {cloud}`")
        elif not check[0](env):
            problems.append(f"no {cloud} credentials found on this machine: {check[1]}.")
    if need_hf_token and model.startswith(GATED_MODEL_PREFIXES) and not env.get("HF_TOKEN"):
        problems.append(
            f"HF_TOKEN is not set, and {model} is gated on Hugging Face: export HF_TOKEN=<a token "
            "with access to it> (it is passed to the replicas as a SkyPilot secret, never written "
            "to disk)."
        )
    return PreflightResult(tuple(problems), tuple(notes))
