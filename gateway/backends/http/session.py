"""An upstream MCP session of the HTTP backend: its ``Mcp-Session-Id``, the
negotiated version, and the request head lines that carry them.

A handshake-era session is made by ``initialize`` (one shared by every client,
or one per front session when ``per-client``); the stateless era has no
session, only a pseudo-session that sends the version header on every request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.protocol.versions import STATELESS_VERSION

__all__ = ["UpSession", "stateless_session"]


class UpSession:
    """One upstream MCP session (its id and negotiated version)."""

    __slots__ = ("session_id", "version", "lock", "ready", "capabilities", "principal", "_head", "_head_for")

    def __init__(self, capabilities: dict[str, Any] | None = None, principal: Any = None) -> None:
        self.session_id: str | None = None
        self.version: str | None = None
        self.lock = asyncio.Lock()
        self.ready = False
        # Declared in initialize: the client's own for a per-client session, else the gateway's.
        self.capabilities = capabilities
        # The caller whose call opened a per-client session: every request in it (initialize,
        # notifications, answers, DELETE) carries that caller's credential and identity headers.
        # None: the gateway's own session (shared, stateless), sent with the backend's own credential.
        self.principal = principal
        self._head = b""
        self._head_for: tuple[str | None, str | None] | None = None

    def head(self, prefix: bytes) -> bytes:
        """``prefix`` (the backend's constant POST head) plus this session's version and id
        headers, built once per (version, id)."""
        key = (self.version, self.session_id)
        if key != self._head_for:
            lines = [prefix]
            if self.version:
                lines.append(b"mcp-protocol-version: " + self.version.encode("latin-1") + b"\r\n")
            if self.session_id:
                lines.append(b"mcp-session-id: " + self.session_id.encode("latin-1") + b"\r\n")
            self._head, self._head_for = b"".join(lines), key
        return self._head

    def lines(self) -> bytes:
        """This session's version and id header lines alone (not cached: for requests whose
        constant head depends on the caller)."""
        out = b""
        if self.version:
            out += b"mcp-protocol-version: " + self.version.encode("latin-1") + b"\r\n"
        if self.session_id:
            out += b"mcp-session-id: " + self.session_id.encode("latin-1") + b"\r\n"
        return out

    def forget_head(self) -> None:
        """The backend's constant head changed (a new token): build ``head`` again next time."""
        self._head_for = None


def stateless_session() -> UpSession:
    """The pseudo-session of stateless-era requests: a version header, no session id."""
    session = UpSession()
    session.version = STATELESS_VERSION
    session.ready = True
    return session
