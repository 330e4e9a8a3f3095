"""Front sessions of the handshake era (``Mcp-Session-Id``).

A session is created by ``initialize`` and lives until DELETE or until it has
been idle longer than ``session_idle_timeout``. It records what the client
negotiated (protocol version, capabilities) and holds the client's GET stream,
on which server notifications such as ``list_changed`` are sent.

The stateless era (2026-07-28) has no session: the front builds a
``RequestContext`` for every request from ``MCP-Protocol-Version`` and
``_meta``, with ``session=None``. Everything below the front (routing,
backends, policy) reads the context, never the session directly, so the two
eras share one request path.

With authentication a session belongs to the principal that created it: its
``owner`` is that principal's ``(issuer, subject)`` (``session_owner``), and
``SessionStore.get(session_id, principal)`` answers None, exactly as for an
unknown id, when another principal presents it. The identity, not the whole
principal, is what binds: a client whose refreshed token carries other scopes
keeps its session. Under ``--workers N`` the owner is inside the session id's
HMAC, so a worker adopting the session checks it too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.server.api import Reply

__all__ = ["RequestContext", "Session", "SessionStore", "session_owner"]


def session_owner(principal: Any) -> tuple[str, str] | None:
    """Whom a session made by ``principal`` belongs to: ``(issuer, subject)``, or None."""
    return None if principal is None else principal.owner


class Session:
    """One handshake-era client session."""

    __slots__ = (
        "id", "protocol_version", "client_capabilities", "client_info", "last_seen", "stream", "initialized",
        "inflight", "subscriptions", "log_level", "context", "owner",
    )

    def __init__(
        self,
        session_id: str,
        protocol_version: str,
        capabilities: dict[str, Any],
        client_info: Any,
        owner: tuple[str, str] | None = None,
    ) -> None:
        self.id = session_id
        # Whose session this is (``session_owner`` of the principal that created it; None
        # without authentication): nobody else gets it.
        self.owner = owner
        self.protocol_version = protocol_version
        self.client_capabilities = capabilities
        self.client_info = client_info
        self.last_seen = time.monotonic()
        # The client's GET stream (at most one): where notifications go.
        self.stream: Reply | None = None
        self.initialized = False
        # The client's request id -> the backend call serving it, so
        # notifications/cancelled can reach the right backend request.
        self.inflight: dict[Any, tuple[Any, Any]] = {}
        # Resource URIs (as the client sees them) this session subscribed to.
        self.subscriptions: set[str] = set()
        # Set by logging/setLevel: log notifications below it are not sent to this client.
        self.log_level: str | None = None
        # What every request of this session tells the layers below (one object per session,
        # not per request: nothing in it changes per request in the handshake era).
        self.context = RequestContext("handshake", protocol_version, self)

    def set_log_level(self, level: str) -> None:
        """``logging/setLevel``: this session's least severe log level from now on."""
        self.log_level = level
        self.context.log_level = level


class RequestContext:
    """What the layers below the front know about one request's client.

    ``session`` is None in the stateless era; ``session_key`` selects a
    per-client upstream session (the front session id, when there is one).
    """

    __slots__ = (
        "era", "protocol_version", "session", "session_key", "capabilities", "client_info", "headers", "log_level",
        "params", "meta", "principal", "client_ip", "trace",
    )

    def __init__(
        self,
        era: str,
        protocol_version: str,
        session: Session | None,
        capabilities: dict[str, Any] | None = None,
        client_info: Any = None,
        headers: dict[str, str] | None = None,
        log_level: str | None = None,
    ) -> None:
        self.era = era
        self.protocol_version = protocol_version
        self.session = session
        self.session_key = session.id if session is not None else None
        # What the client declared: from initialize (handshake) or _meta (stateless).
        if session is not None:
            capabilities, client_info = session.client_capabilities, session.client_info
            log_level = session.log_level
        # The least severe log level the client wants (None: all).
        self.log_level = log_level
        self.capabilities = capabilities or {}
        self.client_info = client_info
        # The request's headers (stateless era: Mcp-Param-* are checked against the body).
        self.headers = headers
        # Stateless era: the params (as {key: raw}) and _meta the envelope checks already
        # decoded, so routing does not decode them again. ``params`` is taken once.
        self.params: dict[str, Any] | None = None
        self.meta: dict[str, Any] | None = None
        # Who is calling, as the header gate said (None until authentication exists).
        self.principal: Any = None
        # The TCP peer's address, set per request like ``principal`` (None: stdio, or unknown).
        self.client_ip: str | None = None
        # The request's trace context and span (``gateway.ops.tracing.Span``, with ``trace_id``);
        # None when tracing is off or the method is not traced. Set on a context of its own
        # (``traced``), never on a session's shared one.
        self.trace: Any = None

    def traced(self, trace: Any) -> RequestContext:
        """This context for one traced request, carrying ``trace``: the context itself in the
        stateless era (made per request already), else a copy, because a session's context is
        shared by its concurrent requests and each has its own trace (the audit reads it)."""
        if self.era == "stateless":
            self.trace = trace
            return self
        copy = RequestContext.__new__(RequestContext)
        for name in RequestContext.__slots__:
            setattr(copy, name, getattr(self, name))
        copy.trace = trace
        return copy


