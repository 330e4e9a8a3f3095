"""Test backend: an official-SDK lowlevel ``Server`` over stdio that asks its client for roots.

    python tests/servers/roots_stdio_server.py

Like ``@modelcontextprotocol/server-filesystem``, it sends ``roots/list`` as soon as
the session is initialized, when the client declared the roots capability (in a
shared upstream session no client request is in flight then), and writes what it
got to stderr; ``tools/list`` is answered once that is settled. Tools:
``startup_roots`` returns that outcome (as JSON text), ``roots_now`` asks again
while the tool call is in flight.

An outcome is ``{"roots": [{"uri": ..., "name": ...}]}``, ``{"error": {"code": ...,
"message": ...}}`` when the client refused, or ``{"skipped": ...}`` when the client
did not declare the capability.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

warnings.simplefilter("ignore")  # list_roots is deprecated for the 2026-07-28 era; this server is handshake-era

startup: dict[str, Any] = {}
startup_known = anyio.Event()


async def ask(session: Any) -> dict[str, Any]:
    """``roots/list`` to the client, as an outcome dict."""
    try:
        result = await session.list_roots()
    except MCPError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    return {"roots": [root.model_dump(mode="json", exclude_none=True) for root in result.roots]}


async def on_initialized(ctx: Any, params: types.NotificationParams) -> None:
    if ctx.session.check_client_capability(types.ClientCapabilities(roots=types.RootsCapability())):
        startup.update(await ask(ctx.session))
    else:
        startup["skipped"] = "the client did not declare roots"
    print(f"roots at startup: {json.dumps(startup)}", file=sys.stderr, flush=True)
    startup_known.set()


_TOOLS = [
    types.Tool(name="startup_roots", description="What roots/list answered at startup.", input_schema={"type": "object"}),
    types.Tool(name="roots_now", description="Ask roots/list now, during this call.", input_schema={"type": "object"}),
]


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    # Not before the startup question is settled: a gateway that has built its catalog
    # (and printed its address) has then answered or refused it, so tests need no waiting.
    await startup_known.wait()
    return types.ListToolsResult(tools=_TOOLS)


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "startup_roots":
        await startup_known.wait()
        outcome = startup
    elif params.name == "roots_now":
        outcome = await ask(ctx.session)
    else:
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"no tool {params.name}")], is_error=True)
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(outcome))])


server = Server("roots-stdio-test", on_list_tools=list_tools, on_call_tool=call_tool)
server.add_notification_handler("notifications/initialized", types.NotificationParams, on_initialized)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
