"""The express lane (``gateway.front.express``): the common call answered in callbacks.

Each test runs the gateway in this process, on real sockets, and checks two
things: that the lane really took the call (a counter around it), and that
the client got what the general path gives (the same gateway with
``[gateway] express = false``). The backend is the official SDK server, or a
small scripted HTTP server where a fault must be provoked: an expired
upstream session, a backend that closes a kept-alive connection, one that
never answers, one that answers slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.backends.base import BackendCall, Ticket
from gateway.backends.http import HttpBackend
from gateway.config import BackendConfig, load_config_text
from gateway.policy.admission import Admission
from gateway.protocol.jsonrpc import Raw
from gateway.server.listener import Server
from tests.support import in_process_gateway, Child, ScriptedHttp, handshake_answer, split_response, post_closing

ACCEPT = "application/json, text/event-stream"


class Running:
    """One in-process gateway: its URL, and each verdict of its express lane."""

    def __init__(self, url: str, taken: list[bool], server: Server) -> None:
        self.url = url
        self.port = int(url.split(":")[2].split("/")[0])
        self.taken = taken
        self.server = server


@contextlib.asynccontextmanager
async def gateway_for(
    backend_url: str, *, express: bool = True, server: str = "", backend: str = "", admission: Admission | None = None
) -> AsyncIterator[Running]:
    text = f"""
[server]
port = 0
{server}

[gateway]
express = {str(express).lower()}

