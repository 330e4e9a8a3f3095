"""The gateway as operators run it: a dying stdio backend, a backend that is
down at startup, list_changed, passthrough, graceful shutdown, the CLI and the
bundled demo. Real processes and sockets throughout."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import (
    ROOT,
    SERVERS,
    Child,
    eventually,
    eventually_sync,
    gateway,
    peer_has_read,
    post,
    raw_exchange,
    read_response,
    wait_set,
    watched_transport,
)
from tests.test_bad_input import INIT
from tests.test_e2e import list_all


def write(tmp_path, text: str, name: str = "gateway.toml"):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(text)
    return path


def stdio_backend(name: str = "local", **extra: object) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return (
        f"[backends.{name}]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(SERVERS / 'sdk_stdio_server.py'))}]\n{lines}"
    )


async def test_killed_stdio_backend_fails_clearly_then_recovers(tmp_path, http_backend: Child) -> None:
    config = stdio_backend(restart_initial_delay=1.0, restart_max_delay=1.0)
    config += f'[backends.web]\nurl = "{http_backend.url}"\n'
    child = gateway(write(tmp_path, config))
    try:
        async with Client(child.url, mode="legacy") as client:
            assert (await client.call_tool("local__echo", {"text": "before"})).content[0].text == "before"
            with pytest.raises(MCPError) as crashed:
                await client.call_tool("local__crash", {})
            assert crashed.value.code == -32054  # backend unavailable: it died with the call in flight
            # Until it is restarted, calls fail with the same clear error; the other backend is unaffected.
            with pytest.raises(MCPError) as down:
                await client.call_tool("local__echo", {"text": "during"})
            assert down.value.code == -32054
            assert "local" in down.value.message
            assert (await client.call_tool("web__echo", {"text": "other"})).content[0].text == "other"

            async def restarted():  # type: ignore[no-untyped-def]
                """The call's result once the backend is back; until then it fails as unavailable."""
                try:
                    return await client.call_tool("local__echo", {"text": "after"})
                except MCPError as exc:
                    assert exc.code == -32054
                    return None

            result = await eventually(restarted, timeout=30, message="the backend was not restarted")
            assert result.content[0].text == "after"
            assert (await client.call_tool("web__echo", {"text": "other"})).content[0].text == "other"
    finally:
        assert child.stop() == 0


async def test_backend_down_at_startup_is_left_out(tmp_path, http_backend: Child) -> None:
    config = f'[backends.web]\nurl = "{http_backend.url}"\n'
    config += '[backends.ghost]\ncommand = "/nonexistent/mcp-server"\n'
    config += '[backends.closed]\nurl = "http://127.0.0.1:9/mcp"\n'
    child = gateway(write(tmp_path, config))
    try:
        status = "\n".join(child.lines)
        assert "backend ghost: down" in status
        assert "backend closed: down" in status
        assert "backend web: ready" in status
        async with Client(child.url, mode="legacy") as client:
            names = [t.name for t in await list_all(client, "tools")]
            assert names and all(n.startswith("web__") for n in names)
            with pytest.raises(MCPError) as info:
                await client.call_tool("ghost__anything", {})
            assert info.value.code == -32602
    finally:
        assert child.stop() == 0


async def test_list_changed_refreshes_catalog_and_reaches_get_stream(gw: Child) -> None:
    seen: list[str] = []
    changed = asyncio.Event()

    async def on_message(message) -> None:  # type: ignore[no-untyped-def]
        method = getattr(getattr(message, "root", message), "method", None)
        if method:
            seen.append(method)
            if method == "notifications/tools/list_changed":
                changed.set()

    async with watched_transport(gw.url) as (transport, stream_open):
        async with Client(transport, mode="legacy", message_handler=on_message) as client:
            before = {t.name for t in await list_all(client, "tools")}
            after = before

            async def grown() -> set[str]:
                nonlocal after
                after = {t.name for t in await list_all(client, "tools")}
                return after - before

            await wait_set(stream_open, 15, "the client's GET stream did not open")
            await client.call_tool("web__add_tool", {})
            await asyncio.wait_for(changed.wait(), 15)
            await eventually(grown, timeout=10, message="the new tool never appeared in the aggregate")
    assert after - before, "the new tool never appeared in the aggregate"
    assert all(n.startswith("web__") for n in after - before)


