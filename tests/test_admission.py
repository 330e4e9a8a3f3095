"""The admission point: every routed request passes ``Admission.admit`` exactly once.

A counting ``Admission`` is given to an in-process gateway on real sockets, in
front of the official SDK server (or a scripted one where a fault must be
provoked), and each test checks that it saw exactly one ``admit`` per routed
request, whichever path served it: the express lane, the general path, an SSE
call, a retried call, a per-client session, the stateless era; and that its
outcome hook saw each one end. Refusals and local answers are tested by
attack: what admission refuses never reaches a backend, and the client gets
the refusal's status and code, in both paths.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mcp import Client

from gateway.errors import Forbidden
from gateway.policy.admission import Admission, Verdict
from gateway.protocol.jsonrpc import Raw
from tests.support import Child
from tests.test_express import McpHttp, Response, Scripted, gateway_for

STATELESS = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": STATELESS, "io.modelcontextprotocol/clientCapabilities": {}}


class Counting(Admission):
    """Admits everything and records each admission and each outcome."""

    observes_outcomes = True

    def __init__(self, verdict: Verdict | None = None) -> None:
        self.admitted: list[tuple[str, str, str]] = []
        self.outcomes: list[tuple[str, str, bool]] = []
        self.verdict = verdict

    def admit(self, principal: Any, ctx: Any, method: str, name: str, route: Any, params: Any) -> Verdict | None:
        self.admitted.append((ctx.era, method, name))
        return self.verdict

    def outcome(
        self, principal: Any, ctx: Any, method: str, name: str, route: Any, answer: Any, error: Any, note: Any = None
    ) -> None:
        self.outcomes.append((method, name, error is None))


async def stateless_post(
    port: int, method: str, params: dict[str, Any], name: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """One 2026-07-28 request on a real socket (no session; ``_meta`` and routing headers)."""
    data = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}).encode()
    head = (
        f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: application/json, text/event-stream\r\n"
        f"content-type: application/json\r\nmcp-protocol-version: {STATELESS}\r\nmcp-method: {method}\r\n"
        f"connection: close\r\ncontent-length: {len(data)}\r\n"
    )
    if name is not None:
        head += f"mcp-name: {name}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + data)
        return Response(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()


# -- exactly once, whichever path ---------------------------------------------------------------


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_each_call_is_admitted_once(http_backend: Child, express: bool) -> None:
    admission = Counting()
    async with gateway_for(http_backend.url, express=express, admission=admission) as gw:
        async with Client(gw.url, mode="legacy") as client:
            await client.list_tools()  # lists are not admitted: they pass the page filter
            for _ in range(2):  # the second round finds the pool settled (see test_express)
                for text in ("a", "b", "c"):
                    result = await client.call_tool("web__echo", {"text": text})
                    assert result.content[0].text == text  # type: ignore[union-attr]
    assert admission.admitted == [("handshake", "tools/call", "web__echo")] * 6
    assert admission.outcomes == [("tools/call", "web__echo", True)] * 6
    if express:
        # The lane served at least the settled round's three (and admitted each once: six in all).
        assert gw.taken.count(True) >= 3
    else:
        assert gw.taken == []


async def test_sse_calls_and_the_other_routed_methods_are_admitted_once(http_backend: Child) -> None:
    admission = Counting()
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with gateway_for(http_backend.url, admission=admission) as gw:
        async with Client(gw.url, mode="legacy") as client:
            result = await client.call_tool("web__progress", {"steps": 3}, progress_callback=on_progress)
            assert progress == [1.0, 2.0, 3.0] and not result.is_error
            prompt = await client.get_prompt("web__greet", {"name": "Ada"})
            assert "Ada" in prompt.messages[0].content.text  # type: ignore[union-attr]
            read = await client.read_resource("web+clock://epoch")
            assert read.contents[0].text == "1970-01-01T00:00:00Z"  # type: ignore[union-attr]
    assert admission.admitted == [
        ("handshake", "tools/call", "web__progress"),
        ("handshake", "prompts/get", "web__greet"),
        ("handshake", "resources/read", "web+clock://epoch"),
    ]
    assert [o[:2] for o in admission.outcomes] == [a[1:] for a in admission.admitted]


async def test_a_retried_call_is_admitted_once() -> None:
    # First call: the backend drops a kept-alive connection unanswered (retried on a new one);
    # second: the upstream session expired (initialized again, then retried).
    script = {1: ("close",), 2: ("ok", {"content": []}), 3: ("expired",)}
    for express in (True, False):
        admission = Counting()
        backend = Scripted(lambda n, msg: script.get(n, ("ok", {"content": [{"type": "text", "text": str(n)}]})))
        async with backend as url, gateway_for(url, express=express, admission=admission) as gw:
            client = McpHttp(gw.url)
            await client.open()
            first = await client.call(1)
            second = await client.call(2)
        assert first.status_code == 200 and "result" in json.loads(first.text), first.text
        assert second.status_code == 200 and "result" in json.loads(second.text), second.text
        assert backend.calls == 4  # each call reached the backend twice: one failure, one retry
        assert admission.admitted == [("handshake", "tools/call", "web__work")] * 2, express
        assert len(admission.outcomes) == 2


async def test_per_client_sessions_are_admitted_once(http_backend: Child) -> None:
    admission = Counting()
    async with gateway_for(http_backend.url, backend='session = "per-client"', admission=admission) as gw:
        async with Client(gw.url, mode="legacy") as one, Client(gw.url, mode="legacy") as two:
            await one.call_tool("web__echo", {"text": "1"})
            await two.call_tool("web__echo", {"text": "2"})
    assert admission.admitted == [("handshake", "tools/call", "web__echo")] * 2
    assert not any(gw.taken)  # per-client sessions take the general path


async def test_the_stateless_era_is_admitted_once(http_backend: Child) -> None:
    admission = Counting()
    async with gateway_for(http_backend.url, admission=admission) as gw:
        called = await stateless_post(gw.port, "tools/call", {"name": "web__echo", "arguments": {"text": "s"}}, "web__echo")
        read = await stateless_post(gw.port, "resources/read", {"uri": "web+clock://epoch"}, "web+clock://epoch")
    assert called.status_code == 200 and json.loads(called.text)["result"]["content"][0]["text"] == "s"
    assert read.status_code == 200, read.text
    assert admission.admitted == [
        ("stateless", "tools/call", "web__echo"),
        ("stateless", "resources/read", "web+clock://epoch"),
    ]


async def test_unknown_names_and_lists_are_never_admitted(http_backend: Child) -> None:
    admission = Counting()
    async with gateway_for(http_backend.url, admission=admission) as gw:
        client = McpHttp(gw.url)
        await client.open()
        unknown = await client.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "web__nope"}})
        listed = await client.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert json.loads(unknown.text)["error"]["code"] == -32602
    assert "web__echo" in listed.text
    assert admission.admitted == []


# -- refusals and local answers (attack, and the legitimate case) ------------------------------


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_a_refused_call_never_reaches_the_backend(express: bool) -> None:
    refusal = Forbidden("not for you", reason="test_refusal", http_status=403)
    admission = Counting(Verdict(error=refusal))
    backend = Scripted(lambda n, msg: ("ok", {"content": []}))
    async with backend as url, gateway_for(url, express=express, admission=admission) as gw:
        client = McpHttp(gw.url)
        await client.open()
        refused = await client.call(7)
        admission.verdict = None  # the legitimate case: the same call, admitted
        allowed = await client.call(8)
    assert refused.status_code == 403
    body = json.loads(refused.text)
    assert body["id"] == 7 and body["error"]["code"] == refusal.code
    assert body["error"]["data"]["gateway"]["reason"] == "test_refusal"
    assert allowed.status_code == 200 and json.loads(allowed.text)["id"] == 8
    assert backend.calls == 1  # only the admitted call reached it
    assert admission.outcomes == [("tools/call", "web__work", False), ("tools/call", "web__work", True)]


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_a_local_answer_is_sent_with_the_clients_id(express: bool) -> None:
    admission = Counting(Verdict(result=b'{"content":[{"type":"text","text":"from the gateway"}]}'))
    backend = Scripted(lambda n, msg: ("ok", {"content": []}))
    async with backend as url, gateway_for(url, express=express, admission=admission) as gw:
        client = McpHttp(gw.url)
        await client.open()
        answered = await client.call("abc")
    body = json.loads(answered.text)
    assert answered.status_code == 200 and body["id"] == "abc"
    assert body["result"]["content"][0]["text"] == "from the gateway"
    assert backend.calls == 0


async def test_admission_may_rewrite_the_arguments(http_backend: Child) -> None:
    class Inject(Counting):
        def admit(self, principal: Any, ctx: Any, method: str, name: str, route: Any, params: Any) -> Verdict | None:
            super().admit(principal, ctx, method, name, route, params)
            return Verdict(params={**params, "arguments": Raw(b'{"text":"injected"}')})

    admission = Inject()
    async with gateway_for(http_backend.url, admission=admission) as gw:
        async with Client(gw.url, mode="legacy") as client:
            result = await client.call_tool("web__echo", {"text": "original"})
    assert result.content[0].text == "injected"  # type: ignore[union-attr]
    assert len(admission.admitted) == 1
