"""The least work an MCP-aware hop must do in this stack: a latency reference, not a gateway.

The floor proxy (``benchmarks/floor_proxy.py``) forwards bodies without
reading them. A gateway cannot: it must at least decode the JSON-RPC envelope
and the params, route the tool name, re-encode the params and the message with
an id of its own, and on the way back match the response and answer with the
client's id. This hop does exactly that, with the gateway's own parts
(``gateway._fast`` parsers, msgspec, the ``Message`` envelope), in plain
callbacks: no task, no future, no session, no check, no timeout, no
cancellation. What it adds over direct at concurrency 1 is the latency this
stack allows an MCP-aware hop on this machine (``python -m benchmarks.latency``).

It speaks just enough for ``benchmarks.loadgen --initialize``: initialize gets
a session header, notifications get 202, ``tools/call`` of ``NAMESPACE__TOOL``
goes upstream as ``TOOL``.

    python -m benchmarks.mcp_hop LISTEN_PORT UPSTREAM_PORT [--namespace floor]   # LISTEN_PORT 0: any free port

Once it listens it prints ``mcp_hop listening on http://127.0.0.1:PORT/mcp``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import msgspec
import uvloop
from msgspec import UNSET, Raw

from gateway._fast import parse_request, parse_response
from gateway.protocol.jsonrpc import Message

_decode = msgspec.json.Decoder(Message).decode
_decode_params = msgspec.json.Decoder(dict[str, Raw]).decode
_decode_name = msgspec.json.Decoder(str).decode
_encode = msgspec.json.Encoder().encode
_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
_OK_SESSION = b"HTTP/1.1 200 OK\r\nmcp-session-id: hop\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
_ACCEPTED = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
_UPSTREAM_HEAD = b"POST /mcp HTTP/1.1\r\nhost: upstream\r\ncontent-type: application/json\r\naccept: application/json\r\ncontent-length: %d\r\n\r\n%b"
_INIT_RESULT = Raw(b'{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"mcp-hop","version":"1"}}')


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the backend, serving one front request at a time."""

    def __init__(self, hop: _Hop) -> None:
        self.hop = hop
        self.front: _Front | None = None
        self.client_id: Any = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        data = self.buffer + data if self.buffer else data
        parsed = parse_response(data, 0, 100)
        if parsed is None:  # not whole yet
            self.buffer = data
            return
        self.buffer = b""
        body_start, end = parsed[3], parsed[4]
        answer = _decode(data[body_start:end])
        front, client_id, self.front = self.front, self.client_id, None
        self.hop.idle.append(self)
        if front is not None and front.transport is not None:
            field = {"result": answer.result} if answer.result is not UNSET else {"error": answer.error}
            body = _encode(Message(id=client_id, **field))
            front.transport.write(_OK % (len(body), body))


class _Front(asyncio.Protocol):
    """One client connection."""

    def __init__(self, hop: _Hop) -> None:
        self.hop = hop
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        data = self.buffer + data if self.buffer else data
        start = 0
        while start < len(data):
            parsed = parse_request(data, start, 8192, 100, 65536, 1 << 24)
            if parsed is None:
                break
            body_start, start = parsed[4], parsed[5]
            self._message(data[body_start:start])
        self.buffer = data[start:]

    def _message(self, body: bytes) -> None:
        assert self.transport is not None
        msg = _decode(body)
        if msg.id is UNSET:
            self.transport.write(_ACCEPTED)
            return
        if msg.method != "tools/call":
            out = _encode(Message(id=msg.id, result=_INIT_RESULT))
            self.transport.write(_OK_SESSION % (len(out), out))
            return
        params = _decode_params(msg.params)  # type: ignore[arg-type]
        name = _decode_name(params["name"])
        params["name"] = Raw(_encode(self.hop.routes.get(name, name)))
        self.hop.next_id += 1
        upstream = _encode(Message(id=self.hop.next_id, method=msg.method, params=Raw(_encode(params))))
        conn = self.hop.idle.pop()
        conn.front, conn.client_id = self, msg.id
        conn.transport.write(_UPSTREAM_HEAD % (len(upstream), upstream))


class _Hop:
    """What the connections share: the route table, the idle upstream connections, the id counter."""

    def __init__(self, namespace: str) -> None:
        self.routes = {f"{namespace}__echo": "echo"}
        self.idle: list[_Upstream] = []
        self.next_id = 0


async def serve(listen: int, upstream: int, namespace: str, connections: int = 300) -> None:
    """Open ``connections`` upstream keep-alive connections, then serve on ``listen`` (0: any free port) forever."""
    loop = asyncio.get_running_loop()
    hop = _Hop(namespace)
    for _ in range(connections):  # one per client connection in flight is enough; the load is bounded
        _, conn = await loop.create_connection(lambda: _Upstream(hop), "127.0.0.1", upstream)
        hop.idle.append(conn)
    server = await loop.create_server(lambda: _Front(hop), "127.0.0.1", listen, backlog=4096)
    print(f"mcp_hop listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.mcp_hop LISTEN_PORT UPSTREAM_PORT``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listen", type=int)
    parser.add_argument("upstream", type=int)
    parser.add_argument("--namespace", default="floor")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.listen, args.upstream, args.namespace))


if __name__ == "__main__":
    main()
