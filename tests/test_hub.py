"""The hub check goes through huggingface_hub's own HTTP session: it honours HF_ENDPOINT and the
proxy variables, and the dry run does not use it (nor any network). Each case runs in a fresh
process (huggingface_hub reads HF_ENDPOINT and builds its session once per process) against an
HTTP server on 127.0.0.1 that the test starts."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "no_proxy", "HF_HUB_OFFLINE", "HF_ENDPOINT")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request 200 and records its request line (as a proxy or as the hub would see it)."""

    seen: list[str]

    def _answer(self) -> None:
        self.seen.append(self.requestline)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    return {**env, **extra}


def _reason(env: dict[str, str]) -> str:
    code = "from objkit.blocks.hub import hub_unreachable_reason as r; print(repr(r(timeout=10)))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_the_hub_check_goes_through_the_configured_proxy(server):
    """An endpoint this machine cannot resolve is reachable through HTTP_PROXY, as downloads would be."""
    proxy, seen = server
    env = _env(HF_ENDPOINT="http://hub.objkit-test.invalid", HTTP_PROXY=proxy, NO_PROXY="")
    assert _reason(env) == "None"
    assert seen == ["HEAD http://hub.objkit-test.invalid/ HTTP/1.1"]


def test_an_unreachable_endpoint_is_named_with_the_proxy(server):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    reason = _reason(_env(HF_ENDPOINT=endpoint))
    assert reason.startswith(f"'{endpoint} unreachable: ") and "refused" in reason.lower()
    proxy = f"http://user:secret@127.0.0.1:{_closed_port()}"
    reason = _reason(_env(HF_ENDPOINT="http://hub.objkit-test.invalid", HTTP_PROXY=proxy, NO_PROXY=""))
    assert "unreachable (through proxy http://127.0.0.1:" in reason and "secret" not in reason
    assert _reason(_env(HF_ENDPOINT=server[0], HF_HUB_OFFLINE="1")) == "'HF_HUB_OFFLINE is set'"
    assert server[1] == []


def test_the_dry_run_uses_no_network(server, tmp_path):
    """An init that is not cached: the dry run builds from the preset and says the network is not
    used -- and the hub (here a local server) sees no request. (HF_HUB_DISABLE_TELEMETRY: else
    huggingface_hub itself fetches {endpoint}/api/agent-harnesses for its user agent, once a day.)"""
    endpoint, seen = server
    result = subprocess.run(
        [sys.executable, "-m", "objkit", "run", str(ROOT / "recipes/quickstart.toml"), "--dry-run",
         "--set", "model.init=objkit-tests/no-such-model", "--set", "model.tokenizer=objkit-tests/no-such-model"],
        env=_env(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1"), capture_output=True, text=True, check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "the network is not used here" in result.stdout and "makes no hub request" in result.stdout
    assert "unreachable" not in result.stdout
    assert seen == []
