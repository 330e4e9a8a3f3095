"""The MCP front: Streamable HTTP on one path (``/mcp`` by default).

Per request, in this order (each step either continues or answers):

1. path, then DNS-rebinding checks: ``Host`` (421) and ``Origin`` (403);
2. HTTP method: POST (messages), GET (the session's notification stream),
   DELETE (end the session); anything else 405;
3. POST: ``Content-Type`` (415), ``Accept`` (406), body decoded as a JSON-RPC
   envelope (400: -32700 / -32600), ``MCP-Protocol-Version`` (400);
4. ``initialize`` makes a session; any other message needs a known session
   (400 missing, 404 unknown);
5. dispatch: answered locally (ping, lists from the catalog) or routed through
   the catalog's routing table to one backend, prefix stripped, params bytes
   otherwise untouched. The backend's result goes back as its bytes with the
   client's id; when the backend streams (SSE), the client gets SSE too.

Errors made here are ``gateway.errors`` classes, answered with their HTTP
status and a JSON-RPC error body; nothing else escapes to the client.

The request path is written for both protocol eras: everything after step 4
reads a ``RequestContext`` (era, version, session or None) rather than the
session, so the stateless era only adds its own detection in step 3-4.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway import __version__
from gateway.backends.base import Backend, MessageSink
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
    SessionNotFound,
    error_body,
)
from gateway.mcp.catalog import LIST_METHODS, Catalog
from gateway.mcp.jsonrpc import UNSET, Message, Raw, decode_message, encode, response_bytes
from gateway.mcp.protocol_versions import BATCH_VERSIONS, HANDSHAKE_VERSIONS, LATEST_HANDSHAKE, SUPPORTED_VERSIONS
from gateway.mcp.sessions import RequestContext, Session, SessionStore
from gateway.server.api import Reply, Request

__all__ = ["McpFront"]

log = logging.getLogger("gateway.front")

_JSON_HEADERS = (("content-type", "application/json"),)
_JSON_HEADER_LINES = b"content-type: application/json\r\n"  # the same, pre-encoded for the hot path
_SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))
_ALLOW = (("allow", "GET, POST, DELETE"),)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_EMPTY_RESULT = b"{}"
_UNCHECKED: Any = object()


class _InitializeParams(msgspec.Struct):
    protocolVersion: str = ""
    capabilities: dict[str, Any] = {}
    clientInfo: Any = None


class _ListParams(msgspec.Struct):
    cursor: str | None = None


_decode_init = msgspec.json.Decoder(_InitializeParams).decode
_decode_list = msgspec.json.Decoder(_ListParams).decode
# Top-level keys of params with every value kept raw: renaming `name` or `uri`
# re-encodes the keys only, never the arguments.
_decode_params = msgspec.json.Decoder(dict[str, Raw]).decode


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
        # Header checks depend only on a few header values, which repeat from request
        # to request: remember each verdict (bounded) instead of re-parsing every time.
        self._verdicts: dict[tuple[str | None, ...], GatewayError | None] = {}
        # Set by the Gateway: sees every backend notification that arrives inside a
        # response stream, so a list_changed sent there still refreshes the catalog.
        self.on_backend_notification: Callable[[Backend, str | None, Message], None] | None = None
        # method -> handler(msg, ctx, reply) returning response bytes, or None when it streamed
        self._handlers: dict[str, Callable[[Message, RequestContext, Reply], Awaitable[bytes | None]]] = {
            "ping": self._ping,
            "tools/call": self._tools_call,
            "prompts/get": self._prompts_get,
            "resources/read": self._resources_read,
            "logging/setLevel": self._ping,
            **{method: self._list for method in LIST_METHODS},
        }

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
        if msg.method == "initialize":
            self._check_version_header(headers, None)
            self._initialize(msg, reply)
            return
        session = self._session_for(headers)
        self._check_version_header(headers, session)
        ctx = RequestContext("handshake", session.protocol_version, session)
        if msg.id is UNSET or msg.method is UNSET:
            self._accept_client_message(msg, ctx)
            reply.send(202, (), b"")
            return
        body = await self._request(msg, ctx, reply)
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
            self._accept_client_message(msg, ctx)
            return None
        if msg.method == "initialize":
            return error_body(msg.id, InvalidRequest("initialize cannot be batched"))
        return await self._request(msg, ctx, None)

    def _initialize(self, msg: Message, reply: Reply) -> None:
        if msg.id is UNSET:
            raise InvalidRequest("initialize must be a request", reason="invalid_request")
        try:
            params = _decode_init(msg.params) if msg.params is not UNSET else _InitializeParams()
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
        return {
            "tools": {"listChanged": True},
            "prompts": {"listChanged": True},
            "resources": {"listChanged": True},
            "logging": {},
        }

    def _instructions(self) -> str | None:
        """In passthrough mode the backend's own instructions are the gateway's."""
        if not self.config.gateway.passthrough or not self.catalog.backends:
            return None
        backend = next(iter(self.catalog.backends.values()))
        info = backend.server_info or {}
        value = info.get("instructions")
        return value if isinstance(value, str) else None

    def _accept_client_message(self, msg: Message, ctx: RequestContext) -> None:
        """Notifications and responses from the client: nothing to answer."""
        if msg.method == "notifications/initialized" and ctx.session is not None:
            ctx.session.initialized = True

    async def _request(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        """Answer one request: its response bytes, or None if it was streamed to ``reply``."""
        handler = self._handlers.get(msg.method)  # type: ignore[arg-type]
        try:
            if handler is None:
                raise MethodNotFound(f"method not found: {msg.method}")
            return await handler(msg, ctx, reply)  # type: ignore[arg-type]
        except GatewayError as err:
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
        page = self.catalog.snapshot.page(msg.method, cursor)  # type: ignore[arg-type]
        return response_bytes(msg.id, page)  # type: ignore[arg-type]

    # -- routed methods ----------------------------------------------------------------------

    async def _tools_call(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        return await self._routed(msg, ctx, reply, "name", "tool")

    async def _prompts_get(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        return await self._routed(msg, ctx, reply, "name", "prompt")

    async def _resources_read(self, msg: Message, ctx: RequestContext, reply: Reply | None) -> bytes | None:
        return await self._routed(msg, ctx, reply, "uri", "resource")

    async def _routed(self, msg: Message, ctx: RequestContext, reply: Reply | None, key: str, kind: str) -> bytes | None:
        """Route by ``params[key]`` through the routing table, or answer -32602 for an unknown ``kind``."""
        params, value = self._params_with(msg, key)
        router = self.catalog.snapshot.router
        resolve = router.resolve_tool if kind == "tool" else router.resolve_prompt if kind == "prompt" else router.resolve_uri
        route = resolve(value)
        if route is None:
            raise InvalidParams(f"unknown {kind}: {value}", reason=f"unknown_{kind}", data={key: value})
        return await self._forward(msg, ctx, reply, route, params, key)

    @staticmethod
    def _params_with(msg: Message, key: str) -> tuple[dict[str, Raw], str]:
        """Params as ``{key: raw}`` plus the decoded string under ``key``."""
        if msg.params is UNSET:
            raise InvalidParams(f"params.{key} is required")
        try:
            params = _decode_params(msg.params)
            value = msgspec.json.decode(params[key])
        except (msgspec.ValidationError, msgspec.DecodeError, KeyError):
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
        key: str,
    ) -> bytes | None:
        backend, original = route
        params[key] = Raw(encode(original))
        session_key = ctx.session_key if backend.config.session == "per-client" else None
        stream = _ClientStream(reply, backend, session_key, self.on_backend_notification) if reply is not None else None
        sink: MessageSink | None = stream.send if stream is not None else None
        try:
            answer = await backend.request(msg.method, Raw(encode(params)), session_key=session_key, sink=sink)  # type: ignore[arg-type]
        except (BackendUnavailable, BackendTimeout) as err:
            if stream is None or not stream.started:
                raise
            stream.finish(error_body(msg.id, err))
            return None
        body = self._response_for(msg.id, answer)
        if stream is not None and stream.started:
            stream.finish(body)
            return None
        return body

    @staticmethod
    def _response_for(request_id: Any, answer: Message) -> bytes:
        """The backend's answer with the client's id put back (result or error bytes untouched)."""
        if answer.result is not UNSET:
            return response_bytes(request_id, answer.result)
        if answer.error is not UNSET:
            return encode(Message(id=request_id, error=answer.error))
        return error_body(request_id, InternalError("backend sent an empty response", reason="bad_backend_response"))

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

    # -- notifications to clients ------------------------------------------------------------

    def broadcast(self, notification: bytes) -> int:
        """Send one notification to every session's GET stream; returns how many got it."""
        sent = 0
        event = _sse_event(notification)
        for session in self.sessions:
            stream = session.stream
            if stream is not None and not stream.closed:
                stream.write(event)
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


class _ClientStream:
    """Turns a backend's mid-request messages into an SSE response, started lazily.

    A backend that answers with plain JSON never starts the stream, and the
    client gets JSON; the first progress or log message switches the response
    to SSE so it reaches the client before the result.
    """

    __slots__ = ("reply", "backend", "session_key", "notice", "started")

    def __init__(
        self,
        reply: Reply,
        backend: Backend,
        session_key: str | None,
        notice: Callable[[Backend, str | None, Message], None] | None,
    ) -> None:
        self.reply = reply
        self.backend = backend
        self.session_key = session_key
        self.notice = notice
        self.started = False

    def send(self, msg: Message) -> None:
        if self.notice is not None and msg.id is UNSET:
            self.notice(self.backend, self.session_key, msg)
        if self.reply.closed:
            return
        if not self.started:
            self.started = True
            self.reply.start_stream(200, _SSE_HEADERS)
        self.reply.write(_sse_event(encode(msg)))

    def finish(self, body: bytes) -> None:
        if not self.reply.closed:
            self.reply.write(_sse_event(body))
            self.reply.end()
