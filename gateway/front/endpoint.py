"""The MCP front: Streamable HTTP on one path (``/mcp`` by default).

Per request, in this order (each step either continues or answers):

1. path, then DNS-rebinding checks: ``Host`` (421) and ``Origin`` (403);
2. HTTP method: POST (messages), GET (the session's notification stream),
   DELETE (end the session); anything else 405;
3. POST: ``Content-Type`` (415), ``Accept`` (406), body decoded as a JSON-RPC
   envelope (400: -32700 / -32600), ``MCP-Protocol-Version`` (400);
4. the era: a 2026-07-28 request (by ``MCP-Protocol-Version``, or a body with
   the stateless envelope and no session) goes through ``gateway.protocol.stateless``
   checks (-32602 / -32020 / -32022, 404 for unknown methods) and needs no
   session; otherwise ``initialize`` makes a session and any other message
   needs a known one (400 missing, 404 unknown);
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
backend sends mid-call are relayed to the client by ``_ClientStream``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway import __version__
from gateway.backends.base import Backend, RequestCancelled, Ticket
from gateway.config import Config
from gateway.errors import (
    BackendTimeout,
    BackendUnavailable,
    Forbidden,
    GatewayError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ResourceNotFound,
    SessionNotFound,
    error_body,
)
from gateway.front.bridge import MAX_ROUNDS, PendingCall, PendingCalls
from gateway.catalog.aggregate import LIST_METHODS, Catalog
from gateway.front.express import ExpressLane
from gateway.protocol.initialize import InitializeParams, decode_initialize, with_envelope
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
    encode_header_value,
    param_headers,
)
from gateway.front.sessions import RequestContext, Session, SessionStore
from gateway.server.api import Reply, Request
from gateway.server.responses import JSON_HEADER_LINES as _JSON_HEADER_LINES
from gateway.timers import Deadlines

__all__ = ["McpFront"]

log = logging.getLogger("gateway.front")

_JSON_HEADERS = (("content-type", "application/json"),)
_SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))
_ALLOW = (("allow", "GET, POST, DELETE"),)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_EMPTY_RESULT = b"{}"
_UNCHECKED: Any = object()
_STATELESS_SET = frozenset(STATELESS_VERSIONS)
_ENVELOPE_MARK = b"io.modelcontextprotocol/protocolVersion"
# Stateless era: the HTTP status of a JSON-RPC error follows its code.
_STATELESS_STATUS = {-32700: 400, -32600: 400, -32602: 400, -32020: 400, -32021: 400, -32022: 400, -32601: 404}
# Server-to-client request -> the client capability it needs.
_NEEDS_CAPABILITY = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
# The error object a backend sent, decoded only to read its code.
_decode_error = msgspec.json.Decoder(dict[str, Any]).decode


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


def _add_result_fields(result: bytes, fields: bytes) -> bytes:
    """Splice pre-encoded ``"key":value`` pairs into a result object that lacks them."""
    if not result.startswith(b"{"):
        return result
    rest = result[1:].lstrip()
    return b"{" + fields + (b"}" if rest == b"}" else b"," + rest)


class _ListParams(msgspec.Struct):
    cursor: str | None = None


_decode_list = msgspec.json.Decoder(_ListParams).decode


def _host_name(host: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _media_types(value: str) -> set[str]:
    """``"application/json; q=1, text/*"`` -> ``{"application/json", "text/*"}``."""
    return {part.split(";", 1)[0].strip().lower() for part in value.split(",")}


def _sse_event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


class McpFront:
    """The application behind ``HttpProtocol``: the MCP endpoint (handshake era)."""

    def __init__(self, config: Config, catalog: Catalog, sessions: SessionStore) -> None:
        self.config = config
        self.catalog = catalog
        self.sessions = sessions
        self.path = config.server.path
        self._server_info = {"name": "mcp-gateway", "version": __version__}
        self._allowed_hosts = self._build_allowed_hosts()
        self._allowed_origins = frozenset(o.rstrip("/").lower() for o in config.server.allowed_origins)
        self._keepalive = config.server.sse_keepalive
        # When each routed call switches to SSE keep-alive comments (one tick, not a timer per call).
        self._slow_calls = Deadlines(min(0.25, self._keepalive / 4))
        self._passthrough_backend = (
            next(iter(catalog.backends.values())) if config.gateway.passthrough and catalog.backends else None
        )
        # Header checks depend only on a few header values, which repeat from request
        # to request: remember each verdict (bounded) instead of re-parsing every time.
        self._verdicts: dict[tuple[str | None, ...], GatewayError | None] = {}
        # Set by the Gateway: sees every backend notification that arrives inside a
        # response stream, so a list_changed sent there still refreshes the catalog.
        self.on_backend_notification: Callable[[Backend, str | None, Message], None] | None = None
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
        # Requests sent to handshake-era clients (relayed from a backend or asked by the
        # gateway itself): gateway id -> (what to do with the answer, the session asked).
        self._relayed: dict[str, tuple[Callable[[Raw | None, Raw | None], None], str]] = {}
        # Handshake backends' calls waiting for a stateless client's input (requestState -> call).
        self._pending = PendingCalls(lambda call: call.backend.cancel(call.ticket, "client did not come back"))
        self._next_relay = 0
        self._next_token = 0
        # Open subscriptions/listen streams (stateless era).
        self._listeners: set[_Listener] = set()
        # The common call answered in callbacks (gateway.front.express); None: the general path only.
        self.express: ExpressLane | None = ExpressLane(self) if config.gateway.express else None

    # -- entry -------------------------------------------------------------------------------

    async def __call__(self, request: Request, reply: Reply) -> None:
        """Answer one HTTP request (the ``App`` contract)."""
        try:
            if request.path != self.path:
                if request.path == "/healthz" and request.method == "GET":
                    reply.send(200, _JSON_HEADERS, self._health())
                    return
                reply.send(404, _JSON_HEADERS, error_body(None, InvalidRequest("not found", reason="path")))
                return
            headers = request.headers
            key = (request.method, headers.get("host"), headers.get("origin"), headers.get("content-type"), headers.get("accept"))
            verdict = self._verdicts.get(key, _UNCHECKED)
            if verdict is _UNCHECKED:
                verdict = self._check_headers(request.method, headers)
                if len(self._verdicts) > 1024:
                    self._verdicts.clear()
                self._verdicts[key] = verdict
            if verdict is not None:
                raise verdict
            method = request.method
            if method == "POST":
                await self._post(request, reply)
            elif headers.get("mcp-protocol-version") in _STATELESS_SET and method in ("GET", "DELETE"):
                # The stateless era has no session stream and nothing to delete.
                err = MethodNotFound(f"{method} is not used in protocol version 2026-07-28", reason="method_not_allowed")
                reply.send(405, (("allow", "POST"), *_JSON_HEADERS), error_body(None, err))
            elif method == "GET":
                await self._get(request, reply)
            elif method == "DELETE":
                self._delete(request, reply)
            else:
                err = InvalidRequest(f"method {method} not allowed", reason="method_not_allowed", http_status=405)
                reply.send(405, _ALLOW + _JSON_HEADERS, error_body(None, err))
        except GatewayError as err:
            self._send_error(reply, None, err)
        except Exception:  # a bug: log it, never show it
            log.exception("unhandled error answering %s %s", request.method, request.path)
            self._send_error(reply, None, InternalError("internal gateway error"))

    def _check_headers(self, method: str, headers: dict[str, str]) -> GatewayError | None:
        """The error these headers earn (DNS rebinding, and media types for POST), or None."""
        try:
            self._check_dns_rebinding(headers)
            if method == "POST":
                self._check_post_headers(headers)
        except GatewayError as err:
            return err
        return None

    def _health(self) -> bytes:
        """Liveness for load balancers and container health checks, with each backend's state."""
        states = {name: b.state.value for name, b in self.catalog.backends.items()}
        return encode({"status": "ok", "backends": states})

    # -- checks ------------------------------------------------------------------------------

    def _build_allowed_hosts(self) -> frozenset[str] | None:
        """Host names accepted in ``Host``; None means any (bound publicly, no list given)."""
        server = self.config.server
        extra = {h.lower() for h in server.allowed_hosts}
        if "*" in extra:
            return None
        if server.host not in _LOOPBACK_HOSTS and not extra:
            return None
        return frozenset(_LOOPBACK_HOSTS | {server.host.lower()} | {_host_name(h) for h in extra})

    def _check_dns_rebinding(self, headers: dict[str, str]) -> None:
        allowed = self._allowed_hosts
        if allowed is not None:
            host = headers.get("host")
            if host is None or _host_name(host.lower()) not in allowed:
                raise Forbidden(f"host {host!r} is not allowed", reason="host_not_allowed", http_status=421)
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin.lower().rstrip("/")):
            raise Forbidden(f"origin {origin!r} is not allowed", reason="origin_not_allowed", http_status=403)

    def _origin_allowed(self, origin: str) -> bool:
        if origin in self._allowed_origins or "*" in self._allowed_origins:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and _host_name(rest) in _LOOPBACK_HOSTS

    @staticmethod
    def _check_post_headers(headers: dict[str, str]) -> None:
        content_type = headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise InvalidRequest(
                "Content-Type must be application/json", reason="unsupported_media_type", http_status=415
            )
        accept = _media_types(headers.get("accept", ""))
        if "*/*" not in accept and not {"application/json", "text/event-stream"} <= accept:
            raise InvalidRequest(
                "Accept must include application/json and text/event-stream", reason="not_acceptable", http_status=406
            )

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

    def _session_for(self, headers: dict[str, str]) -> Session:
        session_id = headers.get("mcp-session-id")
        if session_id is None:
            raise InvalidRequest("Mcp-Session-Id header is required", reason="session_required")
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound("session not found (expired or deleted): initialize again")
        return session

    # -- POST --------------------------------------------------------------------------------

    async def _post(self, request: Request, reply: Reply) -> None:
        headers = request.headers  # Host, Origin, Content-Type and Accept were checked in __call__
        try:
            msg = decode_message(request.body)
        except InvalidRequest as err:
            if err.reason != "batch":
                raise
            await self._batch(request, reply)
            return
        if self._is_stateless(msg, headers):
            await self._stateless_post(msg, headers, reply)
            return
        if msg.method == "initialize":
            self._check_version_header(headers, None)
            self.initialize(msg, reply)
            return
        session = self._session_for(headers)
        self._check_version_header(headers, session)
        ctx = RequestContext("handshake", session.protocol_version, session)
        if msg.id is UNSET or msg.method is UNSET:
            self.accept_client_message(msg, ctx)
            reply.send(202, (), b"")
            return
        # _request, inlined: one coroutine level less on the hot path.
        handler = self._handlers.get(msg.method)  # type: ignore[arg-type]
        try:
            if handler is None:
                raise MethodNotFound(f"method not found: {msg.method}")
            body = await handler(msg, ctx, reply)
        except GatewayError as err:
            body = self._request_failed(msg, reply, err)
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

    async def _stateless_post(self, msg: Message, headers: dict[str, str], reply: Reply) -> None:
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
            handler = self._stateless_handlers.get(msg.method)
            if handler is None:
                raise MethodNotFound(f"method not found: {msg.method}")
            body = await handler(msg, ctx, reply)
        except GatewayError as err:
            if reply.closed:
                return
            status = _STATELESS_STATUS.get(err.code, err.http_status)
            reply.send(status, _JSON_HEADERS + err.headers, error_body(msg.id, err))
            return
        if body is not None:
            reply.send(200, _JSON_HEADER_LINES, body)

    async def _batch(self, request: Request, reply: Reply) -> None:
        """JSON-RPC batches: only for sessions that negotiated 2025-03-26."""
        session = self._session_for(request.headers)
        if session.protocol_version not in BATCH_VERSIONS:
            raise InvalidRequest("JSON-RPC batches are not allowed after 2025-03-26", reason="batch")
        try:
            items = msgspec.json.decode(request.body, type=list[Raw])
        except msgspec.DecodeError:
            raise InvalidRequest("malformed batch") from None
        if not items:
            raise InvalidRequest("empty batch", reason="batch")
        ctx = RequestContext("handshake", session.protocol_version, session)
        answers = await asyncio.gather(*(self._batch_item(bytes(item), ctx) for item in items))
        bodies = [a for a in answers if a is not None]
        if not bodies:
            reply.send(202, (), b"")
        else:
            reply.send(200, _JSON_HEADERS, b"[" + b",".join(bodies) + b"]")

    async def _batch_item(self, data: bytes, ctx: RequestContext) -> bytes | None:
        try:
            msg = decode_message(data)
        except GatewayError as err:
            return error_body(None, err)
        if msg.id is UNSET or msg.method is UNSET:
            self.accept_client_message(msg, ctx)
            return None
        if msg.method == "initialize":
            return error_body(msg.id, InvalidRequest("initialize cannot be batched"))
        return await self.request(msg, ctx, None)

    def initialize(self, msg: Message, reply: Reply) -> None:
        if msg.id is UNSET:
            raise InvalidRequest("initialize must be a request", reason="invalid_request")
        try:
            params = decode_initialize(msg.params) if msg.params is not UNSET else InitializeParams()
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"bad initialize params: {exc}") from None
        wanted = params.protocolVersion
        version = wanted if wanted in SUPPORTED_VERSIONS else LATEST_HANDSHAKE
        session = self.sessions.create(version, params.capabilities, params.clientInfo)
        result = {
            "protocolVersion": version,
            "capabilities": self._capabilities(),
            "serverInfo": self._server_info,
        }
        instructions = self._instructions()
        if instructions:
            result["instructions"] = instructions
        headers = (("mcp-session-id", session.id), *_JSON_HEADERS)
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
        relayed = self._relayed.get(msg.id) if isinstance(msg.id, str) else None
        if relayed is None or ctx.session is None or relayed[1] != ctx.session.id:
            log.warning("client answer with unknown id %r dropped", msg.id)
            return
        del self._relayed[msg.id]  # type: ignore[arg-type]
        result = msg.result if msg.result is not UNSET else None
        error = msg.error if msg.error is not UNSET else None
        if result is None and error is None:
            error = Raw(encode({"code": -32603, "message": "client sent an empty answer"}))
        relayed[0](result, error)

    def _client_cancelled(self, msg: Message, session: Session) -> None:
        try:
            request_id = decode_any(msg.params).get("requestId") if msg.params is not UNSET else None
        except (msgspec.DecodeError, AttributeError):
            return
        call = session.inflight.get(request_id)
        if call is not None:
            backend, ticket = call
            backend.cancel(ticket, "cancelled by the client")

    def _relay_id(self) -> str:
        self._next_relay += 1
        return f"gw-r{self._next_relay}"

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._quietly(coro))
        _background.add(task)
        task.add_done_callback(_background.discard)

    @staticmethod
    async def _quietly(coro: Awaitable[None]) -> None:
        try:
            await coro
        except GatewayError as err:
            log.warning("relaying to a backend failed: %s", err.message)

    async def request(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        """Answer one request: its response bytes, or None if it was streamed to ``reply``."""
        handler = self._handlers.get(msg.method)  # type: ignore[arg-type]
        try:
            if handler is None:
                raise MethodNotFound(f"method not found: {msg.method}")
            return await handler(msg, ctx, reply)  # type: ignore[arg-type]
        except GatewayError as err:
            return self._request_failed(msg, reply, err)

    def _request_failed(self, msg: Message, reply: Reply | None, err: GatewayError) -> bytes | None:
        """A request's error: as response bytes (200-status errors, or no reply), else sent now."""
        if reply is None or err.http_status == 200:
            return error_body(msg.id, err)
        self._send_error(reply, msg.id, err)
        return None

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
        page = self.catalog.snapshot.page(msg.method, cursor, ctx.era == "stateless")  # type: ignore[arg-type]
        return response_bytes(msg.id, page)  # type: ignore[arg-type]

    async def _set_level(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes:
        """``logging/setLevel`` (handshake era): kept per session and applied by the gateway to
        the log notifications this client gets, so one client's level never changes another's."""
        try:
            level = decode_any(msg.params).get("level") if msg.params is not UNSET else None
        except (msgspec.DecodeError, AttributeError):
            level = None
        if level not in _LEVELS:
            raise InvalidParams(f"unknown log level {level!r}", reason="invalid_level")
        if ctx.session is not None:
            ctx.session.log_level = level
        return response_bytes(msg.id, _EMPTY_RESULT)  # type: ignore[arg-type]

    # -- routed methods ----------------------------------------------------------------------

    async def _prompts_get(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        return await self._routed(msg, ctx, reply, "name", "prompt")

    async def _resources_read(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        return await self._routed(msg, ctx, reply, "uri", "resource")

    async def _subscribe(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        """``resources/subscribe`` / ``unsubscribe``: to the resource's backend, remembered per session
        so ``notifications/resources/updated`` reaches exactly the clients that asked."""
        _, uri = self._params_with(msg, "uri")
        body = await self._routed(msg, ctx, reply, "uri", "resource")
        if ctx.session is not None:
            if msg.method == "resources/subscribe":
                ctx.session.subscriptions.add(uri)
            else:
                ctx.session.subscriptions.discard(uri)
        return body

    async def _complete(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        """``completion/complete``: routed by its ``ref`` (a prompt name or a resource template URI)."""
        params, ref_raw = self._params_raw(msg, "ref")
        ref = decode_any(ref_raw)
        if not isinstance(ref, dict):
            raise InvalidParams("params.ref must be an object")
        key = "name" if ref.get("type") == "ref/prompt" else "uri"
        value = ref.get(key)
        if not isinstance(value, str):
            raise InvalidParams(f"params.ref.{key} must be a string")
        router = self.catalog.snapshot.router
        route = router.resolve_prompt(value) if key == "name" else router.resolve_uri(value)
        if route is None:
            raise InvalidParams(f"unknown completion target: {value}", reason="unknown_ref", data={key: value})
        params["ref"] = Raw(encode({**ref, key: route[1]}))
        return await self._forward(msg, ctx, reply, route, params, None)

    async def _routed(
        self, msg: Message, ctx: RequestContext, reply: Reply | None, key: str = "name", kind: str = "tool"
    ) -> bytes | None:
        """Route by ``params[key]`` through the routing table, or answer -32602 for an unknown ``kind``."""
        params, value = self._params_with(msg, key, ctx)
        router = self.catalog.snapshot.router
        resolve = router.resolve_tool if kind == "tool" else router.resolve_prompt if kind == "prompt" else router.resolve_uri
        route = resolve(value)
        if route is None and self._passthrough_backend is not None:
            # Passthrough: the backend answers for names it did not list, as it would directly.
            route = (self._passthrough_backend, value)
        if route is None:
            if kind == "resource" and ctx.era == "handshake":
                raise ResourceNotFound(f"resource not found: {value}", data={key: value}, spec_data={"uri": value})
            raise InvalidParams(f"unknown {kind}: {value}", reason=f"unknown_{kind}", data={key: value})
        if ctx.era == "stateless" and kind == "tool":
            annotations = self.catalog.snapshot.header_annotations(value)
            if annotations:  # the arguments are decoded only for tools that declare Mcp-Param headers
                arguments = decode_any(params["arguments"]) if "arguments" in params else None
                check_param_headers(annotations, arguments, ctx.headers or {})
        return await self._forward(msg, ctx, reply, route, params, key, value)

    @staticmethod
    def _params_raw(msg: Message, key: str, ctx: RequestContext | None = None) -> tuple[dict[str, Raw], Raw]:
        """Params as ``{key: raw}`` (decoded already by the envelope checks, if ``ctx`` has them)."""
        if msg.params is UNSET:
            raise InvalidParams(f"params.{key} is required")
        try:
            params = None
            if ctx is not None and ctx.params is not None:
                params, ctx.params = ctx.params, None
            else:
                params = decode_params(msg.params)
            return params, params[key]
        except (msgspec.ValidationError, msgspec.DecodeError, KeyError):
            raise InvalidParams(f"params must be an object with {key!r}") from None

    @staticmethod
    def _params_with(msg: Message, key: str, ctx: RequestContext | None = None) -> tuple[dict[str, Raw], str]:
        """Params as ``{key: raw}`` plus the decoded string under ``key``."""
        params, raw = McpFront._params_raw(msg, key, ctx)
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise InvalidParams(f"params must be an object with a string {key!r}") from None
        if not isinstance(value, str):
            raise InvalidParams(f"params.{key} must be a string")
        return params, value

    async def _forward(
        self,
        msg: Message,
        ctx: RequestContext,
        reply: Reply | None,
        route: tuple[Backend, str],
        params: dict[str, Raw],
        key: str | None,
        exposed: str = "",
    ) -> bytes | None:
        """Send a routed request to its backend in the right era; stream what comes back."""
        backend, original = route
        if key is not None:
            params[key] = Raw(encode(original))
        era = ctx.era if ctx.era in backend.eras else backend.era_for(ctx.era)
        session_key = ctx.session_key if backend.config.session == "per-client" else None
        stream = _ClientStream(self, reply, backend, ctx, session_key) if reply is not None else None
        if stream is not None and ctx.era == "stateless" and era == "handshake":
            stream.request_id, stream.method, stream.name = msg.id, msg.method, exposed or None
        if stream is not None and "_meta" in params:
            self._remap_progress(params, stream, ctx.meta)
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
        # The stream doubles as the request's Ticket (one allocation less per request).
        ticket: Any = stream if stream is not None else Ticket()
        if stream is not None:
            # A call still running after sse_keepalive seconds switches to SSE and gets
            # keep-alive comments, so proxies with idle-read timeouts keep it open.
            self._slow_calls.add(stream, self._keepalive, stream.keep_alive, self._keepalive)
        session = ctx.session
        if session is not None:
            session.inflight[msg.id] = (backend, ticket)
        elif reply is not None:
            # Stateless era: the client closing its response stream is the cancel.
            reply.on_disconnect = lambda: backend.cancel(ticket, "client closed the stream")
        try:
            if ctx.era == "stateless" and era == "handshake" and stream is not None:
                answer = await self._call_for_stateless(msg, ctx, backend, params, body_params, session_key, stream, ticket)
                if answer is None:  # the backend asked something: the client got input_required
                    return None
            else:
                answer = await backend.request(
                    msg.method,  # type: ignore[arg-type]
                    body_params,
                    session_key=session_key,
                    sink=stream.send if stream is not None else None,
                    era=era,
                    headers=headers,
                    ticket=ticket,
                    capabilities=ctx.capabilities if session_key is not None else None,
                )
                if ctx.era == "handshake" and era == "stateless" and stream is not None:
                    answer = await self._input_rounds(msg, ctx, backend, params, headers, stream, ticket, answer)
        except (BackendUnavailable, BackendTimeout) as err:
            if stream is None or not stream.started:
                raise
            stream.finish(error_body(msg.id, err))
            return None
        except RequestCancelled:
            # The client cancelled: it expects no JSON-RPC response (the spec says none is sent).
            if stream is not None and stream.started:
                stream.reply.end()
            elif reply is not None and not reply.closed:
                reply.send(202, (), b"")
            return None
        finally:
            if stream is not None:
                self._slow_calls.discard(stream)
                if stream.keepalive is not None:
                    stream.keepalive.cancel()
            if session is not None:
                session.inflight.pop(msg.id, None)
            elif reply is not None:
                reply.on_disconnect = None
        if answer.result is not UNSET and era == ctx.era:
            body, status = response_bytes(msg.id, answer.result), 200  # type: ignore[arg-type]
        else:
            body, status = self._translate(msg, ctx, era, answer)
        if stream is not None and stream.started:
            stream.finish(body)
            return None
        if status != 200 and reply is not None:
            reply.send(status, _JSON_HEADERS, body)
            return None
        return body

    async def _call_for_stateless(
        self,
        msg: Message,
        ctx: RequestContext,
        backend: Backend,
        params: dict[str, Raw],
        body_params: Raw,
        session_key: str | None,
        stream: _ClientStream,
        ticket: Ticket,
    ) -> Message | None:
        """A stateless client's call to a handshake backend. If the backend asks the client
        something, the client gets ``input_required`` and the call stays open for its retry
        (see ``_ClientStream._relay`` and ``_flush_input``); None means the client was answered."""
        token = decode_any(params["requestState"]) if "requestState" in params else None
        if token is not None:
            return await self._continue_for_stateless(msg, backend, params, session_key, stream, token)
        if "inputResponses" in params:
            body_params = Raw(encode({k: v for k, v in params.items() if k != "inputResponses"}))
        stream.bridging = True
        try:
            answer = await backend.request(
                msg.method,  # type: ignore[arg-type]
                body_params,
                session_key=session_key,
                sink=stream.send,
                era="handshake",
                ticket=ticket,
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

    def _start_input(self, stream: _ClientStream, msg: Message) -> None:
        """The backend asked a stateless client something: hold the call, and tell the client
        (after a moment, so requests sent together go out together)."""
        call = PendingCall(
            stream.method, stream.name, stream.backend.config.request_timeout or self.config.gateway.request_timeout
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
            self._pending.add(call)
        except GatewayError as err:
            self._send_error(stream.reply, stream.request_id, err)
            return
        body = response_bytes(stream.request_id, encode(call.input_required()))
        if stream.started:
            stream.finish(body)
        elif not stream.reply.closed:
            stream.reply.send(200, _JSON_HEADER_LINES, body)

    async def _continue_for_stateless(
        self, msg: Message, backend: Backend, params: dict[str, Raw], session_key: str | None, stream: _ClientStream, token: Any
    ) -> Message | None:
        """A retry with ``requestState``: the answers go to the backend and the held call goes on."""
        call = self._pending.take(token, msg.method, stream.name)  # type: ignore[arg-type]
        if call is None:
            raise InvalidParams("requestState is unknown or expired: call again without it", reason="unknown_request_state")
        self._answer_backend(call, backend, session_key, params)
        self._slow_calls.discard(stream)  # the held call's stream takes over this response
        if stream.keepalive is not None:
            stream.keepalive.cancel()
        call.stream.rebind(stream)
        stream = call.stream
        held = call
        # Closing this response stream cancels the held backend call (the stateless era's cancel).
        stream.reply.on_disconnect = lambda: backend.cancel(held.ticket, "client closed the stream")
        stream.keepalive = asyncio.get_running_loop().call_later(self._keepalive, stream.keep_alive, self._keepalive)
        try:
            finished = await call.next_event()
        finally:
            stream.keepalive.cancel()
        if finished:
            return call.done.result()
        self._pending.add(call)
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
                self._spawn(backend.respond(request.id, Raw(encode(answers[key])), session_key=session_key))
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
        stream: _ClientStream,
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
                msg.method,  # type: ignore[arg-type]
                with_envelope(Raw(encode(params)), ctx.capabilities, ctx.client_info),
                sink=stream.send,
                era="stateless",
                headers=headers,
                ticket=ticket,
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
            annotations = self.catalog.snapshot.header_annotations(exposed)
            if annotations:
                headers.update(param_headers(annotations, decode_any(params["arguments"])))
        return headers

    def _remap_progress(self, params: dict[str, Raw], stream: _ClientStream, meta: Any = None) -> None:
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

    def _translate(self, msg: Message, ctx: RequestContext, era: str, answer: Message) -> tuple[bytes, int]:
        """The backend's answer for this client: its id back, and what differs between eras
        (resultType and cache hints for stateless clients; the resource-not-found code)."""
        if answer.result is not UNSET:
            result = answer.result
            if ctx.era == "stateless" and era == "handshake":
                extra = b'"resultType":"complete"'
                if msg.method == "resources/read":
                    extra += b',"ttlMs":0,"cacheScope":"private"'
                result = Raw(_add_result_fields(bytes(result), extra))
            return response_bytes(msg.id, result), 200  # type: ignore[arg-type]
        if answer.error is UNSET:
            err = InternalError("backend sent an empty response", reason="bad_backend_response")
            return error_body(msg.id, err), 200
        error = answer.error
        code: Any = None
        if ctx.era == "stateless" or msg.method == "resources/read":
            try:
                decoded = _decode_error(error)
            except (msgspec.DecodeError, msgspec.ValidationError):
                decoded = {}
            code = decoded.get("code")
            if msg.method == "resources/read":
                if ctx.era == "stateless" and code == -32002:
                    code = -32602
                elif ctx.era == "handshake" and era == "stateless" and code == -32602:
                    code = -32002
                if code != decoded.get("code"):
                    error = Raw(encode({**decoded, "code": code}))
        body = encode(Message(id=msg.id, error=error))
        status = _STATELESS_STATUS.get(code, 200) if ctx.era == "stateless" else 200
        return body, status

    # -- GET and DELETE ----------------------------------------------------------------------

    async def _get(self, request: Request, reply: Reply) -> None:
        headers = request.headers
        if "text/event-stream" not in _media_types(headers.get("accept", "")):
            raise InvalidRequest("Accept must include text/event-stream", reason="not_acceptable", http_status=406)
        session = self._session_for(headers)
        self._check_version_header(headers, session)
        if session.stream is not None and not session.stream.closed:
            raise InvalidRequest("this session already has a GET stream", reason="stream_conflict", http_status=409)
        session.stream = reply
        reply.start_stream(200, (*_SSE_HEADERS, ("mcp-session-id", session.id)))
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
                await asyncio.wait_for(reply.wait_closed(), self._keepalive)
            except asyncio.TimeoutError:
                reply.write(b": keep-alive\n\n")

    def _delete(self, request: Request, reply: Reply) -> None:
        session = self._session_for(request.headers)
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
        honored: dict[str, Any] = {k: True for k in _LIST_FLAGS.values() if wanted.get(k) is True}
        uris = wanted.get("resourceSubscriptions")
        if isinstance(uris, list) and self._capabilities()["resources"].get("subscribe"):
            honored["resourceSubscriptions"] = [u for u in uris if isinstance(u, str) and self._watch(u)]
        listener = _Listener(reply, msg.id, honored)
        reply.start_stream(200, _SSE_HEADERS)
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

    def _watch(self, uri: str) -> bool:
        """Subscribe upstream (shared session) for a listener's resource; False if nobody serves it."""
        route = self.catalog.snapshot.router.resolve_uri(uri)
        if route is None:
            return False
        backend, original = route
        if "handshake" in backend.eras:
            params = Raw(encode({"uri": original}))
            self._spawn(self._request_quietly(backend, "resources/subscribe", params))
        return True

    @staticmethod
    async def _request_quietly(backend: Backend, method: str, params: Raw) -> None:
        await backend.request(method, params, era="handshake")

    # -- notifications to clients ------------------------------------------------------------

    def broadcast(self, notification: bytes, method: str | None = None) -> int:
        """Send one notification to every session's GET stream and to the listen streams that
        opted in to ``method``; returns how many got it."""
        sent = 0
        event = _sse_event(notification)
        for session in self.sessions:
            stream = session.stream
            if stream is not None and not stream.closed:
                stream.write(event)
                sent += 1
        flag = _LIST_FLAGS.get(method or "")
        if flag is not None:
            for listener in list(self._listeners):
                if listener.honored.get(flag):
                    listener.send(Message(method=method))
                    sent += 1
        return sent

    def resource_updated(self, uri: str, params: Raw) -> int:
        """``notifications/resources/updated`` for ``uri`` (as clients see it) to the sessions and
        listen streams subscribed to it."""
        note = Message(method="notifications/resources/updated", params=params)
        event = _sse_event(encode(note))
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

    # -- errors ------------------------------------------------------------------------------

    @staticmethod
    def _send_error(reply: Reply, request_id: Any, err: GatewayError) -> None:
        if reply.closed:
            return
        headers: tuple[tuple[str, str], ...] = _JSON_HEADERS + err.headers
        if isinstance(err, BackendUnavailable) and not any(k == "retry-after" for k, _ in err.headers):
            headers += (("retry-after", "1"),)
        reply.send(err.http_status, headers, error_body(request_id, err))


_LIST_FLAGS = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
_SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"


class _Listener:
    """One ``subscriptions/listen`` stream and what it opted in to."""

    __slots__ = ("reply", "subscription_id", "honored")

    def __init__(self, reply: Reply, subscription_id: Any, honored: dict[str, Any]) -> None:
        self.reply = reply
        self.subscription_id = subscription_id
        self.honored = honored

    def send(self, msg: Message) -> None:
        """Write one notification tagged with the subscription id."""
        if self.reply.closed:
            return
        params = decode_any(msg.params) if msg.params is not UNSET else {}
        meta = params.setdefault("_meta", {}) if isinstance(params, dict) else {}
        meta[_SUBSCRIPTION_KEY] = self.subscription_id
        self.reply.write(_sse_event(encode(Message(method=msg.method, params=Raw(encode(params))))))


_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_LEVEL_RANK = {name: rank for rank, name in enumerate(_LEVELS)}
_background: set[asyncio.Future[None]] = set()


def _level_of(msg: Message) -> str | None:
    try:
        level = decode_any(msg.params).get("level") if msg.params is not UNSET else None
    except (msgspec.DecodeError, AttributeError):
        return None
    return level if isinstance(level, str) else None


class _ClientStream:
    """Turns a backend's mid-request messages into an SSE response, started lazily.

    A backend that answers with plain JSON never starts the stream, and the
    client gets JSON; the first progress or log message switches the response
    to SSE so it reaches the client before the result. Progress tokens are
    mapped back to the client's, log lines below the client's level are
    dropped, and requests from the backend (sampling, elicitation, roots) are
    relayed to the client with a gateway id, or refused when the client cannot
    take them.
    """

    __slots__ = (
        "front", "reply", "backend", "ctx", "session_key", "started", "progress", "pending", "upstream_id", "handle",
        "bridging", "request_id", "method", "name", "keepalive",
    )

    def __init__(
        self, front: McpFront, reply: Reply, backend: Backend, ctx: RequestContext, session_key: str | None
    ) -> None:
        self.front = front
        self.reply = reply
        self.backend = backend
        self.ctx = ctx
        self.session_key = session_key
        self.started = False
        self.progress: tuple[str, Any] | None = None  # (gateway token, client token)
        self.pending: PendingCall | None = None  # set while a stateless client's call may need input
        # The Ticket fields, filled in by the backend (see gateway.backends.base.Ticket).
        self.upstream_id: Any = None
        self.handle: Any = None
        self.keepalive: asyncio.TimerHandle | None = None
        self.bridging = False  # a stateless client's call to a handshake backend (see _start_input)
        self.request_id: Any = None
        self.method = ""
        self.name: str | None = None

    def rebind(self, other: _ClientStream) -> None:
        """Continue a held call on the retry's response (a stateless client's next round)."""
        self.reply = other.reply
        self.ctx = other.ctx
        self.request_id = other.request_id
        self.started = False

    def ask(self, request: dict[str, Any]) -> asyncio.Future[tuple[Raw | None, Raw | None]]:
        """Send a request of the gateway's own to this (handshake-era) client; the future
        gets ``(result, error)`` when it answers."""
        future: asyncio.Future[tuple[Raw | None, Raw | None]] = asyncio.get_running_loop().create_future()
        method = request.get("method")
        session = self.ctx.session
        needed = _NEEDS_CAPABILITY.get(method)  # type: ignore[arg-type]
        if session is None or needed is None or needed not in (self.ctx.capabilities or {}):
            error = {"code": -32601, "message": f"the client cannot answer {method!r} (capability not declared)"}
            future.set_result((None, Raw(encode(error))))
            return future
        relay_id = self.front._relay_id()

        def answered(result: Raw | None, error: Raw | None) -> None:
            if not future.done():
                future.set_result((result, error))

        self.front._relayed[relay_id] = (answered, session.id)
        params = request.get("params")
        msg = Message(id=relay_id, method=method, params=Raw(encode(params)) if params is not None else UNSET)
        self._write(encode(msg))
        return future

    def send(self, msg: Message) -> None:
        if msg.id is not UNSET:
            self._relay(msg)
            return
        notice = self.front.on_backend_notification
        if notice is not None:
            notice(self.backend, self.session_key, msg)
        if msg.method == "notifications/progress" and self.progress is not None:
            msg = self._client_progress(msg)
        elif msg.method == "notifications/message" and (self.ctx.log_level is not None or self.ctx.era == "stateless"):
            # Stateless era: log lines only for requests that asked (_meta logLevel), at or above it.
            wanted = self.ctx.log_level
            level = _level_of(msg)
            if wanted is None or (level is not None and _LEVEL_RANK.get(level, 99) < _LEVEL_RANK.get(wanted, 0)):
                return
        self._write(encode(msg))

    def keep_alive(self, every: float) -> None:
        """Timer callback: an SSE comment on a long call's response, then again later."""
        if self.reply.closed or self.pending is not None:
            return
        if not self.started:
            self.started = True
            self.reply.start_stream(200, _SSE_HEADERS)
        self.reply.write(b": keep-alive\n\n")
        self.keepalive = asyncio.get_running_loop().call_later(every, self.keep_alive, every)

    def _write(self, data: bytes) -> None:
        if self.reply.closed:
            return
        if not self.started:
            self.started = True
            self.reply.start_stream(200, _SSE_HEADERS)
        self.reply.write(_sse_event(data))

    def _client_progress(self, msg: Message) -> Message:
        try:
            params = decode_any(msg.params)
        except msgspec.DecodeError:
            return msg
        assert self.progress is not None
        if isinstance(params, dict) and params.get("progressToken") == self.progress[0]:
            params["progressToken"] = self.progress[1]
            return Message(method=msg.method, params=Raw(encode(params)))
        return msg

    def _relay(self, msg: Message) -> None:
        """A request from the backend while it serves this client's request."""
        if msg.method == "ping":
            self.front._spawn(self.backend.respond(msg.id, Raw(b"{}"), session_key=self.session_key))
            return
        needed = _NEEDS_CAPABILITY.get(msg.method)  # type: ignore[arg-type]
        session = self.ctx.session
        if session is None and self.pending is not None:
            self.pending.server_request(msg)  # becomes input_required for the stateless client
            return
        if session is None and self.bridging:
            self.front._start_input(self, msg)
            return
        reason = None
        if session is None:
            reason = "the client's protocol era has no server-to-client requests"
        elif needed is None or needed not in (self.ctx.capabilities or {}):
            reason = f"the client did not declare the {needed or msg.method} capability"
        elif self.reply.closed:
            reason = "the client's response stream is closed"
        if reason is not None:
            error = Raw(encode({"code": -32601, "message": f"{msg.method} refused by the gateway: {reason}"}))
            self.front._spawn(self.backend.respond(msg.id, None, error, session_key=self.session_key))
            return
        assert session is not None
        backend, upstream_id, session_key, front = self.backend, msg.id, self.session_key, self.front

        def answered(result: Raw | None, error: Raw | None) -> None:
            front._spawn(backend.respond(upstream_id, result, error, session_key=session_key))

        relay_id = front._relay_id()
        front._relayed[relay_id] = (answered, session.id)
        self._write(encode(Message(id=relay_id, method=msg.method, params=msg.params)))

    def finish(self, body: bytes) -> None:
        if not self.reply.closed:
            self.reply.write(_sse_event(body))
            self.reply.end()