[backends.web]
url = {backend_url!r}
{backend}
"""
    config = load_config_text(text, fmt="toml")
    async with in_process_gateway(config, admission) as running:
        yield Running(running.url, running.taken, running.listener)


# -- the official SDK server behind it -----------------------------------------------------------


async def _session_calls(url: str) -> list[Any]:
    """The same calls, the same order, through one SDK client; each outcome as plain data."""
    out: list[Any] = []
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with Client(url, mode="legacy") as client:
        for name, args in [("web__echo", {"text": "hi"}), ("web__multiply", {"a": 6, "b": 7}), ("web__echo", {})]:
            result = await client.call_tool(name, args)
            out.append(result.model_dump(by_alias=True, exclude_none=True))
        result = await client.call_tool("web__progress", {"steps": 3}, progress_callback=on_progress)
        out.append((result.model_dump(by_alias=True, exclude_none=True), progress))
        with pytest.raises(MCPError) as caught:
            await client.call_tool("web__nope", {})
        out.append(caught.value.error.code)
    return out


async def test_sdk_calls_through_the_lane_equal_the_general_path(http_backend: Child) -> None:
    async with gateway_for(http_backend.url) as fast, gateway_for(http_backend.url, express=False) as general:
        # A first round lets the pool settle: a call that finds no idle connection (each busy
        # with, say, a catalog refresh) rightly declines, and that is not what is checked here.
        await _session_calls(fast.url)
        settled = len(fast.taken)
        got = await _session_calls(fast.url)
        want = await _session_calls(general.url)
    assert got == want
    assert got[0]["content"][0]["text"] == "hi" and got[1]["content"][0]["text"] == "42.0"
    assert got[2]["isError"] is True  # the SDK server's own validation error passes through
    assert got[3][1] == [1.0, 2.0, 3.0]
    # The three plain calls took the lane; the call with a progress token (_meta) and the
    # unknown name did not; initialize, notifications and lists never do.
    assert fast.taken[settled:].count(True) == 3
    assert general.taken == []


# -- a scripted backend, for faults ---------------------------------------------------------------

Action = tuple[Any, ...]


class Scripted(ScriptedHttp):
    """An MCP server whose answer to each ``tools/call`` is chosen by ``script(n, msg)``:
    ``("ok", result)``, ``("slow", seconds, result)``, ``("close",)`` (drop the connection
    unanswered), ``("expired",)`` (404: unknown session) or ``("silent",)``."""

    def __init__(self, script: Callable[[int, dict], Action]) -> None:
        super().__init__(self._answer_request)
        self.script = script
        self.calls = 0
        self.sessions: list[str] = []

    @property
    def received(self) -> list[dict]:
        """The JSON-RPC messages POSTed so far."""
        return [r["body"] for r in self.requests if r["line"].startswith("POST")]

    async def _answer_request(self, request: dict) -> tuple[int, dict, bytes] | None:
        answer = handshake_answer(request, self.sessions)
        if answer is not None:
            return answer
        msg = request["body"]

        def reply(result: Any) -> bytes:
            return json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()

        if msg["method"] == "tools/list":
            return 200, {}, reply({"tools": [{"name": "work", "inputSchema": {"type": "object"}}]})
        self.calls += 1
        action = self.script(self.calls, msg)
        if action[0] == "ok":
            return 200, {}, reply(action[1])
        if action[0] == "slow":
            await asyncio.sleep(action[1])
            return 200, {}, reply(action[2])
        if action[0] == "expired":
            return 404, {}, b""
        if action[0] == "silent":
            await asyncio.sleep(30)
        return None  # "close" (and the end of "silent"): drop the connection unanswered


class Response:
    """One HTTP response, read whole (the request asked the server to close after it)."""

    def __init__(self, raw: bytes) -> None:
        self.status_code, self.headers, body = split_response(raw)
        self.text = body.decode()


class McpHttp:
    """A raw handshake-era client on real sockets: initialize, then POSTs in that session."""

    def __init__(self, url: str) -> None:
        self.port = int(url.split(":")[2].split("/")[0])
        self.session = ""

    async def open(self) -> None:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        response = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
        self.session = response.headers["mcp-session-id"]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def post(self, body: dict) -> Response:
        headers = {"mcp-protocol-version": "2025-11-25"}
        if self.session:
            headers["mcp-session-id"] = self.session
        return Response(await post_closing(self.port, json.dumps(body).encode(), headers, timeout=10))

    async def call(self, request_id: Any = 1) -> Response:
        return await self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "web__work", "arguments": {}}})


async def _both(script: Callable[[int, dict], Action], check: Callable[[Running, Scripted, McpHttp], Awaitable[Any]], **options: str) -> list[Any]:
    """Run ``check`` against a fresh scripted backend, with the lane and without it."""
    outcomes = []
    for express in (True, False):
        backend = Scripted(script)
        async with backend as url, gateway_for(url, express=express, **options) as gw:
            client = McpHttp(gw.url)
            await client.open()
            outcomes.append(await check(gw, backend, client))
    return outcomes


def _said(response: Response) -> tuple[int, Any]:
    """Status and the JSON-RPC outcome (result, or the error's code), from JSON or SSE."""
    text = response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        text = [line[6:] for line in text.splitlines() if line.startswith("data: ")][-1]
    body = json.loads(text) if text else None
    if body is None:
        return response.status_code, None
    return response.status_code, body.get("result", body.get("error", {}).get("code"))


async def test_an_expired_upstream_session_is_initialized_again_and_the_call_retried() -> None:
    async def check(gw: Running, backend: Scripted, client: McpHttp) -> Any:
        said = _said(await client.call())
        return said, backend.sessions, [True in gw.taken]

    fast, general = await _both(lambda n, msg: ("expired",) if n == 1 else ("ok", {"n": n}), check)
    assert fast[:2] == general[:2] == ((200, {"n": 2}), ["s1", "s2"])
    assert fast[2] == [True]


async def test_a_kept_alive_connection_the_backend_closed_is_retried() -> None:
    async def check(gw: Running, backend: Scripted, client: McpHttp) -> Any:
        return _said(await client.call()), backend.calls

    fast, general = await _both(lambda n, msg: ("close",) if n == 1 else ("ok", {"n": n}), check)
    assert fast == general == ((200, {"n": 2}), 2)


async def test_a_silent_backend_times_out_with_the_same_error() -> None:
    async def check(gw: Running, backend: Scripted, client: McpHttp) -> Any:
        return _said(await client.call()), True in gw.taken

    fast, general = await _both(lambda n, msg: ("silent",), check, backend="request_timeout = 0.3")
    assert fast[0] == general[0] and fast[0][0] == 200 and fast[0][1] < 0  # a JSON-RPC error, not a hang
    assert fast[1] is True


async def test_a_cancelled_call_gets_202_and_the_backend_is_told() -> None:
    async def check(gw: Running, backend: Scripted, client: McpHttp) -> Any:
        pending = asyncio.ensure_future(client.call(request_id=41))
        while backend.calls == 0:
            await asyncio.sleep(0.01)
        upstream_id = backend.received[-1]["id"]
        await client.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 41}})
        response = await pending
        for _ in range(100):
            told = [m for m in backend.received if m.get("method") == "notifications/cancelled"]
            if told:
                break
            await asyncio.sleep(0.02)
        return response.status_code, response.text, [m["params"]["requestId"] == upstream_id for m in told]

    fast, general = await _both(lambda n, msg: ("silent",), check)
    assert fast == general == (202, "", [True])


