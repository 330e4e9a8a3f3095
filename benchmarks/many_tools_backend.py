"""A fast benchmark backend (httptools + msgspec, no SDK) that lists N tools and echoes calls.

    python -m benchmarks.many_tools_backend PORT [--tools 50]     # PORT 0: any free port

Like the floor backend (``benchmarks/floor_backend.py``), it skips sessions and
validation so that a benchmark measures the gateway, not the backend. Once it
listens it prints ``many_tools_backend listening on http://127.0.0.1:PORT/mcp``.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import msgspec
import uvloop

_decode = msgspec.json.decode
_encode = msgspec.json.encode


def _tools(count: int) -> dict[str, object]:
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    return {"tools": [{"name": f"tool_{i:03d}", "description": f"Benchmark tool {i}.", "inputSchema": schema} for i in range(count)]}


class _Protocol(asyncio.Protocol):
    tools: dict[str, object] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw, self.body = b"".join(self.body), []
        if self.parser.get_method() != b"POST" or not raw:
            self.transport.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            return
        request = _decode(raw)
        if "id" not in request:
            self.transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            return
        method = request.get("method")
        if method == "tools/list":
            result = self.tools
        elif method == "tools/call":
            text = (request.get("params") or {}).get("arguments", {}).get("text", "")
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        elif method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "bench", "version": "1"}}
        else:
            result = {}
        out = _encode({"jsonrpc": "2.0", "id": request["id"], "result": result})
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out))


def main() -> None:
    """Command line: ``python -m benchmarks.many_tools_backend PORT [--tools N]``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--tools", type=int, default=50)
    args = parser.parse_args()
    _Protocol.tools = _tools(args.tools)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(_Protocol, "127.0.0.1", args.port, backlog=4096))
    print(f"many_tools_backend listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
