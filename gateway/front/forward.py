"""Forwarding: a routed, admitted request sent to its backend in the right era, and
what comes back streamed to the client.

``Forwarder.forward`` is the general path's send (the express lane has its own
fast send and falls back to ``Backend.request`` for retries). Toward a backend
the client's own era is used when the backend speaks it; otherwise the request
is translated: the stateless envelope removed before a handshake backend, or
added (with the client's capabilities) before a stateless one. Server-to-client
requests cross the eras through ``gateway.front.bridge``: a handshake backend's
request to a stateless client becomes ``input_required`` (the call is held
until the client retries with ``inputResponses``), and a stateless backend's
``input_required`` is asked of a handshake client on its stream, round by round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.backends.base import Backend, BackendCall, RequestCancelled, Ticket
from gateway.errors import GatewayError, InternalError, InvalidParams, error_body
from gateway.front.answers import JSON_HEADERS, send_error, translate
from gateway.front.bridge import MAX_ROUNDS, PendingCall, PendingCalls
from gateway.front.streams import ClientStream, Relays, spawn
from gateway.policy.admission import Admission
from gateway.protocol.initialize import with_envelope
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, encode, response_bytes
from gateway.protocol.stateless import encode_header_value, param_headers
from gateway.server.responses import JSON_HEADER_LINES as _JSON_HEADER_LINES
from gateway.timers import Deadlines

if TYPE_CHECKING:
    from gateway.catalog.aggregate import Catalog
    from gateway.front.sessions import RequestContext
    from gateway.server.api import Reply

__all__ = ["Forwarder"]


def _strip_envelope(params: dict[str, Raw], meta: Any = None) -> None:
    """Remove the stateless era's ``_meta`` keys (protocol version, capabilities, client
    info, log level) before a request goes to a handshake-era backend. ``meta``: the
    decoded ``_meta`` when the caller has it."""
    if meta is None:
        meta = decode_any(params["_meta"])
    if isinstance(meta, dict):
        kept = {k: v for k, v in meta.items() if not k.startswith("io.modelcontextprotocol/")}
        if kept:
            params["_meta"] = Raw(encode(kept))
        else:
            del params["_meta"]


def _inject_trace(params: dict[str, Raw], trace: Any, meta: Any = None) -> None:
    """Put the request's trace context (``gateway.ops.tracing.Span``) in ``params._meta``, where
    every backend, stdio included, finds it (the OpenTelemetry MCP conventions' carrier). ``meta``:
    the decoded ``_meta`` when the caller has it (changed in place, so later steps keep it)."""
    if meta is None:
        meta = decode_any(params["_meta"]) if "_meta" in params else {}
    if not isinstance(meta, dict):
        return  # a _meta that is not an object goes as it came: the backend says what is wrong
    trace.inject(meta)
    params["_meta"] = Raw(encode(meta))


class Forwarder:
    """The general path's send, and the host of its client streams (``StreamHost``)."""

    def __init__(self, catalog: Catalog, admission: Admission, keepalive: float, request_timeout: float) -> None:
        self.catalog = catalog
        self.admission = admission
        self.keepalive = keepalive
        """Seconds before a call switches to SSE keep-alive comments, and between them."""
        self.request_timeout = request_timeout
        # When each routed call switches to SSE keep-alive comments (one tick, not a timer per call).
        self.slow_calls = Deadlines(min(0.25, keepalive / 4))
        # Requests sent to handshake-era clients (relayed from a backend or asked by the
        # gateway itself), until they answer.
        self.relays = Relays()
        # Set by the Gateway: sees every backend notification that arrives inside a
        # response stream, so a list_changed sent there still refreshes the catalog.
        self.on_backend_notification: Callable[[Backend, str | None, Message], None] | None = None
        # Handshake backends' calls waiting for a stateless client's input (requestState -> call).
        self.pending = PendingCalls(lambda call: call.backend.cancel(call.ticket, "client did not come back"))
        self._next_token = 0

    async def forward(
        self,
        msg: Message,
        ctx: RequestContext,
        reply: Reply | None,
        route: tuple[Backend, str],
        params: dict[str, Raw],
        key: str | None,
        exposed: str = "",
        note: Any = None,
    ) -> bytes | None:
        """Send a routed request to its backend in the right era; stream what comes back.
        ``note``: what admission left for this request's outcome (``Verdict.note``)."""
        backend, original = route
        if key is not None:
            params[key] = Raw(encode(original))
        era = ctx.era if ctx.era in backend.eras else backend.era_for(ctx.era)
        session_key = ctx.session_key if backend.config.session == "per-client" else None
        stream = ClientStream(self, reply, backend, ctx, session_key) if reply is not None else None
        if stream is not None and ctx.era == "stateless" and era == "handshake":
            stream.request_id, stream.method, stream.name = msg.id, msg.method, exposed or None
        if stream is not None and "_meta" in params:
            self._remap_progress(params, stream, ctx.meta)
        trace = ctx.trace
        if trace is not None:  # tracing: the backend continues the trace, the gateway's span its parent
            trace.attributes["mcp_gateway.backend"] = backend.name
            _inject_trace(params, trace, ctx.meta)
        headers = None
        if era == "stateless":
            headers = self._routing_headers(msg.method, params, key, original, exposed)  # type: ignore[arg-type]
            body_params = Raw(encode(params))
            if ctx.era == "handshake":
                body_params = with_envelope(body_params, ctx.capabilities, ctx.client_info)
        else:
            if ctx.era == "stateless" and "_meta" in params:
                _strip_envelope(params, ctx.meta)  # a handshake-era server refuses the stateless envelope
            body_params = Raw(encode(params))
        if trace is not None:
            headers = trace.headers(headers)  # traceparent and tracestate on the upstream HTTP request too
        # The stream doubles as the request's Ticket (one allocation less per request).
        ticket: Any = stream if stream is not None else Ticket()
        if stream is not None:
            # A call still running after sse_keepalive seconds switches to SSE and gets
            # keep-alive comments, so proxies with idle-read timeouts keep it open.
            self.slow_calls.add(stream, self.keepalive, stream.keep_alive, self.keepalive)
        session = ctx.session
        if session is not None:
            session.inflight[msg.id] = (backend, ticket)
        elif reply is not None:
            # Stateless era: the client closing its response stream is the cancel.
            reply.on_disconnect = lambda: backend.cancel(ticket, "client closed the stream")
        try:
            if ctx.era == "stateless" and era == "handshake" and stream is not None:
                answer = await self._call_for_stateless(
                    msg, ctx, backend, params, body_params, session_key, stream, ticket, headers
                )
                if answer is None:  # the backend asked something: the client got input_required
                    if self.admission.observes_outcomes:  # ended for now (its retry is admitted anew)
                        self._outcome(msg, ctx, exposed, route, None, None, note)
                    return None
            else:
                answer = await backend.request(
                    BackendCall(
                        msg.method,  # type: ignore[arg-type]
                        body_params,
                        session_key=session_key,
                        sink=stream.send if stream is not None else None,
                        era=era,
                        headers=headers,
                        ticket=ticket,
                        capabilities=ctx.capabilities if session_key is not None else None,
                        principal=ctx.principal,
                    )
                )
                if ctx.era == "handshake" and era == "stateless" and stream is not None:
                    answer = await self._input_rounds(msg, ctx, backend, params, headers, stream, ticket, answer)
        except GatewayError as err:  # down, timed out, a token exchange refused: the outcome hook sees each
            if trace is not None:
                trace.failed_with(err)  # also when it goes out on a started stream, unseen by the front
            if self.admission.observes_outcomes:
                self._outcome(msg, ctx, exposed, route, None, err, note)
            if stream is None or not stream.started:
                raise
            stream.finish(error_body(msg.id, err))
            return None
        except RequestCancelled as err:
            if self.admission.observes_outcomes:
                self._outcome(msg, ctx, exposed, route, None, err, note)
            # The client cancelled: it expects no JSON-RPC response (the spec says none is sent).
            if stream is not None and stream.started:
                stream.reply.end()
            elif reply is not None and not reply.closed:
                reply.send(202, (), b"")
            return None
        except BaseException as err:  # the task cancelled (shutdown), or a bug: the outcome hook still sees the end
            if self.admission.observes_outcomes:
                self._outcome(msg, ctx, exposed, route, None, err, note)
            raise
        finally:
            if stream is not None:
                self.slow_calls.discard(stream)
                if stream.keepalive is not None:
                    stream.keepalive.cancel()
            if session is not None:
                session.inflight.pop(msg.id, None)
            elif reply is not None:
                reply.on_disconnect = None
        if trace is not None:
            trace.answered(answer)
        if self.admission.observes_outcomes:
            self._outcome(msg, ctx, exposed, route, answer, None, note)
        if answer.result is not UNSET and era == ctx.era:
            body, status = response_bytes(msg.id, answer.result), 200  # type: ignore[arg-type]
        else:
            body, status = translate(msg, ctx, era, answer)
        if stream is not None and stream.started:
            stream.finish(body)
            return None
        if status != 200 and reply is not None:
            reply.send(status, JSON_HEADERS, body)
            return None
        return body

    def _outcome(
        self, msg: Message, ctx: RequestContext, exposed: str, route: tuple[Backend, str],
        answer: Message | None, error: BaseException | None, note: Any,
    ) -> None:
        """``Admission.outcome`` of this request, with the note admission left for it (or None)."""
        self.admission.outcome(ctx.principal, ctx, msg.method, exposed, route, answer, error, note)  # type: ignore[arg-type]

    async def _call_for_stateless(
        self,
        msg: Message,
        ctx: RequestContext,
        backend: Backend,
        params: dict[str, Raw],
        body_params: Raw,
        session_key: str | None,
        stream: ClientStream,
        ticket: Ticket,
        headers: dict[str, str] | None = None,
    ) -> Message | None:
        """A stateless client's call to a handshake backend. If the backend asks the client
        something, the client gets ``input_required`` and the call stays open for its retry
        (see ``ClientStream._relay`` and ``_flush_input``); None means the client was answered.
        ``headers``: extra upstream headers (the trace context)."""
        token = decode_any(params["requestState"]) if "requestState" in params else None
        if token is not None:
            return await self._continue_for_stateless(msg, backend, params, session_key, stream, token)
        if "inputResponses" in params:
            body_params = Raw(encode({k: v for k, v in params.items() if k != "inputResponses"}))
        stream.bridging = True
        try:
            answer = await backend.request(
                BackendCall(
                    msg.method,  # type: ignore[arg-type]
                    body_params,
                    session_key=session_key,
                    sink=stream.send,
                    era="handshake",
                    headers=headers,
                    ticket=ticket,
                    principal=ctx.principal,
                )
            )
        except BaseException as exc:
            call = stream.pending
            if call is None or not self._handed_off(call):
                raise
            call.complete(exc=exc)
            return None
        call = stream.pending
        if call is None or not self._handed_off(call):
            return answer
        call.complete(answer)
        return None

    def _handed_off(self, call: PendingCall) -> bool:
        """True once the client was told input_required (the answer then waits for the retry)."""
        if call.flushed:
            return True
        if call.timer is not None:
            call.timer.cancel()  # finished before the questions went out: answer directly
        call.stream.pending = None
        return False

    def start_input(self, stream: ClientStream, msg: Message) -> None:
        """The backend asked a stateless client something: hold the call, and tell the client
        (after a moment, so requests sent together go out together)."""
        call = PendingCall(
            stream.method, stream.name, stream.backend.config.request_timeout or self.request_timeout
        )
        call.stream, call.ticket, call.backend = stream, stream, stream.backend
        call.arrived.append(msg)
        stream.pending = call
        call.timer = asyncio.get_running_loop().call_later(0.01, self._flush_input, call)

    def _flush_input(self, call: PendingCall) -> None:
        call.flushed = True
        stream = call.stream
        stream.reply.on_disconnect = None  # from here on, closing this response is not a cancel
        try:
            self.pending.add(call)
        except GatewayError as err:
            send_error(stream.reply, stream.request_id, err)
            return
        body = response_bytes(stream.request_id, encode(call.input_required()))
        if stream.started:
            stream.finish(body)
        elif not stream.reply.closed:
            stream.reply.send(200, _JSON_HEADER_LINES, body)

    async def _continue_for_stateless(
        self, msg: Message, backend: Backend, params: dict[str, Raw], session_key: str | None, stream: ClientStream, token: Any
    ) -> Message | None:
        """A retry with ``requestState``: the answers go to the backend and the held call goes on."""
        call = self.pending.take(token, msg.method, stream.name)  # type: ignore[arg-type]
        if call is None:
            raise InvalidParams("requestState is unknown or expired: call again without it", reason="unknown_request_state")
        self._answer_backend(call, backend, session_key, params)
        self.slow_calls.discard(stream)  # the held call's stream takes over this response
        if stream.keepalive is not None:
            stream.keepalive.cancel()
        call.stream.rebind(stream)
        stream = call.stream
        held = call
        # Closing this response stream cancels the held backend call (the stateless era's cancel).
        stream.reply.on_disconnect = lambda: backend.cancel(held.ticket, "client closed the stream")
        stream.keepalive = asyncio.get_running_loop().call_later(self.keepalive, stream.keep_alive, self.keepalive)
        try:
            finished = await call.next_event()
        finally:
            stream.keepalive.cancel()
        if finished:
            return call.done.result()
        self.pending.add(call)
        body = response_bytes(msg.id, encode(call.input_required()))  # type: ignore[arg-type]
        if stream.started:
            stream.finish(body)
        else:
            stream.reply.send(200, _JSON_HEADER_LINES, body)
        return None

    def _answer_backend(self, call: PendingCall, backend: Backend, session_key: str | None, params: dict[str, Raw]) -> None:
        """Send the client's ``inputResponses`` to the backend as answers to its requests."""
        answers = decode_any(params["inputResponses"]) if "inputResponses" in params else {}
        if not isinstance(answers, dict):
            answers = {}
        for key, request in list(call.asked.items()):
            if key in answers:
                del call.asked[key]
                spawn(backend.respond(request.id, Raw(encode(answers[key])), session_key=session_key))
            else:
                call.arrived.append(request)  # not answered: asked again
        call.asked.clear()

    async def _input_rounds(
        self,
        msg: Message,
        ctx: RequestContext,
        backend: Backend,
        params: dict[str, Raw],
        headers: dict[str, str] | None,
        stream: ClientStream,
        ticket: Ticket,
        answer: Message,
    ) -> Message:
        """A handshake client's call to a stateless backend: each ``input_required`` round is
        asked of the client on its stream, and the call is repeated with the answers."""
        for _ in range(MAX_ROUNDS):
            if answer.result is UNSET or b'"input_required"' not in bytes(answer.result):
                return answer
            result = decode_any(answer.result)
            requests = result.get("inputRequests") if isinstance(result, dict) else None
            if result.get("resultType") != "input_required" or not isinstance(requests, dict):
                return answer
            asked = {key: stream.ask(req) for key, req in requests.items() if isinstance(req, dict)}
            responses: dict[str, Any] = {}
            for key, future in asked.items():
                got, error = await future
                if error is not None:
                    return Message(id=msg.id, error=error)
                responses[key] = decode_any(got)  # type: ignore[arg-type]
            params["inputResponses"] = Raw(encode(responses))
            if "requestState" in result:
                params["requestState"] = Raw(encode(result["requestState"]))
            else:
                params.pop("requestState", None)
            answer = await backend.request(
                BackendCall(
                    msg.method,  # type: ignore[arg-type]
                    with_envelope(Raw(encode(params)), ctx.capabilities, ctx.client_info),
                    sink=stream.send,
                    era="stateless",
                    headers=headers,
                    ticket=ticket,
                    principal=ctx.principal,
                )
            )
        err = InternalError(f"the backend asked for input more than {MAX_ROUNDS} times", reason="too_many_input_rounds")
        return Message(id=msg.id, error=Raw(encode(err.to_error())))

    def _routing_headers(
        self, method: str, params: dict[str, Raw], key: str | None, original: str, exposed: str
    ) -> dict[str, str]:
        """``Mcp-Name`` and ``Mcp-Param-*`` for a stateless backend, from the body being sent."""
        headers: dict[str, str] = {}
        if key is not None:
            headers["mcp-name"] = encode_header_value(original)
        if method == "tools/call" and "arguments" in params:
            annotations = self.catalog.snapshot.upstream_header_annotations(exposed)
            if annotations:
                headers.update(param_headers(annotations, decode_any(params["arguments"])))
        return headers

    def _remap_progress(self, params: dict[str, Raw], stream: ClientStream, meta: Any = None) -> None:
        """Give the request a gateway-unique progressToken (clients may reuse theirs); the
        stream maps it back on each progress notification. ``meta``: the decoded ``_meta``
        when the caller has it (changed in place, so later steps see the new token)."""
        if meta is None:
            meta = decode_any(params["_meta"])
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return
        self._next_token += 1
        token = f"gw-{self._next_token}"
        stream.progress = (token, meta["progressToken"])
        meta["progressToken"] = token
        params["_meta"] = Raw(encode(meta))
