"""What the test's SDK servers share: serving an ``MCPServer`` on 127.0.0.1 (announcing the
address on stdout, as ``tests.support.Child`` waits for), and the ``add_tool`` tool that adds a
tool at run time and announces ``tools/list_changed``.

The servers run as scripts (``python tests/servers/NAME.py``), so they import this module by
its bare name: a script's own folder is on ``sys.path``.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context


async def serve(server: Any, port: int, certfile: str | None = None, keyfile: str | None = None) -> None:
    """Serve ``server``'s streamable HTTP app on ``port`` (0: a free one), HTTPS with ``certfile``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    config = uvicorn.Config(
        server.streamable_http_app(), log_level="warning", lifespan="on", ssl_certfile=certfile, ssl_keyfile=keyfile
    )
    scheme = "https" if certfile else "http"
    print(f"listening on {scheme}://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


def with_add_tool(server: Any) -> None:
    """Give ``server`` the ``add_tool`` tool: each call registers ``extra_N`` and announces the change."""
    added = [0]

    @server.tool()
    async def add_tool(ctx: Context) -> str:
        """Register one more tool and tell clients the list changed."""
        added[0] += 1
        name = f"extra_{added[0]}"

        def extra() -> str:
            return name

        server.add_tool(extra, name=name, description="Added at run time.")
        await ctx.request_context.session.send_tool_list_changed()
        return name
