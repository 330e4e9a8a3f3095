"""The HTTP backend: against the real SDK server, and against a small scripted
server for the faults a real one will not produce on demand (an expired
session, silence, what headers arrive)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from gateway.backends.base import BackendCall, BackendState
from gateway.backends.http import HttpBackend
from gateway.config import BackendConfig
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.protocol.jsonrpc import Raw
from tests.support import Child, ScriptedHttp, eventually, handshake_answer, refuses_connections, wait_set


def call(name: str, arguments: dict, meta: dict | None = None) -> Raw:
    params = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return Raw(json.dumps(params).encode())


def result(msg) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(bytes(msg.result))


@pytest.fixture
async def sdk(http_backend: Child):  # type: ignore[no-untyped-def]
    b = HttpBackend("web", BackendConfig(url=http_backend.url), default_timeout=10)
    await b.start()
    yield b
    await b.stop()


async def test_start_list_and_call(sdk: HttpBackend) -> None:
    assert sdk.state is BackendState.READY
    assert sdk.server_info["serverInfo"]["name"] == "sdk-http-test"
    names = {t["name"] for t in result(await sdk.request(BackendCall("tools/list")))["tools"]}
    assert {"echo", "multiply", "progress"} <= names
    assert result(await sdk.request(BackendCall("tools/call", call("echo", {"text": "x"}))))["content"][0]["text"] == "x"


async def test_sse_progress_reaches_the_sink_before_the_result(sdk: HttpBackend) -> None:
    seen = []
    answer = await sdk.request(BackendCall("tools/call", call("progress", {"steps": 3}, {"progressToken": 9}), sink=seen.append))
    assert [m.method for m in seen] == ["notifications/progress"] * 3
    assert result(answer)["content"][0]["text"] == "done 3"


async def test_concurrent_calls_over_the_pool(sdk: HttpBackend) -> None:
    answers = await asyncio.gather(*(sdk.request(BackendCall("tools/call", call("multiply", {"a": i, "b": 2}))) for i in range(50)))
    assert [float(result(a)["content"][0]["text"]) for a in answers] == [i * 2.0 for i in range(50)]
    assert len(sdk._all) <= sdk.config.pool_size


class Scripted(ScriptedHttp):
    """The scripted server with a plain ``handler(request) -> (status, headers, body)``; None: silence
    until the server is closed (then the connection drops unanswered). ``silenced`` is set once a
    request has been met with silence."""

    def __init__(self, handler: Callable[[dict], tuple[int, dict, bytes] | None]) -> None:
        self.silenced = asyncio.Event()
        self._closed = asyncio.Event()

        async def answer(request: dict) -> tuple[int, dict, bytes] | None:
            result = handler(request)
            if result is None:
                self.silenced.set()
                await self._closed.wait()
            return result

        super().__init__(answer)

    async def __aexit__(self, *exc: object) -> None:
        self._closed.set()
        await super().__aexit__(*exc)


def basic(sessions: list[str], *, expire_first_call: bool = False, silent_tool: bool = False):  # type: ignore[no-untyped-def]
    """A handler speaking just enough MCP; it rotates session ids on each initialize."""
    state = {"expired": False}

    def handle(req: dict) -> tuple[int, dict, bytes] | None:
        answer = handshake_answer(req, sessions)
        if answer is not None:
            return answer
        msg = req["body"]
        if expire_first_call and not state["expired"]:
            state["expired"] = True
            return 404, {}, b""
        if silent_tool:
            return None
        return 200, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"session": req["headers"].get("mcp-session-id")}}).encode()

    return handle


async def test_static_headers_and_bearer_are_sent_not_client_ones() -> None:
    sessions: list[str] = []
    fake = Scripted(basic(sessions))
    async with fake as url:
        cfg = BackendConfig(url=url, headers={"x-tenant": "acme"}, bearer_token="tok123")
        b = HttpBackend("f", cfg, default_timeout=5)
        await b.start()
        await b.request(BackendCall("tools/list"))
        await b.stop()
    posted = [r for r in fake.requests if r["line"].startswith("POST")]
    assert posted and all(r["headers"]["x-tenant"] == "acme" for r in posted)
    assert all(r["headers"]["authorization"] == "Bearer tok123" for r in posted)
    tools_list = next(r for r in posted if r["body"].get("method") == "tools/list")
    assert tools_list["headers"]["mcp-session-id"] == "s1"
    assert tools_list["headers"]["mcp-protocol-version"] == "2025-11-25"
    assert any(r["line"].startswith("DELETE") and r["headers"]["mcp-session-id"] == "s1" for r in fake.requests)


async def test_expired_session_is_initialized_again_and_retried() -> None:
    sessions: list[str] = []
    async with Scripted(basic(sessions, expire_first_call=True)) as url:
        b = HttpBackend("f", BackendConfig(url=url), default_timeout=5)
        await b.start()
        answer = await b.request(BackendCall("tools/list"))
        await b.stop()
    assert result(answer) == {"session": "s2"}
    assert sessions == ["s1", "s2"]


async def test_silent_backend_times_out() -> None:
    async with Scripted(basic([], silent_tool=True)) as url:
        b = HttpBackend("f", BackendConfig(url=url), default_timeout=5)
        await b.start()
        with pytest.raises(BackendTimeout):
            await b.request(BackendCall("tools/list", timeout=0.3))
        await b.stop()


async def test_a_full_pool_answers_busy_after_connect_timeout() -> None:
    """More requests than pool connections wait for one, for at most connect_timeout."""
    fake = Scripted(basic([], silent_tool=True))
    async with fake as url:
        b = HttpBackend("f", BackendConfig(url=url, pool_size=1, connect_timeout=0.3), default_timeout=5)
        await b.start()
        first = asyncio.ensure_future(b.request(BackendCall("tools/list", timeout=3)))  # holds the one connection
        await wait_set(fake.silenced, 5, "the first request never reached the backend")
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailable, match="connections busy"):
            await b.request(BackendCall("tools/list", timeout=3))
        assert 0.25 <= asyncio.get_running_loop().time() - started < 2
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await b.stop()


async def test_unreachable_backend_is_down_then_recovers() -> None:
    sessions: list[str] = []
    fake = Scripted(basic(sessions))
    url = await fake.__aenter__()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    await fake.__aexit__()
    await eventually(lambda: refuses_connections(port), timeout=5, message=f"port {port} still accepts connections")
    b = HttpBackend("f", BackendConfig(url=url, connect_timeout=1), default_timeout=5)
    await b.start()
    try:
        assert b.state is BackendState.DOWN
        with pytest.raises(BackendUnavailable):
            await b.request(BackendCall("tools/list"))
        ready = asyncio.Event()
        b.on_state_change = lambda backend: ready.set() if backend.state is BackendState.READY else None
        server = await asyncio.start_server(fake._serve, "127.0.0.1", port)
        try:
            await wait_set(ready, 10, "the backend did not come back up")
            assert b.state is BackendState.READY
            assert result(await b.request(BackendCall("tools/list")))["session"] == sessions[-1]
        finally:
            server.close()
    finally:
        await b.stop()


def test_other_schemes_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="only http:// and https://"):
        HttpBackend("x", BackendConfig(url="ftp://example.com/mcp"))


async def test_per_client_sessions_are_separate_and_released() -> None:
    sessions: list[str] = []
    fake = Scripted(basic(sessions))
    async with fake as url:
        b = HttpBackend("f", BackendConfig(url=url, session="per-client"), default_timeout=5)
        await b.start()
        a1 = result(await b.request(BackendCall("tools/list", session_key="A")))
        b1 = result(await b.request(BackendCall("tools/list", session_key="B")))
        a2 = result(await b.request(BackendCall("tools/list", session_key="A")))
        await b.release("A")
        await b.stop()
    assert sessions == ["s1", "s2", "s3"]  # shared, then A, then B
    assert a1 == a2 == {"session": "s2"} and b1 == {"session": "s3"}
    deletes = [r["headers"]["mcp-session-id"] for r in fake.requests if r["line"].startswith("DELETE")]
    assert deletes[0] == "s2" and set(deletes) == {"s1", "s2", "s3"}
