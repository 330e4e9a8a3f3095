"""mcp-gateway: one MCP endpoint in front of many MCP servers."""

__version__ = "0.1.0"

# First, before any module of the request path: with GATEWAY_NO_EXTENSIONS=1 it makes
# the pure-mode modules (gateway._fast.pure_mode) load from their sources.
import gateway._fast  # noqa: E402,F401