async def test_passthrough_mounts_one_backend_unprefixed(tmp_path, http_backend: Child) -> None:
    config = f'[gateway]\npassthrough = true\n[backends.web]\nurl = "{http_backend.url}"\n'
    child = gateway(write(tmp_path, config))
    try:
        async with Client(child.url, mode="legacy") as via, Client(http_backend.url, mode="legacy") as direct:
            for kind in ("tools", "prompts", "resources", "resourceTemplates"):
                got = [i.model_dump() for i in await list_all(via, kind)]
                want = [i.model_dump() for i in await list_all(direct, kind)]
                assert got == want, kind
            assert (await via.call_tool("echo", {"text": "p"})).model_dump() == (
                await direct.call_tool("echo", {"text": "p"})
            ).model_dump()
            resource = (await list_all(direct, "resources"))[0]
            assert (await via.read_resource(str(resource.uri))).model_dump() == (
                await direct.read_resource(str(resource.uri))
            ).model_dump()
    finally:
        assert child.stop() == 0


def test_sigterm_lets_request_in_flight_finish(tmp_path) -> None:
    child = gateway(write(tmp_path, stdio_backend()))
    init = post("/mcp", INIT, port=child.port)
    session = raw_exchange(child.port, init).headers["mcp-session-id"]
    body = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"local__slow","arguments":{"seconds":1.5}}}'
    with socket.create_connection(("127.0.0.1", child.port), timeout=20) as sock:
        sock.sendall(post("/mcp", body, {"mcp-session-id": session}, port=child.port))
        # The gateway has read the request (so it is in flight there) before the signal.
        eventually_sync(lambda: peer_has_read(sock), message="the gateway did not read the request")
        child.proc.send_signal(signal.SIGTERM)
        response = read_response(sock, timeout=20)
    assert response.status == 200
    assert response.json()["result"]["content"][0]["text"] == "slept 1.5"
    assert child.proc.wait(20) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", child.port), timeout=2)
    child.stop()


def test_check_command(tmp_path) -> None:
    good = write(tmp_path, stdio_backend() + '[backends.web]\nurl = "http://127.0.0.1:1/mcp"\nbearer_token = "s3cret"\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "local" in out.stdout and "web" in out.stdout
    assert "s3cret" not in out.stdout
    bad = write(tmp_path, "[server]\nprot = 1\n", "bad.toml")
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "prot" in out.stderr and ":2" in out.stderr


async def test_serve_mcp_json(tmp_path, http_backend: Child) -> None:
    servers = {
        "local": {"command": sys.executable, "args": [str(SERVERS / "sdk_stdio_server.py")]},
        "web": {"url": http_backend.url},
    }
    path = write(tmp_path, json.dumps({"mcpServers": servers}), "mcp.json")
    child = gateway(path)
    try:
        async with Client(child.url, mode="legacy") as client:
            prefixes = {t.name.split("__", 1)[0] for t in await list_all(client, "tools")}
        assert prefixes == {"local", "web"}
    finally:
        assert child.stop() == 0


async def test_bundled_demo() -> None:
    child = Child([sys.executable, "-m", "gateway", "serve", "--port", "0"], "mcp-gateway listening on")
    try:
        async with Client(child.url, mode="legacy") as client:
            names = {t.name for t in await list_all(client, "tools")}
            assert {"notes__add_note", "time__add"} <= names
            result = await client.call_tool("time__add", {"a": 1, "b": 2})
            assert not result.is_error
    finally:
        assert child.stop() == 0


def test_module_entry_point_version() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("mcp-gateway ")


def test_healthz_on_the_mcp_port_lists_backend_states(gw: Child) -> None:
    health = json.loads(raw_exchange(gw.port, "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()).body)
    assert health == {"status": "ok", "backends": {"local": "ready", "web": "ready", "everything": "ready"}}


async def test_workers_share_one_port(tmp_path, http_backend: Child) -> None:
    """--workers 2: two processes on one port (SO_REUSEPORT), one address line, clean stop."""
    config = write(tmp_path, f'[backends.web]\nurl = "{http_backend.url}"\n')
    child = gateway(config, "--workers", "2")
    try:
        assert child.lines[-1].endswith("(2 workers)")
        workers = subprocess.run(["pgrep", "-P", str(child.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        url = child.lines[-1].split()[3]
        for _ in range(4):  # fresh connections land on either worker; every one works
            async with Client(url, mode="legacy") as client:
                assert (await client.call_tool("web__echo", {"text": "w"})).content[0].text == "w"
    finally:
        assert child.stop() == 0
