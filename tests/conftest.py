"""Fixtures shared by the end-to-end tests: real backends and a real gateway process."""

from __future__ import annotations

import sys

import pytest

from tests.support import EVERYTHING, SERVERS, Child, gateway, sdk_http_server


@pytest.fixture(scope="session")
def http_backend() -> Child:
    """The SDK Streamable HTTP test server, as a real process."""
    child = sdk_http_server()
    yield child
    child.stop()


def gateway_toml(http_url: str, **server: object) -> str:
    """A config with three backends: SDK over stdio, SDK over HTTP, server-everything over stdio."""
    server_lines = "\n".join(f"{k} = {v!r}" for k, v in server.items())
    return f"""
[server]
{server_lines}

[gateway]
request_timeout = 20

[backends.local]
command = {sys.executable!r}
args = [{str(SERVERS / "sdk_stdio_server.py")!r}]
restart_initial_delay = 0.2
restart_max_delay = 1.0

[backends.web]
url = {http_url!r}

[backends.everything]
command = {str(EVERYTHING)!r}
args = ["stdio"]
"""


@pytest.fixture(scope="session")
def gw(http_backend: Child, tmp_path_factory: pytest.TempPathFactory) -> Child:
    """The gateway as a real process in front of all three backends."""
    if not EVERYTHING.exists():
        pytest.fail("npm test peers missing: run `npm ci` (make test does)")
    path = tmp_path_factory.mktemp("gw") / "gateway.toml"
    path.write_text(gateway_toml(http_backend.url, max_body_bytes=1048576, header_timeout=1.0))
    child = gateway(path)
    yield child
    assert child.stop() == 0, "the gateway did not exit cleanly on SIGTERM"
