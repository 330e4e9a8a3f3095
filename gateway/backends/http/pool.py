"""The HTTP backend's pool of keep-alive connections, and the line of requests
waiting for one.

At most ``pool_size`` connections are open (or opening). A request takes an
idle one, or opens a new one while there is room, or waits in line; a freed
connection goes to the first in line before it goes back to the idle pool, so
a request arriving meanwhile cannot take it first and leave the waiter
starving. Two kinds wait in the same line, served in arrival order: the general
path's futures (``Pool.acquire``) and express calls (``QueuedCall``), which wait
with no task.

Every connection to the backend is opened here (``open_connection``: the pool's,
the notification stream's, an SSE resumption's); for an ``https://`` backend
each is TLS, verified against ``ca_file`` or the system trust store (or not at
all with ``tls_verify = false``), with the URL's host name checked and sent as SNI.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from gateway.backends.base import ExpressAnswer, MessageSink, Ticket
from gateway.backends.faults import not_sent
from gateway.backends.http.connection import Connection, ConnectionOwner
from gateway.errors import BackendUnavailable
from gateway.protocol.jsonrpc import Message, Raw
from gateway.tls import SHUTDOWN_TIMEOUT, client_context

if TYPE_CHECKING:
    from gateway.backends.http.session import UpSession
    from gateway.config import BackendConfig
    from gateway.timers import Deadlines

__all__ = ["Pool", "PoolOwner", "QueuedCall", "connect_problem", "expire"]


def expire(waiter: asyncio.Future[Any] | QueuedCall) -> None:
    """Deadline callback: a wait for a pool connection took too long."""
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


def connect_problem(exc: BaseException) -> str:
    """Why a connection could not be made, in one line: a certificate the backend's is not
    trusted for (``certificate verify failed: ...``), another TLS failure, or the socket's error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {(exc.verify_message or exc.reason or '').rstrip('.')}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return str(exc) or "connect timeout"


