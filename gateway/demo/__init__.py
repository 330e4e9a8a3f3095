"""The bundled demo: what ``mcp-gateway serve`` runs when given no config.

Two backends started by the gateway itself: ``notes`` (an SDK server over
stdio) and ``time`` (an SDK server over Streamable HTTP, run as a child
process on a free port). Needs the SDK: ``pip install "mcp-gateway[demo]"``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys

from gateway.config import BackendConfig, Config, ServerConfig

__all__ = ["DemoUnavailable", "start_demo"]


class DemoUnavailable(Exception):
    """The demo cannot run here (the SDK is missing, or a demo server did not start)."""


async def start_demo(server: ServerConfig) -> tuple[Config, asyncio.subprocess.Process]:
    """Start the HTTP demo server and return the demo config plus that process (stop it at exit)."""
    if importlib.util.find_spec("mcp") is None:
        raise DemoUnavailable('the demo backends need the MCP SDK: pip install "mcp-gateway[demo]"')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.demo.time_server", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except asyncio.TimeoutError:
        line = b""
    if not line.startswith(b"listening on "):
        proc.kill()
        await proc.wait()
        raise DemoUnavailable("the demo HTTP server did not start")
    url = line.decode().split()[-1]
    backends = {
        "notes": BackendConfig(command=sys.executable, args=["-m", "gateway.demo.notes_server"]),
        "time": BackendConfig(url=url),
    }
    return Config(server=server, backends=backends), proc
