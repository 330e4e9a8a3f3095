"""The MCP front: Streamable HTTP on one path (``/mcp`` by default).

Per request, in this order (each step either continues or answers):

1. path (``/healthz`` and, with ``[auth] resource``, the RFC 9728 metadata at
   ``/.well-known/oauth-protected-resource[/path]`` are answered without
   credentials), then the header gate: DNS-rebinding checks, ``Host`` (421) and
   ``Origin`` (403); for a POST ``Content-Type`` (415) and ``Accept`` (406);
   then, with ``[auth]``, the credentials (401 with ``WWW-Authenticate``; a
   token whose issuer keys are being fetched waits for them, bounded);
2. HTTP method: POST (messages), GET (the session's notification stream),
   DELETE (end the session); anything else 405;
3. POST: body decoded as a JSON-RPC envelope (400: -32700 / -32600),
   ``MCP-Protocol-Version`` (400);
4. the era: a 2026-07-28 request (by ``MCP-Protocol-Version``, or a body with
   the stateless envelope and no session) goes through ``gateway.protocol.stateless``
   checks (-32602 / -32020 / -32022, 404 for unknown methods) and needs no
   session; otherwise ``initialize`` makes a session (owned by the caller's
   principal) and any other message needs a known one (400 missing, 404
   unknown or another principal's);
5. dispatch: answered locally (ping, lists from the catalog) or routed through
   the catalog's routing table to one backend, prefix stripped, params bytes
   otherwise untouched. The backend's result goes back as its bytes with the
   client's id; when the backend streams (SSE), the client gets SSE too.

Errors made here are ``gateway.errors`` classes, answered with their HTTP
status and a JSON-RPC error body; nothing else escapes to the client.

Both eras share one request path: everything after step 4 reads a
``RequestContext`` (era, version, session or None, the client's capabilities).
Toward a backend the client's own era is used when the backend speaks it;
otherwise ``_forward`` translates (envelope, ``resultType``, error codes) and
``gateway.front.bridge`` carries server-to-client requests across. Requests a
backend sends mid-call are relayed to the client by ``ClientStream``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import msgspec

from gateway import __version__
from gateway.backends.base import Backend, BackendCall
from gateway.config import Config
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    SessionNotFound,
    Unauthenticated,
    error_body,
)
from gateway.catalog.aggregate import LIST_METHODS, Catalog
from gateway.front.express import ExpressLane
from gateway.front.answers import (
    JSON_HEADERS,
    SSE_HEADERS,
    STATELESS_STATUS,
    request_failed,
    send_error,
    sse_event,
    translate,
)
from gateway.front.forward import Forwarder
from gateway.front.gate import HeaderGate, media_types
from gateway.ops.health import health_body
from gateway.front.streams import LEVELS, LIST_FLAGS, Listener, spawn
from gateway.front.routing import Answered, Routing, params_raw, params_with
from gateway.policy.admission import Admission, Pending
from gateway.policy.identity import PENDING
from gateway.protocol.initialize import InitializeParams, decode_initialize
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, decode_message, decode_params, encode, response_bytes
from gateway.protocol.versions import (
    BATCH_VERSIONS,
    HANDSHAKE_VERSIONS,
    LATEST_HANDSHAKE,
    STATELESS_VERSIONS,
    SUPPORTED_VERSIONS,
)
from gateway.protocol.stateless import (
    NAME_PARAM,
    SERVER_INFO_KEY,
    check_envelope,
    check_param_headers,
)
from gateway.front.sessions import RequestContext, Session, SessionStore
from gateway.server.api import Reply, Request
from gateway.server.responses import JSON_HEADER_LINES as _JSON_HEADER_LINES

if TYPE_CHECKING:
    from gateway.ops.tracing import Tracer
    from gateway.policy.auth import Authenticator

__all__ = ["McpFront"]

log = logging.getLogger("gateway.front")

_ALLOW = (("allow", "GET, POST, DELETE"),)
_EMPTY_RESULT = b"{}"
_STATELESS_SET = frozenset(STATELESS_VERSIONS)
_ENVELOPE_MARK = b"io.modelcontextprotocol/protocolVersion"
_METADATA_HEADERS = (("content-type", "application/json"), ("cache-control", "max-age=3600"))


class _ListParams(msgspec.Struct):
    cursor: str | None = None


_decode_list = msgspec.json.Decoder(_ListParams).decode


async def _settled(pending: Pending) -> tuple[Message | None, BaseException | None]:
    """Wait for a coalesced call's share: ``(answer, error)`` as ``Pending.then`` gives it."""
    future: asyncio.Future[tuple[Message | None, BaseException | None]] = asyncio.get_running_loop().create_future()

    def settled(answer: Message | None, error: BaseException | None) -> None:
        if not future.done():  # this request may have been cancelled meanwhile
            future.set_result((answer, error))

    pending.then(settled)
    return await future


