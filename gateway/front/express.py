"""The express lane: the common call answered in callbacks, with no task.

Most traffic through a gateway is one kind of request: a handshake-era
``tools/call`` in a known session, routed to a ready HTTP backend that shares
one upstream session. The general path (``McpFront.__call__``) serves it in a
coroutine: a task switch to start it, futures to wait on the backend, and the
whole request path's generality on the way. At concurrency 1 that overhead,
not the forwarding, is most of the latency the gateway adds
(``benchmarks/README.md``, "Latency at c=1").

``ExpressLane`` is called by the HTTP protocol straight from its read callback.
It either takes the request (returns True: it is sent upstream now and answered
from the backend connection's read callback), or declines (returns False)
*before doing anything*, and the general path serves it as before. It declines
whenever anything is not plain: another method or era, an unchecked or refused
header set, a missing session, a ``_meta`` (progress tokens need remapping), an
unknown name, a backend that is not HTTP or not ready, per-client sessions, a
pool that has no idle connection but room to open one (the general path
connects). With the pool full the call waits in the pool's line, still without a
task, and is sent when a connection comes back.

Once taken, the call behaves as the general path would: the same upstream
request, the same ticket for ``notifications/cancelled``, the same SSE switch
for progress, log lines, server-to-client requests and slow-call keep-alive
comments, the same errors and statuses. A failure the general path would
retry (a kept-alive connection the backend had closed, an expired upstream
session) is sent again through ``Backend.request``, which retries it as it
always does, in a task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.backends.base import RequestCancelled
from gateway.errors import GatewayError, InternalError, error_body
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_envelope, decode_params, encode, response_bytes
from gateway.protocol.versions import HANDSHAKE_VERSIONS
from gateway.front.sessions import RequestContext
from gateway.server.api import Reply, Request
from gateway.server.responses import JSON_HEADER_LINES

if TYPE_CHECKING:
    from gateway.backends.base import Backend
    from gateway.front.endpoint import McpFront, _ClientStream
    from gateway.front.sessions import Session

__all__ = ["ExpressLane"]

log = logging.getLogger("gateway.express")

_decode_name = msgspec.json.Decoder(str).decode
_HANDSHAKE = frozenset(HANDSHAKE_VERSIONS)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, KeyError)
# Requests retried by the general path: held here so they are not collected mid-flight.
_retries: set[asyncio.Task[None]] = set()


class ExpressLane:
    """``lane(request, reply) -> bool``: take and start the request, or decline untouched."""

    __slots__ = ("front", "path", "verdicts", "passed", "sessions", "catalog", "slow_calls", "keepalive")

    def __init__(self, front: McpFront) -> None:
        self.front = front
        self.path = front.path
        self.verdicts = front._verdicts
        self.passed: tuple[str | None, ...] | None = None  # the last header set whose verdict was "fine"
        self.sessions = front.sessions
        self.catalog = front.catalog
        self.slow_calls = front._slow_calls
        self.keepalive = front._keepalive

    def __call__(self, request: Request, reply: Reply) -> bool:
        if request.method != "POST" or request.path != self.path:
            return False
        headers = request.headers
        session_id = headers.get("mcp-session-id")
        version = headers.get("mcp-protocol-version")
        if session_id is None or (version is not None and version not in _HANDSHAKE):
            return False
        # The verdict the general path cached for these header values: only "checked, fine" passes.
        key = ("POST", headers.get("host"), headers.get("origin"), headers.get("content-type"), headers.get("accept"))
        # Clients repeat one header set, and a verdict never changes: comparing with the last
        # set that passed is cheaper than hashing its fresh strings for the dict.
        if key != self.passed:
            if self.verdicts.get(key, key) is not None:
                return False
            self.passed = key
        try:
            msg = decode_envelope(request.body)
            if msg.method != "tools/call" or msg.id is UNSET or msg.params is UNSET or msg.jsonrpc != "2.0":
                return False
            params = decode_params(msg.params)  # type: ignore[arg-type]
            name = _decode_name(params["name"])
        except _DECODE_ERRORS:
            return False  # the general path gives the precise error
        if "_meta" in params:
            return False
        route = self.catalog.snapshot.router.resolve_tool(name)
        if route is None:
            return False
        session = self.sessions.get(session_id)
        if session is None:
            return False
        backend, original = route
        params["name"] = Raw(encode(original))
        call = _Call(self.front, msg, session, backend, reply, Raw(encode(params)))
        if not backend.express(msg.method, call.params, call, call.send, call.answered):  # type: ignore[arg-type]
            return False
        # As the general path: a long call switches to SSE keep-alive comments, and the
        # client's notifications/cancelled finds the call by its id.
        self.slow_calls.add(call, self.keepalive, _Call.keep_alive, call)
        session.inflight[msg.id] = (backend, call)
        return True


class _Call:
    """One express call in flight, and its own ``Ticket`` (``upstream_id``, ``handle``).

    The ``_ClientStream`` that turns progress, log lines, server requests and
    keep-alive comments into SSE is made only when one of those happens: a call
    answered with plain JSON never needs it.
    """

    __slots__ = ("front", "msg", "session", "backend", "reply", "params", "stream", "upstream_id", "handle")

    def __init__(self, front: McpFront, msg: Message, session: Session, backend: Backend, reply: Reply, params: Raw) -> None:
        self.front = front
        self.msg = msg
        self.session = session
        self.backend = backend
        self.reply = reply
        self.params = params  # as sent upstream, for a retry
        self.stream: _ClientStream | None = None
        self.upstream_id: Any = None
        self.handle: Any = None

    def send(self, message: Message) -> None:
        """The backend's sink: a message before the response (the response switches to SSE)."""
        self._client_stream().send(message)

    def keep_alive(self) -> None:
        """Deadline callback: the call is slow; SSE keep-alive comments from now on."""
        self._client_stream().keep_alive(self.front._keepalive)

    def _client_stream(self) -> _ClientStream:
        stream = self.stream
        if stream is None:
            from gateway.front.endpoint import _ClientStream  # the front imports this module

            ctx = RequestContext("handshake", self.session.protocol_version, self.session)
            stream = self.stream = _ClientStream(self.front, self.reply, self.backend, ctx, None)
        return stream

    def answered(self, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """The backend's outcome (``gateway.backends.base.ExpressAnswer``): answer the client."""
        if retry:  # still in flight: the keep-alive and cancel registrations stay
            task = asyncio.get_running_loop().create_task(self._again())
            _retries.add(task)
            task.add_done_callback(_retries.discard)
            return
        msg, stream = self.msg, self.stream
        self.front._slow_calls.discard(self)
        self.session.inflight.pop(msg.id, None)
        try:
            if stream is None and error is None and answer.result is not UNSET:  # type: ignore[union-attr]
                # The common answer, inline: the result's bytes with the client's id.
                self.reply.send(200, JSON_HEADER_LINES, response_bytes(msg.id, answer.result))  # type: ignore[arg-type,union-attr]
                return
            if stream is not None and stream.keepalive is not None:
                stream.keepalive.cancel()
            self._answer(answer, error)
        except Exception:  # a bug: log it, answer 500, never show it
            log.exception("express call %r failed", msg.method)
            if stream is not None and stream.started:
                self.reply.end()
            else:
                self.front._send_error(self.reply, msg.id, InternalError("internal gateway error"))

    async def _again(self) -> None:
        """The general path's send, with its own retries (a new connection, a new session)."""
        try:
            answer = await self.backend.request(
                self.msg.method, self.params, sink=self.send, era="handshake", ticket=self  # type: ignore[arg-type]
            )
        except Exception as exc:  # GatewayError and RequestCancelled are answers; anything else is a 500
            self.answered(None, exc, False)
        else:
            self.answered(answer, None, False)

    def _answer(self, answer: Message | None, error: BaseException | None) -> None:
        front, msg, reply = self.front, self.msg, self.reply
        started = self.stream is not None and self.stream.started
        if isinstance(error, RequestCancelled):
            # The client cancelled: it expects no JSON-RPC response.
            if started:
                reply.end()
            elif not reply.closed:
                reply.send(202, (), b"")
            return
        if error is not None:
            if not isinstance(error, GatewayError):
                raise error
            if started:
                self._client_stream().finish(error_body(msg.id, error))
                return
            body: bytes | None = front._request_failed(msg, reply, error)
            status = 200
        else:
            assert answer is not None
            if answer.result is not UNSET:
                body, status = response_bytes(msg.id, answer.result), 200  # type: ignore[arg-type]
            else:
                ctx = RequestContext("handshake", self.session.protocol_version, self.session)
                body, status = front._translate(msg, ctx, "handshake", answer)
        if body is None:
            return
        if started:
            self._client_stream().finish(body)
        elif status == 200:
            reply.send(200, JSON_HEADER_LINES, body)  # type: ignore[arg-type]
        else:
            reply.send(status, (("content-type", "application/json"),), body)
