"""The MCP protocol versions the gateway speaks, and which era each belongs to."""

from __future__ import annotations

__all__ = [
    "BATCH_VERSIONS",
    "HANDSHAKE_VERSIONS",
    "LATEST_HANDSHAKE",
    "STATELESS_VERSION",
    "STATELESS_VERSIONS",
    "SUPPORTED_VERSIONS",
]

# Streamable HTTP exists from 2025-03-26 on; older clients used HTTP+SSE, which
# the gateway does not serve.
HANDSHAKE_VERSIONS: tuple[str, ...] = ("2025-03-26", "2025-06-18", "2025-11-25")
"""Handshake-era versions negotiated by ``initialize`` (oldest first)."""

LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]
"""Offered when a client asks for a version the gateway does not know."""

SUPPORTED_VERSIONS: frozenset[str] = frozenset(HANDSHAKE_VERSIONS)
"""Every value accepted in ``MCP-Protocol-Version``."""

BATCH_VERSIONS: frozenset[str] = frozenset({"2025-03-26"})
"""Versions whose clients may send JSON-RPC batches (removed in 2025-06-18)."""

STATELESS_VERSIONS: tuple[str, ...] = ("2026-07-28",)
"""Stateless-era versions: no handshake, ``_meta`` on every request."""

STATELESS_VERSION = STATELESS_VERSIONS[-1]
"""The stateless version the gateway speaks to backends that support it."""
