"""Replicas of one HTTP backend (``urls = [...]``, ``gateway.backends.replicas``): balancing, a
killed replica's calls going to the other and its return after ``eject_for``, per-client
sessions staying on their replica, one shared upstream session per replica, server-to-client
requests answered on the replica that asked.

The replicas are real processes (the official SDK server, ``tests/servers/resilience_server.py``,
each with its own label), killed with SIGKILL and started again on the same port; the gateway
runs in this process (``tests.test_resilience.running``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator

import pytest
from mcp import Client, types

from gateway.backends.base import BackendState
from gateway.backends.replicas import ReplicaSet
from gateway.config import BackendConfig
from tests.support import SERVERS, Child, ManualClock, eventually
from tests.test_resilience import FIVE_OH_THREE, Backend, McpClient, ok, running


def replica(label: str, port: int = 0) -> Child:
    return Child(
        [sys.executable, str(SERVERS / "resilience_server.py"), "--port", str(port), "--label", label], "listening on"
    )


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Child, Child]]:
    """Two replicas, ``a`` and ``b``, for the tests that kill none."""
    a, b = replica("a"), replica("b")
    yield a, b
    a.stop()
    b.stop()


def _urls(*children: Child) -> str:
    return "urls = [" + ", ".join(repr(c.url) for c in children) + "]"


async def _whoami(client: McpClient, request_id: int = 1) -> dict:
    answer = await client.call("web__whoami", request_id=request_id)
    assert answer.status == 200, answer.message
    return json.loads(answer.text)


def test_the_pick_is_the_least_outstanding_ready_replica_not_ejected() -> None:
    clock = ManualClock()
    urls = [f"http://127.0.0.1:{port}/mcp" for port in (1001, 1002, 1003)]
    replicas = ReplicaSet("web", BackendConfig(urls=urls, eject_for=5.0), clock=clock)
    a, b, c = replicas.replicas
    for r in (a, b, c):
        r.backend.state = BackendState.READY
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert replicas._choose() is b
    replicas._eject(b, RuntimeError("503"))
    assert replicas._choose() is c  # b is out for eject_for
    c.backend.state = BackendState.DOWN
    assert replicas._choose() is a  # c is down
    a.backend.state = BackendState.DOWN
    assert replicas._choose() is b  # every ready replica ejected: the least busy of them anyway
    clock.now += 5
    a.backend.state = BackendState.READY
    a.outstanding = 0
    assert replicas._choose() is a and b.ejected_until == 0.0  # b's ejection ended
    b.backend.state = BackendState.DOWN
    a.backend.state = BackendState.DOWN
    assert replicas._choose() is None and replicas.state is BackendState.DOWN


async def test_calls_are_balanced_over_one_shared_session_per_replica(pair: tuple[Child, Child]) -> None:
    async with running(f"{_urls(*pair)}\nmax_concurrency = 16\n") as gw:
        assert isinstance(gw.web.inner, ReplicaSet)  # the guard is in front of the set, not of each replica
        client = await McpClient(gw.port).open()
        seen = [await _whoami(client, i) for i in range(10)]
        seen += await asyncio.gather(*(_whoami(client, 100 + i) for i in range(10)))
        labels = {s["label"] for s in seen}
        assert labels == {"a", "b"}
        sessions = {label: {s["session"] for s in seen if s["label"] == label} for label in labels}
        assert all(len(ids) == 1 for ids in sessions.values()), sessions  # one shared upstream session each
        assert sessions["a"] != sessions["b"]


async def test_a_killed_replica_s_calls_go_to_the_other_and_it_returns_after_eject_for() -> None:
    a, b = replica("a"), replica("b")
    try:
        async with running(f"{_urls(a, b)}\neject_for = 0.5\n") as gw:
            client = await McpClient(gw.port).open()
            assert {(await _whoami(client))["label"] for _ in range(4)} == {"a", "b"}
            port = a.port
            a.stop(signal.SIGKILL)
            # "write" has no annotations: it may not be repeated, but a call that never reached
            # the dead replica (its connection refused) may go to the other.
            for i in range(6):
                answer = await client.call("web__write", request_id=i)
                assert answer.status == 200, answer.message
                assert json.loads(answer.text)["label"] == "b"
            a = replica("a", port)

            async def a_is_back() -> bool:
                return (await _whoami(client))["label"] == "a"

            await eventually(a_is_back, timeout=20, message="the restarted replica never got calls again")
            # Both gone: refused as a down backend is.
            a.stop(signal.SIGKILL)
            b.stop(signal.SIGKILL)
            down = await client.call("web__whoami")
            assert (down.status, down.code) == (503, -32054)
    finally:
        a.stop()
        b.stop()


async def test_per_client_sessions_stay_on_their_replica(pair: tuple[Child, Child]) -> None:
    async with running(f'{_urls(*pair)}\nsession = "per-client"\n') as gw:
        clients = [await McpClient(gw.port).open() for _ in range(4)]
        where = []
        for client in clients:
            seen = [await _whoami(client, i) for i in range(4)]
            assert len({(s["label"], s["session"]) for s in seen}) == 1, seen  # one replica, one upstream session
            where.append(seen[0])
        assert {w["label"] for w in where} == {"a", "b"}  # the sessions were spread
        assert len({w["session"] for w in where}) == 4  # each client its own upstream session


async def test_server_requests_are_answered_on_the_replica_that_asked(pair: tuple[Child, Child]) -> None:
    """Each replica numbers its own server-to-client requests: two asked at once (one per replica)
    may carry the same id. Each answer must reach the replica that asked."""
    asked = 0
    both = asyncio.Event()

    async def sample(context: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        nonlocal asked
        asked += 1
        if asked == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 20)  # both requests are out before either is answered
        prompt = params.messages[0].content.text  # type: ignore[union-attr]
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"re {prompt}"), model="m"
        )

    async with running(_urls(*pair)) as gw:
        url = f"http://127.0.0.1:{gw.port}/mcp"
        async with Client(url, mode="legacy", sampling_callback=sample) as c1, Client(
            url, mode="legacy", sampling_callback=sample
        ) as c2:
            r1, r2 = await asyncio.gather(c1.call_tool("web__ask", {"prompt": "one"}), c2.call_tool("web__ask", {"prompt": "two"}))
        texts = sorted([r1.content[0].text, r2.content[0].text])  # type: ignore[union-attr]
        labels = {t.split(":")[0] for t in texts}
        assert labels == {"a", "b"}, texts  # one call on each replica
        assert sorted(t.split(": ", 1)[1] for t in texts) == ["re one", "re two"]


async def test_a_replica_answering_5xx_is_ejected_and_a_safe_call_retried_on_the_other() -> None:
    async def failing(msg: dict) -> tuple[int, dict, bytes]:
        return FIVE_OH_THREE

    async def healthy(msg: dict) -> tuple[int, dict, bytes]:
        return ok(msg, "fine")

    bad, good = Backend(failing), Backend(healthy)
    async with bad as bad_url, good as good_url, running(f"urls = [{bad_url!r}, {good_url!r}]\nretries = 1\neject_for = 60\n") as gw:
        client = await McpClient(gw.port).open()
        for i in range(6):
            assert (await client.call("web__read", request_id=i)).text == "fine"  # "read" is readOnlyHint
        assert bad.calls == {"read": 1}  # ejected after its one failure (and that call retried on the other)
        assert good.calls == {"read": 6}
