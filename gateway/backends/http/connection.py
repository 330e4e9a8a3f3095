"""One keep-alive connection to an HTTP backend, and the exchange (one request and
its response) it is serving.

``Connection`` is the asyncio protocol: it writes a request and reads the
response, a whole JSON response in one read in one step (the compiled
``parse_response``), everything else through httptools (chunked bodies, SSE
streams read event by event). What a response means is not decided here: the
connection hands the finished exchange to its owner (``ConnectionOwner``, the
backend), and itself back to its home (``ConnectionHome``, the pool), or closes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import httptools
import msgspec

from gateway._fast import USING_EXTENSIONS, keep_alive, parse_response
from gateway.backends.base import ExpressAnswer, MessageSink, Ticket
from gateway.errors import BackendUnavailable
from gateway.protocol.jsonrpc import UNSET, Message
from gateway.protocol.sse import SseParser

if TYPE_CHECKING:
    from gateway.backends.http.session import UpSession

__all__ = ["Connection", "ConnectionHome", "ConnectionOwner", "Exchange"]

_decode = msgspec.json.Decoder(Message).decode
_MAX_RESPONSE_HEADERS = 256
# A whole JSON response in one read is parsed in one call (compiled only: the
# pure-Python twin is slower than httptools); everything else goes to httptools.
_FAST_PARSE = USING_EXTENSIONS
# What parse_response gives: (status, http11, headers, body_start, end).
_Parsed = tuple[int, bool, dict[str, str], int, int]


class ConnectionOwner(Protocol):
    """What a connection and its exchanges call on the backend they serve."""

    name: str

    def complete(self, exchange: Exchange) -> None:
        """A response has been read whole: settle ``exchange`` from its status, headers and body."""

    def stream_message(self, exchange: Exchange, data: bytes) -> None:
        """One event of an SSE response (``data``: its payload) for ``exchange``."""

    def express_answered(self, exchange: Exchange, answer: Message) -> None:
        """An express exchange's plain answer, read in one step: straight to its caller."""

    def express_done(self, exchange: Exchange, answer: Message | None, exc: BaseException | None) -> None:
        """An express exchange ended any other way (``answer`` or ``exc``, the general steps' result)."""


class ConnectionHome(Protocol):
    """Where a connection goes once it is free again, or closed."""

    def release(self, conn: Connection) -> None:
        """``conn`` finished a response and stays open: reuse it."""

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed: it no longer counts."""


class Exchange:
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
        self.session: UpSession | None = None
        # SSE resumption (the backend may close a response stream and expect a GET
        # with Last-Event-ID): attempts so far, the last event id, the retry hint.
        self.resumes = 0
        self.last_id: str | None = None
        self.retry: int | None = None
        # The connection it was last sent on, and the request's time limit (seconds).
        self.conn: Connection | None = None
        self.limit = 0.0
        # Express calls only: who gets the answer, and what the backend needs to finish.
        self.on_answer = on_answer
        self.ticket: Ticket | None = None
        self.finished = False

    def done(self) -> bool:
        """True once the exchange has its outcome (or its waiter is gone)."""
        return self.finished if self.future is None else self.future.done()

    def resolve(self, msg: Message | None) -> None:
        """The exchange ended with ``msg`` (None: a response with no message, such as 202)."""
        if self.future is None:
            self._express_end(msg, None)
        elif not self.future.done():
            self.future.set_result((msg, self.headers))

    def fail(self, exc: BaseException) -> None:
        """The exchange ended without a response: ``exc`` says why."""
        if self.future is None:
            self._express_end(None, exc)
        elif not self.future.done():
            self.future.set_exception(exc)

    def _express_end(self, msg: Message | None, exc: BaseException | None) -> None:
        if not self.finished:
            self.finished = True
            self.conn.owner.express_done(self, msg, exc)  # type: ignore[union-attr]

    def time_out(self, _: Any = None) -> None:
        """Deadline callback: the backend took longer than the request's limit."""
        self.fail(asyncio.TimeoutError())


class Connection(asyncio.Protocol):
    """One keep-alive connection to the backend."""

    def __init__(self, owner: ConnectionOwner, pool: ConnectionHome) -> None:
        self.owner = owner
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
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
                # Parsed once: a whole response in this read is taken in one step, as an express
                # call's plain answer or else as any complete response; the rest goes to httptools.
                parsed = parse_response(data, 0, _MAX_RESPONSE_HEADERS)
                if parsed is not None and parsed[4] == len(data) and (
                    (exchange.on_answer is not None and self._express_answer(exchange, data, parsed))
                    or self._whole_response(exchange, data, parsed)
                ):
                    return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._abort(BackendUnavailable(f"backend {self.owner.name!r} sent malformed HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.parser = None  # type: ignore[assignment]  # it refers back to us: break the cycle
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None and not exchange.done():
            exchange.fail(ConnectionResetError("connection closed by the backend"))

    def _whole_response(self, exchange: Exchange, data: bytes, parsed: _Parsed) -> bool:
        """Take ``parsed``, a complete response that is all of ``data``, in one step; False
        (an SSE body, which is parsed as events by httptools): not that case."""
        status, http11, headers, body_start, _ = parsed
        if status == 200 and headers.get("content-type", "").startswith("text/event-stream"):
            return False  # an SSE body is parsed as events: the slow path does that
        exchange.status = status
        exchange.headers = headers
        if body_start < len(data):
            exchange.body.append(data[body_start:])
        keep = keep_alive(http11, headers.get("connection"))
        self.exchange = None
        self.owner.complete(exchange)
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()
        return True

    def _express_answer(self, exchange: Exchange, data: bytes, parsed: _Parsed) -> bool:
        """An express call's usual answer in one step: ``parsed`` (all of ``data``) is a 200
        JSON response with our id and a result. False, with nothing changed, for anything
        else: the general steps (``_whole_response``, httptools, ``complete``) then take it."""
        if parsed[0] != 200:
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
            self.pool.release(self)
        else:
            self.close()
        self.owner.express_answered(exchange, answer)
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
            self.owner.stream_message(exchange, event.data)

    def on_message_complete(self) -> None:
        self.in_message = False
        exchange, self.exchange = self.exchange, None
        keep = self.parser.should_keep_alive()
        if exchange is not None:
            self.owner.complete(exchange)
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    # helpers

    def send(self, exchange: Exchange, data: bytes) -> None:
        """Write ``data`` (a whole request) and read its response into ``exchange``."""
        self.exchange = exchange
        exchange.conn = self
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Close the connection (once); ``connection_lost`` follows."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _abort(self, exc: BaseException) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.fail(exc)
        self.close()
