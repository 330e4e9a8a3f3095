"""The express lane and the general path give the same answer to any request.

Two gateways run in one background event loop, one with ``[gateway] express``
on and one with it off, in front of one scripted HTTP backend that echoes the
params it was sent. Hypothesis builds requests around the lane's edges (the
session header, the version header, media types, Host, the JSON-RPC envelope,
the tool name, ``_meta``) and each is sent over a real socket to both: status,
content type and body must match. So the lane either answers exactly as the
general path would or leaves the request to it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.config import load_config_text
from gateway.server.listener import Server
from tests.support import post, raw_exchange


class _Echo(asyncio.Protocol):
    """A keep-alive MCP backend: initialize gets a session; tools/call echoes its params, or errors for ``fail``."""

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), 0)
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            self._answer(lines[0], json.loads(body) if body else None)

    def _answer(self, line: str, msg: Any) -> None:
        extra, payload, status = "", b"", 200
        if not line.startswith("POST"):
            status = 405 if line.startswith("GET") else 200
        elif "id" not in msg:
            status = 202
        elif msg["method"] == "server/discover":
            status = 400
            payload = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32600, "message": "no session"}}).encode()
        elif msg["method"] == "initialize":
            extra = "mcp-session-id: up\r\n"
            info = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "echo", "version": "1"}}
            payload = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": info}).encode()
        elif msg["method"] == "tools/list":
            tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("work", "fail")]
            payload = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": tools}}).encode()
        elif msg.get("params", {}).get("name") == "fail":
            payload = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32000, "message": "failed"}}).encode()
        else:
            payload = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"params": msg.get("params")}}).encode()
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n{extra}\r\n"
        self.transport.write(head.encode() + payload)


class _Pair:
    """The two gateways (express on, off) and a session on each."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ports: dict[bool, int] = {}
        self.sessions: dict[bool, str] = {}
        self.taken: list[bool] = []  # each verdict of the express gateway's lane
        self._stops: list[Any] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the gateways did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        backend = await self.loop.create_server(_Echo, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{backend.sockets[0].getsockname()[1]}/mcp"
        for express in (True, False):
            text = f'[server]\nport = 0\n[gateway]\nexpress = {str(express).lower()}\n[backends.web]\nurl = "{url}"\n'
            config = load_config_text(text, fmt="toml")
            gateway = Gateway(config)
            await gateway.start()
            lane = gateway.front.express
            if lane is not None:

                def counting(request: Any, reply: Any, lane: Any = lane) -> bool:
                    verdict = lane(request, reply)
                    self.taken.append(verdict)
                    return verdict

                gateway.front.express = counting  # type: ignore[assignment]
            server = Server(gateway.front, config.server)
            _, self.ports[express] = await server.start()
            self._stops.append((server, gateway))
        self._stops.append(backend)

    def open_sessions(self) -> None:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        body = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}).encode()
        for express, port in self.ports.items():
            self.sessions[express] = raw_exchange(port, post("/mcp", body, port=port)).headers["mcp-session-id"]

    def stop(self) -> None:
        async def stop_all() -> None:
            for item in self._stops:
                if isinstance(item, tuple):
                    await item[0].shutdown()
                    await item[1].stop()
                else:
                    item.close()

        asyncio.run_coroutine_threadsafe(stop_all(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def pair() -> Iterator[_Pair]:
    gateways = _Pair()
    gateways.open_sessions()
    yield gateways
    gateways.stop()


_ids = st.one_of(st.integers(-5, 10**6), st.text(max_size=8), st.none(), st.just(1.5), st.booleans())
_names = st.sampled_from(["web__work", "web__fail", "web__nope", "work", 7, None, ["web__work"]])
_metas = st.sampled_from([{"progressToken": 3}, {"progressToken": "p"}, {"k": "v"}, {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}])
_arguments = st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))


@st.composite
def _bodies(draw: st.DrawFn, odd: bool, meta: bool) -> bytes:
    """A plain tools/call (its id, name and arguments drawn from what the lane accepts; with ``meta``,
    a ``_meta`` too), or, when ``odd``, anything from malformed JSON to odd envelopes, methods, params
    and names."""
    if not odd:
        params = {"name": draw(st.sampled_from(["web__work", "web__fail"])), "arguments": draw(_arguments) or {}}
        if meta:
            params["_meta"] = draw(_metas)
        request_id = draw(st.one_of(st.integers(0, 10**6), st.text(min_size=1, max_size=8)))
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([b"", b"{", b"[]", b"[{}]", b"null", b'"x"', b"{}"]))
    msg: dict[str, Any] = {"jsonrpc": draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0"]))}
    if draw(st.integers(0, 9)):
        msg["id"] = draw(_ids)
    msg["method"] = draw(st.sampled_from(["tools/call"] * 6 + ["tools/list", "ping", "prompts/get", "nope"]))
    if draw(st.integers(0, 9)):
        params: dict[str, Any] = {}
        name = draw(_names)
        if name is not None:
            params["name"] = name
        arguments = draw(_arguments)
        if arguments is not None:
            params["arguments"] = arguments
        if draw(st.integers(0, 3)) == 0:
            params["_meta"] = draw(_metas)
        msg["params"] = params if draw(st.integers(0, 12)) else draw(st.sampled_from([[], "x", 3]))
    return json.dumps(msg).encode()


# What each request field is when plain (what the lane takes), and what else it may be.
_PLAIN = {
    "session": "valid", "version": None, "content_type": "application/json",
    "accept": "application/json, text/event-stream", "host": "local",
}
_ODD = {
    "session": st.sampled_from(["missing", "unknown"]),
    "version": st.sampled_from(["2025-11-25", "2025-03-26", "2026-07-28", "1999-01-01"]),
    "content_type": st.sampled_from(["text/plain", "application/json; charset=utf-8"]),
    "accept": st.sampled_from(["application/json", "*/*", "text/event-stream"]),
    "host": st.just("evil.example"),
}


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly requests that differ from a plain call in at most one or two places."""
    odd = draw(st.sets(st.sampled_from([*_ODD, "body", "meta"]), max_size=2))
    request = {key: draw(_ODD[key]) if key in odd else value for key, value in _PLAIN.items()}
    request["body"] = draw(_bodies("body" in odd, "meta" in odd))
    return request


def _send(pair: _Pair, express: bool, request: dict[str, Any]) -> tuple[int, str | None, Any]:
    port = pair.ports[express]
    session = {"valid": pair.sessions[express], "missing": None, "unknown": "no-such-session"}[request["session"]]
    headers = {
        "mcp-session-id": session,
        "mcp-protocol-version": request["version"],
        "content-type": request["content_type"],
        "accept": request["accept"],
        "host": f"127.0.0.1:{port}" if request["host"] == "local" else request["host"],
    }
    answer = raw_exchange(port, post("/mcp", request["body"], headers, port=port))
    body = answer.json() if answer.body else None
    return answer.status, answer.headers.get("content-type"), body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=_requests())
def test_the_express_lane_answers_like_the_general_path(pair: _Pair, request: dict[str, Any]) -> None:
    assert _send(pair, True, request) == _send(pair, False, request)


def test_the_generated_requests_went_through_the_lane_too(pair: _Pair) -> None:
    """Runs after the property above: it proved something only if the lane took a good share of them."""
    assert pair.taken.count(True) >= 20, pair.taken.count(True)
    assert pair.taken.count(False) >= 20