class _Peek(msgspec.Struct):
    """Just a request's JSON-RPC method (the access log of what the observer does not see)."""

    method: str | None = None


_decode_peek = msgspec.json.Decoder(_Peek).decode


def _jsonrpc_method(body: bytes) -> str:
    """The JSON-RPC method of a POST body: ``batch`` for a batch, ``-`` when it has none."""
    try:
        return _decode_peek(body).method or "-"
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "batch" if body.lstrip()[:1] == b"[" else "-"


class McpFront:
    """The application behind ``HttpProtocol``: the MCP endpoint (handshake era)."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        sessions: SessionStore,
        admission: Admission | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.sessions = sessions
        self.path = config.server.path
        self._server_info = {"name": "mcp-gateway", "version": __version__}
        # The header gate (one key, one verdict cache) and routing with its one admission call:
        # both paths, this one and the express lane, go through these two.
        # With an authenticator, the gate also says who is calling (gateway.policy.auth).
        self.authenticator = authenticator
        self.gate = HeaderGate(config.server, authenticator)
        self._metadata_paths = authenticator.metadata_paths if authenticator is not None else frozenset()
        self.admission = admission if admission is not None else Admission()
        self.routing = Routing(catalog, self.admission, config.gateway.passthrough)
        self.admission.attach(catalog)
        self.outcome = self.admission.outcome if self.admission.observes_outcomes else None
        """``Admission.outcome`` when the admission observes outcomes, else None (nothing to call)."""
        self.keepalive = config.server.sse_keepalive
        """Seconds between SSE keep-alive comments (``[server] sse_keepalive``)."""
        # The general path's send, and the host of client streams (relays, the eras' bridge).
        self.forwarder = Forwarder(catalog, self.admission, self.keepalive, config.gateway.request_timeout)
        self.slow_calls = self.forwarder.slow_calls
        # method -> handler(msg, ctx, reply) returning response bytes, or None when it streamed
        self._handlers: dict[str, Callable[[Message, RequestContext, Reply], Awaitable[bytes | None]]] = {
            "ping": self._ping,
            "tools/call": self._routed,  # routes by "name" as a tool: no wrapper level on the hot path
            "prompts/get": self._prompts_get,
            "resources/read": self._resources_read,
            "logging/setLevel": self._set_level,
            "completion/complete": self._complete,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._subscribe,
            **{method: self._list for method in LIST_METHODS},
        }
        # The stateless era's methods (no session, no subscribe/setLevel: those ride on _meta and listen).
        self._stateless_handlers: dict[str, Callable[[Message, RequestContext, Reply], Awaitable[bytes | None]]] = {
            "server/discover": self._discover,
            "tools/call": self._routed,
            "prompts/get": self._prompts_get,
            "resources/read": self._resources_read,
            "completion/complete": self._complete,
            "subscriptions/listen": self._listen,
            **{method: self._list for method in LIST_METHODS},
        }
        # Open subscriptions/listen streams (stateless era).
        self._listeners: set[Listener] = set()
        self.tracer: Tracer | None = None
        """Trace context and spans (``[tracing]``, set by ``use_tracer``); None: off, and the one
        cost per request is this check."""
        # The common call answered in callbacks (gateway.front.express); None: the general path only.
        self.express: ExpressLane | None = ExpressLane(self) if config.gateway.express else None
        self.on_auth_failure: Callable[[str, str, str | None], None] | None = None
        """Called with ``(reason, message, client_ip)`` when a credential is refused (metrics, audit)."""
        self.on_access: Callable[[Any, str, str, str, int, str, float], None] | None = None
        """The access log (``[server] access_log``): called with ``(principal, method, name,
        backend, status, outcome, seconds)`` for each request the observer does not log (it
        logs the routed ones); None: off, and the only cost is this attribute's check."""
        # With the access log on: the HTTP requests being answered, by reply; True once routed
        # (the observer sees those end, and logs them).
        self._answering: dict[Any, bool] = {}

    def reconfigure(self, config: Config, admission: Admission | None, authenticator: Authenticator | None) -> None:
        """A reload: serve with ``config``'s policies from the next request on (the sessions, the
        open streams and the calls in flight are kept; a call in flight finishes as admitted).
        The listener's own options (host, port, path, TLS) and the express switch are not
        changed here: ``gateway.ops.reload`` refuses a reload that changes them."""
        self.admission.detach(self.catalog)
        self.config = config
        self.authenticator = authenticator
        self.gate = HeaderGate(config.server, authenticator)
        self._metadata_paths = authenticator.metadata_paths if authenticator is not None else frozenset()
        self.admission = admission if admission is not None else Admission()
        self.routing = Routing(self.catalog, self.admission, config.gateway.passthrough)
        self.admission.attach(self.catalog)
        self.outcome = self.admission.outcome if self.admission.observes_outcomes else None
        self.keepalive = config.server.sse_keepalive
        forwarder = self.forwarder
        forwarder.admission = self.admission
        forwarder.keepalive = self.keepalive
        forwarder.request_timeout = config.gateway.request_timeout
        if self.express is not None:
            self.express.rebind()

    def use_tracer(self, tracer: Tracer | None) -> None:
        """Trace requests with ``tracer`` from the next one on (None: stop tracing). While one is
        set the express lane declines every request (``ExpressLane.rebind``), so each traced
        call takes the general path, where its span and the upstream trace context are made."""
        self.tracer = tracer
        if self.express is not None:
            self.express.rebind()

    @property
    def on_backend_notification(self) -> Callable[[Backend, str | None, Message], None] | None:
        """Sees every backend notification that arrives inside a response stream (set by the Gateway)."""
        return self.forwarder.on_backend_notification

    @on_backend_notification.setter
    def on_backend_notification(self, handler: Callable[[Backend, str | None, Message], None] | None) -> None:
        self.forwarder.on_backend_notification = handler

    # -- entry -------------------------------------------------------------------------------

    async def __call__(self, request: Request, reply: Reply) -> None:
        """Answer one HTTP request (the ``App`` contract)."""
        principal = None
        try:
            if request.path != self.path:
                if request.path == "/healthz" and request.method == "GET":
                    reply.send(200, JSON_HEADERS, health_body(self.catalog.backends))
                    return
                if request.path in self._metadata_paths and request.method == "GET":
                    # RFC 9728 protected-resource metadata: how to get a token, so unauthenticated.
                    reply.send(200, _METADATA_HEADERS, self.authenticator.metadata_body)  # type: ignore[union-attr,arg-type]
                    return
                reply.send(404, JSON_HEADERS, error_body(None, InvalidRequest("not found", reason="path")))
                return
            if self.on_access is not None:
                started = perf_counter()
                self._answering[reply] = False
            headers = request.headers
            error, principal = self.gate.check(request)
            if error is not None:
                if error is PENDING:  # the token's issuer keys are being fetched: wait (bounded), decide
                    error, principal = await self.gate.check_after_keys(request)
                if error is not None:
                    if type(error) is Unauthenticated and self.on_auth_failure is not None:
                        self.on_auth_failure(error.reason, error.message, request.client[0] if request.client else None)
                    raise error
            method = request.method
            if method == "POST":
                await self._post(request, reply, principal)
            elif headers.get("mcp-protocol-version") in _STATELESS_SET and method in ("GET", "DELETE"):
                # The stateless era has no session stream and nothing to delete.
                err = MethodNotFound(f"{method} is not used in protocol version 2026-07-28", reason="method_not_allowed")
                reply.send(405, (("allow", "POST"), *JSON_HEADERS), error_body(None, err))
            elif method == "GET":
                await self._get(request, reply, principal)
            elif method == "DELETE":
                self._delete(request, reply, principal)
            else:
                err = InvalidRequest(f"method {method} not allowed", reason="method_not_allowed", http_status=405)
                reply.send(405, _ALLOW + JSON_HEADERS, error_body(None, err))
        except GatewayError as err:
            send_error(reply, None, err)
        except Exception:  # a bug: log it, never show it
            log.exception("unhandled error answering %s %s", request.method, request.path)
            send_error(reply, None, InternalError("internal gateway error"))
        if self._answering:
            routed = self._answering.pop(reply, None)
            if routed is False:
                self._log_access(request, reply, principal, started)

    def _log_access(self, request: Request, reply: Reply, principal: Any, started: float) -> None:
        """The access-log line of a request the observer did not log (not routed, or refused
        before routing: the gate, the session, the envelope). Never raises."""
        try:
            status = getattr(reply, "status", 0)
            method = _jsonrpc_method(request.body) if request.method == "POST" else request.method
            outcome = "ok" if status < 400 else "refused" if status < 500 else "error"
            self.on_access(principal, method, "", "", status, outcome, perf_counter() - started)  # type: ignore[misc]
        except Exception:
            log.exception("writing an access-log line failed")

    # -- checks ------------------------------------------------------------------------------

    @staticmethod
    def _check_version_header(headers: dict[str, str], session: Session | None) -> None:
        version = headers.get("mcp-protocol-version")
        if version is None:
            return  # the spec says: assume 2025-03-26 (or the negotiated one)
        if version not in SUPPORTED_VERSIONS:
            raise InvalidRequest(
                f"unsupported MCP-Protocol-Version {version!r}",
                reason="unsupported_protocol_version",
                data={"supported": list(HANDSHAKE_VERSIONS)},
            )

    def _session_for(self, headers: dict[str, str], principal: Any) -> Session:
        """The request's session; another principal's session is answered as an unknown one."""
        session_id = headers.get("mcp-session-id")
        if session_id is None:
            raise InvalidRequest("Mcp-Session-Id header is required", reason="session_required")
        session = self.sessions.get(session_id, principal)
        if session is None:
            raise SessionNotFound("session not found (expired or deleted): initialize again")
        return session

    # -- POST --------------------------------------------------------------------------------

    async def _post(self, request: Request, reply: Reply, principal: Any) -> None:
        headers = request.headers  # Host, Origin, Content-Type and Accept were checked in __call__
        try:
            msg = decode_message(request.body)
        except InvalidRequest as err:
            if err.reason != "batch":
                raise
            await self._batch(request, reply, principal)
            return
        if self._is_stateless(msg, headers):
            await self._stateless_post(msg, headers, reply, principal, request.client)
            return
        if msg.method == "initialize":
            self._check_version_header(headers, None)
            self.initialize(msg, reply, principal)
            return
        session = self._session_for(headers, principal)
        self._check_version_header(headers, session)
        ctx = session.context
        ctx.principal = principal
        client = request.client
        ctx.client_ip = client[0] if client is not None else None  # per request, as the principal
        if msg.id is UNSET or msg.method is UNSET:
            self.accept_client_message(msg, ctx)
            reply.send(202, (), b"")
            return
        # _request, inlined: one coroutine level less on the hot path.
        handler = self._handlers.get(msg.method)  # type: ignore[arg-type]
        tracer = self.tracer
        try:
            if handler is None:
                raise MethodNotFound(f"method not found: {msg.method}")
            if tracer is not None and msg.method in tracer.methods:
                body = await self._traced(tracer, handler, msg, ctx, reply, headers)
            else:
                body = await handler(msg, ctx, reply)
        except GatewayError as err:
            body = request_failed(msg, reply, err)
        if body is not None:
            reply.send(200, _JSON_HEADER_LINES, body)

    @staticmethod
    def _is_stateless(msg: Message, headers: dict[str, str]) -> bool:
        """Which era this POST belongs to, from ``MCP-Protocol-Version`` and then the body."""
        version = headers.get("mcp-protocol-version")
        if version in _STATELESS_SET:
            return True
        if "mcp-session-id" in headers or msg.method == "initialize":
            return False
        if version is not None and version not in SUPPORTED_VERSIONS:
            return True  # an unknown version without a session: the stateless era's -32022 answers it
        # No session: a body with the stateless envelope is a stateless request (whose
        # version header, if any, then disagrees with it: -32020 says so).
        return msg.params is not UNSET and _ENVELOPE_MARK in bytes(msg.params)

    @staticmethod
    def _envelope_view(msg: Message) -> tuple[Any, dict[str, Raw] | None]:
        """Just what the envelope checks read (``_meta`` and the name or URI), decoded, and
        the params as ``{key: raw}`` (None when not an object); the arguments stay bytes."""
        if msg.params is UNSET:
            return {}, None
        try:
            raw = decode_params(msg.params)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return decode_any(msg.params), None  # not an object: the checks say what is wrong
        view = {"_meta": decode_any(raw["_meta"])} if "_meta" in raw else {}
        key = NAME_PARAM.get(msg.method)  # type: ignore[arg-type]
        if key is not None and key in raw:
            view[key] = decode_any(raw[key])
        return view, raw

    async def _stateless_post(
        self, msg: Message, headers: dict[str, str], reply: Reply, principal: Any, client: tuple[str, int] | None = None
    ) -> None:
        """One 2026-07-28 request: envelope and header checks, then the method."""
        if msg.method is UNSET or msg.id is UNSET:
            # Client notifications and responses have no meaning on this wire: acknowledged, dropped.
            reply.send(202, (), b"")
            return
        try:
            view, raw_params = self._envelope_view(msg)
            envelope = check_envelope(msg.method, view, headers)
            level = envelope.log_level if isinstance(envelope.log_level, str) else None
            ctx = RequestContext(
                "stateless", envelope.version, None, envelope.capabilities, envelope.client_info, headers, level
            )
            ctx.params, ctx.meta = raw_params, view.get("_meta")
            ctx.principal = principal
            ctx.client_ip = client[0] if client is not None else None
            handler = self._stateless_handlers.get(msg.method)
            if handler is None:
                raise MethodNotFound(f"method not found: {msg.method}")
            tracer = self.tracer
            if tracer is not None and msg.method in tracer.methods:
                body = await self._traced(tracer, handler, msg, ctx, reply, headers)
            else:
                body = await handler(msg, ctx, reply)
        except GatewayError as err:
            if reply.closed:
                return
            status = STATELESS_STATUS.get(err.code, err.http_status)
            reply.send(status, JSON_HEADERS + err.headers, error_body(msg.id, err))
            return
        if body is not None:
            reply.send(200, _JSON_HEADER_LINES, body)

    async def _batch(self, request: Request, reply: Reply, principal: Any) -> None:
        """JSON-RPC batches: only for sessions that negotiated 2025-03-26."""
        session = self._session_for(request.headers, principal)
        if session.protocol_version not in BATCH_VERSIONS:
            raise InvalidRequest("JSON-RPC batches are not allowed after 2025-03-26", reason="batch")
        try:
            items = msgspec.json.decode(request.body, type=list[Raw])
        except msgspec.DecodeError:
            raise InvalidRequest("malformed batch") from None
        if not items:
            raise InvalidRequest("empty batch", reason="batch")
        ctx = session.context
        ctx.principal = principal
        ctx.client_ip = request.client[0] if request.client is not None else None
        answers = await asyncio.gather(*(self._batch_item(bytes(item), ctx, request.headers) for item in items))
        bodies = [a for a in answers if a is not None]
        if not bodies:
            reply.send(202, (), b"")
        else:
            reply.send(200, JSON_HEADERS, b"[" + b",".join(bodies) + b"]")

    async def _batch_item(self, data: bytes, ctx: RequestContext, headers: dict[str, str]) -> bytes | None:
        try:
            msg = decode_message(data)
        except GatewayError as err:
            return error_body(None, err)
        if msg.id is UNSET or msg.method is UNSET:
            self.accept_client_message(msg, ctx)
            return None
        if msg.method == "initialize":
            return error_body(msg.id, InvalidRequest("initialize cannot be batched"))
        return await self.request(msg, ctx, None, headers)

    def initialize(self, msg: Message, reply: Reply, principal: Any = None) -> None:
        """``initialize``: a new session, owned by ``principal`` (None: stdio, or no ``[auth]``)."""
        if msg.id is UNSET:
            raise InvalidRequest("initialize must be a request", reason="invalid_request")
        try:
            params = decode_initialize(msg.params) if msg.params is not UNSET else InitializeParams()
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"bad initialize params: {exc}") from None
        wanted = params.protocolVersion
        version = wanted if wanted in SUPPORTED_VERSIONS else LATEST_HANDSHAKE
        session = self.sessions.create(version, params.capabilities, params.clientInfo, principal)
        result = {
            "protocolVersion": version,
            "capabilities": self._capabilities(),
            "serverInfo": self._server_info,
        }
        instructions = self._instructions()
        if instructions:
            result["instructions"] = instructions
        headers = (("mcp-session-id", session.id), *JSON_HEADERS)
        reply.send(200, headers, response_bytes(msg.id, encode(result)))

    def _capabilities(self) -> dict[str, Any]:
        """What the gateway offers: lists with change notices and logging always; resource
        subscriptions and completions when some backend offers them."""
        caps: dict[str, Any] = {
            "tools": {"listChanged": True},
            "prompts": {"listChanged": True},
            "resources": {"listChanged": True},
            "logging": {},
        }
        for backend in self.catalog.backends.values():
            theirs = (backend.server_info or {}).get("capabilities") or {}
            if isinstance(theirs.get("resources"), dict) and theirs["resources"].get("subscribe"):
                caps["resources"]["subscribe"] = True
            if "completions" in theirs:
                caps["completions"] = {}
        return caps

    async def _discover(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes:
        """``server/discover``: the gateway's own versions and capabilities (stateless era)."""
        hints = [h for h in self.catalog.snapshot.hints.values()]
        ttl = min((h[0] for h in hints), default=0)
        scope = "private" if not hints or any(h[1] != "public" for h in hints) else "public"
        result: dict[str, Any] = {
            "resultType": "complete",
            "supportedVersions": [*STATELESS_VERSIONS],
            "capabilities": self._capabilities(),
            "serverInfo": self._server_info,
            "ttlMs": ttl,
            "cacheScope": scope,
            "_meta": {SERVER_INFO_KEY: self._server_info},
        }
        instructions = self._instructions()
        if instructions:
            result["instructions"] = instructions
        return response_bytes(msg.id, encode(result))  # type: ignore[arg-type]

    def _instructions(self) -> str | None:
        """In passthrough mode the backend's own instructions are the gateway's."""
        if not self.config.gateway.passthrough or not self.catalog.backends:
            return None
        backend = next(iter(self.catalog.backends.values()))
        info = backend.server_info or {}
        value = info.get("instructions")
        return value if isinstance(value, str) else None

    def accept_client_message(self, msg: Message, ctx: RequestContext) -> None:
        """Notifications and responses from the client: nothing to answer."""
        if msg.method is UNSET:
            self._client_answered(msg, ctx)
        elif msg.method == "notifications/initialized" and ctx.session is not None:
            ctx.session.initialized = True
        elif msg.method == "notifications/cancelled" and ctx.session is not None:
            self._client_cancelled(msg, ctx.session)

    def _client_answered(self, msg: Message, ctx: RequestContext) -> None:
        """A client's answer to a request a backend sent it: back to that backend, with its id."""
        answered = self.forwarder.relays.take(msg.id, ctx.session.id) if ctx.session is not None else None
        if answered is None:
            log.warning("client answer with unknown id %r dropped", msg.id)
            return
        result = msg.result if msg.result is not UNSET else None
        error = msg.error if msg.error is not UNSET else None
        if result is None and error is None:
            error = Raw(encode({"code": -32603, "message": "client sent an empty answer"}))
        answered(result, error)

    def _client_cancelled(self, msg: Message, session: Session) -> None:
        try:
            request_id = decode_any(msg.params).get("requestId") if msg.params is not UNSET else None
        except (msgspec.DecodeError, AttributeError):
            return
        call = session.inflight.get(request_id)
        if call is not None:
            backend, ticket = call
            backend.cancel(ticket, "cancelled by the client")

    async def request(
        self, msg: Message, ctx: RequestContext, reply: Reply | None, headers: dict[str, str] | None = None
    ) -> bytes | None:
        """Answer one request: its response bytes, or None if it was streamed to ``reply``.
        ``headers``: the HTTP request's (a batch item); None: the stdio front's request."""
        handler = self._handlers.get(msg.method)  # type: ignore[arg-type]
        tracer = self.tracer
        try:
            if handler is None:
                raise MethodNotFound(f"method not found: {msg.method}")
            if tracer is not None and msg.method in tracer.methods:
                return await self._traced(tracer, handler, msg, ctx, reply, headers)
            return await handler(msg, ctx, reply)  # type: ignore[arg-type]
        except GatewayError as err:
            return request_failed(msg, reply, err)

    @staticmethod
    async def _traced(
        tracer: Tracer,
        handler: Callable[[Message, RequestContext, Reply], Awaitable[bytes | None]],
        msg: Message,
        ctx: RequestContext,
        reply: Reply | None,
        headers: dict[str, str] | None,
    ) -> bytes | None:
        """``handler`` under a span (tracing on): the client's trace context (``headers``, else
        ``_meta``) continued or a new one started, carried on the request's own context
        (``RequestContext.traced``: the forward and the audit read it there), and the span ended
        with what the client got. ``headers`` None: the stdio front (``network.transport`` pipe)."""
        span = tracer.begin(msg, ctx, headers, "tcp" if headers is not None else "pipe")
        try:
            body = await handler(msg, ctx.traced(span), reply)  # type: ignore[arg-type]
        except BaseException as exc:
            span.failed_with(exc)
            tracer.end(span)
            raise
        if body is not None:
            span.responded(body)
        tracer.end(span)
        return body

    # -- local methods -----------------------------------------------------------------------

    async def _ping(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes:
        return response_bytes(msg.id, _EMPTY_RESULT)  # type: ignore[arg-type]

    async def _list(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes:
        cursor = None
        if msg.params is not UNSET:
            try:
                cursor = _decode_list(msg.params).cursor
            except (msgspec.ValidationError, msgspec.DecodeError):
                raise InvalidParams("bad list params") from None
        page = self.admission.page(ctx.principal, ctx, self.catalog.snapshot, msg.method, cursor)  # type: ignore[arg-type]
        return response_bytes(msg.id, page)  # type: ignore[arg-type]

    async def _set_level(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes:
        """``logging/setLevel`` (handshake era): kept per session and applied by the gateway to
        the log notifications this client gets, so one client's level never changes another's."""
        try:
            level = decode_any(msg.params).get("level") if msg.params is not UNSET else None
        except (msgspec.DecodeError, AttributeError):
            level = None
        if level not in LEVELS:
            raise InvalidParams(f"unknown log level {level!r}", reason="invalid_level")
        if ctx.session is not None:
            ctx.session.set_log_level(level)
        return response_bytes(msg.id, _EMPTY_RESULT)  # type: ignore[arg-type]

    # -- routed methods ----------------------------------------------------------------------

    async def _prompts_get(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        return await self._routed(msg, ctx, reply, "name", "prompt")

    async def _resources_read(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        return await self._routed(msg, ctx, reply, "uri", "resource")

    async def _subscribe(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        """``resources/subscribe`` / ``unsubscribe``: to the resource's backend, remembered per session
        so ``notifications/resources/updated`` reaches exactly the clients that asked."""
        _, uri = params_with(msg, "uri")
        body = await self._routed(msg, ctx, reply, "uri", "resource")
        if ctx.session is not None:
            if msg.method == "resources/subscribe":
                ctx.session.subscriptions.add(uri)
            else:
                ctx.session.subscriptions.discard(uri)
        return body

    async def _complete(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        """``completion/complete``: routed by its ``ref`` (a prompt name or a resource template URI)."""
        params, _ = params_raw(msg, "ref")
        try:
            route = self.routing.route_ref(ctx, params)
        except Answered as local:
            return response_bytes(msg.id, local.result)  # type: ignore[arg-type]
        return await self.forwarder.forward(msg, ctx, reply, route, params, None)

    async def _routed(
        self, msg: Message, ctx: RequestContext, reply: Reply | None, key: str = "name", kind: str = "tool"
    ) -> bytes | None:
        """Route by ``params[key]`` and admit (``Routing.route_noted``), then forward."""
        params, value = params_with(msg, key, ctx)
        local: Answered | None = None
        note: Any = None
        if reply in self._answering:
            self._answering[reply] = True  # from here on the observer sees it end, and logs it
        try:
            route, note = self.routing.route_noted(ctx, msg.method, kind, value, params)  # type: ignore[arg-type]
        except Answered as answered:
            local = answered
        if ctx.era == "stateless" and kind == "tool":
            # After admission: a tool the caller may not see is answered as unknown, never with a
            # header mismatch that would tell it the tool exists. (A refused mismatch still sends nothing.)
            annotations = self.catalog.snapshot.header_annotations(value)
            if annotations:  # the arguments are decoded only for tools that declare Mcp-Param headers
                arguments = decode_any(params["arguments"]) if "arguments" in params else None
                try:
                    check_param_headers(annotations, arguments, ctx.headers or {})
                except GatewayError as err:
                    if self.outcome is not None and (local is None or local.wait is not None):
                        # Admitted, then refused: the outcome hook still sees it end (a leader's followers go on).
                        self._outcome(msg, ctx, value, route if local is None else local.route, None, err, note)
                    raise
        if local is not None:
            if local.wait is not None:
                return await self._follow(msg, ctx, reply, local, params, key, value)
            return response_bytes(msg.id, local.result)  # type: ignore[arg-type]
        return await self.forwarder.forward(msg, ctx, reply, route, params, key, value, note)

    async def _follow(
        self, msg: Message, ctx: RequestContext, reply: Reply | None, local: Answered, params: dict[str, Raw],
        key: str, value: str,
    ) -> bytes | None:
        """A call coalesced onto an identical one in flight: answered with that call's answer (this
        request's id), or, when there is nothing to share, sent upstream itself (admitted already)."""
        route = local.route
        assert route is not None and local.wait is not None
        answer, error = await _settled(local.wait)
        if answer is None and error is None:
            return await self.forwarder.forward(msg, ctx, reply, route, params, key, value)
        if self.outcome is not None:
            self._outcome(msg, ctx, value, route, answer, error, None)
        if error is not None:
            raise error  # a GatewayError: the backend could not answer the call this one waited for
        assert answer is not None
        era = route[0].era_for(ctx.era)
        if answer.result is not UNSET and era == ctx.era:
            return response_bytes(msg.id, answer.result)  # type: ignore[arg-type]
        body, status = translate(msg, ctx, era, answer)
        if status != 200 and reply is not None:
            reply.send(status, JSON_HEADERS, body)
            return None
        return body

    def _outcome(
        self, msg: Message, ctx: RequestContext, name: str, route: Any, answer: Message | None,
        error: BaseException | None, note: Any,
    ) -> None:
        """``Admission.outcome`` of this request (with its note when admission left one)."""
        outcome = self.outcome
        assert outcome is not None
        outcome(ctx.principal, ctx, msg.method, name, route, answer, error, note)  # type: ignore[arg-type]

    # -- GET and DELETE ----------------------------------------------------------------------

    async def _get(self, request: Request, reply: Reply, principal: Any = None) -> None:
        headers = request.headers
        if "text/event-stream" not in media_types(headers.get("accept", "")):
            raise InvalidRequest("Accept must include text/event-stream", reason="not_acceptable", http_status=406)
        session = self._session_for(headers, principal)
        self._check_version_header(headers, session)
        if session.stream is not None and not session.stream.closed:
            raise InvalidRequest("this session already has a GET stream", reason="stream_conflict", http_status=409)
        session.stream = reply
        reply.start_stream(200, (*SSE_HEADERS, ("mcp-session-id", session.id)))
        reply.write(b": stream open\n\n")
        try:
            await self._keep_stream_alive(reply)
        finally:
            if session.stream is reply:
                session.stream = None
            if not reply.closed:
                reply.end()

    async def _keep_stream_alive(self, reply: Reply) -> None:
        """Hold a GET stream open, writing an SSE comment now and then so proxies keep it."""
        while not reply.closed:
            try:
                await asyncio.wait_for(reply.wait_closed(), self.keepalive)
            except asyncio.TimeoutError:
                reply.write(b": keep-alive\n\n")

    def _delete(self, request: Request, reply: Reply, principal: Any = None) -> None:
        session = self._session_for(request.headers, principal)
        self.sessions.end(session.id)
        reply.send(200, (), b"")

    # -- subscriptions/listen (stateless era) ---------------------------------------------------

    async def _listen(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        """Open a notification stream: the acknowledgement first (what will be honoured), then
        the change notices the client opted in to, each tagged with this request's id."""
        assert reply is not None
        params = decode_any(msg.params) if msg.params is not UNSET else {}
        wanted = params.get("notifications") if isinstance(params, dict) else None
        if not isinstance(wanted, dict):
            raise InvalidParams("params.notifications must be an object")
        honored: dict[str, Any] = {k: True for k in LIST_FLAGS.values() if wanted.get(k) is True}
        uris = wanted.get("resourceSubscriptions")
        if isinstance(uris, list) and self._capabilities()["resources"].get("subscribe"):
            honored["resourceSubscriptions"] = [u for u in uris if isinstance(u, str) and self._watch(u, ctx)]
        listener = Listener(reply, msg.id, honored)
        reply.start_stream(200, SSE_HEADERS)
        ack = Message(method="notifications/subscriptions/acknowledged", params=Raw(encode({"notifications": honored})))
        listener.send(ack)
        self._listeners.add(listener)
        try:
            await self._keep_stream_alive(reply)
        finally:
            self._listeners.discard(listener)
            if not reply.closed:
                reply.end()
        return None

    def _watch(self, uri: str, ctx: RequestContext) -> bool:
        """Subscribe upstream (shared session) for a listener's resource; False if nobody serves
        it or admission refuses it (a routed ``resources/subscribe``, admitted once like any)."""
        try:
            route = self.routing.route(ctx, "resources/subscribe", "resource", uri, {"uri": Raw(encode(uri))})
        except (GatewayError, Answered):
            return False
        backend, original = route
        if "handshake" in backend.eras:
            params = Raw(encode({"uri": original}))
            spawn(self._request_quietly(backend, "resources/subscribe", params))
        return True

    @staticmethod
    async def _request_quietly(backend: Backend, method: str, params: Raw) -> None:
        await backend.request(BackendCall(method, params, era="handshake"))

    # -- notifications to clients ------------------------------------------------------------

    def broadcast(self, notification: bytes, method: str | None = None) -> int:
        """Send one notification to every session's GET stream and to the listen streams that
        opted in to ``method``; returns how many got it."""
        sent = 0
        event = sse_event(notification)
        for session in self.sessions:
            stream = session.stream
            if stream is not None and not stream.closed:
                stream.write(event)
                sent += 1
        flag = LIST_FLAGS.get(method or "")
        if flag is not None:
            for listener in list(self._listeners):
                if listener.honored.get(flag):
                    listener.send(Message(method=method))
                    sent += 1
        return sent

    def resource_updated(self, uri: str, params: Raw) -> int:
        """``notifications/resources/updated`` for ``uri`` (as clients see it) to the sessions and
        listen streams subscribed to it; what was learnt from its backend may be stale now
        (``Catalog.on_backend_change``: the result cache drops that backend's entries)."""
        route = self.catalog.snapshot.router.resolve_uri(uri)
        if route is not None:
            for hook in self.catalog.on_backend_change:
                hook(route[0].name)  # type: ignore[attr-defined]
        note = Message(method="notifications/resources/updated", params=params)
        event = sse_event(encode(note))
        sent = 0
        for session in self.sessions:
            stream = session.stream
            if uri in session.subscriptions and stream is not None and not stream.closed:
                stream.write(event)
                sent += 1
        for listener in list(self._listeners):
            if uri in listener.honored.get("resourceSubscriptions", ()):
                listener.send(note)
                sent += 1
        return sent

