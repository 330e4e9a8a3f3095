"""Test backend: an official-SDK ``MCPServer`` over stdio.

    python tests/servers/sdk_stdio_server.py

Tools ``echo``, ``add``, ``slow`` (sleeps, reporting progress), ``crash`` (the
process dies, as a broken backend would) and ``log_stderr``; a static resource,
a resource template and a prompt. It writes one line to stderr at startup.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("sdk-stdio-test", instructions="Test backend over stdio.")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Sleep, reporting progress twice."""
    await ctx.report_progress(0, 2)
    try:
        await asyncio.sleep(seconds / 2)
        await ctx.report_progress(1, 2)
        await asyncio.sleep(seconds / 2)
    except asyncio.CancelledError:
        # Seen on stderr (the gateway logs it): proves a client's cancel reached us.
        print(f"slow({seconds}) cancelled", file=sys.stderr, flush=True)
        raise
    return f"slept {seconds}"


@server.tool()
def crash() -> str:
    """Exit the process at once (a backend dying mid-request)."""
    os._exit(3)


@server.tool()
def log_stderr(text: str) -> str:
    """Write a line to stderr."""
    print(text, file=sys.stderr, flush=True)
    return "logged"


@server.resource("notes://readme")
def readme() -> str:
    """A static text resource."""
    return "This is the readme of the stdio test backend."


@server.resource("notes://note/{name}")
def note(name: str) -> str:
    """A templated resource."""
    return f"note called {name}"


@server.prompt()
def summarize(topic: str) -> str:
    """A prompt with one argument."""
    return f"Please summarize {topic}."


if __name__ == "__main__":
    print("sdk stdio test server starting", file=sys.stderr, flush=True)
    server.run("stdio")
