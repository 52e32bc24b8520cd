"""Start-up checks of the GKE backend: each problem gets the command that fixes it, in bounded time.

Kubeconfigs are files written into tmp_path; no cluster is contacted and no credential plugin runs.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_lbbench.backends.gke import preflight
from pytest_lbbench.backends.gke.preflight import (
    GkePreflightError,
    check_gke_backend,
    context_location,
    get_credentials_command,
    parse_gke_contexts,
    parse_gke_endpoint,
)

pytestmark = pytest.mark.timeout(30)

US, ASIA = "gke_my-proj_us-central1_sglang-us", "gke_my-proj_asia-northeast1_sglang-asia"


def write_kubeconfig(path: Path, contexts: list[str], plugin: str = "gke-gcloud-auth-plugin") -> Path:
    yaml = pytest.importorskip("yaml")
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0] if contexts else "",
        "clusters": [{"name": c, "cluster": {"server": "https://192.0.2.1"}} for c in contexts],
        "users": [{"name": c, "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                 "command": plugin, "provideClusterInfo": True}}}
                  for c in contexts],
        "contexts": [{"name": c, "context": {"cluster": c, "user": c}} for c in contexts],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in gke-gcloud-auth-plugin on an otherwise empty PATH (never executed)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    plugin = bindir / "gke-gcloud-auth-plugin"
    plugin.write_text("#!/bin/sh\nexit 1\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def test_all_present_passes(tmp_path: Path, plugin_on_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", [US, ASIA])
    check_gke_backend([US, ASIA], kubeconfig=str(config))


def test_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kubernetes" else real(name, *a))
    with pytest.raises(GkePreflightError) as info:
        check_gke_backend([US, ASIA])
    assert "kubernetes" in str(info.value) and "pip install 'pytest-lbbench[gke]'" in str(info.value)


def test_no_kubeconfig_gives_the_get_credentials_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("yaml")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(GkePreflightError) as info:
        check_gke_backend([US, ASIA])
    message = str(info.value)
    assert "no kubeconfig file" in message
    assert "gcloud container clusters get-credentials sglang-us --location=us-central1 --project=my-proj" in message
    assert "get-credentials sglang-asia --location=asia-northeast1" in message


def test_missing_context_is_named_with_the_known_ones(tmp_path: Path, plugin_on_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Two files in $KUBECONFIG are merged, as kubectl does.
    first = write_kubeconfig(tmp_path / "a", [US])
    second = write_kubeconfig(tmp_path / "b", ["kind-local"])
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(second)]))
    with pytest.raises(GkePreflightError) as info:
        check_gke_backend([US, ASIA])
    message = str(info.value)
    assert f"kube context {ASIA!r} is not in" in message
    assert "get-credentials sglang-asia --location=asia-northeast1 --project=my-proj" in message
    assert f"known contexts: {US}, kind-local" in message
    assert f"{US!r} is not in" not in message


def test_missing_auth_plugin_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_kubeconfig(tmp_path / "config", [US, ASIA])
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(GkePreflightError, match="gcloud components install gke-gcloud-auth-plugin") as info:
        check_gke_backend([US, ASIA], kubeconfig=str(config))
    assert str(info.value).count("gke-gcloud-auth-plugin', which is not on PATH") == 1  # once, not per context


def test_no_or_duplicate_contexts_are_refused(tmp_path: Path, plugin_on_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", [US])
    with pytest.raises(GkePreflightError, match="--gke-contexts CONFIG_CTX"):
        check_gke_backend([], kubeconfig=str(config))
    with pytest.raises(GkePreflightError, match="twice"):
        check_gke_backend([US, US], kubeconfig=str(config))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_kubeconfig_does_not_hang(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            check_gke_backend([US], kubeconfig=str(fifo))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 — handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "preflight blocked on a FIFO"
    assert isinstance(outcome[0], GkePreflightError) and "no kubeconfig file" in str(outcome[0])


def test_preflight_imports_no_third_party_module() -> None:
    source = Path(preflight.__file__).read_text()
    top_level_imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in sys.stdlib_module_names | {"__future__"}
               for line in top_level_imports), top_level_imports


@pytest.mark.parametrize(
    ("value", "expected"),
    [("34.117.239.237:80", ("34.117.239.237", 80)), ("http://34.117.239.237:80/", ("34.117.239.237", 80)),
     ("gw.example.com:8080", ("gw.example.com", 8080)), ("[2001:db8::1]:80", ("2001:db8::1", 80))],
)
def test_parse_gke_endpoint(value: str, expected: tuple[str, int]) -> None:
    assert parse_gke_endpoint(value) == expected


@pytest.mark.parametrize("value", ["", "34.117.239.237", "host:", "host:99999", "ho st:80", "https//x:80"])
def test_parse_gke_endpoint_errors_show_the_form(value: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT such as 34.117.239.237:80"):
        parse_gke_endpoint(value)


def test_parse_gke_contexts() -> None:
    assert parse_gke_contexts(f" {US}, {ASIA} ") == (US, ASIA)
    with pytest.raises(ValueError, match="CONFIG_CTX"):
        parse_gke_contexts(" , ")
    with pytest.raises(ValueError, match="twice"):
        parse_gke_contexts(f"{US},{US}")


def test_context_names() -> None:
    assert context_location(ASIA) == "asia-northeast1"
    assert context_location("minikube") is None
    assert "CLUSTER --location=LOCATION" in get_credentials_command("minikube")
