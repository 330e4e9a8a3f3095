"""The gateway's configuration: TOML (or a Claude/Cursor ``mcp.json``) decoded
into frozen msgspec Structs.

Every option has a docstring here; an unknown or mistyped key is an error that
names the key and its line. ``${VAR}`` in any string is replaced by the
environment variable VAR (``${VAR:-default}`` gives a default); a missing
variable without a default is an error.

Example::

    [server]
    port = 8080

    [backends.docs]
    url = "http://127.0.0.1:9000/mcp"
    bearer_token = "${DOCS_TOKEN}"

    [backends.files]
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]
    session = "per-client"
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["BackendConfig", "Config", "ConfigError", "GatewayConfig", "ServerConfig"]


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key and line."""


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[server]``: the listener and its limits."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8080
    """TCP port; 0 picks a free one (the chosen address is printed at startup)."""
    path: str = "/mcp"
    """The MCP endpoint's path."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted; larger gets 413."""
    max_header_bytes: int = 16 * 1024
    """Largest header section (request line + headers); larger gets 431."""
    max_headers: int = 100
    """Most header lines in one request; more gets 431."""
    max_url_bytes: int = 8 * 1024
    """Longest request target; longer gets 414."""
    header_timeout: float = 10.0
    """Seconds a client may take to send a request's headers (then 408 and close)."""
    idle_timeout: float = 75.0
    """Seconds an idle keep-alive connection is kept open."""
    shutdown_timeout: float = 10.0
    """On SIGTERM/SIGINT, seconds requests in flight get to finish."""
    allowed_origins: list[str] = []
    """Origins allowed besides localhost ones (DNS-rebinding protection). ``"*"`` allows any."""
    allowed_hosts: list[str] = []
    """Host header values allowed besides localhost ones and the bind address. ``"*"`` allows any."""
    session_idle_timeout: float = 3600.0
    """Seconds after which an unused front session expires (then 404)."""
    sse_keepalive: float = 15.0
    """Seconds between SSE keep-alive comments on idle GET streams."""


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[gateway]``: aggregation and routing."""

    separator: str = "__"
    """Between namespace and name: ``docs__search``."""
    passthrough: bool = False
    """Mount the single backend with no prefix (requires exactly one backend)."""
    page_size: int = 100
    """Items per page of the aggregated lists."""
    request_timeout: float = 60.0
    """Default seconds a backend gets to answer a request."""
    list_timeout: float = 5.0
    """Seconds a backend gets to answer a list request while building the catalog."""


class BackendConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[backends.NAME]``: one MCP server. Give ``url`` (HTTP) or ``command`` (stdio)."""

    url: str | None = None
    """Streamable HTTP endpoint of the server."""
    headers: dict[str, str] = {}
    """Static headers sent to an HTTP backend (never the client's credentials)."""
    bearer_token: str | None = None
    """Sent as ``Authorization: Bearer ...`` to an HTTP backend."""
    command: str | None = None
    """Program to spawn for a stdio backend."""
    args: list[str] = []
    """Its arguments."""
    env: dict[str, str] = {}
    """Extra environment variables for the process."""
    cwd: str | None = None
    """Working directory for the process."""
    namespace: str | None = None
    """Prefix for this backend's names; defaults to the backend's name."""
    session: Literal["shared", "per-client"] = "shared"
    """``shared``: one upstream session for all clients. ``per-client``: one per front session."""
    connect_timeout: float = 10.0
    """Seconds to connect (HTTP) or to start and initialize (stdio)."""
    request_timeout: float | None = None
    """Seconds a request may take; defaults to ``[gateway] request_timeout``."""
    pool_size: int = 64
    """Most keep-alive connections to an HTTP backend."""
    restart_initial_delay: float = 0.5
    """First delay before restarting a dead stdio process (doubles each time)."""
    restart_max_delay: float = 30.0
    """Longest delay between restarts."""
    enabled: bool = True
    """Set false to keep a backend in the file but not run it."""

    @property
    def transport(self) -> Literal["http", "stdio"]:
        """``http`` when ``url`` is set, else ``stdio``."""
        return "http" if self.url else "stdio"


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole file."""

    server: ServerConfig = ServerConfig()
    """The listener."""
    gateway: GatewayConfig = GatewayConfig()
    """Aggregation and routing."""
    backends: dict[str, BackendConfig] = {}
    """The MCP servers behind the gateway, by name."""
