"""The stdio backend against a real SDK server process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import pytest

from gateway.backends.base import BackendCall, BackendState
from gateway.backends.stdio import StdioBackend
from gateway.config import BackendConfig
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.protocol.jsonrpc import Raw
from tests.support import SERVERS

SERVER = [str(SERVERS / "sdk_stdio_server.py")]


def config(**extra: object) -> BackendConfig:
    return BackendConfig(command=sys.executable, args=SERVER, restart_initial_delay=0.1, restart_max_delay=0.2, **extra)


def call(name: str, arguments: dict) -> Raw:
    return Raw(json.dumps({"name": name, "arguments": arguments}).encode())


def text_of(msg) -> str:  # type: ignore[no-untyped-def]
    return json.loads(bytes(msg.result))["content"][0]["text"]


@pytest.fixture
async def backend():  # type: ignore[no-untyped-def]
    b = StdioBackend("local", config(), default_timeout=10)
    await b.start()
    yield b
    await b.stop()


async def test_start_and_call(backend: StdioBackend) -> None:
    assert backend.state is BackendState.READY
    assert backend.server_info["serverInfo"]["name"] == "sdk-stdio-test"
    tools = json.loads(bytes((await backend.request(BackendCall("tools/list"))).result))["tools"]
    assert {"echo", "add", "slow", "crash"} <= {t["name"] for t in tools}
    assert text_of(await backend.request(BackendCall("tools/call", call("echo", {"text": "hi"})))) == "hi"


async def test_concurrent_calls_get_their_own_answers(backend: StdioBackend) -> None:
    answers = await asyncio.gather(*(backend.request(BackendCall("tools/call", call("add", {"a": i, "b": 1000}))) for i in range(40)))
    assert [text_of(a) for a in answers] == [str(i + 1000) for i in range(40)]
    assert len({a.id for a in answers}) == 40


async def test_stderr_goes_to_the_log_with_the_backend_name(backend: StdioBackend, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.INFO, logger="gateway.backend.local"):
        await backend.request(BackendCall("tools/call", call("log_stderr", {"text": "a line on stderr"})))
        for _ in range(50):
            if any("a line on stderr" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    record = next(r for r in caplog.records if "a line on stderr" in r.getMessage())
    assert record.name == "gateway.backend.local" and "local" in record.getMessage()


async def test_progress_goes_to_the_requests_sink(backend: StdioBackend) -> None:
    seen = []
    params = Raw(b'{"name":"slow","arguments":{"seconds":0.1},"_meta":{"progressToken":"tok-1"}}')
    answer = await backend.request(BackendCall("tools/call", params, sink=seen.append))
    assert text_of(answer) == "slept 0.1"
    assert [m.method for m in seen] == ["notifications/progress", "notifications/progress"]


async def test_crash_fails_in_flight_then_restarts(backend: StdioBackend) -> None:
    with pytest.raises(BackendUnavailable) as info:
        await backend.request(BackendCall("tools/call", call("crash", {})))
    assert info.value.reason == "backend_exited"
    with pytest.raises(BackendUnavailable):
        await backend.request(BackendCall("tools/call", call("echo", {"text": "x"})))
    for _ in range(200):
        if backend.state is BackendState.READY:
            break
        await asyncio.sleep(0.05)
    assert backend.state is BackendState.READY
    assert text_of(await backend.request(BackendCall("tools/call", call("echo", {"text": "back"})))) == "back"


async def test_timeout(backend: StdioBackend) -> None:
    with pytest.raises(BackendTimeout):
        await backend.request(BackendCall("tools/call", call("slow", {"seconds": 2}), timeout=0.2))
    assert text_of(await backend.request(BackendCall("tools/call", call("echo", {"text": "ok"})))) == "ok"


async def test_missing_command_is_down_without_exception() -> None:
    b = StdioBackend("ghost", BackendConfig(command="/nonexistent/server"), default_timeout=1)
    await b.start()
    try:
        assert b.state is BackendState.DOWN and "start failed" in (b.last_error or "")
        with pytest.raises(BackendUnavailable):
            await b.request(BackendCall("tools/list"))
    finally:
        await b.stop()


async def test_per_client_processes_and_release() -> None:
    b = StdioBackend("pc", config(session="per-client"), default_timeout=10)
    await b.start()
    try:
        await b.request(BackendCall("tools/call", call("echo", {"text": "a"}), session_key="A"))
        await b.request(BackendCall("tools/call", call("echo", {"text": "b"}), session_key="B"))
        pids = {key: p.proc.pid for key, p in b._per_client.items()}
        assert set(pids) == {"A", "B"} and pids["A"] != pids["B"]
        await b.release("A")
        assert set(b._per_client) == {"B"}
        with pytest.raises(ProcessLookupError):
            os.kill(pids["A"], 0)
    finally:
        await b.stop()


async def test_stop_leaves_no_process() -> None:
    b = StdioBackend("s", config(), default_timeout=10)
    await b.start()
    pid = b._shared.proc.pid
    await b.stop()
    await b.stop()  # idempotent
    assert b.state is BackendState.STOPPED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
