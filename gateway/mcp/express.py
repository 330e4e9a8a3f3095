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
unknown name, a backend that is not HTTP or not ready, per-client sessions, no
idle pool connection.

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
from typing import TYPE_CHECKING

import msgspec

from gateway.backends.base import RequestCancelled
from gateway.errors import GatewayError, InternalError, error_body
from gateway.mcp.jsonrpc import UNSET, Message, Raw, encode, response_bytes
from gateway.mcp.protocol_versions import HANDSHAKE_VERSIONS
from gateway.mcp.sessions import RequestContext
from gateway.server.api import Reply, Request

if TYPE_CHECKING:
    from gateway.mcp.front import McpFront, _ClientStream

__all__ = ["ExpressLane"]

log = logging.getLogger("gateway.express")

_decode_message = msgspec.json.Decoder(Message).decode
_decode_params = msgspec.json.Decoder(dict[str, Raw]).decode
_decode_name = msgspec.json.Decoder(str).decode
_HANDSHAKE = frozenset(HANDSHAKE_VERSIONS)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, KeyError)
# Requests retried by the general path: held here so they are not collected mid-flight.
_retries: set[asyncio.Task[None]] = set()


class ExpressLane:
    """``lane(request, reply) -> bool``: take and start the request, or decline untouched."""

    __slots__ = ("front", "path", "verdicts", "sessions", "catalog", "slow_calls", "keepalive", "stream_class")

    def __init__(self, front: McpFront) -> None:
        from gateway.mcp.front import _ClientStream  # the front imports this module

        self.front = front
        self.path = front.path
        self.verdicts = front._verdicts
        self.sessions = front.sessions
        self.catalog = front.catalog
        self.slow_calls = front._slow_calls
        self.keepalive = front._keepalive
        self.stream_class = _ClientStream

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
        if self.verdicts.get(key, key) is not None:
            return False
        try:
            msg = _decode_message(request.body)
            if msg.method != "tools/call" or msg.id is UNSET or msg.params is UNSET or msg.jsonrpc != "2.0":
                return False
            params = _decode_params(msg.params)  # type: ignore[arg-type]
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
        stream = self.stream_class(self.front, reply, backend, RequestContext("handshake", session.protocol_version, session), None)
        body_params = Raw(encode(params))
        call = _Call(self.front, msg, stream, body_params)
        if not backend.express(msg.method, body_params, stream, stream.send, call.answered):  # type: ignore[arg-type]
            return False
        # As the general path: a long call switches to SSE keep-alive comments, and the
        # client's notifications/cancelled finds the call by its id.
        self.slow_calls.add(stream, self.keepalive, stream.keep_alive, self.keepalive)
        session.inflight[msg.id] = (backend, stream)
        return True


class _Call:
    """One express call in flight: what its answer needs."""

    __slots__ = ("front", "msg", "stream", "params")

    def __init__(self, front: McpFront, msg: Message, stream: _ClientStream, params: Raw) -> None:
        self.front = front
        self.msg = msg
        self.stream = stream
        self.params = params  # as sent upstream, for a retry

    def answered(self, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """The backend's outcome (``gateway.backends.base.ExpressAnswer``): answer the client."""
        front, stream, msg = self.front, self.stream, self.msg
        if retry:  # still in flight: keep-alive and cancel registrations stay
            task = asyncio.get_running_loop().create_task(self._again())
            _retries.add(task)
            task.add_done_callback(_retries.discard)
            return
        front._slow_calls.discard(stream)
        if stream.keepalive is not None:
            stream.keepalive.cancel()
        session = stream.ctx.session
        if session is not None:
            session.inflight.pop(msg.id, None)
        try:
            self._answer(answer, error)
        except Exception:  # a bug: log it, answer 500, never show it
            log.exception("express call %r failed", msg.method)
            if stream.started:
                stream.reply.end()
            else:
                front._send_error(stream.reply, msg.id, InternalError("internal gateway error"))

    async def _again(self) -> None:
        """The general path's send, with its own retries (a new connection, a new session)."""
        stream = self.stream
        try:
            answer = await stream.backend.request(
                self.msg.method, self.params, sink=stream.send, era="handshake", ticket=stream  # type: ignore[arg-type]
            )
        except Exception as exc:  # GatewayError and RequestCancelled are answers; anything else is a 500
            self.answered(None, exc, False)
        else:
            self.answered(answer, None, False)

    def _answer(self, answer: Message | None, error: BaseException | None) -> None:
        front, stream, msg, reply = self.front, self.stream, self.msg, self.stream.reply
        if isinstance(error, RequestCancelled):
            # The client cancelled: it expects no JSON-RPC response.
            if stream.started:
                reply.end()
            elif not reply.closed:
                reply.send(202, (), b"")
            return
        if error is not None:
            if not isinstance(error, GatewayError):
                raise error
            if stream.started:
                stream.finish(error_body(msg.id, error))
                return
            body: bytes | None = front._request_failed(msg, reply, error)
            status = 200
        else:
            assert answer is not None
            if answer.result is not UNSET:
                body, status = response_bytes(msg.id, answer.result), 200  # type: ignore[arg-type]
            else:
                body, status = front._translate(msg, stream.ctx, "handshake", answer)
        if body is None:
            return
        if stream.started:
            stream.finish(body)
        elif status == 200:
            reply.send(200, b"content-type: application/json\r\n", body)  # type: ignore[arg-type]
        else:
            reply.send(status, (("content-type", "application/json"),), body)

