"""A Streamable HTTP backend: a keep-alive connection pool on the running loop,
responses parsed by httptools, JSON or SSE.

Every request is one POST. A JSON answer is decoded as one message; an SSE
answer is parsed as it arrives: messages before the response (progress, log
lines, server-to-client requests) go to the caller's sink at once, and the
response to our id ends the request. The backend's ``Mcp-Session-Id`` is kept
(one upstream session when ``shared``, one per front session when
``per-client``); a 404 on a request that carried it means the session expired,
so the gateway initializes again and retries once. Server notifications that
belong to no request (``list_changed``) arrive on a GET stream held open on a
connection of its own.

Static headers and the bearer token come from the config; nothing from the
gateway's clients is forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools
import msgspec

from gateway import __version__
from gateway._fast import USING_EXTENSIONS, keep_alive, parse_response
from gateway.backends.base import (
    Backend,
    BackendState,
    ExpressAnswer,
    MessageSink,
    RequestCancelled,
    Ticket,
)
from gateway.config import BackendConfig
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.protocol.initialize import initialize_params, with_envelope
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, encode
from gateway.protocol.versions import STATELESS_VERSION, STATELESS_VERSIONS
from gateway.protocol.sse import SseParser
from gateway.protocol.stateless import NAME_PARAM, encode_header_value
from gateway.timers import Deadlines

__all__ = ["HttpBackend"]

_decode = msgspec.json.Decoder(Message).decode
_BACKOFF_MAX = 30.0
_MAX_RESPONSE_HEADERS = 256
# A whole JSON response in one read is parsed in one call (compiled only: the
# pure-Python twin is slower than httptools); everything else goes to httptools.
_FAST_PARSE = USING_EXTENSIONS
# Read once: on 3.11 an Enum member looked up on its class goes through EnumType.__getattr__.
_READY = BackendState.READY


def _expire(waiter: asyncio.Future[Any]) -> None:
    """Deadline callback: a wait for a pool connection took too long."""
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


class _SessionExpired(Exception):
    """The backend answered 404 to a request carrying our session id."""


class _Exchange:
    """One request/response on a connection.

    The general path awaits ``future``. An express call (``HttpBackend.express``)
    has no future: ``on_answer`` is called instead, from the connection's own
    callback, so the answer reaches the client without a task switch.
    """

    __slots__ = (
        "future", "upstream_id", "sink", "status", "headers", "body", "sse", "got_bytes", "answered", "session",
        "resumes", "last_id", "retry", "on_answer", "conn", "ticket", "limit", "finished",
    )

    def __init__(self, upstream_id: Any, sink: MessageSink | None, on_answer: ExpressAnswer | None = None) -> None:
        self.future: asyncio.Future[tuple[Message | None, dict[str, str]]] | None = (
            None if on_answer is not None else asyncio.get_running_loop().create_future()
        )
        self.upstream_id = upstream_id
        self.sink = sink
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.sse: SseParser | None = None
        self.got_bytes = False
        self.answered = False
        self.session: _UpSession | None = None
        # SSE resumption (the backend may close a response stream and expect a GET
        # with Last-Event-ID): attempts so far, the last event id, the retry hint.
        self.resumes = 0
        self.last_id: str | None = None
        self.retry: int | None = None
        # Express calls only: who gets the answer, and what _express_done needs to finish.
        self.on_answer = on_answer
        self.conn: _Conn | None = None
        self.ticket: Ticket | None = None
        self.limit = 0.0
        self.finished = False

    def done(self) -> bool:
        """True once the exchange has its outcome (or its waiter is gone)."""
        return self.finished if self.future is None else self.future.done()

    def resolve(self, msg: Message | None) -> None:
        if self.future is None:
            self._express_end(msg, None)
        elif not self.future.done():
            self.future.set_result((msg, self.headers))

    def fail(self, exc: BaseException) -> None:
        if self.future is None:
            self._express_end(None, exc)
        elif not self.future.done():
            self.future.set_exception(exc)

    def _express_end(self, msg: Message | None, exc: BaseException | None) -> None:
        if not self.finished:
            self.finished = True
            self.conn.backend._express_done(self, msg, exc)  # type: ignore[union-attr]

    def time_out(self, _: Any = None) -> None:
        """Deadline callback: the backend took longer than the request's limit."""
        self.fail(asyncio.TimeoutError())


