"""A backend's ``roots/list``: answered by the gateway from the backend's ``roots`` option,
refused as before without it. A real gateway process in front of a real SDK stdio server
that asks for roots at startup (as server-filesystem does) and from a tool."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client, types

from gateway.backends.stdio import StdioBackend
from gateway.config import load_config_text
from gateway.protocol.jsonrpc import Message
from tests.support import SERVERS, Child, gateway

SERVER = [str(SERVERS / "roots_stdio_server.py")]
REFUSED = {"error": {"code": -32601, "message": "roots/list is not available through the gateway here"}}


def backend_toml(name: str, extra: str = "") -> str:
    return f"[backends.{name}]\ncommand = {sys.executable!r}\nargs = {SERVER!r}\n{extra}\n"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    path = tmp_path_factory.mktemp("roots") / "gateway.toml"
    path.write_text(
        "[gateway]\nrequest_timeout = 20\n"
        + backend_toml("set", 'roots = ["file:///srv", { uri = "file:///data", name = "data" }]')
        + backend_toml("empty", "roots = []")
        + backend_toml("unset")
        + backend_toml("mine", 'session = "per-client"\nroots = [{ uri = "file:///home/me", name = "home" }]')
    )
    child = gateway(path)
    yield child
    assert child.stop() == 0


async def outcome(client: Client, tool: str) -> Any:
    result = await client.call_tool(tool, {})
    assert not result.is_error, result
    return json.loads(result.content[0].text)


async def test_configured_roots_answer_the_servers_startup_request(gw: Child) -> None:
    async with Client(gw.url, mode="legacy") as client:
        assert await outcome(client, "set__startup_roots") == {
            "roots": [{"uri": "file:///srv"}, {"uri": "file:///data", "name": "data"}]
        }
        assert await outcome(client, "empty__startup_roots") == {"roots": []}


async def test_without_roots_the_startup_request_is_refused_as_before(gw: Child) -> None:
    async with Client(gw.url, mode="legacy") as client:
        assert await outcome(client, "unset__startup_roots") == REFUSED
    assert "unset: roots/list refused" in gw.stderr_text()


async def test_configured_roots_are_answered_without_asking_the_client(gw: Child) -> None:
    asked: list[str] = []

    async def client_roots(context: Any) -> types.ListRootsResult:
        asked.append("asked")
        return types.ListRootsResult(roots=[types.Root(uri="file:///client", name="client")])

    async with Client(gw.url, mode="legacy", list_roots_callback=client_roots) as client:
        assert await outcome(client, "set__roots_now") == {
            "roots": [{"uri": "file:///srv"}, {"uri": "file:///data", "name": "data"}]
        }
        assert asked == []
        # Unset, a request raised while this client's call is in flight still goes to the client.
        assert await outcome(client, "unset__roots_now") == {"roots": [{"uri": "file:///client", "name": "client"}]}
        assert asked == ["asked"]


async def test_a_per_client_process_is_told_it_may_ask_and_gets_the_configured_roots(gw: Child) -> None:
    # This client declares no roots capability; the gateway declares it for the
    # process because it answers roots/list itself, so the server asks at startup.
    async with Client(gw.url, mode="legacy") as client:
        assert await outcome(client, "mine__startup_roots") == {"roots": [{"uri": "file:///home/me", "name": "home"}]}


def test_local_answer_decides_from_config() -> None:
    def backend(extra: str) -> StdioBackend:
        config = load_config_text(backend_toml("b", extra), fmt="toml", env={}).backends["b"]
        return StdioBackend("b", config)

    roots = Message(id=1, method="roots/list")
    assert backend("").local_answer(roots) is None
    assert bytes(backend("roots = []").local_answer(roots)) == b'{"roots":[]}'  # type: ignore[arg-type]
    answer = backend('roots = ["file:///a", { uri = "file:///b", name = "b" }]').local_answer(roots)
    assert json.loads(bytes(answer)) == {"roots": [{"uri": "file:///a"}, {"uri": "file:///b", "name": "b"}]}  # type: ignore[arg-type]
    assert bytes(backend("").local_answer(Message(id=2, method="ping"))) == b"{}"  # type: ignore[arg-type]
    assert backend("roots = []").local_answer(Message(id=3, method="sampling/createMessage")) is None
