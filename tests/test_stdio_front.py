"""The stdio front (``mcp-gateway stdio``) as a desktop client sees it: the gateway is spawned
as a child speaking newline-delimited JSON-RPC on stdin/stdout, in front of a real HTTP backend
(SDK server over Streamable HTTP) and a real stdio backend (SDK server over stdio).

The official SDK client drives it for the everyday path; the raw tests write and read the
child's pipes themselves, for what an SDK client never sends (a malformed line) and to check
that stdout carries JSON-RPC only while the logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from gateway.front.stdio import LINE_LIMIT
from tests.support import ROOT, SERVERS, Child, sdk_http_server

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def web() -> Child:
    """A backend of this module's own: ``add_tool`` changes its tool list, which other modules compare."""
    child = sdk_http_server()
    yield child
    child.stop()


@pytest.fixture(scope="module")
def config(web: Child, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("stdio") / "gateway.toml"
    path.write_text(
        f"""
[server]
port = 1  # no listener in stdio mode: never bound

[gateway]
request_timeout = 20

[backends.local]
command = {sys.executable!r}
args = [{str(SERVERS / "sdk_stdio_server.py")!r}]

[backends.web]
url = {web.url!r}
"""
    )
    return path


def gateway_args(config: pathlib.Path) -> list[str]:
    return ["-m", "gateway", "stdio", "--config", str(config)]


@contextlib.contextmanager
def _shown(errlog: Any) -> Iterator[None]:
    """On failure, show what the gateway logged (pytest prints captured output of failed tests)."""
    try:
        yield
    except BaseException:
        errlog.seek(0)
        print("gateway stderr:\n" + errlog.read()[-5000:], file=sys.stderr)
        raise


# -- the SDK client -------------------------------------------------------------------------------


async def test_sdk_client_lists_and_calls_both_backends(config: pathlib.Path) -> None:
    params = StdioServerParameters(command=sys.executable, args=gateway_args(config), cwd=str(ROOT))
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            changed.set()

    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    with tempfile.TemporaryFile("w+") as errlog, _shown(errlog), anyio.fail_after(45):
        transport = stdio_client(params, errlog=errlog)
        async with Client(transport, mode="legacy", message_handler=on_message) as client:
            assert client.server_info is not None and client.server_info.name == "mcp-gateway"
            names = {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}
            assert {"local__echo", "local__add", "web__echo", "web__multiply"} <= names

            local = await client.call_tool("local__echo", {"text": "hello local"})
            assert not local.is_error and local.content[0].text == "hello local"
            web = await client.call_tool("web__multiply", {"a": 6, "b": 7})
            assert not web.is_error and web.structured_content == {"result": 42.0}

            # A backend answering with SSE: its progress lines come through stdout before the result.
            streamed = await client.call_tool("web__progress", {"steps": 3}, progress_callback=on_progress)
            assert streamed.content[0].text == "done 3"
            assert progress == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]

            # The backend's list_changed refreshes the catalog and reaches this client (the session's stream).
            added = await client.call_tool("web__add_tool", {})
            await asyncio.wait_for(changed.wait(), TIMEOUT)
            after = {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}
            assert f"web__{added.content[0].text}" in after - names
        errlog.seek(0)
        logs = errlog.read()
    assert "mcp-gateway serving MCP on stdio" in logs
    assert "sdk stdio test server starting" in logs  # the stdio backend's own stderr, logged by the gateway


async def test_sdk_client_auto_mode_falls_back_to_the_handshake(config: pathlib.Path) -> None:
    """A client probing ``server/discover`` first (the SDK's default) gets an error and initializes."""
    params = StdioServerParameters(command=sys.executable, args=gateway_args(config), cwd=str(ROOT))
    with tempfile.TemporaryFile("w+") as errlog, _shown(errlog), anyio.fail_after(45):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            assert client.session.initialize_result is not None  # the handshake, not an adopted discover
            assert client.protocol_version == "2025-11-25"
            result = await client.call_tool("local__add", {"a": 2, "b": 3})
    assert result.structured_content == {"result": 5}


