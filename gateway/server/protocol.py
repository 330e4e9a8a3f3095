"""One ``asyncio.Protocol`` per HTTP/1.1 connection, parsed by httptools.

httptools enforces no limits of its own (it buffers a partial header name or
value for as long as the peer keeps sending), so the limits are applied here
before bytes reach it: header section size (431), header count (431), request
target length (414), body size (413), header and idle timeouts. Malformed
HTTP gets 400 and the connection is closed; no traceback ever reaches a client.

A request that arrives whole and plain (the usual case: a few headers and a
``Content-Length`` body in one read) is parsed in one call by
``gateway._fast.parse_request``; anything else goes to httptools, which also
answers every malformed input, so both paths apply the same limits and errors.

Requests on one connection may be pipelined: each gets a ``_Cycle`` (the
``Reply`` of ``gateway.server.api``). A request is answered by the
connection's worker, one task that lives as long as the connection (a task
per request costs more than a small request itself), when that worker is
idle; while it is busy (pipelining, or an app still running after its reply
went out, such as a call held for the client's next round), the request gets
a task of its own. Only the oldest unfinished cycle writes to the transport,
so responses still leave in request order.

Over TLS the same ``HttpProtocol`` serves the decrypted stream (the listener
hands uvloop the context), so HTTPS adds nothing per request. With mutual TLS
each connection is a ``MutualTlsProtocol``: the client certificate's subject is
read once, when the connection is made, and every request on it is a
``TlsRequest`` carrying it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httptools

from gateway._fast import USING_EXTENSIONS, keep_alive, parse_request
from gateway.server import responses as R
from gateway.server.api import App, Request, TlsRequest
from gateway.tls import peer_subject

if TYPE_CHECKING:
    from gateway.config import ServerConfig

__all__ = ["HttpProtocol", "MutualTlsProtocol", "ServerState"]

log = logging.getLogger("gateway.server")

_MAX_PIPELINED = 16  # requests in flight on one connection before reading pauses

# Header names repeat from request to request: decode and lower-case each distinct
# name once (bounded, so a client inventing names cannot grow it without end).
_HEADER_NAMES: dict[bytes, str] = {}
_HEADER_NAMES_MAX = 512
# The one-call parser pays off only compiled; its pure-Python twin is slower than httptools.
_FAST_PARSE = USING_EXTENSIONS
# Globals, not module attributes: read for every response.
_STATUS_LINES = R.STATUS_LINES
_SERVER_HEADER = R.SERVER_HEADER
_METHODS = {m.encode(): m for m in ("GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS")}


class ServerState:
    """What every connection of one listener shares: who is alive, what is running."""

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = False


class _Reject(Exception):
    """Raised inside a parser callback to answer with a canned response and close."""

    def __init__(self, response: bytes) -> None:
        self.response = response


def _header_lines(headers: Sequence[tuple[str, str]]) -> bytes:
    """``name: value`` lines, encoded."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")