class PoolOwner(ConnectionOwner, Protocol):
    """What the pool and its queued express calls call on the backend that owns them."""

    shared: UpSession

    def connect_failed(self, exc: BaseException) -> None:
        """A new pool connection could not be made (``exc``: why)."""

    def express_send(
        self, conn: Connection, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer
    ) -> None:
        """Write an express call on ``conn`` (taken for it) and arm its request timeout."""

    def tell(self, on_answer: ExpressAnswer, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """Give an express call its outcome, whatever the caller's callback does."""


class Pool:
    """The backend's connections: ``idle`` ones (the last freed on top), ``all`` of them
    (each counted from the moment it starts connecting, so the limit holds) and the
    ``waiters`` in line for one. The backend reads ``idle`` and ``all`` directly on its
    fast paths; only the pool changes them."""

    def __init__(
        self,
        owner: PoolOwner,
        config: BackendConfig,
        host: str,
        port: int,
        deadlines: Deadlines,
        *,
        tls: bool = False,
        url: str = "",
    ) -> None:
        self.owner = owner
        self.config = config
        self.url = url  # as configured, for messages
        self.host = host
        self.port = port
        self.tls = tls  # an https:// backend: every connection is TLS
        # Made once, at the first connection (a ca_file that does not load: each connect says so).
        self.ssl: ssl.SSLContext | None = None
        self.deadlines = deadlines  # the backend's: pool waits and request timeouts on one tick
        self.idle: deque[Connection] = deque()
        self.all: set[Connection] = set()
        self.waiters: deque[asyncio.Future[Connection | None] | QueuedCall] = deque()
        # Set while the backend stops: a freed connection is closed, not kept.
        self.closing = False

    async def acquire(self) -> Connection:
        """An open connection for one request: idle, new, or the next freed one (waiting at
        most ``connect_timeout``; then ``busy()`` is raised)."""
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    conn.reused = True
                    return conn
            if len(self.all) < self.config.pool_size:
                return await self.connect()
            # Wait in line: a released connection is handed to the first waiter directly (see
            # release), so a request arriving meanwhile (the express lane takes idle connections
            # in a callback) cannot take it first and leave the waiter starving.
            waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            # A coarse deadline, not wait_for(): with more clients than pool connections, every
            # request waits here, and a task per wait would cost more than the request.
            self.deadlines.add(waiter, self.config.connect_timeout, expire, waiter)
            try:
                conn = await waiter  # type: ignore[assignment]
            except asyncio.TimeoutError:
                raise self.busy() from None
            except BaseException:
                # Cancelled after a connection was handed over: pass it on, or it is lost to the pool.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is not None:
                        self.release(handed)
                raise
            finally:
                self.deadlines.discard(waiter)
            if conn is not None and not conn.closed:
                conn.reused = True
                return conn
            # None: a connection closed and its slot is free (see forget): connect, or wait again.

    async def connect(self) -> Connection:
        """A new pool connection (raises ``BackendUnavailable`` if the backend cannot be reached)."""
        placeholder = Connection(self.owner, self)  # counted while connecting, so the pool limit holds
        self.all.add(placeholder)
        try:
            conn = await self.open_connection()
        except (OSError, asyncio.TimeoutError) as exc:
            self.owner.connect_failed(exc)
            raise not_sent(  # nothing reached the backend: safe to send anywhere again
                BackendUnavailable(
                    f"backend {self.owner.name!r} is unreachable: {connect_problem(exc)}", reason="backend_connection"
                )
            ) from None
        finally:
            self.all.discard(placeholder)
        self.all.add(conn)
        return conn

    async def open_connection(self) -> Connection:
        """A new connection to the backend, not counted in the pool (a stream of its own), over
        TLS for an https:// backend; raises ``OSError`` (``ssl.SSLError`` for a certificate that
        fails verification) or ``asyncio.TimeoutError`` after ``connect_timeout``."""
        loop = asyncio.get_running_loop()

        def factory() -> Connection:
            return Connection(self.owner, self)

        if not self.tls:
            connecting = loop.create_connection(factory, self.host, self.port)
        else:
            context = self.ssl if self.ssl is not None else self._tls_context()
            connecting = loop.create_connection(
                factory, self.host, self.port, ssl=context, server_hostname=self.host, ssl_shutdown_timeout=SHUTDOWN_TIMEOUT
            )
        _, conn = await asyncio.wait_for(connecting, self.config.connect_timeout)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        """The client TLS context of an https:// backend, made once (``OSError`` naming
        ``ca_file`` when it cannot be loaded; the next connect tries again)."""
        config = self.config
        try:
            self.ssl = client_context(config.ca_file, config.tls_verify)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot load ca_file {config.ca_file!r}: {getattr(exc, 'strerror', None) or exc}") from None
        return self.ssl

    def release(self, conn: Connection) -> None:
        """A connection is free: to the first waiter in line, else back to the idle pool."""
        if self.closing or conn not in self.all:
            conn.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def forget(self, conn: Connection) -> None:
        """A connection closed: it no longer counts, and its slot goes to the first waiter."""
        self.all.discard(conn)
        while self.waiters:  # a slot is free: let one waiter connect
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def busy(self) -> BackendUnavailable:
        """The error of a request that waited its whole ``connect_timeout`` for a pool connection."""
        return not_sent(BackendUnavailable(f"backend {self.owner.name!r}: all {self.config.pool_size} connections busy"))  # type: ignore[return-value]

    def close(self) -> None:
        """The backend stopped: close every connection and fail everyone still in line."""
        for conn in list(self.all):
            conn.close()
        self.idle.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(BackendUnavailable(f"backend {self.owner.name!r} stopped"))


class QueuedCall:
    """An express call waiting in line for a pool connection.

    It sits in ``Pool.waiters`` beside the general path's waiter futures and
    answers to the same three calls, so both kinds are served in arrival order:
    ``set_result(conn)`` sends it on the connection just freed,
    ``set_result(None)`` (a slot freed by a closed connection) hands it to the
    general path, which connects; ``set_exception`` (the pool wait timed out, or
    the backend stopped) is its answer.
    """

    __slots__ = ("pool", "method", "params", "ticket", "sink", "on_answer", "finished")

    def __init__(
        self, pool: Pool, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer
    ) -> None:
        self.pool = pool
        self.method = method
        self.params = params
        self.ticket = ticket
        self.sink = sink
        self.on_answer = on_answer
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, conn: Connection | None) -> None:
        self.finished = True
        pool = self.pool
        pool.deadlines.discard(self)
        if conn is None or conn.closed or not pool.owner.shared.ready:
            if conn is not None and not conn.closed:
                pool.release(conn)  # not ours to use after all: the next in line gets it
            self._tell(None, True)
            return
        conn.reused = True
        pool.owner.express_send(conn, self.method, self.params, self.ticket, self.sink, self.on_answer)

    def set_exception(self, exc: BaseException) -> None:
        self.finished = True
        pool = self.pool
        pool.deadlines.discard(self)
        self._tell(pool.busy() if isinstance(exc, asyncio.TimeoutError) else exc, False)

    def _tell(self, error: BaseException | None, retry: bool) -> None:
        self.pool.owner.tell(self.on_answer, None, error, retry)
