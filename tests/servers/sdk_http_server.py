"""Test backend: an official-SDK ``MCPServer`` over Streamable HTTP.

    python tests/servers/sdk_http_server.py --port 0

Prints ``listening on http://127.0.0.1:PORT/mcp`` once it accepts connections.
With ``--certfile FILE --keyfile FILE`` it serves HTTPS instead (and prints ``https://``).
Tools ``echo``, ``multiply``, ``progress`` (answers as SSE, progress first) and
``add_tool`` (adds a tool and announces ``tools/list_changed``); a static
resource, a resource template and a prompt.
"""

from __future__ import annotations

import argparse
import asyncio

from mcp.server.mcpserver import Context, MCPServer
from serving import serve, with_add_tool

server = MCPServer("sdk-http-test")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@server.tool()
async def progress(steps: int, ctx: Context) -> str:
    """Report ``steps`` progress notifications, then answer."""
    for step in range(steps):
        await ctx.report_progress(step + 1, steps, f"step {step + 1}")
        await asyncio.sleep(0.01)
    return f"done {steps}"


with_add_tool(server)


@server.resource("clock://epoch")
def epoch() -> str:
    """A static resource."""
    return "1970-01-01T00:00:00Z"


@server.resource("clock://tz/{zone}")
def zone(zone: str) -> str:
    """A templated resource."""
    return f"time zone {zone}"


@server.prompt()
def greet(name: str) -> str:
    """A prompt with one argument."""
    return f"Say hello to {name}."



if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certfile", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--keyfile", help="PEM private key of --certfile")
    args = parser.parse_args()
    asyncio.run(serve(server, args.port, args.certfile, args.keyfile))
