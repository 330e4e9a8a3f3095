"""Test backend for the resilience and replica tests: an official-SDK ``MCPServer``
over Streamable HTTP that says who it is and counts what reached it.

    python tests/servers/resilience_server.py --port 0 --label a

Prints ``listening on http://127.0.0.1:PORT/mcp`` once it accepts connections.
Tools:

- ``whoami`` (``readOnlyHint``): ``{"label": ..., "session": <the Mcp-Session-Id it was called in>}``;
- ``write`` (no annotations: not safe to repeat): ``{"label": ...}``;
- ``slow(seconds)``: sleeps, and notes its request id if it is cancelled meanwhile;
- ``ask(prompt)``: asks the client's model (``sampling/createMessage``), answers ``LABEL: <reply>``;
- ``stats``: ``{"calls": {tool: count}, "cancelled": [request ids], "label": ...}`` (not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent, ToolAnnotations
from serving import serve

server = MCPServer("resilience-test")
label = "?"
calls: collections.Counter[str] = collections.Counter()
cancelled: list[str] = []


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def whoami(ctx: Context) -> str:
    """Who answers, and in which upstream session."""
    calls["whoami"] += 1
    headers = ctx.headers or {}
    return json.dumps({"label": label, "session": headers.get("mcp-session-id")})


@server.tool()
def write() -> str:
    """A call with effects (as far as the gateway knows: no annotations)."""
    calls["write"] += 1
    return json.dumps({"label": label})


@server.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Sleep ``seconds``; a cancel meanwhile is noted."""
    calls["slow"] += 1
    try:
        await asyncio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        cancelled.append(str(ctx.request_id))
        raise
    return "slept"


@server.tool()
async def ask(prompt: str, ctx: Context) -> str:
    """Ask the client's model, and say who asked."""
    calls["ask"] += 1
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=10,
        related_request_id=ctx.request_id,
    )
    text = result.content.text if result.content.type == "text" else "?"
    return f"{label}: {text}"


@server.tool()
def stats() -> str:
    """What reached this server so far."""
    return json.dumps({"calls": dict(calls), "cancelled": cancelled, "label": label})



if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--label", default="?")
    args = parser.parse_args()
    label = args.label
    asyncio.run(serve(server, args.port))