# -- raw pipes ------------------------------------------------------------------------------------

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def call(request_id: int, name: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


class RawGateway:
    """``mcp-gateway stdio`` as a child process whose pipes the test reads and writes itself."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Any) -> None:
        self.proc = proc
        self.stderr_file = stderr
        self.lines: list[bytes] = []  # every stdout line, as read

    @classmethod
    async def start(cls, config: pathlib.Path) -> RawGateway:
        stderr = tempfile.TemporaryFile()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *gateway_args(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=ROOT,
            limit=16 * 1024 * 1024,
        )
        return cls(proc, stderr)

    async def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
        assert line.endswith(b"\n"), f"stdout ended: {line!r}; stderr: {self.stderr()[-2000:]}"
        self.lines.append(line)
        return json.loads(line)

    async def answer(self, request_id: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The response to ``request_id`` and the other messages read before it."""
        others = []
        while True:
            msg = await self.recv()
            if "method" not in msg and msg.get("id") == request_id:
                return msg, others
            others.append(msg)

    async def initialize(self) -> dict[str, Any]:
        await self.send(INITIALIZE)
        result, others = await self.answer(1)
        assert not others
        await self.send(INITIALIZED)
        return result

    async def close_stdin(self) -> int:
        """EOF on stdin; read stdout to its end; the exit code."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        rest = await asyncio.wait_for(self.proc.stdout.read(), TIMEOUT)
        self.lines.extend(line + b"\n" for line in rest.split(b"\n") if line)
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode("utf-8", "replace")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.stderr_file.close()


@pytest.fixture
async def raw(config: pathlib.Path) -> RawGateway:
    gw = await RawGateway.start(config)
    yield gw
    await gw.kill()


async def test_malformed_line_gets_an_error_and_serving_goes_on(raw: RawGateway) -> None:
    result = (await raw.initialize())["result"]
    assert result["serverInfo"]["name"] == "mcp-gateway"
    assert result["capabilities"]["tools"] == {"listChanged": True}

    await raw.send(b"this is not json\n")
    error = await raw.recv()
    assert error["jsonrpc"] == "2.0" and error["id"] is None
    assert error["error"]["code"] == -32700

    await raw.send(b'{"jsonrpc": "2.0", "params": 7}\n')  # JSON, but not JSON-RPC
    error = await raw.recv()
    assert error["id"] is None and error["error"]["code"] == -32600

    await raw.send(b"\n")  # blank lines are skipped, not answered
    await raw.send(call(2, "local__echo", {"text": "still serving"}))
    answer, others = await raw.answer(2)
    assert not others
    assert answer["result"]["content"][0]["text"] == "still serving"

    await raw.send(call(3, "nope__missing", {}))
    answer, _ = await raw.answer(3)
    assert answer["error"]["code"] == -32602 and answer["error"]["data"]["gateway"]["reason"] == "unknown_tool"

    assert await raw.close_stdin() == 0
    assert len(raw.lines) == 5  # initialize, two errors, two answers: the blank line got none


async def test_overlong_line_is_refused_and_skipped(raw: RawGateway) -> None:
    await raw.initialize()
    huge = call(2, "local__echo", {"text": "x" * LINE_LIMIT})
    await raw.send(json.dumps(huge).encode() + b"\n" + json.dumps(call(3, "local__echo", {"text": "next"})).encode())
    error = await raw.recv()
    assert error["id"] is None and error["error"]["data"]["gateway"]["reason"] == "request_too_large"
    assert await raw.close_stdin() == 0  # the last line has no newline: still read, still answered
    assert json.loads(raw.lines[-1])["result"]["content"][0]["text"] == "next"
    assert len(raw.lines) == 3


async def test_request_before_initialize_is_refused(raw: RawGateway) -> None:
    await raw.send({"jsonrpc": "2.0", "id": 9, "method": "ping"})  # allowed before initialize
    assert (await raw.recv()) == {"jsonrpc": "2.0", "id": 9, "result": {}}
    await raw.send({"jsonrpc": "2.0", "id": 10, "method": "tools/list"})
    error = await raw.recv()
    assert error["id"] == 10 and error["error"]["code"] == -32600
    await raw.initialize()
    await raw.send({"jsonrpc": "2.0", "id": 11, "method": "tools/list"})
    answer, _ = await raw.answer(11)
    assert any(t["name"] == "web__echo" for t in answer["result"]["tools"])


async def test_stdout_is_json_rpc_only_and_logs_go_to_stderr(raw: RawGateway) -> None:
    await raw.initialize()
    await raw.send({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}})
    await raw.answer(2)
    # The stdio backend writes to its stderr (logged by the gateway); progress and a streamed answer
    # from the HTTP backend go through the SSE-to-lines path; a bad call makes the gateway log.
    await raw.send(call(3, "local__log_stderr", {"text": "a line on the backend's stderr"}))
    await raw.send(call(4, "web__progress", {"steps": 2}, progressToken="tok"))
    await raw.send(call(5, "local__slow", {"seconds": 0.2}, progressToken=5))
    await raw.send({"jsonrpc": "2.0", "id": 6, "method": "resources/list"})
    await raw.send(b"[1, 2]\n")  # a batch: refused, with an error line
    await raw.send({"jsonrpc": "2.0", "id": "unknown-relay", "result": {}})  # a stray response: logged, not answered
    seen: dict[Any, dict[str, Any]] = {}
    notes: list[dict[str, Any]] = []
    while len(seen) < 4 or not any(n.get("id", 0) is None for n in notes):
        msg = await raw.recv()
        if "method" in msg or msg.get("id") is None:
            notes.append(msg)
        else:
            seen[msg["id"]] = msg
    assert seen[3]["result"]["content"][0]["text"] == "logged"
    assert seen[4]["result"]["content"][0]["text"] == "done 2"
    assert [n["params"]["progress"] for n in notes if n.get("params", {}).get("progressToken") == "tok"] == [1, 2]
    assert [n["params"]["progress"] for n in notes if n.get("params", {}).get("progressToken") == 5] == [0, 1]
    assert "resources" in seen[6]["result"]
    assert await raw.close_stdin() == 0

    assert raw.lines
    for line in raw.lines:
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
        msg = json.loads(line)
        assert msg["jsonrpc"] == "2.0", line
        assert "method" in msg or ("id" in msg and ("result" in msg or "error" in msg)), line
    logs = raw.stderr()
    assert "mcp-gateway serving MCP on stdio" in logs
    assert "a line on the backend's stderr" in logs
    assert "unknown-relay" in logs  # the stray response was logged (and dropped)
    assert "backend 'local' is now stopped" in logs  # stdin EOF stopped the backends


async def test_requests_overlap_and_answer_out_of_order(raw: RawGateway) -> None:
    await raw.initialize()
    await raw.send(call(2, "local__slow", {"seconds": 3}))
    await raw.send(call(3, "web__echo", {"text": "fast"}))
    first, _ = await raw.answer(3)  # the fast call is not held behind the slow one
    assert first["result"]["content"][0]["text"] == "fast"
    second, _ = await raw.answer(2)
    assert second["result"]["content"][0]["text"] == "slept 3.0"


async def test_cancelled_request_gets_no_answer(raw: RawGateway) -> None:
    """``notifications/cancelled`` reaches the front (and the backend): no answer is sent for it,
    and at EOF there is nothing left in flight to wait for."""
    await raw.initialize()
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2, "reason": "test"}}
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    # One write: the cancel is read in the same chunk as its request. (5 s: less than EOF_GRACE, so a
    # lost cancel would show as an answer to id 2 before the gateway exits.)
    await raw.send(b"".join(json.dumps(m).encode() + b"\n" for m in (call(2, "local__slow", {"seconds": 5}), cancel, ping)))
    await raw.answer(3)
    assert await raw.close_stdin() == 0
    assert [json.loads(line).get("id") for line in raw.lines] == [1, 3]


async def test_eof_answers_requests_in_flight_then_exits(raw: RawGateway) -> None:
    """``printf '...' | mcp-gateway stdio``: stdin ends at once, the answers still come."""
    lines = [INITIALIZE, INITIALIZED, call(2, "local__slow", {"seconds": 0.5}), call(3, "web__echo", {"text": "x"})]
    await raw.send(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
    assert await raw.close_stdin() == 0
    answers = {m["id"]: m for m in map(json.loads, raw.lines) if "id" in m}
    assert set(answers) == {1, 2, 3}
    assert answers[2]["result"]["content"][0]["text"] == "slept 0.5"
    assert "backend 'local' is now stopped" in raw.stderr()


async def test_sigterm_stops_the_gateway_cleanly(raw: RawGateway) -> None:
    await raw.initialize()
    await raw.send(call(2, "local__echo", {"text": "up"}))
    await raw.answer(2)
    raw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(raw.proc.wait(), TIMEOUT) == 0
    logs = raw.stderr()
    assert "signalled: stopping" in logs
    assert "backend 'local' is now stopped" in logs


def test_print_after_claim_stdout_goes_to_stderr(tmp_path: pathlib.Path) -> None:
    """What ``mcp-gateway stdio`` does first: anything printed (or written to fd 1 by a child) goes
    to stderr, and only the claimed fd reaches the real stdout."""
    script = (
        "import os, subprocess, sys\n"
        "from gateway.front.stdio import claim_stdout\n"
        "fd = claim_stdout()\n"
        "print('printed')\n"
        "subprocess.run([sys.executable, '-c', 'print(\"child\")'], check=True)\n"
        "os.write(fd, b'{\"jsonrpc\": \"2.0\", \"method\": \"x\"}\\n')\n"
    )
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=TIMEOUT, env={**os.environ}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'{"jsonrpc": "2.0", "method": "x"}\n'
    assert b"printed" in done.stderr and b"child" in done.stderr