async def test_a_slow_call_switches_to_sse_keep_alive_comments() -> None:
    async def check(gw: Running, backend: Scripted, client: McpHttp) -> Any:
        response = await client.call()
        return response.headers["content-type"], ": keep-alive" in response.text, _said(response)

    fast, general = await _both(lambda n, msg: ("slow", 0.8, {"late": True}), check, server="sse_keepalive = 0.2")
    assert fast == general == ("text/event-stream", True, (200, {"late": True}))


async def test_shutdown_lets_an_express_call_in_flight_finish() -> None:
    backend = Scripted(lambda n, msg: ("slow", 0.5, {"finished": True}))
    async with backend as url, gateway_for(url) as gw:
        client = McpHttp(gw.url)
        await client.open()
        pending = asyncio.ensure_future(client.call())
        while backend.calls == 0:
            await asyncio.sleep(0.01)
        await gw.server.shutdown()
        response = await pending
        assert True in gw.taken
    assert _said(response) == (200, {"finished": True})


async def test_a_released_connection_goes_to_the_request_waiting_in_line() -> None:
    """With every pool connection busy, a request waits; the connection freed next is handed to it, and an
    express call made in that same callback queues behind it instead of taking the connection first
    (which, with express calls arriving all the time, would starve the waiter)."""
    backend = Scripted(lambda n, msg: ("slow", 0.2, {"n": n}))
    async with backend as url:
        http = HttpBackend("web", BackendConfig(url=url, pool_size=1), default_timeout=5)
        await http.start()
        params = Raw(b'{"name":"work","arguments":{}}')
        first = asyncio.ensure_future(http.request(BackendCall("tools/call", params, era="handshake")))
        while backend.calls < 1:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(http.request(BackendCall("tools/call", params, era="handshake")))
        while not http.pool.waiters:
            await asyncio.sleep(0.01)
        express: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        taken: list[bool] = []
        release = http.pool.release

        def release_then_express(conn: Any) -> None:
            release(conn)
            if not taken:  # once: the first release, while the second request waits
                taken.append(http.express_ready())
                if taken[0]:
                    http.express(
                        "tools/call", params, Ticket(), lambda m: None, lambda answer, error, retry: express.set_result(answer)
                    )

        http.pool.release = release_then_express  # type: ignore[method-assign]
        answers = [await first, await second, await express]
        await http.stop()
    assert [json.loads(bytes(a.result)) for a in answers] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert taken == [True]  # queued, not refused: it was sent when the second call's connection came back


async def test_calls_wait_in_line_for_a_full_pool_and_all_take_the_lane() -> None:
    """More calls at once than pool connections: once the pool is full, the calls without a connection
    queue (no task) and are sent as connections free up."""
    backend = Scripted(lambda n, msg: ("slow", 0.05, {"n": n}))
    async with backend as url, gateway_for(url, backend="pool_size = 2") as gw:
        clients = [McpHttp(gw.url) for _ in range(6)]
        for client in clients:
            await client.open()
        await asyncio.gather(*(client.call() for client in clients[:2]))  # the pool's second connection opens
        del gw.taken[:]
        answers = await asyncio.gather(*(client.call(request_id=i) for i, client in enumerate(clients)))
    assert sorted(_said(a)[1]["n"] for a in answers) == [3, 4, 5, 6, 7, 8]
    assert all(a.status_code == 200 for a in answers)
    assert gw.taken == [True] * 6


async def test_a_call_waiting_for_a_busy_pool_times_out_as_the_general_path_does() -> None:
    async def check(gw: Running, backend: Scripted, client: McpHttp) -> Any:
        first = asyncio.ensure_future(client.call(request_id=1))
        while backend.calls == 0:
            await asyncio.sleep(0.01)
        second = await client.call(request_id=2)
        first.cancel()
        return second.status_code, second.headers.get("retry-after"), _said(second)[1], gw.taken.count(True)

    fast, general = await _both(lambda n, msg: ("silent",), check, backend="pool_size = 1\nconnect_timeout = 0.3")
    assert fast[:3] == general[:3] == (503, "1", fast[2]) and fast[2] < 0
    assert fast[3] == 2 and general[3] == 0
