"""The stdio front: the gateway's aggregate over stdin/stdout (``mcp-gateway stdio``).

A desktop client (Claude Desktop, Cursor, an IDE) spawns the gateway like any
stdio MCP server and speaks newline-delimited JSON-RPC, handshake era. Nothing
here dispatches: each message goes to the same ``McpFront`` methods the HTTP
front uses, so the catalog, routing and admission are the same:

* ``initialize`` -> ``front.initialize(msg, reply)``; the session it creates is the
  one session of this connection, and its GET-stream slot (``session.stream``)
  gets a long-lived reply, so ``broadcast`` (list_changed) and resource updates
  reach stdout;
* a request -> ``front.request(msg, ctx, reply)`` in a task of its own (requests
  overlap; answers may come out of order, as JSON-RPC allows);
* a notification or a response (to a server-to-client request a backend sent
  through the gateway) -> ``front.accept_client_message(msg, ctx)``.

Each request gets a ``_LineReply`` (the ``Reply`` contract of
``gateway.server.api``): a whole answer is one stdout line, a 202 with no body
writes nothing, and when the front streams (progress, log lines, relayed
requests) each SSE ``message`` event it writes becomes one line; SSE comments
(keep-alives) are dropped. Lines go out whole, one at a time.

stdout carries JSON-RPC only: ``claim_stdout`` keeps a private copy of the
real stdout for the protocol and points fd 1 (and ``sys.stdout``) at stderr,
so a stray ``print`` or an inherited child cannot corrupt the stream. Logs go
to stderr. At stdin EOF the requests in flight get a moment to finish; then
(or at once on SIGTERM/SIGINT) the gateway stops, backends included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

from gateway.errors import GatewayError, InternalError, InvalidRequest, RequestTooLarge, error_body
from gateway.front.sessions import RequestContext, Session
from gateway.protocol.jsonrpc import UNSET, Message, decode_message
from gateway.protocol.versions import LATEST_HANDSHAKE

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["LINE_LIMIT", "StdioFront", "claim_stdout", "serve_stdio"]

log = logging.getLogger("gateway.stdio")

LINE_LIMIT = 16 * 1024 * 1024
"""The longest message line read from stdin (longer ones are answered with an error and skipped)."""
EOF_GRACE = 10.0
"""Seconds the requests in flight at stdin EOF get to finish (``echo ... | mcp-gateway stdio``)."""


def claim_stdout() -> int:
    """Keep the real stdout for JSON-RPC and send everything else written to fd 1 to stderr.

    Returns a new fd for the protocol stream. After this, ``print`` and any child
    that inherits fd 1 write to stderr.
    """
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return fd


def _is_pipe(fd: int) -> bool:
    """Pipes and sockets get non-blocking event-loop transports; files and terminals are used blocking."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


# -- stdout ---------------------------------------------------------------------------------------


class _WriteProtocol(asyncio.Protocol):
    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost()


