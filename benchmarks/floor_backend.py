"""The floor backend: the least an MCP server over HTTP can do, the benchmarks' reference backend.

Every benchmark target (direct, the floor proxy, the minimal hop, the gateway)
ends at this process, so it must cost as little as possible and the same for
all of them: it decodes each POSTed JSON-RPC message and answers with canned
JSON, and does nothing else (no session, no validation, no SSE)::

    initialize       -> the client's protocolVersion back, the tools capability
    tools/list       -> one tool, ``echo``
    tools/call       -> ``params.arguments.text`` back as one text content item
    other requests   -> an empty result
    notifications    -> 202, no body (so are client responses: no method)
    not JSON, or not one JSON-RPC object -> 400 with a JSON-RPC error
    no body (a GET, a DELETE) -> 405; bytes that are not HTTP -> 400 and the connection closed

Every connection is kept alive until the client closes it (the benchmark
clients never send ``Connection: close``; honouring it would cost each request
two more parser calls, about 3% of this server's instructions)::

    python -m benchmarks.floor_backend PORT      # 0: any free port

Once it listens it prints ``floor_backend listening on http://127.0.0.1:PORT/mcp``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httptools
import msgspec
import uvloop

__all__ = ["answer", "main", "serve"]

_decode = msgspec.json.decode
_encode = msgspec.json.encode
_ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
# Encoded once: the list never changes, so each tools/list only wraps it in an envelope.
_TOOLS = msgspec.Raw(_encode({"tools": [{"name": "echo", "description": "Echo text.", "inputSchema": _ECHO_SCHEMA}]}))
_EMPTY = msgspec.Raw(b"{}")
_JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_JSON_BAD_HEAD = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_ACCEPTED = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
_NOT_ALLOWED = b"HTTP/1.1 405 Method Not Allowed\r\nallow: POST\r\ncontent-length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def answer(body: bytes) -> bytes:
    """The whole HTTP response (head and body) to one request's body (empty: a GET or DELETE, refused)."""
    if not body:
        return _NOT_ALLOWED
    try:
        message = _decode(body)
    except msgspec.DecodeError:
        return _error({"code": -32700, "message": "Parse error"})
    # Subscripts inside try, not ``in`` tests before them: the common request pays for no check.
    try:
        method = message["method"]
        msg_id = message["id"]
    except KeyError:  # a notification (no id), or the client answering a request of ours (no method)
        return _ACCEPTED
    except TypeError:  # a batch or a bare value: nothing this server speaks
        return _error({"code": -32600, "message": "Invalid Request"})
    result: Any
    if method == "tools/call":
        try:
            text = message["params"]["arguments"]["text"]
        except (KeyError, TypeError):
            text = ""
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method == "tools/list":
        result = _TOOLS
    elif method == "initialize":
        # Echo the client's version: the server accepts whatever era the client speaks.
        params = message.get("params") or {}
        result = {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "floor", "version": "1"},
        }
    else:
        result = _EMPTY
    out = _encode({"jsonrpc": "2.0", "id": msg_id, "result": result})
    return _JSON_HEAD % len(out) + out


def _error(error: dict[str, Any]) -> bytes:
    out = _encode({"jsonrpc": "2.0", "id": None, "error": error})
    return _JSON_BAD_HEAD % len(out) + out


class _Connection(asyncio.Protocol):
    """One client connection; httptools calls back as a request's parts arrive."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.chunks: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_BAD)
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        # Most bodies arrive in one piece: skip the join then.
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        assert self.transport is not None
        self.transport.write(answer(body))


async def serve(port: int, host: str = "127.0.0.1") -> None:
    """Listen on ``host:port`` (0: any free port), print the ready line, then serve forever."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"floor_backend listening on http://{host}:{bound}/mcp", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.floor_backend PORT``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int, help="port to listen on (0: any free port)")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