class _Cycle:
    """One request/response exchange; implements ``gateway.server.api.Reply``."""

    __slots__ = (
        "proto", "keep_alive", "buffer", "head_sent", "streaming", "done", "_closed", "_stopping", "_waiter", "on_disconnect",
    )

    def __init__(self, proto: HttpProtocol, keep_alive: bool) -> None:
        self.proto = proto
        self.keep_alive = keep_alive
        self.buffer: list[bytes] = []  # output held back while an earlier cycle is unfinished
        self.head_sent = False
        self.streaming = False
        self.done = False
        self._closed = False  # the client is gone: nothing can be written
        self._stopping = False  # the server is shutting down: streams should end
        self._waiter: asyncio.Future[None] | None = None
        # Called once if the client goes away before the reply ended (stateless-era cancel).
        self.on_disconnect: Callable[[], None] | None = None

    # -- Reply ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the client went away, the server is shutting down, or the reply ended."""
        return self._closed or self.done or self._stopping

    def send(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        """A whole response: status line, headers, content-length, body, in one write."""
        if self.head_sent or self._closed:
            return
        self.head_sent = True
        # bytes: header lines encoded already (the hot path's constants), so no call for them.
        lines = headers if headers.__class__ is bytes else _header_lines(headers)  # type: ignore[arg-type]
        # One format operation for the whole response (content-length in it, not a bytes of its own).
        self.proto._emit(self, b"%b%b%bcontent-length: %d\r\n%b\r\n%b" % (
            _STATUS_LINES[status], _SERVER_HEADER, lines, len(body), self._connection_header(), body
        ))
        self._finish()

    def start_stream(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Status line and headers of a chunked response (SSE)."""
        if self.head_sent or self._closed:
            return
        self.head_sent = True
        self.streaming = True
        parts = [_STATUS_LINES[status], _SERVER_HEADER, _header_lines(headers)]
        parts.append(R.CHUNKED_HEADERS)
        parts.append(self._connection_header())
        parts.append(b"\r\n")
        self.proto._emit(self, b"".join(parts))

    def write(self, data: bytes) -> None:
        """One chunk of a streamed response; ignored once closed."""
        if self.streaming and not self._closed and not self.done and data:
            self.proto._emit(self, b"%x\r\n%b\r\n" % (len(data), data))

    def end(self) -> None:
        """Finish a streamed response."""
        if self.streaming and not self.done:
            if not self._closed:
                self.proto._emit(self, R.CHUNKED_END)
            self._finish()

    async def wait_closed(self) -> None:
        """Return when the client disconnects, the server shuts down, or the reply ends."""
        if self.closed:
            return
        if self._waiter is None:
            self._waiter = self.proto.loop.create_future()
        await asyncio.shield(self._waiter)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        await self.proto._drain()

    # -- internals ------------------------------------------------------------------------------

    def _connection_header(self) -> bytes:
        if not self.keep_alive or self.proto.state.shutting_down:
            self.keep_alive = False
            return R.CLOSE_HEADER
        return b"" if self.proto.http11 else R.KEEP_ALIVE_HEADER

    def _finish(self) -> None:
        self.done = True
        self._wake()
        self.proto._cycle_done(self)

    def _mark_closed(self) -> None:
        self._closed = True
        self._wake()
        callback, self.on_disconnect = self.on_disconnect, None
        if callback is not None and not self.done:
            callback()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class HttpProtocol(asyncio.Protocol):
    """An HTTP/1.1 server connection that hands each request to ``app``."""

    def __init__(self, app: App, config: ServerConfig, state: ServerState, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # global
        self.app = app
        # Optional: ``app.express(request, reply) -> bool`` takes a request in this callback,
        # with no task (gateway.front.express), or declines it untouched.
        self.express: Callable[[Request, _Cycle], bool] | None = getattr(app, "express", None)
        self.config = config
        self.state = state
        self.loop = loop or asyncio.get_event_loop()
        self.parser = httptools.HttpRequestParser(self)
        # per connection
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.cycles: deque[_Cycle] = deque()
        # The request handed to the worker, not yet taken (at most one: a request that arrives
        # while the worker is busy gets a task of its own). A slot, not a queue: memory per
        # idle connection counts.
        self.next: tuple[Request, _Cycle] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Future[None] | None = None  # the idle worker waits on it
        self.http11 = True
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.header_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.in_headers = True  # reading a header section (the limits below apply)
        self.in_message = False  # between the first byte of a request and its end
        self.headers_pending = False  # a request started and its header section is not complete
        self.last_active = 0.0  # loop time the connection last became idle (see _on_idle_timeout)
        self.header_bytes = 0
        self.tail = b""  # last bytes of the previous chunk, to find a split "\r\n\r\n"
        # per request
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_count = 0
        self.body: list[bytes] = []
        self.body_size = 0

    # -- protocol interface ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        self.state.connections.add(self)
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(self.config.idle_timeout, self._on_idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self._cancel_timers()
        for cycle in self.cycles:
            cycle._mark_closed()
        self.cycles.clear()
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()
        self.transport = None
        self.parser = None  # type: ignore[assignment]  # it refers back to us: break the cycle
        self._wake_worker()  # an idle worker ends; a busy one ends after the queued requests

    def data_received(self, data: bytes) -> None:
        if _FAST_PARSE and not self.in_message and self.header_bytes == 0:
            data = self._parse_whole(data)
            if not data:
                return
        if self.in_headers and self._header_section_too_large(data):
            self._reject(R.HEADERS_TOO_LARGE)
            return
        try:
            self.parser.feed_data(data)
        except _Reject as exc:
            self._reject(exc.response)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._reject(cause.response if isinstance(cause, _Reject) else R.BAD_REQUEST)
            if not isinstance(cause, _Reject):
                log.warning("parser callback failed", exc_info=cause)
        except httptools.HttpParserUpgrade:
            self._reject(R.BAD_REQUEST)
        except httptools.HttpParserError:
            self._reject(R.BAD_REQUEST)
        else:
            # A header section split over reads gets header_timeout to complete. The
            # timer is armed only then, not for every request (most arrive whole).
            if self.headers_pending and self.header_timer is None and self.transport is not None:
                self.header_timer = self.loop.call_later(self.config.header_timeout, self._on_header_timeout)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def _parse_whole(self, data: bytes) -> bytes:
        """Dispatch the whole plain requests at the start of ``data``; return the rest (for httptools)."""
        config = self.config
        start = 0
        end = len(data)
        while start < end and self.transport is not None:
            parsed = parse_request(
                data, start, config.max_url_bytes, config.max_headers, config.max_header_bytes, config.max_body_bytes
            )
            if parsed is None:
                break
            method, target, http11, headers, body_start, start = parsed
            keep = keep_alive(http11, headers.get("connection"))
            self.http11 = http11
            path, _, query = target.partition("?")
            self._dispatch(Request(method, path, query, headers, data[body_start:start], self.client, keep), keep)
            if not keep:
                return b""  # the connection closes after this response: nothing more is read
        return data[start:] if start else data

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_headers = True
        self.in_message = True
        self.headers_pending = True
        self.url = b""
        self.headers = {}
        self.header_count = 0
        self.body = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.config.max_url_bytes:
            raise _Reject(R.URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.config.max_headers:
            raise _Reject(R.HEADERS_TOO_LARGE)
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < _HEADER_NAMES_MAX:
                _HEADER_NAMES[name] = key
        text = value.decode("latin-1").rstrip(" \t")  # llhttp keeps trailing whitespace; RFC 9110 drops it
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.headers_pending = False
        self.header_bytes = 0
        self.tail = b""
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        headers = self.headers
        if "transfer-encoding" in headers and "content-length" in headers:
            raise _Reject(R.BAD_REQUEST)  # request smuggling guard
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise _Reject(R.BAD_REQUEST)
            if int(length) > self.config.max_body_bytes:
                raise _Reject(R.PAYLOAD_TOO_LARGE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.config.max_body_bytes:
            raise _Reject(R.PAYLOAD_TOO_LARGE)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_headers = True
        self.in_message = False
        parser = self.parser
        self.http11 = parser.get_http_version() == "1.1"
        keep = parser.should_keep_alive()
        path, _, query = self.url.decode("latin-1").partition("?")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        self._dispatch(Request(method, path, query, self.headers, body, self.client, keep), keep)

    # -- internals ------------------------------------------------------------------------------

    def _dispatch(self, request: Request, keep: bool) -> None:
        """Queue a parsed request's cycle and hand the request to the worker (or, while the
        worker is busy, to a task of its own)."""
        cycle = _Cycle(self, keep and not self.state.shutting_down)
        cycles = self.cycles
        cycles.append(cycle)
        if len(cycles) > _MAX_PIPELINED and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        express = self.express
        if express is not None:
            try:
                if express(request, cycle):
                    return
            except Exception:
                self._app_raised(request, cycle)
                return
        if self.wakeup is not None:  # the worker is idle: it takes this one
            self.next = (request, cycle)
            self._wake_worker()
        elif self.worker is None:
            self.next = (request, cycle)
            self.worker = task = self.loop.create_task(self._serve())
            self.state.tasks.add(task)
        else:  # the worker is busy: this request must not wait for it
            task = self.loop.create_task(self._answer(request, cycle))
            self.state.tasks.add(task)
            task.add_done_callback(self.state.tasks.discard)

    def _wake_worker(self) -> None:
        wakeup, self.wakeup = self.wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _header_section_too_large(self, data: bytes) -> bool:
        """Count header bytes before the parser sees them (it would buffer without limit)."""
        end = (self.tail + data).find(b"\r\n\r\n")
        if end >= 0:
            size = self.header_bytes + end - len(self.tail)
        else:
            size = self.header_bytes + len(data)
            self.header_bytes = size
            self.tail = data[-3:]
        return size > self.config.max_header_bytes

    async def _serve(self) -> None:
        """The connection's worker: hand each request it is given to the app until the
        connection is gone (it waits, idle, on ``wakeup`` between requests)."""
        app = self.app
        try:
            while True:
                if self.next is not None:
                    (request, cycle), self.next = self.next, None
                    try:
                        await app(request, cycle)
                    except Exception:
                        self._app_raised(request, cycle)
                    else:
                        self._app_returned(request, cycle)
                if self.transport is None:
                    return
                self.wakeup = wakeup = self.loop.create_future()
                await wakeup
        finally:
            task, self.worker = self.worker, None
            self.state.tasks.discard(task)  # type: ignore[arg-type]

    async def _answer(self, request: Request, cycle: _Cycle) -> None:
        """One request in a task of its own (the worker was busy)."""
        try:
            await self.app(request, cycle)
        except Exception:
            self._app_raised(request, cycle)
        else:
            self._app_returned(request, cycle)

    def _app_raised(self, request: Request, cycle: _Cycle) -> None:
        log.exception("error in the app answering %s %s", request.method, request.path)
        self._app_failed(cycle)

    def _app_returned(self, request: Request, cycle: _Cycle) -> None:
        if not cycle.head_sent and not cycle.closed:
            log.error("the app returned without answering %s %s", request.method, request.path)
            self._app_failed(cycle)
        elif cycle.streaming and not cycle.done:
            cycle.end()

    def _app_failed(self, cycle: _Cycle) -> None:
        if cycle.closed:
            return
        if cycle.head_sent:  # a stream broke half way: the only honest thing is to close
            cycle._mark_closed()
            if self.transport is not None:
                self.transport.close()
            return
        cycle.keep_alive = False
        cycle.head_sent = True
        self._emit(cycle, R.INTERNAL_ERROR)
        cycle._finish()

    def _emit(self, cycle: _Cycle, data: bytes) -> None:
        if self.transport is None:
            return
        if self.cycles and self.cycles[0] is cycle:
            self.transport.write(data)
        else:
            cycle.buffer.append(data)

    def _cycle_done(self, cycle: _Cycle) -> None:
        """A cycle finished: release the ones queued behind it, in order."""
        cycles = self.cycles
        if not cycles or cycles[0] is not cycle:
            return  # it will be released when it reaches the head
        while cycles and cycles[0].done:
            head = cycles.popleft()
            if not head.keep_alive:
                self._close_after(head)
                return
            if cycles:
                nxt = cycles[0]
                if nxt.buffer and self.transport is not None:
                    self.transport.write(b"".join(nxt.buffer))
                nxt.buffer.clear()
        if self.reading_paused and len(cycles) <= _MAX_PIPELINED // 2 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        if not cycles and self.transport is not None:
            if self.state.shutting_down:
                self.transport.close()
            else:
                self.last_active = self.loop.time()
                if self.idle_timer is None:
                    self.idle_timer = self.loop.call_later(self.config.idle_timeout, self._on_idle_timeout)

    def _close_after(self, cycle: _Cycle) -> None:
        for other in self.cycles:
            other._mark_closed()
        self.cycles.clear()
        if self.transport is not None:
            self.transport.close()

    def _reject(self, response: bytes) -> None:
        """Answer a protocol-level error and close (after any earlier responses)."""
        if self.transport is None:
            return
        if self.cycles:  # earlier pipelined requests are still running: stop reading, drop them
            for cycle in self.cycles:
                cycle._mark_closed()
            self.cycles.clear()
        self.transport.write(response)
        self.transport.close()
        self._cancel_timers()

    def _on_header_timeout(self) -> None:
        self.header_timer = None
        if self.transport is None:
            return
        if self.cycles:  # earlier requests still being answered: give the client more time
            self.header_timer = self.loop.call_later(self.config.header_timeout, self._on_header_timeout)
            return
        self._reject(R.REQUEST_TIMEOUT)

    def _on_idle_timeout(self) -> None:
        """Close a keep-alive connection idle for idle_timeout.

        One timer per connection, re-armed only when it fires: requests record when
        the connection last became idle instead of cancelling and re-arming a timer each.
        """
        self.idle_timer = None
        if self.transport is None:
            return
        timeout = self.config.idle_timeout
        if self.cycles or self.in_message:
            wait = timeout  # busy: look again a whole period later
        else:
            wait = self.last_active + timeout - self.loop.time()
            if wait <= 0.001:
                self.transport.close()
                return
        self.idle_timer = self.loop.call_later(wait, self._on_idle_timeout)

    def _cancel_timers(self) -> None:
        for timer in (self.header_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.idle_timer = None

    async def _drain(self) -> None:
        if self.writing_paused and self.transport is not None:
            waiter = self.loop.create_future()
            self.drain_waiters.append(waiter)
            await waiter

    def shutdown(self) -> None:
        """Server shutdown: close if idle, else close after the running requests."""
        if self.transport is None:
            return
        if not self.cycles:
            self.transport.close()
            return
        for cycle in self.cycles:
            cycle.keep_alive = False
            if cycle.streaming:  # GET streams see closed / wait_closed() and end themselves
                cycle._stopping = True
                cycle._wake()

    def abort(self) -> None:
        """Shutdown deadline passed: drop the connection."""
        if self.transport is not None:
            for cycle in self.cycles:
                cycle._mark_closed()
            self.transport.abort()


class MutualTlsProtocol(HttpProtocol):
    """An HTTPS connection whose client presented a certificate the listener verified (mutual
    TLS): its subject is read once, here, and each request on the connection carries it as
    ``Request.tls_subject``. Plain and one-way TLS connections are ``HttpProtocol``s and pay
    nothing for this."""

    tls_subject: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the handshake is done: the certificate is verified (CERT_REQUIRED).
        try:
            self.tls_subject = peer_subject(transport.get_extra_info("ssl_object"))
        except Exception as exc:  # a certificate OpenSSL accepted but cryptography cannot read
            log.warning("client certificate's subject cannot be read (%s): connection refused", exc)
            transport.close()
            return
        if self.tls_subject is None:  # cannot happen with CERT_REQUIRED; never serve without one
            transport.close()
            return
        super().connection_made(transport)

    def _dispatch(self, request: Request, keep: bool) -> None:
        tls = TlsRequest(
            request.method, request.path, request.query, request.headers, request.body, request.client, request.keep_alive
        )
        tls.tls_subject = self.tls_subject
        super()._dispatch(tls, keep)
