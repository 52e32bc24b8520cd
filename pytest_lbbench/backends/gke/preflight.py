"""Start-up checks of the GKE backend: what is missing, and the command that fixes it.

Run before anything touches a cluster (ideally at ``pytest_configure``), so a missing extra or
kube context is one clear paragraph at start-up, never an ImportError mid-run or a hang:

* :func:`missing_packages` — the ``gke`` extra (``kubernetes``, PyYAML) importable?
* :func:`check_gke_backend` — that, plus: a kubeconfig file exists, every requested context is
  in it, and the credential plugin its user runs (``gke-gcloud-auth-plugin``) is on ``PATH``.
  It only reads local files (never a FIFO or a directory), so it is bounded.
* :func:`parse_gke_contexts` / :func:`parse_gke_endpoint` — the option values.

Standard library only (PyYAML only when it is installed), so it works without the extra.
No pytest import here.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "INSTALL_HINT",
    "GkePreflightError",
    "check_gke_backend",
    "context_location",
    "get_credentials_command",
    "kubeconfig_paths",
    "missing_packages",
    "parse_gke_contexts",
    "parse_gke_endpoint",
    "read_kubeconfig",
]

INSTALL_HINT = "pip install 'pytest-lbbench[gke]'"
# module → distribution, for the message.
REQUIRED = {"kubernetes": "kubernetes", "yaml": "PyYAML"}
_GKE_CONTEXT = re.compile(r"^gke_(?P<project>[^_]+)_(?P<location>[^_]+)_(?P<cluster>.+)$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$")


class GkePreflightError(RuntimeError):
    """The GKE backend cannot start; the message says what to install or configure."""


def missing_packages() -> list[str]:
    """Distributions of the ``gke`` extra that cannot be imported."""
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def kubeconfig_paths(kubeconfig: str | None = None) -> list[Path]:
    """The kubeconfig files kubectl would read: ``kubeconfig``, else ``$KUBECONFIG`` (a
    ``os.pathsep``-separated list), else ``~/.kube/config``."""
    value = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config"))
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def read_kubeconfig(paths: Sequence[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Contexts and users by name, merged as kubectl merges: the first file that names one wins.

    Files that are missing, not regular files, or not parseable are skipped.
    """
    try:
        import yaml
    except ImportError:  # reported by missing_packages(); nothing to read without a parser
        return {}, {}
    contexts: dict[str, dict[str, Any]] = {}
    users: dict[str, dict[str, Any]] = {}
    for path in paths:
        # is_file() refuses FIFOs and devices, whose read could block forever.
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict):
            continue
        for item in doc.get("contexts") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                contexts.setdefault(item["name"], item.get("context") or {})
        for item in doc.get("users") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                users.setdefault(item["name"], item.get("user") or {})
    return contexts, users


def context_location(context: str) -> str | None:
    """The location (region or zone) in a GKE context name ``gke_PROJECT_LOCATION_CLUSTER``."""
    match = _GKE_CONTEXT.match(context)
    return match.group("location") if match else None


def get_credentials_command(context: str) -> str:
    """The ``gcloud`` command that adds ``context`` to the kubeconfig (exact for GKE names)."""
    match = _GKE_CONTEXT.match(context)
    if match is None:
        return "gcloud container clusters get-credentials CLUSTER --location=LOCATION --project=PROJECT"
    return (f"gcloud container clusters get-credentials {match['cluster']} "
            f"--location={match['location']} --project={match['project']}")


def check_gke_backend(contexts: Sequence[str], kubeconfig: str | None = None) -> None:
    """Raise :class:`GkePreflightError` listing everything that stops the ``gke`` backend.

    Checks, without contacting any cluster: the extra is installed; at least one, distinct
    context; a kubeconfig exists and names every context; each context's credential plugin
    is on ``PATH``. Valid credentials are only known at the first API call, which is bounded
    and says how to refresh them.
    """
    problems: list[str] = []
    missing = missing_packages()
    if missing:
        problems.append(f"the Python packages {', '.join(missing)} are not installed: run {INSTALL_HINT}")
    if not contexts:
        problems.append("no kube context given: pass --gke-contexts CONFIG_CTX,OTHER_CTX "
                        "(names from `kubectl config get-contexts`; the first holds the Gateway)")
    elif len(set(contexts)) != len(contexts):
        problems.append(f"--gke-contexts lists a context twice: {', '.join(contexts)}")
    if contexts and not missing:
        problems += _context_problems(contexts, kubeconfig)
    if problems:
        raise GkePreflightError(
            "The gke backend cannot start: " + "; ".join(problems) + ". "
            "See the GKE set-up steps (Fleet, multi-cluster Services and Gateway enabled) in the README."
        )


def _context_problems(contexts: Sequence[str], kubeconfig: str | None) -> list[str]:
    paths = kubeconfig_paths(kubeconfig)
    shown = os.pathsep.join(str(p) for p in paths)
    if not any(p.is_file() for p in paths):
        commands = "; ".join(get_credentials_command(c) for c in contexts)
        return [f"no kubeconfig file at {shown}: fetch each cluster's credentials with {commands}"]
    known, users = read_kubeconfig(paths)
    problems: list[str] = []
    absent = [c for c in contexts if c not in known]
    for ctx in absent:
        problems.append(f"kube context {ctx!r} is not in {shown}: run {get_credentials_command(ctx)}")
    if absent:
        problems.append(f"known contexts: {', '.join(sorted(known)) or 'none'}")
    plugins_missing: set[str] = set()
    for ctx in contexts:
        if ctx not in known:
            continue
        user = users.get(str(known[ctx].get("user", ""))) or {}
        command = (user.get("exec") or {}).get("command") if isinstance(user.get("exec"), dict) else None
        if isinstance(command, str) and command and shutil.which(command) is None and command not in plugins_missing:
            plugins_missing.add(command)
            fix = ("gcloud components install gke-gcloud-auth-plugin"
                   if "gke-gcloud-auth-plugin" in command else f"install {command}")
            problems.append(f"context {ctx!r} authenticates with {command!r}, which is not on PATH: {fix}")
    return problems


def parse_gke_contexts(value: str) -> tuple[str, ...]:
    """``"CTX1,CTX2"`` → ``("CTX1", "CTX2")``; raises ``ValueError`` with the expected form."""
    contexts = tuple(part.strip() for part in value.split(",") if part.strip())
    if not contexts:
        raise ValueError(f"--gke-contexts: expected CONFIG_CTX[,CTX...], got {value!r}")
    if len(set(contexts)) != len(contexts):
        raise ValueError(f"--gke-contexts: a context is listed twice in {value!r}")
    return contexts


def parse_gke_endpoint(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``http://HOST:PORT``, ``[v6]:PORT``) → ``(host, port)``.

    Raises ``ValueError`` naming the expected form, e.g. ``34.117.239.237:80``.
    """
    text = value.strip()
    if text.startswith("http://"):
        text = text[len("http://"):]
    text = text.rstrip("/")
    expected = f"--gke-endpoint: expected HOST:PORT such as 34.117.239.237:80, got {value!r}"
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(expected)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{expected} (port out of range)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{expected} (not an IP address or host name)") from None
    return host, port