class SessionStore:
    """Sessions by id, with idle expiry.

    Ids carry 128 random bits from ``secrets``, so they cannot be guessed.
    ``on_end`` is called for every session that ends (DELETE or expiry), so
    per-client upstream sessions can be released.

    With a ``secret`` (shared by the workers of ``--workers N``), an id also
    carries the negotiated version and an HMAC, so a worker that did not create
    a session still accepts it: a client's connections may land on any worker.
    A DELETE ends the session in the worker that receives it.
    """

    def __init__(
        self, idle_timeout: float, on_end: Callable[[Session], None] | None = None, secret: bytes | None = None
    ) -> None:
        self._secret = secret
        self._sessions: dict[str, Session] = {}
        self._idle_timeout = idle_timeout
        self._on_end = on_end
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._sessions.values()))

    def create(
        self, protocol_version: str, capabilities: dict[str, Any], client_info: Any, principal: Any = None
    ) -> Session:
        """Make and store a new session with a cryptographically random id, owned by ``principal``."""
        owner = session_owner(principal)
        session = Session(self._new_id(protocol_version, owner), protocol_version, capabilities, client_info, owner)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str, principal: Any = None) -> Session | None:
        """The live session with this id (touching its idle clock), or None; None also when it
        belongs to another principal than ``principal`` (as for an unknown id)."""
        session = self._sessions.get(session_id)
        if session is None and self._secret is not None:
            session = self._adopt(session_id, principal)
        if session is not None:
            owner = session.owner
            if owner is not None or principal is not None:  # bound: only its own principal finds it
                if principal is None or owner != principal.owner:
                    return None
            session.last_seen = time.monotonic()
        return session

    def _new_id(self, protocol_version: str, owner: tuple[str, str] | None = None) -> str:
        nonce = secrets.token_urlsafe(16)
        if self._secret is None:
            return nonce + secrets.token_urlsafe(8)
        body = f"{nonce}.{protocol_version}"
        return f"{body}.{self._sign(body, owner)}"

    def _sign(self, body: str, owner: tuple[str, str] | None = None) -> str:
        assert self._secret is not None
        signed = body.encode() if owner is None else msgspec.json.encode([body, *owner])
        digest = hmac.new(self._secret, signed, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def _adopt(self, session_id: str, principal: Any = None) -> Session | None:
        """A session another worker created: accepted if its signature holds for this principal."""
        body, _, signature = session_id.rpartition(".")
        owner = session_owner(principal)
        # Bytes, not str: compare_digest refuses non-ASCII strings, and an id is the client's input.
        if not body or not hmac.compare_digest(signature.encode(), self._sign(body, owner).encode()):
            return None
        version = body.partition(".")[2]
        session = Session(session_id, version, {}, None, owner)
        session.initialized = True
        self._sessions[session_id] = session
        return session

    def end(self, session_id: str) -> bool:
        """End a session (DELETE). Returns False if it did not exist."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._finish(session)
        return True

    def start_sweeper(self) -> None:
        """Start the background task that expires idle sessions."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweeper and end every session."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        for session_id in list(self._sessions):
            self.end(session_id)

    def expire_idle(self, now: float | None = None) -> int:
        """End sessions idle past the timeout (a session with an open GET stream is not idle)."""
        now = time.monotonic() if now is None else now
        stale = [
            s.id
            for s in self._sessions.values()
            if now - s.last_seen > self._idle_timeout and (s.stream is None or s.stream.closed)
        ]
        for session_id in stale:
            self.end(session_id)
        return len(stale)

    async def _sweep_forever(self) -> None:
        period = max(1.0, min(60.0, self._idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.expire_idle()

    def _finish(self, session: Session) -> None:
        stream, session.stream = session.stream, None
        if stream is not None and not stream.closed:
            stream.end()
        if self._on_end is not None:
            self._on_end(session)
