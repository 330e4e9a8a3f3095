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

The edge is strict (RFC 9112), and decides before anything answers: on
httptools' path in ``on_headers_complete`` (version, then framing, then Host,
then the target), on the fast path by declining what it would refuse, so that
httptools' path refuses it. Each refusal is a short text answer with
``Connection: close``, and the connection closes:

- a version other than HTTP/1.1 or HTTP/1.0 (llhttp reads 0.9 and 2.0, and
  refuses 1.2 or 3.0 itself; the PRI preface of HTTP/2 too): 505. A request
  line that is not a version at all (``HTTP/1.x``, ``HTTP/12.0``): 400;
- ``Transfer-Encoding`` with ``Content-Length``, or in an HTTP/1.0 request: 400;
  any ``Transfer-Encoding`` but exactly ``chunked`` (case aside): 501;
- no ``Host`` in an HTTP/1.1 request, two ``Host`` lines, or an empty or invalid
  value (``HOST_CHARS``: no comma, so joined lines never pass as one): 400. An
  HTTP/1.0 request may leave ``Host`` out (RFC 9112 3.2 requires it of 1.1 only);
  the DNS-rebinding gate then decides, as for any request;
- a target with a fragment (``#``): 400. An absolute-form target
  (``http://host:port/mcp``) must name this ``Host`` (case aside), or 400; it is
  routed by its path, and its authority is the ``Host`` header the app sees
  (RFC 9112 3.2.2), so that the gate judges it;
- a chunk-size line over ``_CHUNK_LINE_MAX`` bytes, or chunk extensions over
  ``_CHUNK_EXT_MAX`` bytes in one body: 400 (see ``_ChunkedBody``). Trailer
  fields are read within ``max_header_bytes`` and dropped, never merged into
  the header fields the checks above passed.

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
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httptools

from gateway._fast import USING_EXTENSIONS, keep_alive, parse_request
from gateway._fast._http1_py import HOST_CHARS
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
_VERSIONS = ("1.1", "1.0")
# llhttp refuses these itself, before a callback could: httptools gives only its reason
# text, no error code, so the reason says which answer is not 400 (tests hold them to llhttp's).
_VERSION_REASONS = frozenset({"Invalid HTTP version", "Pause on PRI/Upgrade"})
_CODING_REASONS = frozenset(
    {"Invalid `Transfer-Encoding` header value", "Request has invalid `Transfer-Encoding`", "Empty Transfer-Encoding"}
)
# Chunk extensions: llhttp reads any length of them and httptools reports none, so they
# are bounded here (a client could otherwise stream extension bytes for ever, outside every limit).
_CHUNK_LINE_MAX = 256  # bytes of one chunk-size line: size and extensions, without its CRLF
_CHUNK_EXT_MAX = 4096  # bytes of chunk extensions in one body
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")


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


def _valid_host(value: str) -> bool:
    """Whether ``value`` may be a ``Host`` header (or an absolute-form authority): non-empty, of
    ``HOST_CHARS`` only. The fast parser declines exactly the values this refuses."""
    return bool(value) and value.isascii() and HOST_CHARS.issuperset(value.encode("ascii"))


def _absolute_path(url: bytes, headers: dict[str, str]) -> bytes:
    """The path (and query) of an absolute-form target; its authority must be the ``Host``
    header, if any (case aside), and replaces it (RFC 9112 3.2.2), so that the DNS-rebinding
    gate judges the name the request is really for. Raises ``_Reject`` (400) otherwise."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise _Reject(R.BAD_TARGET)
    stop = len(rest)
    for mark in (b"/", b"?"):
        at = rest.find(mark)
        if 0 <= at < stop:
            stop = at
    authority = rest[:stop].decode("latin-1")
    host = headers.get("host")
    # _valid_host refuses userinfo ("@") and an empty authority.
    if not _valid_host(authority) or (host is not None and host.lower() != authority.lower()):
        raise _Reject(R.BAD_TARGET)
    headers["host"] = authority
    path = rest[stop:]
    return path if path[:1] == b"/" else b"/" + path


class _ChunkedBody:
    """A chunked request body read beside llhttp, for what llhttp does not bound.

    httptools reports no chunk extensions, so the bytes of each chunk-size line and the
    extension bytes of the whole body are counted here (over ``_CHUNK_LINE_MAX`` or
    ``_CHUNK_EXT_MAX``: 400), and so are the trailer section's (over ``max_trailer``: 431).
    ``scan`` reads the same bytes before httptools is given them and says where the body
    ends, so that what follows it (a pipelined request) is fed apart. llhttp remains the
    judge of the syntax (this reads just enough of it to find lines); the two must agree
    on where the body ends, or the request is refused (``HttpProtocol._feed``).
    """

    __slots__ = ("line", "left", "extensions", "trailers", "trailer_line", "in_trailers", "max_trailer", "done")

    def __init__(self, max_trailer: int) -> None:
        self.line = b""  # the chunk-size line so far (bounded: at most _CHUNK_LINE_MAX + 1 bytes)
        self.left = 0  # bytes of chunk data, and its CRLF, still to come
        self.extensions = 0
        self.in_trailers = False
        self.trailers = 0  # bytes of the trailer section so far
        self.trailer_line = 0  # bytes of its current line so far, without LF
        self.max_trailer = max_trailer
        self.done = False

    def scan(self, data: bytes, pos: int) -> int:
        """Read ``data[pos:]``: the offset just past the body's end, or -1 when it ends later.

        Raises ``_Reject`` when a bound is passed."""
        end = len(data)
        while pos < end:
            if self.left:  # chunk data: nothing to read in it
                step = min(self.left, end - pos)
                self.left -= step
                pos += step
                continue
            newline = data.find(b"\n", pos)
            stop = end if newline < 0 else newline
            if self.in_trailers:
                if self._trailer_bytes(stop - pos, newline >= 0):
                    self.done = True
                    return newline + 1
            else:
                if len(self.line) + stop - pos > _CHUNK_LINE_MAX + 1:  # + 1: the line's CR
                    raise _Reject(R.CHUNK_LINE_TOO_LONG)
                self.line += data[pos:stop]
                if newline >= 0:
                    self._size_line()
            if newline < 0:
                return -1
            pos = newline + 1
        return -1

    def _size_line(self) -> None:
        """A whole chunk-size line was read: its size says how much data follows."""
        line, self.line = self.line.removesuffix(b"\r"), b""  # no CR: llhttp refuses the line
        size = _CHUNK_SIZE.match(line)
        if size is None:
            raise _Reject(R.BAD_REQUEST)  # as llhttp would: a chunk-size line starts with its size
        self.extensions += len(line) - size.end()
        if self.extensions > _CHUNK_EXT_MAX:
            raise _Reject(R.CHUNK_LINE_TOO_LONG)
        length = int(size.group(), 16)
        if length:
            self.left = length + 2  # its data, then CRLF
        else:
            self.in_trailers = True  # the last chunk: trailer fields, then an empty line

    def _trailer_bytes(self, count: int, line_ends: bool) -> bool:
        """``count`` more bytes of a trailer line (and its LF if ``line_ends``): True at the empty line."""
        self.trailers += count + line_ends
        if self.trailers > self.max_trailer:
            raise _Reject(R.HEADERS_TOO_LARGE)
        self.trailer_line += count
        if not line_ends:
            return False
        empty = self.trailer_line <= 1  # just its CR (a bare LF is llhttp's to refuse)
        self.trailer_line = 0
        return empty


class _Cycle:
    """One request/response exchange; implements ``gateway.server.api.Reply``."""

    __slots__ = (
        "proto", "keep_alive", "buffer", "head_sent", "streaming", "done", "_closed", "_stopping", "_waiter", "on_disconnect",
        "status",
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
        self.status = 0
        """The response's status once its head was sent (0 before): for the access log."""

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
        self.status = status
        # bytes: header lines encoded already (the hot path's constants), so no call for them.
        lines = headers if headers.__class__ is bytes else _header_lines(headers)  # type: ignore[arg-type]
        proto = self.proto
        cycles = proto.cycles
        if (
            self.keep_alive and proto.http11 and proto.idle_timer is not None and self._waiter is None
            and len(cycles) == 1 and cycles[0] is self and not proto.reading_paused and not proto.state.shutting_down
        ):
            # The common case, inline (_emit, _connection_header, _finish, _cycle_done): the
            # connection's only exchange, kept alive, nobody waiting on it: write it, and the
            # connection is idle again (its idle timer runs already: it reads last_active).
            self.done = True
            cycles.popleft()
            proto.transport.write(b"%b%b%bcontent-length: %d\r\n\r\n%b" % (  # type: ignore[union-attr]
                _STATUS_LINES[status], _SERVER_HEADER, lines, len(body), body
            ))
            proto.last_active = proto.loop.time()
            return
        # One format operation for the whole response (content-length in it, not a bytes of its own).
        proto._emit(self, b"%b%b%bcontent-length: %d\r\n%b\r\n%b" % (
            _STATUS_LINES[status], _SERVER_HEADER, lines, len(body), self._connection_header(), body
        ))
        self._finish()

    def start_stream(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Status line and headers of a chunked response (SSE)."""
        if self.head_sent or self._closed:
            return
        self.head_sent = True
        self.status = status
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
        self.host_lines = 0  # counted apart: repeated lines are joined in ``headers``
        self.content_length = -1
        self.chunks: _ChunkedBody | None = None  # a chunked body being read
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
        try:
            self._feed(data)
        except _Reject as exc:
            self._reject(exc.response)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._reject(cause.response if isinstance(cause, _Reject) else R.BAD_REQUEST)
            if not isinstance(cause, _Reject):
                log.warning("parser callback failed", exc_info=cause)
        except httptools.HttpParserUpgrade:
            self._reject(R.BAD_REQUEST)
        except httptools.HttpParserError as exc:
            self._reject(self._refusal(str(exc)))
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

    def _feed(self, data: bytes) -> None:
        """Give ``data`` to httptools, cut where a header section or a body ends.

        The cuts change nothing for llhttp (it reads a stream); they let a chunked body be
        read beside it from its first byte (``_ChunkedBody``), which needs to know where each
        body starts: after the header section (its first blank line), after ``Content-Length``
        bytes, after the chunked body's end. Usually there is one piece: a whole request, or
        a part of one."""
        feed = self.parser.feed_data
        start = 0
        end = len(data)
        view: memoryview | None = None
        while start < end:
            chunked_end = False
            if self.in_headers:
                cut = self._head_end(data, start)
            elif self.chunks is not None:
                cut = self.chunks.scan(data, start)
                chunked_end = cut >= 0
            elif self.content_length >= 0:
                cut = start + self.content_length - self.body_size
            else:
                cut = end
            if cut <= start or cut >= end:  # (cut <= start cannot happen; never loop without feeding)
                cut = end
            if start == 0 and cut == end:
                feed(data)
            else:
                if view is None:
                    view = memoryview(data)
                feed(view[start:cut])
            start = cut
            if chunked_end and self.in_message:
                raise _Reject(R.BAD_FRAMING)  # llhttp reads the chunked body as longer than we do

    def _head_end(self, data: bytes, start: int) -> int:
        """Offset in ``data`` just past the blank line that ends the header section being
        read, or ``len(data)``. Raises ``_Reject`` (431) when the section outgrows
        ``max_header_bytes``: httptools would buffer it without limit."""
        found = -1
        tail = self.tail  # the end of the previous read, if the section began there
        if tail:
            joint = (tail + data[start : start + 3]).find(b"\r\n\r\n")
            if joint >= 0:
                found = start + joint + 4 - len(tail)
        if found < 0:
            found = data.find(b"\r\n\r\n", start)
            if found >= 0:
                found += 4
        if found >= 0:
            size = self.header_bytes + found - 4 - start
            # Leading blank lines may end no section (llhttp skips them): count them, search on.
            self.header_bytes += found - start
            self.tail = b""
        else:
            size = self.header_bytes = self.header_bytes + len(data) - start
            self.tail = (tail + data[start:])[-3:] if len(data) - start < 3 else data[-3:]
        if size > self.config.max_header_bytes:
            raise _Reject(R.HEADERS_TOO_LARGE)
        return found if found >= 0 else len(data)

    def _refusal(self, reason: str) -> bytes:
        """The answer to input llhttp refused, from its reason: 400 unless the refusal is one
        of those the module docstring gives another status."""
        if reason in _VERSION_REASONS:
            return R.VERSION_NOT_SUPPORTED
        if reason in _CODING_REASONS:  # refused in the header section: the version was one
            version = self.parser.get_http_version()
            if version not in _VERSIONS:
                return R.VERSION_NOT_SUPPORTED
            return R.NOT_IMPLEMENTED if version == "1.1" else R.BAD_FRAMING
        return R.BAD_REQUEST

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_headers = True
        self.in_message = True
        self.headers_pending = True
        self.url = b""
        self.headers = {}
        self.header_count = 0
        self.host_lines = 0
        self.content_length = -1
        self.chunks = None
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
        if not self.in_headers:
            return  # a trailer field: dropped, never merged into the fields already checked
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < _HEADER_NAMES_MAX:
                _HEADER_NAMES[name] = key
        if key == "host":
            self.host_lines += 1
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
        # In the order of the module docstring: nothing is read of a request whose version
        # or framing is refused, so those are judged first.
        version = self.parser.get_http_version()
        if version not in _VERSIONS:
            raise _Reject(R.VERSION_NOT_SUPPORTED)
        headers = self.headers
        self._check_framing(headers, version)
        self._check_host(headers, version)
        self._check_target(headers)

    def _check_framing(self, headers: dict[str, str], version: str) -> None:
        """``Transfer-Encoding`` and ``Content-Length``: at most one, and each one we can read."""
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if coding is not None:
            if length is not None or version == "1.0":  # request smuggling guard; 1.0 has no codings
                raise _Reject(R.BAD_FRAMING)
            if coding.lower() != "chunked":  # joined lines too: "chunked, chunked" is not chunked
                raise _Reject(R.NOT_IMPLEMENTED)
            self.chunks = _ChunkedBody(self.config.max_header_bytes)
        elif length is not None:
            if not (length.isdigit() and length.isascii()):
                raise _Reject(R.BAD_REQUEST)
            self.content_length = int(length)
            if self.content_length > self.config.max_body_bytes:
                raise _Reject(R.PAYLOAD_TOO_LARGE)

    def _check_host(self, headers: dict[str, str], version: str) -> None:
        """One valid ``Host`` line; HTTP/1.1 requires it, HTTP/1.0 may leave it out."""
        host = headers.get("host")
        if host is None:
            if version == "1.1":
                raise _Reject(R.BAD_HOST)
        elif self.host_lines > 1 or not _valid_host(host):
            raise _Reject(R.BAD_HOST)

    def _check_target(self, headers: dict[str, str]) -> None:
        """No fragment; an absolute-form target becomes its path, and its authority the Host."""
        url = self.url
        if b"#" in url:
            raise _Reject(R.BAD_TARGET)
        if url[:1] != b"/" and url != b"*":  # absolute-form: llhttp refused every other form
            self.url = _absolute_path(url, headers)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.config.max_body_bytes:
            raise _Reject(R.PAYLOAD_TOO_LARGE)
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.chunks is not None:
            done, self.chunks = self.chunks.done, None
            if not done:
                raise _Reject(R.BAD_FRAMING)  # llhttp ended the chunked body before we did
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
