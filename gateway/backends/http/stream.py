"""Server notifications that belong to no request (``list_changed``): a stream
held open on a connection of its own.

In the handshake era it is the session's GET stream; a backend that speaks
only the stateless era sends its change notices on a ``subscriptions/listen``
POST instead. Either is reopened with backoff while the backend is READY, and
given up when the backend says it has none (405, 404, 400). Its events reach
the backend like any response stream's (``ConnectionOwner.stream_message``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from gateway.backends.base import BackendState
from gateway.backends.http.connection import Exchange
from gateway.errors import BackendUnavailable
from gateway.protocol.initialize import with_envelope
from gateway.protocol.jsonrpc import Message, Raw, encode
from gateway.protocol.versions import STATELESS_VERSION

if TYPE_CHECKING:
    from gateway.backends.http.connection import Connection
    from gateway.backends.http.pool import Pool
    from gateway.backends.http.session import UpSession

__all__ = ["BACKOFF_MAX", "NotificationStream", "StreamOwner", "get_request"]

# The longest wait between two attempts to reach a backend (the stream's, and the backend's recovery).
BACKOFF_MAX = 30.0


def get_request(path: str, head: bytes, session: UpSession, last_event_id: str | None = None) -> bytes:
    """A GET for a session's SSE stream (resuming after ``last_event_id`` when given);
    ``head`` is the backend's constant header lines."""
    request = b"GET " + path.encode("latin-1") + b" HTTP/1.1\r\n" + head.replace(
        b"accept: application/json, text/event-stream", b"accept: text/event-stream"
    )
    if session.version:
        request += b"mcp-protocol-version: " + session.version.encode("latin-1") + b"\r\n"
    if session.session_id:
        request += b"mcp-session-id: " + session.session_id.encode("latin-1") + b"\r\n"
    if last_event_id is not None:
        request += b"last-event-id: " + last_event_id.encode("latin-1") + b"\r\n"
    return request + b"\r\n"


class StreamOwner(Protocol):
    """What the stream reads of the backend it listens for."""

    state: BackendState
    eras: frozenset[str]
    stopping: bool


class NotificationStream:
    """The one notification stream of a backend: ``open()`` starts holding it (``task``),
    ``conn`` is its connection while one is open."""

    def __init__(self, owner: StreamOwner, pool: Pool, session: UpSession, path: str, head: bytes) -> None:
        self.owner = owner
        self.pool = pool
        self.session = session  # the shared session, whose stream this is
        self.path = path
        self.head = head
        self.task: asyncio.Task[None] | None = None
        self.conn: Connection | None = None

    def open(self) -> None:
        """Hold the stream open (in a task), unless it is held already."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._hold())

    def close(self) -> None:
        """Close the stream's connection, if one is open (the backend cancels ``task``)."""
        if self.conn is not None:
            self.conn.close()

    async def _hold(self) -> None:
        """Keep the stream open for server notifications; reconnect with backoff while READY."""
        delay = 0.5
        owner = self.owner
        while not owner.stopping and owner.state is BackendState.READY:
            status = await self._once()
            if status in (405, 404, 400):
                if status == 404:  # our session expired: the next request re-initializes it
                    self.session.ready = False
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _once(self) -> int:
        session = self.session
        try:
            conn = await self.pool.open_connection()
        except (OSError, asyncio.TimeoutError):
            return 0
        self.conn = conn
        exchange = Exchange(None, None)
        if "handshake" in self.owner.eras:
            head = get_request(self.path, self.head, session)
        else:
            head = self._listen_request()
            exchange.upstream_id = "listen"  # its end (a result) is not a failure
        conn.send(exchange, head)
        try:
            await exchange.future  # type: ignore[misc]
        except (ConnectionError, BackendUnavailable):
            pass
        finally:
            conn.close()
            self.conn = None
        return exchange.status

    def _listen_request(self) -> bytes:
        """A stateless backend's change notices come on a ``subscriptions/listen`` stream."""
        wanted = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
        params = with_envelope(Raw(encode({"notifications": wanted})))
        body = encode(Message(id="listen", method="subscriptions/listen", params=params))
        return (
            b"POST " + self.path.encode("latin-1") + b" HTTP/1.1\r\n" + self.head
            + b"mcp-protocol-version: " + STATELESS_VERSION.encode("latin-1") + b"\r\n"
            + b"mcp-method: subscriptions/listen\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
