"""The express lane: the common call answered in callbacks, with no task.

Most traffic through a gateway is one kind of request: a handshake-era
``tools/call`` in a known session, routed to a ready HTTP backend that shares
one upstream session. The general path (``McpFront.__call__``) serves it in a
coroutine: a task switch to start it, futures to wait on the backend, and the
whole request path's generality on the way. At concurrency 1 that overhead,
not the forwarding, is most of the latency the gateway adds
(``benchmarks/README.md``, "Latency at c=1").

``ExpressLane`` is called by the HTTP protocol straight from its read callback.
It either takes the request (returns True: it is admitted and sent upstream now,
and answered from the backend connection's read callback), or declines (returns
False) *before admission and before doing anything*, and the general path
serves it as before. It declines whenever anything is not plain: another method
or era, a header set the gate refuses, a missing session, a ``_meta`` (progress
tokens need remapping), tracing on (``[tracing]``: every request, so each gets its
span and its upstream trace context on the general path), an unknown name, a
backend that cannot take the fast send now (``Backend.express_ready``: not HTTP,
not ready, per-client sessions, a pool with no idle connection but room to open
one). With the pool full the call waits in the pool's line, still without a
task, and is sent when a connection comes back.

The lane uses the same parts as the general path: the header gate
(``gateway.front.gate``), ``Routing.resolve`` and ``Routing.admit`` (the one
admission call; a refusal or a local answer is sent at once), the client stream
(``gateway.front.streams``) and the answers (``gateway.front.answers``). After
admission it never declines, so nothing admitted is admitted twice.

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

from gateway.backends.base import BackendCall, RequestCancelled
from gateway.errors import GatewayError, InternalError, error_body
from gateway.front.answers import JSON_HEADERS, request_failed, send_error, translate
from gateway.front.routing import Answered
from gateway.front.streams import ClientStream
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_call, encode, response_bytes
from gateway.protocol.versions import HANDSHAKE_VERSIONS
from gateway.server.api import Reply, Request
from gateway.server.responses import JSON_HEADER_LINES

if TYPE_CHECKING:
    from gateway.backends.base import Backend
    from gateway.front.endpoint import McpFront
    from gateway.front.sessions import Session
    from gateway.policy.admission import Route

__all__ = ["ExpressLane"]

log = logging.getLogger("gateway.express")

_decode_name = msgspec.json.Decoder(str).decode
_HANDSHAKE = frozenset(HANDSHAKE_VERSIONS)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, KeyError)
# Requests retried by the general path: held here so they are not collected mid-flight.
_retries: set[asyncio.Task[None]] = set()


class ExpressLane:
    """``lane(request, reply) -> bool``: take and start the request, or decline untouched."""

    __slots__ = ("front", "path", "gate", "sessions", "routing", "admit", "catalog", "slow_calls", "keepalive")

    def __init__(self, front: McpFront) -> None:
        self.front = front
        self.rebind()

    def rebind(self) -> None:
        """Take the front's current gate, routing and admission (again, after a reload): the lane
        keeps them bound, one attribute read less per request."""
        front = self.front
        # With tracing on (``front.tracer``) no path matches, so the lane declines every request at
        # its first check, at no cost to the untraced lane: a traced call needs its span and the
        # upstream trace context, which the general path makes (``McpFront._traced``).
        self.path = front.path if front.tracer is None else None
        self.gate = front.gate
        self.sessions = front.sessions
        self.routing = front.routing
        self.admit = front.routing.admit_call
        self.catalog = front.catalog
        self.slow_calls = front.slow_calls
        self.keepalive = front.keepalive

    def __call__(self, request: Request, reply: Reply) -> bool:
        if request.method != "POST" or request.path != self.path:
            return False
        headers = request.headers
        session_id = headers.get("mcp-session-id")
        version = headers.get("mcp-protocol-version")
        if session_id is None or (version is not None and version not in _HANDSHAKE):
            return False
        error, principal = self.gate.check(request)
        if error is not None:
            return False  # the general path answers the refusal, or awaits the keys a PENDING needs
        try:
            msg = decode_call(request.body)  # the envelope and the params' top level in one pass
            params = msg.params
            if msg.method != "tools/call" or msg.id is UNSET or params is UNSET or msg.jsonrpc != "2.0":
                return False
            name = _decode_name(params["name"])  # type: ignore[index]
            if "_meta" in params:
                return False
            route = self.catalog.snapshot.router.resolve_tool(name)
            if route is None:
                route = self.routing.fallback("tool", name, None)  # passthrough, or the unknown-name error
        except _DECODE_ERRORS:
            return False  # the general path gives the precise error
        except GatewayError:
            return False  # an unknown name: the general path answers it
        session = self.sessions.get(session_id, principal)
        if session is None:
            return False  # unknown, or another principal's: the general path answers 404
        first = route[0]
        if not first.express_ready():
            return False
        # The last decline is behind us: admit, once, and from here on answer whatever happens.
        ctx = session.context
        ctx.principal = principal
        client = request.client
        ctx.client_ip = client[0] if client is not None else None
        note = None
        try:
            # Routing.admit, with its common case ("go") inline: one call less per request.
            verdict = self.admit(principal, ctx, "tools/call", name, route, params)
            if verdict is not None:
                note = verdict.note
                result = verdict.result
                if result is not None and verdict.error is None:
                    # A local answer (a cache hit), sent now: Routing.apply's work, inline (no exception raised).
                    outcome = self.front.outcome
                    if outcome is not None:
                        outcome(principal, ctx, "tools/call", name, None, None, None, note)
                    reply.send(200, JSON_HEADER_LINES, response_bytes(msg.id, result))  # type: ignore[arg-type]
                    return True
                if verdict.error is not None or verdict.route is not None or verdict.params is not None or verdict.wait is not None:
                    route = self.routing.apply(ctx, "tools/call", name, route, params, verdict)
                # else a note only (the observer's): go as routed, without the call
            backend, original = route
        except GatewayError as err:
            _refused(reply, msg, err)
            return True
        except Answered as local:
            if local.wait is None:
                reply.send(200, JSON_HEADER_LINES, response_bytes(msg.id, local.result))  # type: ignore[arg-type]
                return True
            self._follow(msg, session, name, reply, params, local)
            return True
        params["name"] = Raw(encode(original))
        call = _Call(self.front, msg, session, route, name, reply, Raw(encode(params)), note)
        if backend is not first and not backend.express_ready():
            call.answered(None, None, True)  # rerouted by admission to a busy backend: the general send takes it
        else:
            backend.express(msg.method, call.params, call, call.send, call.answered)  # type: ignore[arg-type]
        # As the general path: a long call switches to SSE keep-alive comments, and the
        # client's notifications/cancelled finds the call by its id.
        self.slow_calls.add(call, self.keepalive, _Call.keep_alive, call)
        session.inflight[msg.id] = (backend, call)
        return True

    def _follow(
        self, msg: Message, session: Session, name: str, reply: Reply, params: dict[str, Raw], local: Answered
    ) -> None:
        """A call coalesced onto an identical one in flight: answered from the callback when that one
        ends, or, with nothing to share, sent then by the general send, as the call it was admitted as."""
        route: Route = local.route  # type: ignore[assignment]
        backend, original = route
        params["name"] = Raw(encode(original))
        call = _Call(self.front, msg, session, route, name, reply, Raw(encode(params)))
        self.slow_calls.add(call, self.keepalive, _Call.keep_alive, call)  # a long wait gets keep-alive comments too
        session.inflight[msg.id] = (backend, call)
        local.wait.then(call.settled)  # type: ignore[union-attr]


def _refused(reply: Reply, msg: Message, err: GatewayError) -> None:
    """Admission refused the call: its error now, as the general path sends it."""
    body = request_failed(msg, reply, err)
    if body is not None:
        reply.send(200, JSON_HEADER_LINES, body)


class _Call:
    """One express call in flight, and its own ``Ticket`` (``upstream_id``, ``handle``).

    The ``ClientStream`` that turns progress, log lines, server requests and
    keep-alive comments into SSE is made only when one of those happens: a call
    answered with plain JSON never needs it.
    """

    __slots__ = (
        "front", "msg", "session", "backend", "route", "name", "reply", "params", "stream", "upstream_id", "handle",
        "note",
    )

    def __init__(
        self, front: McpFront, msg: Message, session: Session, route: Route, name: str, reply: Reply, params: Raw,
        note: Any = None,
    ) -> None:
        self.front = front
        self.msg = msg
        self.session = session
        self.backend: Backend = route[0]
        self.route = route
        self.name = name  # as exposed, for the outcome hook
        self.reply = reply
        self.params = params  # as sent upstream, for a retry
        self.stream: ClientStream | None = None
        self.upstream_id: Any = None
        self.handle: Any = None
        self.note = note  # what admission left for this call's outcome (Verdict.note)

    def send(self, message: Message) -> None:
        """The backend's sink: a message before the response (the response switches to SSE)."""
        self._client_stream().send(message)

    def keep_alive(self) -> None:
        """Deadline callback: the call is slow; SSE keep-alive comments from now on."""
        self._client_stream().keep_alive(self.front.keepalive)

    def _client_stream(self) -> ClientStream:
        stream = self.stream
        if stream is None:
            stream = self.stream = ClientStream(self.front.forwarder, self.reply, self.backend, self.session.context, None)
        return stream

    def answered(self, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """The backend's outcome (``gateway.backends.base.ExpressAnswer``): answer the client."""
        if retry:  # still in flight: the keep-alive and cancel registrations stay
            task = asyncio.get_running_loop().create_task(self._again())
            _retries.add(task)
            task.add_done_callback(_retries.discard)
            return
        msg, stream = self.msg, self.stream
        self.front.slow_calls.discard(self)
        self.session.inflight.pop(msg.id, None)
        outcome = self.front.outcome
        if outcome is not None:
            ctx = self.session.context
            outcome(ctx.principal, ctx, msg.method, self.name, self.route, answer, error, self.note)  # type: ignore[arg-type]
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
                send_error(self.reply, msg.id, InternalError("internal gateway error"))

    def settled(self, answer: Message | None, error: BaseException | None) -> None:
        """A coalesced call's share (``Pending.then``): answered as the backend's own outcome, or,
        with nothing to share, sent upstream now by the general send."""
        self.answered(answer, error, answer is None and error is None)

    async def _again(self) -> None:
        """The general path's send, with its own retries (a new connection, a new session)."""
        try:
            answer = await self.backend.request(
                BackendCall(
                    self.msg.method, self.params, sink=self.send, era="handshake", ticket=self,  # type: ignore[arg-type]
                    principal=self.session.context.principal,
                )
            )
        except Exception as exc:  # GatewayError and RequestCancelled are answers; anything else is a 500
            self.answered(None, exc, False)
        else:
            self.answered(answer, None, False)

    def _answer(self, answer: Message | None, error: BaseException | None) -> None:
        msg, reply = self.msg, self.reply
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
            body: bytes | None = request_failed(msg, reply, error)
            status = 200
        else:
            assert answer is not None
            if answer.result is not UNSET:
                body, status = response_bytes(msg.id, answer.result), 200  # type: ignore[arg-type]
            else:
                body, status = translate(msg, self.session.context, "handshake", answer)
        if body is None:
            return
        if started:
            self._client_stream().finish(body)
        elif status == 200:
            reply.send(200, JSON_HEADER_LINES, body)  # type: ignore[arg-type]
        else:
            reply.send(status, JSON_HEADERS, body)
