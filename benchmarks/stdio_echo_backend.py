"""The stdio twin of the floor backend: an MCP server on stdin/stdout that does as little as one can.

One JSON-RPC message per line. It answers ``initialize``, ``tools/list`` (one
tool, ``echo``) and ``tools/call`` of ``echo`` (the text back), ignores
notifications, and answers anything else with an empty result. Used by the
``stdio`` benchmark scenario so that the numbers measure the gateway's stdio
transport, not a server framework::

    python -m benchmarks.stdio_echo_backend
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

_decode = msgspec.json.decode
_encode = msgspec.json.encode
_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
_TOOLS = {"tools": [{"name": "echo", "description": "Echo text.", "inputSchema": _SCHEMA}]}


def answer(request: dict) -> bytes | None:
    """The response line for one message (None for a notification)."""
    if "id" not in request or "method" not in request:
        return None
    method = request["method"]
    params = request.get("params") or {}
    if method == "tools/call":
        text = (params.get("arguments") or {}).get("text", "")
        result: dict = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method == "tools/list":
        result = _TOOLS
    elif method == "initialize":
        result = {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "stdio-echo", "version": "1"},
        }
    else:
        result = {}
    return _encode({"jsonrpc": "2.0", "id": request["id"], "result": result}) + b"\n"


async def serve() -> None:
    """Read lines from stdin, write answers to stdout, until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    while line := await reader.readline():
        out = answer(_decode(line))
        if out is not None:
            transport.write(out)


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve())


if __name__ == "__main__":
    main()
