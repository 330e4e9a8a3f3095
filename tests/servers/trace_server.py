"""Test backend: an official-SDK ``MCPServer`` that says what trace context each request brought.

    python tests/servers/trace_server.py --port 0     # Streamable HTTP
    python tests/servers/trace_server.py --stdio      # stdio

Over HTTP it prints ``listening on http://127.0.0.1:PORT/mcp`` once it accepts connections.
The tools ``seen`` and ``rendezvous`` (which waits for a second call with its ``tag``, so both
are in flight together), the prompt ``seen_prompt`` and the resource template
``trace://seen/{tag}`` answer with one JSON text, ``{"headers": {...}, "meta": {...}}``: the ``traceparent``,
``tracestate`` and ``baggage`` of the HTTP request that carried the call (None each over stdio) and of its
``params._meta``. The tool ``fails`` always fails (a result with ``isError``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("trace-test")

_KEYS = ("traceparent", "tracestate", "baggage")


def _seen(ctx: Context) -> str:
    """What this request carried, as JSON text."""
    headers = ctx.headers or {}
    meta: Any = ctx.request_context.meta or {}
    return json.dumps({
        "headers": {key: headers.get(key) for key in _KEYS},
        "meta": {key: meta.get(key) for key in _KEYS},
    })


@server.tool()
def seen(ctx: Context) -> str:
    """The trace context of this call."""
    return _seen(ctx)


_arrived: dict[str, int] = {}
_together: dict[str, asyncio.Event] = {}


@server.tool()
async def rendezvous(tag: str, ctx: Context) -> str:
    """Answer as ``seen``, once a second call with the same ``tag`` has arrived: the two are in
    flight at the same time (at most 10 s of waiting for the twin)."""
    together = _together.setdefault(tag, asyncio.Event())
    _arrived[tag] = _arrived.get(tag, 0) + 1
    if _arrived[tag] >= 2:
        together.set()
    await asyncio.wait_for(together.wait(), 10)
    return _seen(ctx)


@server.tool()
def fails() -> str:
    """A tool whose result is an error (``isError``)."""
    raise ValueError("this tool always fails")


@server.prompt()
def seen_prompt(ctx: Context) -> str:
    """The trace context of this prompts/get."""
    return _seen(ctx)


@server.resource("trace://seen/{tag}")
def seen_resource(tag: str, ctx: Context) -> str:
    """The trace context of this resources/read."""
    return _seen(ctx)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stdio", action="store_true", help="serve over stdin/stdout instead of HTTP")
    args = parser.parse_args()
    if args.stdio:
        server.run("stdio")
    else:
        from serving import serve

        asyncio.run(serve(server, args.port))
