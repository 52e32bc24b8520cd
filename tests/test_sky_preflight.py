"""The sky preflight: bounded, offline where possible, with the fix in every message."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from pytest_lbbench.backends.sky import preflight as pf


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), "HF_TOKEN": "hf_x", **extra}


def test_no_credentials_names_the_fix(tmp_path: Path) -> None:
    result = pf.preflight("aws", "meta-llama/Llama-3.1-8B-Instruct", env=env_for(tmp_path))
    assert not result.ok
    assert any("no aws credentials" in p and "aws configure" in p for p in result.problems)


def test_credentials_file_or_env(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\naws_access_key_id = x\n")
    assert pf.preflight("aws", "m", env=env_for(tmp_path)).ok
    assert pf.preflight("aws", "m", env=env_for(tmp_path / "x", AWS_ACCESS_KEY_ID="a",
                                                 AWS_SECRET_ACCESS_KEY="b")).ok


def test_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pf.importlib.util.find_spec
    monkeypatch.setattr(pf.importlib.util, "find_spec", lambda name: None if name == "sky" else real(name))
    result = pf.preflight("aws", "m", env=env_for(tmp_path, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b"))
    assert result.problems == (f"SkyPilot is not installed: {pf.INSTALL_HINT}.",)


def test_gated_model_needs_hf_token(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    result = pf.preflight("aws", "meta-llama/Llama-3.1-8B-Instruct", env=env)
    assert any("HF_TOKEN" in p for p in result.problems)
    assert pf.preflight("aws", "meta-llama/x", env=env, need_hf_token=False).ok
    assert pf.preflight("aws", "Qwen/Qwen2.5-7B-Instruct", env=env).ok


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server on 127.0.0.1 that accepts connections and never answers."""

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(3)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_api_server_check_is_bounded(tmp_path: Path, silent_server: str) -> None:
    start = time.monotonic()
    result = pf.preflight("aws", "m", env=env_for(tmp_path, SKYPILOT_API_SERVER_ENDPOINT=silent_server),
                          timeout_s=0.5)
    assert time.monotonic() - start < 2.5
    assert any("did not answer /api/health within 0.5 s" in p for p in result.problems)


def test_api_server_from_config_file(tmp_path: Path) -> None:
    (tmp_path / ".sky").mkdir()
    (tmp_path / ".sky" / "config.yaml").write_text("api_server:\n  endpoint: http://10.1.2.3:46580\n")
    assert pf.api_server_endpoint({"HOME": str(tmp_path)}) == "http://10.1.2.3:46580"
    assert pf.api_server_endpoint({"HOME": str(tmp_path / "none")}) is None