class _Conn(asyncio.Protocol):
    """One keep-alive connection to the backend."""

    def __init__(self, backend: HttpBackend, stream_handler: Any = None) -> None:
        self.backend = backend
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.reused = False
        self.closed = False
        self.in_message = False  # httptools is part way through a response

    # protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.got_bytes = True
            if _FAST_PARSE and not self.in_message:
                if exchange.on_answer is not None and self._express_answer(exchange, data):
                    return
                if self._whole_response(exchange, data):
                    return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._abort(BackendUnavailable(f"backend {self.backend.name!r} sent malformed HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.parser = None  # type: ignore[assignment]  # it refers back to us: break the cycle
        self.backend._forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None and not exchange.done():
            exchange.fail(ConnectionResetError("connection closed by the backend"))

    def _whole_response(self, exchange: _Exchange, data: bytes) -> bool:
        """Take a complete JSON response that is all of ``data`` in one step; False: not that case."""
        parsed = parse_response(data, 0, _MAX_RESPONSE_HEADERS)
        if parsed is None or parsed[4] != len(data):
            return False
        status, http11, headers, body_start, _ = parsed
        if status == 200 and headers.get("content-type", "").startswith("text/event-stream"):
            return False  # an SSE body is parsed as events: the slow path does that
        exchange.status = status
        exchange.headers = headers
        if body_start < len(data):
            exchange.body.append(data[body_start:])
        keep = keep_alive(http11, headers.get("connection"))
        self.exchange = None
        self.backend._complete(exchange)
        if keep and not self.closed:
            self.backend._release(self)
        else:
            self.close()
        return True

    def _express_answer(self, exchange: _Exchange, data: bytes) -> bool:
        """An express call's usual answer in one step: all of ``data`` is a 200 JSON response
        with our id and a result. False, with nothing changed, for anything else: the
        general steps (``_whole_response``, httptools, ``_complete``) then take it."""
        parsed = parse_response(data, 0, _MAX_RESPONSE_HEADERS)
        if parsed is None or parsed[0] != 200 or parsed[4] != len(data):
            return False
        headers = parsed[2]
        if not headers.get("content-type", "").startswith("application/json"):
            return False
        try:
            answer = _decode(data[parsed[3] :])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        if answer.result is UNSET or answer.method is not UNSET or answer.id != exchange.upstream_id:
            return False
        self.exchange = None
        if keep_alive(parsed[1], headers.get("connection")) and not self.closed:
            self.backend._release(self)
        else:
            self.close()
        self.backend._express_answered(exchange, answer)
        return True

    # parser callbacks

    def on_message_begin(self) -> None:
        self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            self.exchange.headers[name.decode("latin-1").lower()] = value.decode("latin-1").rstrip(" \t")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        exchange.status = self.parser.get_status_code()
        if exchange.headers.get("content-type", "").startswith("text/event-stream") and exchange.status == 200:
            exchange.sse = SseParser()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        if exchange.sse is None:
            exchange.body.append(body)
            return
        for event in exchange.sse.feed(body):
            if event.id is not None:
                exchange.last_id = event.id
            if event.retry is not None:
                exchange.retry = event.retry
            self.backend._on_stream_message(exchange, event.data)

    def on_message_complete(self) -> None:
        self.in_message = False
        exchange, self.exchange = self.exchange, None
        keep = self.parser.should_keep_alive()
        if exchange is not None:
            self.backend._complete(exchange)
        if keep and not self.closed:
            self.backend._release(self)
        else:
            self.close()

    # helpers

    def send(self, exchange: _Exchange, data: bytes) -> None:
        self.exchange = exchange
        exchange.conn = self
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _abort(self, exc: BaseException) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.fail(exc)
        self.close()


class _QueuedCall:
    """An express call waiting in line for a pool connection.

    It sits in ``HttpBackend._waiters`` beside the general path's waiter futures
    and answers to the same three calls, so both kinds are served in arrival
    order: ``set_result(conn)`` sends it on the connection just freed,
    ``set_result(None)`` (a slot freed by a closed connection) hands it to the
    general path, which connects; ``set_exception`` (the pool wait timed out, or
    the backend stopped) is its answer.
    """

    __slots__ = ("backend", "method", "params", "ticket", "sink", "on_answer", "finished")

    def __init__(
        self, backend: HttpBackend, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer
    ) -> None:
        self.backend = backend
        self.method = method
        self.params = params
        self.ticket = ticket
        self.sink = sink
        self.on_answer = on_answer
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, conn: _Conn | None) -> None:
        self.finished = True
        backend = self.backend
        backend._deadlines.discard(self)
        if conn is None or conn.closed or not backend._shared.ready:
            if conn is not None and not conn.closed:
                backend._release(conn)  # not ours to use after all: the next in line gets it
            self._tell(None, True)
            return
        conn.reused = True
        backend._express_send(conn, self.method, self.params, self.ticket, self.sink, self.on_answer)

    def set_exception(self, exc: BaseException) -> None:
        self.finished = True
        backend = self.backend
        backend._deadlines.discard(self)
        self._tell(backend._pool_busy() if isinstance(exc, asyncio.TimeoutError) else exc, False)

    def _tell(self, error: BaseException | None, retry: bool) -> None:
        self.backend._tell(self.on_answer, None, error, retry)


class _UpSession:
    """One upstream MCP session (its id and negotiated version)."""

    __slots__ = ("session_id", "version", "lock", "ready", "capabilities", "_head", "_head_for")

    def __init__(self, capabilities: dict[str, Any] | None = None) -> None:
        self.session_id: str | None = None
        self.version: str | None = None
        self.lock = asyncio.Lock()
        self.ready = False
        # Declared in initialize: the client's own for a per-client session, else the gateway's.
        self.capabilities = capabilities
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


def _stateless_session() -> _UpSession:
    """The pseudo-session of stateless-era requests: a version header, no session id."""
    session = _UpSession()
    session.version = STATELESS_VERSION
    session.ready = True
    return session


class HttpBackend(Backend):
    """An MCP server reached over Streamable HTTP (``http://`` only)."""

    def __init__(
        self, name: str, config: BackendConfig, *, default_timeout: float = 60.0, client_info: dict[str, Any] | None = None
    ) -> None:
        super().__init__(name, config)
        parts = urlsplit(config.url or "")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"backend {name!r}: only http:// URLs are supported, got {config.url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.default_timeout = default_timeout
        self.log = logging.getLogger(f"gateway.backend.{name}")
        self._head = self._build_head(parts.netloc)
        self._post_head = b"POST " + self.path.encode("latin-1") + b" HTTP/1.1\r\n" + self._head
        self._deadlines = Deadlines()  # request timeouts, checked on one tick instead of a timer each
        self._idle: deque[_Conn] = deque()
        self._all: set[_Conn] = set()
        self._waiters: deque[asyncio.Future[_Conn | None] | _QueuedCall] = deque()
        self._next_id = 0
        self._shared = _UpSession()
        self._stateless = _stateless_session()
        self._per_client: dict[str, _UpSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovering: asyncio.Task[None] | None = None
        self._stream_conn: _Conn | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._stopping = False

    def _build_head(self, netloc: str) -> bytes:
        lines = [
            f"host: {netloc}",
            "content-type: application/json",
            "accept: application/json, text/event-stream",
            f"user-agent: mcp-gateway/{__version__}",
        ]
        lines += [f"{k}: {v}" for k, v in self.config.headers.items()]
        if self.config.bearer_token:
            lines.append(f"authorization: Bearer {self.config.bearer_token}")
        return ("".join(f"{line}\r\n" for line in lines)).encode("latin-1")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Initialize the shared session; if that fails, DOWN and retried in the background."""
        self._stopping = False
        try:
            await self._probe()
        except (BackendUnavailable, BackendTimeout) as exc:
            self._went_down(str(exc))
            return
        self._set_state(BackendState.READY)
        self._open_stream()

    async def _probe(self) -> None:
        """Find the eras the backend speaks: ``server/discover`` first, then ``initialize``.

        A discover that fails in any way (an error, a non-JSON answer, silence
        until a short timeout) means "no stateless era"; then initialize
        decides. A backend that speaks both is used in the client's own era.
        """
        eras = set()
        try:
            discover = await self._discover()
        except (BackendUnavailable, BackendTimeout, ValueError) as exc:
            self.log.debug("%s: server/discover failed (%s): handshake era only", self.name, exc)
            discover = None
        if discover is not None:
            eras.add("stateless")
            self.discover = discover
        try:
            await self._initialize(self._shared)
            eras.add("handshake")
        except (BackendUnavailable, BackendTimeout):
            if not eras:
                raise
        if "handshake" not in eras:
            assert discover is not None
            info = discover.get("serverInfo") or (discover.get("_meta") or {}).get("io.modelcontextprotocol/serverInfo")
            self.server_info = {**discover, "serverInfo": info}
        self.eras = frozenset(eras)

    async def _discover(self) -> dict[str, Any] | None:
        """One stateless ``server/discover``; its result if it lists a version the gateway speaks."""
        self._next_id += 1
        body = encode(Message(id=self._next_id, method="server/discover", params=with_envelope(UNSET)))
        limit = min(self.config.connect_timeout, 5.0)
        answer, _ = await self._post(self._stateless, body, self._next_id, None, limit, b"mcp-method: server/discover\r\n")
        if answer is None or answer.result is UNSET:
            return None
        result = decode_any(answer.result)
        if not isinstance(result, dict):
            return None
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or not set(versions) & set(STATELESS_VERSIONS):
            return None
        return result

    async def stop(self) -> None:
        """End the sessions (DELETE), close every connection, stop background work. Idempotent."""
        if self._stopping and self.state is BackendState.STOPPED:
            return
        self._stopping = True
        for task in [self._recovering, self._stream_task, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._recovering, self._stream_task, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        sessions = [self._shared, *self._per_client.values()]
        await asyncio.gather(*(self._delete(s) for s in sessions if s.session_id), return_exceptions=True)
        for conn in list(self._all):
            conn.close()
        if self._stream_conn is not None:
            self._stream_conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(BackendUnavailable(f"backend {self.name!r} stopped"))
        self._set_state(BackendState.STOPPED)

    def _went_down(self, error: str) -> None:
        self.log.warning("%s: down: %s", self.name, error)
        self._shared.ready = False
        self._set_state(BackendState.DOWN, error)
        if not self._stopping and (self._recovering is None or self._recovering.done()):
            self._recovering = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        delay = 0.5
        while not self._stopping:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
            try:
                await self._probe()
            except (BackendUnavailable, BackendTimeout) as exc:
                self.last_error = str(exc)
                continue
            self._set_state(BackendState.READY)
            self._open_stream()
            return

    # -- requests -------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: Raw | Any = UNSET,
        *,
        session_key: str | None = None,
        sink: MessageSink | None = None,
        timeout: float | None = None,
        era: str | None = None,
        headers: dict[str, str] | None = None,
        ticket: Ticket | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> Message:
        """POST one request in the right upstream session; returns the response message."""
        if self.state is not BackendState.READY:
            raise BackendUnavailable(f"backend {self.name!r} is {self.state.value}: {self.last_error}", reason="backend_down")
        limit = timeout if timeout is not None else (self.config.request_timeout or self.default_timeout)
        if (era or self.preferred_era) == "stateless" and "stateless" in self.eras:
            return await self._request_stateless(method, params, headers, sink, limit, ticket)
        shared = self._shared
        if shared.ready and (session_key is None or self.config.session != "per-client"):
            session = shared  # the fast path: no await before the request goes out
        else:
            session = await self._session_for(session_key, capabilities)
        for attempt in (1, 2):
            self._next_id += 1
            upstream_id = self._next_id
            body = encode(Message(id=upstream_id, method=method, params=params))
            try:
                answer, _ = await self._post(session, body, upstream_id, sink, limit, ticket=ticket)
            except _SessionExpired:
                if attempt == 2:
                    raise BackendUnavailable(f"backend {self.name!r} keeps rejecting its session") from None
                self.log.info("%s: upstream session expired; initializing again", self.name)
                session.ready = False
                await self._ensure_session(session)
                continue
            if answer is None:
                raise BackendUnavailable(f"backend {self.name!r} answered a request with no response")
            return answer
        raise AssertionError("unreachable")

    def express(self, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer) -> bool:
        """Send a handshake-era request in the shared session with no task and no await.

        False, with nothing done, unless this is the plain case: READY, handshake
        era spoken, shared session ready, and an idle pool connection, or a full
        pool to wait in line for (a queued call is sent, in its turn, from the
        callback that frees a connection). Then ``on_answer(answer, error, retry)``
        is called exactly once, from a connection callback or the deadline tick,
        with what ``request`` would have returned or raised. ``retry`` means
        "nothing was answered; send it again by the general path" (a reused
        connection the backend had closed, an expired session now marked for
        initialize, a pool slot freed by a closed connection).
        """
        if self.state is not _READY or "handshake" not in self.eras or self.config.session == "per-client":
            return False
        if not self._shared.ready:
            return False
        idle = self._idle
        if idle and not idle[-1].closed:
            conn = idle.pop()
            conn.reused = True
            self._express_send(conn, method, params, ticket, sink, on_answer)
            return True
        if idle or len(self._all) < self.config.pool_size:
            return False  # a closed connection to drop, or room for a new one: the general path does both
        queued = _QueuedCall(self, method, params, ticket, sink, on_answer)
        self._waiters.append(queued)
        self._deadlines.add(queued, self.config.connect_timeout, _expire, queued)
        return True

    def _express_send(
        self, conn: _Conn, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer
    ) -> None:
        """Write an express call on ``conn`` and arm its request timeout."""
        session = self._shared
        self._next_id += 1
        upstream_id = self._next_id
        body = encode(Message(id=upstream_id, method=method, params=params))
        exchange = _Exchange(upstream_id, sink, on_answer)
        exchange.session = session
        exchange.ticket = ticket
        exchange.limit = limit = self.config.request_timeout or self.default_timeout
        ticket.upstream_id = upstream_id
        ticket.handle = (session, conn, exchange)
        conn.send(exchange, b"%bcontent-length: %d\r\n\r\n%b" % (session.head(self._post_head), len(body), body))
        self._deadlines.add(exchange, limit, _Exchange.time_out, exchange)

    def _express_answered(self, exchange: _Exchange, answer: Message) -> None:
        """An express exchange's plain answer (``_Conn._express_answer``): straight to its caller."""
        exchange.finished = True
        self._deadlines.discard(exchange)
        exchange.ticket.handle = None  # type: ignore[union-attr]  # a late cancel must find nothing
        self._tell(exchange.on_answer, answer, None, False)  # type: ignore[arg-type]

    def _express_done(self, exchange: _Exchange, answer: Message | None, exc: BaseException | None) -> None:
        """An express exchange ended: turn its outcome into what ``_post`` and ``request``
        would have returned or raised, and hand that to its ``on_answer``."""
        self._deadlines.discard(exchange)
        on_answer, conn, ticket, session = exchange.on_answer, exchange.conn, exchange.ticket, exchange.session
        exchange.on_answer = exchange.conn = exchange.ticket = exchange.sink = None  # no cycles to collect later
        if ticket is not None:
            ticket.handle = None  # a late cancel must not close a connection serving another request
        assert on_answer is not None and conn is not None and session is not None
        error: BaseException | None = None
        retry = False
        if isinstance(exc, asyncio.TimeoutError):
            conn.close()  # its late response can no longer be trusted
            self._cancel_upstream(session, exchange.upstream_id)
            error = BackendTimeout(f"backend {self.name!r} did not answer within {exchange.limit:g} s")
        elif isinstance(exc, ConnectionError):
            if conn.reused and not exchange.got_bytes:
                retry = True  # as _post: a kept-alive connection the backend had closed
            else:
                error = BackendUnavailable(f"backend {self.name!r}: {exc}", reason="backend_connection")
        elif exc is not None:
            error = exc  # RequestCancelled, or a BackendUnavailable from _complete
        elif exchange.status == 404 and (session.session_id or answer is None):
            if session.session_id:
                self.log.info("%s: upstream session expired; initializing again", self.name)
                session.ready = False
                retry = True
            else:
                error = BackendUnavailable(f"backend {self.name!r} answered HTTP 404 (wrong URL?)", reason="backend_http_error")
        elif answer is None:
            error = BackendUnavailable(f"backend {self.name!r} answered a request with no response")
        self._tell(on_answer, answer if error is None and not retry else None, error, retry)

    def _tell(self, on_answer: ExpressAnswer, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """Give an express call its outcome; the callback this runs in (a connection's, the
        deadline tick) must survive whatever the caller's answer does."""
        try:
            on_answer(answer, error, retry)
        except Exception:
            self.log.exception("%s: express answer failed", self.name)

    def _pool_busy(self) -> BackendUnavailable:
        """The error of a request that waited its whole ``connect_timeout`` for a pool connection."""
        return BackendUnavailable(f"backend {self.name!r}: all {self.config.pool_size} connections busy")

    async def _request_stateless(
        self,
        method: str,
        params: Raw | Any,
        headers: dict[str, str] | None,
        sink: MessageSink | None,
        limit: float,
        ticket: Ticket | None,
    ) -> Message:
        """One self-contained 2026-07-28 POST: routing headers, ``_meta`` in params, no session."""
        if params is UNSET or b"io.modelcontextprotocol/protocolVersion" not in bytes(params):
            params = with_envelope(params)
        if headers is None and method in NAME_PARAM:
            # The gateway's own request: mirror the name into Mcp-Name as the era requires.
            value = decode_any(params).get(NAME_PARAM[method])
            headers = {"mcp-name": encode_header_value(value)} if isinstance(value, str) else None
        extra = [f"mcp-method: {method}\r\n"]
        if headers:
            extra += [f"{k}: {v}\r\n" for k, v in headers.items()]
        self._next_id += 1
        upstream_id = self._next_id
        body = encode(Message(id=upstream_id, method=method, params=params))
        answer, _ = await self._post(
            self._stateless, body, upstream_id, sink, limit, "".join(extra).encode("latin-1"), ticket=ticket
        )
        if answer is None:
            raise BackendUnavailable(f"backend {self.name!r} answered a request with no response")
        return answer

    async def respond(
        self, upstream_id: Any, result: Raw | None = None, error: Raw | None = None, *, session_key: str | None = None
    ) -> None:
        """POST our client's answer to a request the backend sent, in the session it came from."""
        session = await self._session_for(session_key)
        msg = Message(id=upstream_id, result=result) if result is not None else Message(id=upstream_id, error=error)  # type: ignore[arg-type]
        await self._post(session, encode(msg), None, None, self.config.connect_timeout + 5)

    def cancel(self, ticket: Ticket, reason: str = "cancelled by the client") -> None:
        """Handshake era: ``notifications/cancelled``; stateless era: close the response stream."""
        if ticket.handle is None:
            return
        session, conn, exchange = ticket.handle
        exchange.fail(RequestCancelled(reason))
        if session is self._stateless:
            conn.close()  # closing the stream is the stateless era's cancel
        else:
            conn.close()  # its late answer must not be read as another request's
            params = Raw(encode({"requestId": ticket.upstream_id, "reason": reason}))
            self._spawn(self._post_quietly(session, encode(Message(method="notifications/cancelled", params=params))))

    async def notify(self, method: str, params: Raw | Any = UNSET, *, session_key: str | None = None) -> None:
        """POST one notification (the backend answers 202)."""
        session = await self._session_for(session_key)
        body = encode(Message(method=method, params=params))
        await self._post(session, body, None, None, self.config.connect_timeout + 5)

    async def release(self, session_key: str) -> None:
        """DELETE the per-client upstream session of ``session_key``."""
        session = self._per_client.pop(session_key, None)
        if session is not None and session.session_id:
            with contextlib.suppress(Exception):
                await self._delete(session)

    async def _session_for(self, session_key: str | None, capabilities: dict[str, Any] | None = None) -> _UpSession:
        if session_key is None or self.config.session != "per-client":
            session = self._shared
        else:
            session = self._per_client.get(session_key) or self._per_client.setdefault(
                session_key, _UpSession(capabilities)
            )
        if not session.ready:
            await self._ensure_session(session)
        return session

    async def _ensure_session(self, session: _UpSession) -> None:
        async with session.lock:
            if not session.ready:
                await self._initialize(session)

    async def _initialize(self, session: _UpSession) -> None:
        session.session_id = None
        session.version = None
        self._next_id += 1
        body = encode(Message(id=self._next_id, method="initialize", params=initialize_params(session.capabilities)))
        answer, headers = await self._post(session, body, self._next_id, None, self.config.connect_timeout)
        if answer is None or answer.result is UNSET:
            raise BackendUnavailable(f"backend {self.name!r} refused initialize", reason="initialize_failed")
        result = decode_any(answer.result)
        session.session_id = headers.get("mcp-session-id")
        session.version = result.get("protocolVersion") if isinstance(result, dict) else None
        if session is self._shared:
            self.server_info = result if isinstance(result, dict) else {}
        await self._post(session, encode(Message(method="notifications/initialized")), None, None, self.config.connect_timeout)
        session.ready = True

    async def _post(
        self,
        session: _UpSession,
        body: bytes,
        upstream_id: Any,
        sink: MessageSink | None,
        limit: float,
        extra: bytes = b"",
        *,
        ticket: Ticket | None = None,
    ) -> tuple[Message | None, dict[str, str]]:
        head = session.head(self._post_head)
        data = b"%b%bcontent-length: %d\r\n\r\n%b" % (head, extra, len(body), body)
        deadlines = self._deadlines
        for attempt in (1, 2):
            idle = self._idle
            conn = idle.pop() if idle and not idle[-1].closed else None
            if conn is not None:
                conn.reused = True  # the common case, without the await of _acquire()
            else:
                conn = await self._acquire()
            exchange = _Exchange(upstream_id, sink)
            exchange.session = session
            if ticket is not None:
                ticket.upstream_id = upstream_id
                ticket.handle = (session, conn, exchange)
            conn.send(exchange, data)
            # A coarse deadline rather than wait_for() or a loop timer: no task, future or timer per request.
            deadlines.add(exchange, limit, exchange.time_out)
            try:
                answer, headers = await exchange.future  # type: ignore[misc]
            except asyncio.TimeoutError:
                conn.close()  # its late response can no longer be trusted
                if upstream_id is not None:
                    self._cancel_upstream(session, upstream_id)
                raise BackendTimeout(f"backend {self.name!r} did not answer within {limit:g} s") from None
            except ConnectionError as exc:
                # A reused keep-alive connection the backend had already closed: retry once.
                if attempt == 1 and conn.reused and not exchange.got_bytes:
                    continue
                raise BackendUnavailable(f"backend {self.name!r}: {exc}", reason="backend_connection") from None
            finally:
                deadlines.discard(exchange)
                # Break the exchange -> sink -> caller's stream -> ticket -> exchange cycle, so the
                # request's objects die by reference counting, not in a garbage collection later.
                exchange.sink = None
                if ticket is not None:
                    ticket.handle = None  # a late cancel must not close a connection serving another request
            if exchange.status == 404 and (session.session_id or answer is None):
                if session.session_id and upstream_id is not None:
                    raise _SessionExpired()
                raise BackendUnavailable(f"backend {self.name!r} answered HTTP 404 (wrong URL?)", reason="backend_http_error")
            return answer, headers
        raise AssertionError("unreachable")

    def _cancel_upstream(self, session: _UpSession, upstream_id: Any) -> None:
        params = Raw(encode({"requestId": upstream_id, "reason": "timeout"}))
        body = encode(Message(method="notifications/cancelled", params=params))
        self._spawn(self._post_quietly(session, body))

    async def _post_quietly(self, session: _UpSession, body: bytes) -> None:
        with contextlib.suppress(BackendUnavailable, BackendTimeout):
            await self._post(session, body, None, None, self.config.connect_timeout)

    async def _delete(self, session: _UpSession) -> None:
        head = (
            b"DELETE " + self.path.encode("latin-1") + b" HTTP/1.1\r\n" + self._head
            + b"mcp-session-id: " + (session.session_id or "").encode("latin-1") + b"\r\ncontent-length: 0\r\n\r\n"
        )
        with contextlib.suppress(BackendUnavailable, ConnectionError, asyncio.TimeoutError, OSError):
            conn = await self._acquire()
            exchange = _Exchange(None, None)
            conn.send(exchange, head)
            await asyncio.wait_for(asyncio.shield(exchange.future), 2.0)  # type: ignore[arg-type]
        session.session_id = None
        session.ready = False

    # -- responses ------------------------------------------------------------------------------

    def _on_stream_message(self, exchange: _Exchange, data: bytes) -> None:
        if not data.strip():
            return  # a priming event (an id for resumption, no message)
        try:
            msg = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.log.warning("%s: SSE event is not JSON-RPC: %.200r", self.name, data)
            return
        if msg.method is UNSET and msg.id == exchange.upstream_id:
            exchange.answered = True
            exchange.resolve(msg)
        elif msg.method is UNSET:
            self.log.warning("%s: response with unexpected id %r dropped", self.name, msg.id)
        elif exchange.sink is not None and not exchange.answered:
            exchange.sink(msg)
        elif msg.id is UNSET:
            if self.on_notification is not None:
                self.on_notification(self, None, msg)
        else:
            self._refuse_server_request(msg)

    def _refuse_server_request(self, msg: Message, session_key: str | None = None) -> None:
        """A server-to-client request nobody can answer (no client waiting): say so, never leave it hanging."""
        error = Raw(encode({"code": -32601, "message": f"{msg.method}: no client to ask through the gateway"}))
        self._spawn(self._respond_quietly(msg.id, error, session_key))

    async def _respond_quietly(self, upstream_id: Any, error: Raw, session_key: str | None) -> None:
        with contextlib.suppress(BackendUnavailable, BackendTimeout):
            await self.respond(upstream_id, error=error, session_key=session_key)

    def _complete(self, exchange: _Exchange) -> None:
        if exchange.done():
            return
        if exchange.sse is not None:
            if exchange.upstream_id is None:
                exchange.resolve(None)
            elif exchange.last_id is not None and exchange.session is not None and exchange.resumes < 5:
                exchange.resumes += 1
                self._spawn(self._resume(exchange))
            else:
                exchange.fail(BackendUnavailable(f"backend {self.name!r} ended its stream without a response"))
            return
        status = exchange.status
        body = b"".join(exchange.body)
        if status == 202 or (not body and status < 300) or (status == 404 and not body.lstrip().startswith(b"{")):
            # 404 without JSON: the caller decides (an expired session, or a wrong URL)
            exchange.resolve(None)
            return
        try:
            msg = _decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            if status >= 400:
                exchange.fail(BackendUnavailable(f"backend {self.name!r} answered HTTP {status}", reason="backend_http_error"))
            else:
                exchange.fail(BackendUnavailable(f"backend {self.name!r} sent a body that is not JSON-RPC"))
            return
        if msg.method is UNSET and exchange.upstream_id is not None and msg.id not in (exchange.upstream_id, None):
            exchange.fail(BackendUnavailable(f"backend {self.name!r} answered with the wrong id {msg.id!r}"))
            return
        exchange.resolve(msg)

    async def _resume(self, exchange: _Exchange) -> None:
        """The backend closed a response stream before answering (SSE polling): wait the
        retry it asked for, then GET the rest of the stream with ``Last-Event-ID``."""
        await asyncio.sleep(min((exchange.retry or 100) / 1000, 5.0))
        if exchange.done():
            return
        session = exchange.session
        assert session is not None
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self), self.host, self.port), self.config.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            exchange.fail(BackendUnavailable(f"backend {self.name!r}: cannot resume its stream: {exc}"))
            return
        head = self._get_head(session, exchange.last_id or "")
        exchange.status = 0
        exchange.headers = {}
        exchange.sse = None
        conn.send(exchange, head)

    # -- the GET stream -------------------------------------------------------------------------

    def _open_stream(self) -> None:
        if self._stream_task is None or self._stream_task.done():
            self._stream_task = asyncio.get_running_loop().create_task(self._hold_stream())

    async def _hold_stream(self) -> None:
        """Keep a GET stream open for server notifications; reconnect with backoff while READY."""
        delay = 0.5
        while not self._stopping and self.state is BackendState.READY:
            status = await self._stream_once()
            if status in (405, 404, 400):
                if status == 404:  # our session expired: the next request re-initializes it
                    self._shared.ready = False
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _stream_once(self) -> int:
        loop = asyncio.get_running_loop()
        session = self._shared
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self), self.host, self.port), self.config.connect_timeout
            )
        except (OSError, asyncio.TimeoutError):
            return 0
        self._stream_conn = conn
        exchange = _Exchange(None, None)
        if "handshake" in self.eras:
            head = self._get_head(session)
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
            self._stream_conn = None
        return exchange.status

    def _get_head(self, session: _UpSession, last_event_id: str | None = None) -> bytes:
        """A GET for a session's SSE stream (resuming after ``last_event_id`` when given)."""
        head = b"GET " + self.path.encode("latin-1") + b" HTTP/1.1\r\n" + self._head.replace(
            b"accept: application/json, text/event-stream", b"accept: text/event-stream"
        )
        if session.version:
            head += b"mcp-protocol-version: " + session.version.encode("latin-1") + b"\r\n"
        if session.session_id:
            head += b"mcp-session-id: " + session.session_id.encode("latin-1") + b"\r\n"
        if last_event_id is not None:
            head += b"last-event-id: " + last_event_id.encode("latin-1") + b"\r\n"
        return head + b"\r\n"

    def _listen_request(self) -> bytes:
        """A stateless backend's change notices come on a ``subscriptions/listen`` stream."""
        wanted = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
        params = with_envelope(Raw(encode({"notifications": wanted})))
        body = encode(Message(id="listen", method="subscriptions/listen", params=params))
        return (
            b"POST " + self.path.encode("latin-1") + b" HTTP/1.1\r\n" + self._head
            + b"mcp-protocol-version: " + STATELESS_VERSION.encode("latin-1") + b"\r\n"
            + b"mcp-method: subscriptions/listen\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )

    # -- pool -----------------------------------------------------------------------------------

    async def _acquire(self) -> _Conn:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    conn.reused = True
                    return conn
            if len(self._all) < self.config.pool_size:
                return await self._connect()
            # Wait in line: a released connection is handed to the first waiter directly (see
            # _release), so a request arriving meanwhile (the express lane takes idle connections
            # in a callback) cannot take it first and leave the waiter starving.
            waiter: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            # A coarse deadline, not wait_for(): with more clients than pool connections, every
            # request waits here, and a task per wait would cost more than the request.
            self._deadlines.add(waiter, self.config.connect_timeout, _expire, waiter)
            try:
                conn = await waiter
            except asyncio.TimeoutError:
                raise self._pool_busy() from None
            except BaseException:
                # Cancelled after a connection was handed over: pass it on, or it is lost to the pool.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed)
                raise
            finally:
                self._deadlines.discard(waiter)
            if conn is not None and not conn.closed:
                conn.reused = True
                return conn
            # None: a connection closed and its slot is free (see _forget): connect, or wait again.

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        placeholder = _Conn(self)  # counted while connecting, so the pool limit holds
        self._all.add(placeholder)
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self), self.host, self.port), self.config.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            if self.state is BackendState.READY and not self._stopping:
                self._went_down(f"cannot connect: {exc or 'timeout'}")
            raise BackendUnavailable(f"backend {self.name!r} is unreachable: {exc or 'connect timeout'}", reason="backend_connection") from None
        finally:
            self._all.discard(placeholder)
        self._all.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        """A connection is free: to the first waiter in line, else back to the idle pool."""
        if self._stopping or conn not in self._all:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        while self._waiters:  # a slot is free: let one waiter connect
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
