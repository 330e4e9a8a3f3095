"""Demo backend over Streamable HTTP: clocks and arithmetic (official MCP SDK).

Started by ``mcp-gateway serve`` when no config is given::

    python -m gateway.demo.time_server --port 0

It binds 127.0.0.1, then prints one line ``listening on http://127.0.0.1:PORT/mcp``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import socket
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("demo-time")


@server.tool()
def now(zone_offset_hours: int = 0) -> str:
    """The current time, ISO 8601, at a UTC offset."""
    zone = datetime.timezone(datetime.timedelta(hours=zone_offset_hours))
    return datetime.datetime.now(zone).isoformat(timespec="seconds")


@server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@server.resource("time://epoch")
def epoch() -> str:
    """The Unix epoch."""
    return "1970-01-01T00:00:00Z"


@server.prompt()
def schedule(event: str) -> str:
    """Ask for a schedule."""
    return f"Plan a schedule for: {event}"


async def _serve(port: int) -> None:
    logging.getLogger("mcp").setLevel(logging.WARNING)  # keep the demo's terminal readable
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # connections queue from now on, so the printed URL works at once
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    await uv.serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    sys.exit(main())