class LineWriter:
    """Whole lines to stdout, one at a time; a line is never split by another."""

    def __init__(self, fd: int, on_lost: Callable[[], None] | None = None) -> None:
        self._fd = fd
        self._on_lost = on_lost or (lambda: None)
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _WriteProtocol | None = None
        self.closed = False

    async def open(self) -> None:
        if _is_pipe(self._fd):
            loop = asyncio.get_running_loop()
            pipe = open(self._fd, "wb", buffering=0, closefd=False)  # noqa: SIM115 - owned by the transport
            self._transport, self._protocol = await loop.connect_write_pipe(lambda: _WriteProtocol(self._lost), pipe)

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            log.info("stdout closed by the client")
            self._on_lost()

    def line(self, data: bytes) -> None:
        """Write one JSON-RPC message as one line."""
        if self.closed:
            return
        if b"\n" in data or b"\r" in data:
            # Only insignificant whitespace can hold a raw line break in JSON (a backend's pretty-printed result).
            data = data.replace(b"\r", b" ").replace(b"\n", b" ")
        data += b"\n"
        if self._transport is not None:
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # the reader went away
            log.info("stdout write failed: %s", exc)
            self._lost()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flush what is buffered, then close."""
        self.closed = True  # our own close: not the client going away
        if self._transport is not None and self._protocol is not None:
            if not self._transport.is_closing():
                self._transport.close()  # closes once the buffer is written
            try:
                await asyncio.wait_for(asyncio.shield(self._protocol.lost), timeout)
            except asyncio.TimeoutError:
                self._transport.abort()
        try:
            os.close(self._fd)
        except OSError:
            pass


# -- replies --------------------------------------------------------------------------------------


class _LineReply:
    """The ``Reply`` of one request (or of the session's notification stream) as stdout lines."""

    __slots__ = ("_out", "_closed", "_buffer", "_waiter", "headers", "on_disconnect")

    def __init__(self, out: LineWriter) -> None:
        self._out = out
        self._closed = False
        self._buffer = b""
        self._waiter: asyncio.Event | None = None
        self.headers: Sequence[tuple[str, str]] | bytes = ()
        self.on_disconnect: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed or self._out.closed

    def send(self, status: int, headers: Sequence[tuple[str, str]] | bytes, body: bytes) -> None:
        if self.closed:
            return
        self.headers = headers
        if body:  # a 202 (a notification or a cancelled request) has none: nothing is written
            self._out.line(body)
        self._finish()

    def start_stream(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.headers = headers

    def write(self, data: bytes) -> None:
        """SSE from the front: each ``message`` event becomes one line; comments are dropped."""
        if self.closed:
            return
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + 2 :]
            payload = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
            if payload:
                self._out.line(b"\n".join(payload))
        self._buffer = buffer

    def end(self) -> None:
        self._finish()

    async def wait_closed(self) -> None:
        if self.closed:
            return
        if self._waiter is None:
            self._waiter = asyncio.Event()
        await self._waiter.wait()

    def disconnect(self) -> None:
        """The client is gone (stdin EOF at shutdown, or stdout closed) before this reply ended."""
        if self._closed:
            return
        callback, self.on_disconnect = self.on_disconnect, None
        self._finish()
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("on_disconnect callback failed")

    def _finish(self) -> None:
        self._closed = True
        self._buffer = b""
        if self._waiter is not None:
            self._waiter.set()


def _header(headers: Sequence[tuple[str, str]] | bytes, name: str) -> str | None:
    if isinstance(headers, (bytes, bytearray)):
        for line in bytes(headers).decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


# -- the front ------------------------------------------------------------------------------------


class StdioFront:
    """One stdio client in front of a started ``Gateway``: lines in, ``McpFront`` calls, lines out."""

    def __init__(self, gateway: Gateway, out: LineWriter) -> None:
        self.gateway = gateway
        self.front = gateway.front
        self.out = out
        self.session: Session | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies: set[_LineReply] = set()
        # Before initialize: only ping is answered (by the front, with a context of no session).
        self._preinit: RequestContext | None = None

    def feed(self, line: bytes) -> None:
        """One line from stdin."""
        line = line.strip()
        if not line:
            return
        try:
            msg = decode_message(line)
        except GatewayError as err:
            self.out.line(error_body(None, err))
            return
        try:
            self._dispatch(msg)
        except GatewayError as err:
            if msg.id is not UNSET:
                self.out.line(error_body(msg.id, err))
        except Exception:  # a bug: log it, never show it
            log.exception("unhandled error handling %s", msg.method if msg.method is not UNSET else "a response")
            if msg.id is not UNSET and msg.method is not UNSET:
                self.out.line(error_body(msg.id, InternalError("internal gateway error")))

    def _dispatch(self, msg: Message) -> None:
        if msg.method == "initialize":
            self._initialize(msg)
            return
        session = self.session
        if msg.id is UNSET or msg.method is UNSET:
            if session is None:
                log.debug("%s before initialize dropped", msg.method if msg.method is not UNSET else "a response")
                return
            # After the request tasks already made have taken their first step, so a cancel that
            # follows its request in one read still finds it in flight.
            asyncio.get_running_loop().call_soon(self._accept, msg, session.context)
            return
        if session is not None:
            ctx = session.context
        elif msg.method == "ping":  # allowed before initialize
            if self._preinit is None:
                self._preinit = RequestContext("handshake", LATEST_HANDSHAKE, None)
            ctx = self._preinit
        else:
            raise InvalidRequest("send initialize first", reason="session_required")
        task = asyncio.get_running_loop().create_task(self._request(msg, ctx))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept(self, msg: Message, ctx: RequestContext) -> None:
        try:
            self.front.accept_client_message(msg, ctx)
        except Exception:
            log.exception("unhandled error accepting %s", msg.method if msg.method is not UNSET else "a response")

    def _initialize(self, msg: Message) -> None:
        reply = _LineReply(self.out)
        self.front.initialize(msg, reply)
        session_id = _header(reply.headers, "mcp-session-id")
        session = self.front.sessions.get(session_id) if session_id is not None else None
        if session is None:
            return
        old, self.session = self.session, session
        if old is not None:  # initialized again: the new session replaces the old one (its stream ends)
            if old.stream is not None:
                self._replies.discard(old.stream)  # type: ignore[arg-type]
            self.front.sessions.end(old.id)
        stream = _LineReply(self.out)
        self._replies.add(stream)
        session.stream = stream

    async def _request(self, msg: Message, ctx: RequestContext) -> None:
        reply = _LineReply(self.out)
        self._replies.add(reply)
        try:
            body = await self.front.request(msg, ctx, reply)
            if body is not None:
                reply.send(200, (), body)
        except Exception:  # a bug: log it, never show it
            log.exception("unhandled error answering %s", msg.method)
            reply.send(500, (), error_body(msg.id, InternalError("internal gateway error")))
        finally:
            self._replies.discard(reply)
            if not reply.closed:
                reply.end()

    async def drain(self, timeout: float) -> None:
        """Let the requests in flight finish, for at most ``timeout`` seconds."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        """The client is gone: every open reply is disconnected and the requests still running cancelled."""
        for reply in list(self._replies):
            reply.disconnect()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- stdin ----------------------------------------------------------------------------------------


async def _open_stdin(fd: int) -> asyncio.StreamReader:
    """A StreamReader on stdin: an event-loop pipe transport, or (files, terminals) a reading thread."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    if _is_pipe(fd):
        pipe = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 - owned by the transport
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return reader

    def pump() -> None:
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                loop.call_soon_threadsafe(reader.feed_data, chunk)
        except (OSError, RuntimeError):  # the loop may be closed by the time stdin ends
            pass
        try:
            loop.call_soon_threadsafe(reader.feed_eof)
        except RuntimeError:
            pass

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return reader


async def _read_lines(reader: asyncio.StreamReader, front: StdioFront) -> None:
    """Feed stdin to the front line by line until EOF; an over-long line is answered with an error."""
    discarding = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial and not discarding:
                front.feed(exc.partial)  # a last line without its newline
            return
        except asyncio.LimitOverrunError as exc:
            await reader.read(exc.consumed)  # drop what was read of the long line, then look for its end
            discarding = True
            continue
        if discarding:
            discarding = False
            err = RequestTooLarge(f"message line longer than {LINE_LIMIT} bytes")
            front.out.line(error_body(None, err))
            continue
        front.feed(line)


# -- running --------------------------------------------------------------------------------------


async def serve_stdio(gateway: Gateway, *, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Start ``gateway``, serve one client on stdin/stdout until EOF or SIGTERM, stop it; returns 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass
    out = LineWriter(stdout_fd, on_lost=stop.set)
    front: StdioFront | None = None
    reading: asyncio.Task[None] | None = None
    try:
        await out.open()
        if not await _until(stop, gateway.start()):
            log.info("stopped while starting")
            return 0
        for name, state, error in gateway.status():
            log.info("backend %s: %s%s", name, state, f" ({error})" if error else "")
        front = StdioFront(gateway, out)
        reading = loop.create_task(_read_lines(await _open_stdin(stdin_fd), front))
        log.info("mcp-gateway serving MCP on stdio")
        if await _until(stop, reading):
            log.info("stdin closed: stopping")
            await _until(stop, front.drain(EOF_GRACE))
        else:
            log.info("signalled: stopping")
        return 0
    finally:
        if reading is not None:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
        if front is not None:
            await front.close()
        await gateway.stop()
        await out.aclose()
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _until(stop: asyncio.Event, awaitable: Any) -> bool:
    """Run ``awaitable`` unless ``stop`` is set first (then it is cancelled); True if it finished."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False
