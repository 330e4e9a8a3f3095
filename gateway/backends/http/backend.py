"""A Streamable HTTP backend: a keep-alive connection pool on the running loop,
responses parsed by httptools, JSON or SSE.

Every request is one POST. A JSON answer is decoded as one message; an SSE
answer is parsed as it arrives: messages before the response (progress, log
lines, server-to-client requests) go to the caller's sink at once, and the
response to our id ends the request. The backend's ``Mcp-Session-Id`` is kept
(one upstream session when ``shared``, one per front session when
``per-client``); a 404 on a request that carried it means the session expired,
so the gateway initializes again and retries once. Server notifications that
belong to no request (``list_changed``) arrive on a GET stream held open on a
connection of its own.

Static headers and the bearer token come from the config; nothing from the
gateway's clients is forwarded. With a ``credential`` (``backends.credentials``)
the backend's own token is fetched from a token endpoint: ``client_credentials``
puts the gateway's token in the constant head, rebuilt whenever the token is
refreshed (the express lane keeps working), and a backend without a valid token
is DOWN; ``token_exchange`` sends each call made for a caller with a token
exchanged for that caller (the gateway's own requests keep the gateway's token).
``identity_headers`` add chosen claims of the caller. Both depend on the caller,
so such a backend's calls never take the express lane (``express_ready`` is
False) and ``_post`` builds their head per request: the constant head without
the credential's token, the caller's token and identity lines, the session's
lines. Whose call it is: ``BackendCall.principal``, else the caller that opened
the per-client session (``UpSession.principal``), else nobody (the gateway's own
request: the backend's own credential, no identity headers).

An ``https://`` backend is reached over TLS (see ``pool``): its certificate and
host name are verified, and one that fails leaves the backend DOWN with
``certificate verify failed: ...``, retried like any unreachable backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway import __version__
from gateway.backends.base import (
    Backend,
    BackendCall,
    BackendState,
    ExpressAnswer,
    MessageSink,
    RequestCancelled,
    Ticket,
)
from gateway.backends.credentials import ClientCredentials, CredentialError, TokenExchange, identity_lines
from gateway.backends.http.connection import Connection, Exchange
from gateway.backends.http.outcome import classify
from gateway.backends.http.pool import Pool, QueuedCall, connect_problem, expire
from gateway.backends.http.session import UpSession, stateless_session
from gateway.backends.http.stream import BACKOFF_MAX, NotificationStream, get_request
from gateway.config import BackendConfig
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.protocol.initialize import initialize_params, with_envelope
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, encode
from gateway.protocol.versions import STATELESS_VERSIONS
from gateway.protocol.stateless import NAME_PARAM, encode_header_value
from gateway.timers import Deadlines

__all__ = ["BackendAuth", "HttpBackend"]

_decode = msgspec.json.Decoder(Message).decode
# Read once: on 3.11 an Enum member looked up on its class goes through EnumType.__getattr__.
_READY = BackendState.READY


class _SessionExpired(Exception):
    """The backend answered 404 to a request carrying our session id."""


def _never() -> bool:
    return False


def _header_lines(headers: dict[str, str]) -> bytes:
    """``name: value`` lines of extra request headers (names and values the gateway made)."""
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


class BackendAuth:
    """An HTTP backend's ``credential`` and ``identity_headers``, and the head parts they need.

    One attribute of the backend (``HttpBackend.auth``, None without either), not several
    (see ``HttpBackend`` on its attributes).
    """

    __slots__ = ("own", "exchange", "identity", "per_caller", "bare_head", "post_line")

    def __init__(self, backend: HttpBackend, config: BackendConfig, bare_head: bytes, post_line: bytes) -> None:
        credential = config.credential
        self.own: ClientCredentials | None = None
        """The backend's own token (``client_credentials``; with ``token_exchange`` too, for the
        gateway's own requests)."""
        self.exchange: TokenExchange | None = None
        """Tokens exchanged per caller (``token_exchange``)."""
        if credential is not None:
            self.own = ClientCredentials(backend.name, credential, backend._token_changed)
            if credential.grant == "token_exchange":
                # The audience: the backend's URL (with replicas, the first one's: one service).
                self.exchange = TokenExchange(backend.name, credential, (config.url_list or [""])[0])
        self.identity = dict(config.identity_headers)
        """claim -> header name."""
        self.per_caller = self.exchange is not None or bool(self.identity)
        """Whether a request's head depends on whom it is made for."""
        self.bare_head = bare_head
        """The constant head lines without the credential's token."""
        self.post_line = post_line
        """``POST <path> HTTP/1.1``."""


class HttpBackend(Backend):
    """An MCP server reached over Streamable HTTP (``http://`` or ``https://``).

    Mind the number of instance attributes: CPython 3.11 shares an instance's attribute keys
    only up to a limit this class is close to, and past it every attribute read on the express
    path gets slower (some 1,000 instructions per call, ``benchmarks.instructions``). So what
    only the start needs is read from the pool (``host``, ``port``, ``tls``) and the credential's
    parts are one attribute (``auth``).
    """

    def __init__(
        self,
        name: str,
        config: BackendConfig,
        *,
        default_timeout: float = 60.0,
        client_info: dict[str, Any] | None = None,
        url: str | None = None,
    ) -> None:
        """``url``: the endpoint (one replica's, ``backends.replicas``); None: ``config.url``."""
        super().__init__(name, config)
        url = url if url is not None else config.url
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend {name!r}: only http:// and https:// URLs are supported, got {url!r}")
        tls = parts.scheme == "https"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.default_timeout = default_timeout
        self.log = logging.getLogger(f"gateway.backend.{name}")
        self._head = self._build_head(parts.netloc)
        self._post_head = b"POST " + self.path.encode("latin-1") + b" HTTP/1.1\r\n" + self._head
        # The backend's own OAuth credential and its identity headers (see the module docstring).
        self.auth: BackendAuth | None = None
        if config.credential is not None or config.identity_headers:
            post_line = b"POST " + self.path.encode("latin-1") + b" HTTP/1.1\r\n"
            self.auth = BackendAuth(self, config, self._head, post_line)
            if self.auth.per_caller:
                # Its heads depend on the caller: never the express lane. An instance attribute,
                # so that the plain backend's express_ready costs not one instruction more.
                self.express_ready = _never  # type: ignore[method-assign]
        self._deadlines = Deadlines()  # request timeouts, checked on one tick instead of a timer each
        self._next_id = 0
        # The upstream session every client shares (``shared``), and the stateless era's pseudo-session.
        self.shared = UpSession()
        self._stateless = stateless_session()
        self._per_client: dict[str, UpSession] = {}
        self.pool = Pool(
            self, config, parts.hostname, parts.port or (443 if tls else 80), self._deadlines, tls=tls, url=url or ""
        )
        # The pool's containers, read here on the fast paths without going through the pool.
        self._idle = self.pool.idle
        self._all = self.pool.all
        self.stream = NotificationStream(self, self.pool, self.shared, self.path, self._head)
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovering: asyncio.Task[None] | None = None
        # Set by stop() until the next start(): nothing new is begun, freed connections close.
        self.stopping = False

    @property
    def url(self) -> str:
        """The endpoint's URL, as configured."""
        return self.pool.url

    @property
    def host(self) -> str:
        """The backend's host name or address (the URL's)."""
        return self.pool.host

    @property
    def port(self) -> int:
        """Its port (the URL's, else 443 for https://, 80 for http://)."""
        return self.pool.port

    @property
    def tls(self) -> bool:
        """Whether it is reached over TLS (an ``https://`` URL)."""
        return self.pool.tls

    def _build_head(self, netloc: str) -> bytes:
        lines = [
            f"host: {netloc}",
            "content-type: application/json",
            "accept: application/json, text/event-stream",
            f"user-agent: mcp-gateway/{__version__}",
        ]
        lines += [f"{k}: {v}" for k, v in self.config.headers.items()]
        if self.config.bearer_token:
            lines.append(f"authorization: Bearer {self.config.bearer_token}")
        return ("".join(f"{line}\r\n" for line in lines)).encode("latin-1")

    def _token_changed(self, token: str | None, why: str | None) -> None:
        """The credential has a new token (rebuild the constant heads: the next request, express
        or not, carries it), or lost its last one (DOWN until the recovery fetches one)."""
        auth = self.auth
        assert auth is not None
        line = b"" if token is None else b"authorization: Bearer " + token.encode("ascii") + b"\r\n"
        self._head = auth.bare_head + line
        self._post_head = auth.post_line + self._head
        self.stream.head = self._head
        for session in (self.shared, self._stateless, *self._per_client.values()):
            session.forget_head()
        if token is None and self.state is _READY and not self.stopping:
            self._went_down(why or "no backend token")

    async def _head_for(self, who: Any) -> bytes:
        """The constant head lines of a request made for ``who`` (a principal): the caller's
        exchanged token instead of the backend's own (``token_exchange``; raises the
        ``GatewayError`` the exchange answers), and its identity headers."""
        auth = self.auth
        assert auth is not None
        head = self._head
        if auth.exchange is not None:
            token = await auth.exchange.token_for(who)
            head = auth.bare_head + b"authorization: Bearer " + token.encode("ascii") + b"\r\n"
        if auth.identity:
            head += identity_lines(who, auth.identity)
        return head

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Initialize the shared session; if that fails, DOWN and retried in the background."""
        self.stopping = self.pool.closing = False
        if self.tls and not self.config.tls_verify:
            self.log.warning(
                "%s: TLS WITHOUT VERIFICATION (tls_verify = false): the certificate of %s is not checked; "
                "anyone on the network path can read and change this backend's traffic, credentials included",
                self.name, self.url,
            )
        try:
            await self._probe()
        except (BackendUnavailable, BackendTimeout) as exc:
            self._went_down(str(exc))
            return
        self._set_state(BackendState.READY)
        self.stream.open()

    async def _probe(self) -> None:
        """Find the eras the backend speaks: ``server/discover`` first, then ``initialize``.

        A discover that fails in any way (an error, a non-JSON answer, silence
        until a short timeout) means "no stateless era"; then initialize
        decides. A backend that speaks both is used in the client's own era.
        With a ``credential``, a valid token comes first (fetched now if need be);
        none: ``BackendUnavailable`` (``backend_token``), so the backend is DOWN
        with the token endpoint's failure as its reason, and retried.
        """
        if self.auth is not None and self.auth.own is not None:
            try:
                await self.auth.own.ensure()
            except CredentialError as exc:
                raise BackendUnavailable(
                    f"backend {self.name!r}: no token from the token endpoint: {exc}", reason="backend_token"
                ) from None
        eras = set()
        try:
            discover = await self._discover()
        except (BackendUnavailable, BackendTimeout, ValueError) as exc:
            self.log.debug("%s: server/discover failed (%s): handshake era only", self.name, exc)
            discover = None
        if discover is not None:
            eras.add("stateless")
            self.discover = discover
        try:
            await self._initialize(self.shared)
            eras.add("handshake")
        except (BackendUnavailable, BackendTimeout):
            if not eras:
                raise
        if "handshake" not in eras:
            assert discover is not None
            info = discover.get("serverInfo") or (discover.get("_meta") or {}).get("io.modelcontextprotocol/serverInfo")
            self.server_info = {**discover, "serverInfo": info}
        self.eras = frozenset(eras)

    async def _discover(self) -> dict[str, Any] | None:
        """One stateless ``server/discover``; its result if it lists a version the gateway speaks."""
        self._next_id += 1
        body = encode(Message(id=self._next_id, method="server/discover", params=with_envelope(UNSET)))
        limit = min(self.config.connect_timeout, 5.0)
        answer, _ = await self._post(self._stateless, body, self._next_id, None, limit, b"mcp-method: server/discover\r\n")
        if answer is None or answer.result is UNSET:
            return None
        result = decode_any(answer.result)
        if not isinstance(result, dict):
            return None
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or not set(versions) & set(STATELESS_VERSIONS):
            return None
        return result

    async def stop(self) -> None:
        """End the sessions (DELETE), close every connection, stop background work. Idempotent."""
        if self.stopping and self.state is BackendState.STOPPED:
            return
        self.stopping = self.pool.closing = True
        for task in [self._recovering, self.stream.task, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._recovering, self.stream.task, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        sessions = [self.shared, *self._per_client.values()]
        await asyncio.gather(*(self._delete(s) for s in sessions if s.session_id), return_exceptions=True)
        self.pool.close()
        self.stream.close()
        if self.auth is not None:
            if self.auth.own is not None:
                self.auth.own.stop()
            if self.auth.exchange is not None:
                self.auth.exchange.forget()
        self._set_state(BackendState.STOPPED)

    def _went_down(self, error: str) -> None:
        self.log.warning("%s: down: %s", self.name, error)
        self.shared.ready = False
        self._set_state(BackendState.DOWN, error)
        if not self.stopping and (self._recovering is None or self._recovering.done()):
            self._recovering = asyncio.get_running_loop().create_task(self._recover())

    def connect_failed(self, exc: BaseException) -> None:
        """A new pool connection could not be made: a READY backend that is not stopping goes DOWN."""
        if self.state is BackendState.READY and not self.stopping:
            self._went_down(f"cannot connect: {connect_problem(exc)}")

    async def _recover(self) -> None:
        delay = 0.5
        while not self.stopping:
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            try:
                await self._probe()
            except (BackendUnavailable, BackendTimeout) as exc:
                self.last_error = str(exc)
                continue
            self._set_state(BackendState.READY)
            self.stream.open()
            return

    # -- requests -------------------------------------------------------------------------------

    async def request(self, call: BackendCall) -> Message:
        """POST one request in the right upstream session; returns the response message."""
        if self.state is not BackendState.READY:
            raise BackendUnavailable(f"backend {self.name!r} is {self.state.value}: {self.last_error}", reason="backend_down")
        method, params, sink, ticket, timeout = call.method, call.params, call.sink, call.ticket, call.timeout
        limit = timeout if timeout is not None else (self.config.request_timeout or self.default_timeout)
        principal = call.principal
        if (call.era or self.preferred_era) == "stateless" and "stateless" in self.eras:
            return await self._request_stateless(method, params, call.headers, sink, limit, ticket, principal)
        shared = self.shared
        session_key = call.session_key
        if shared.ready and (session_key is None or self.config.session != "per-client"):
            session = shared  # the fast path: no await before the request goes out
        else:
            session = await self._session_for(session_key, call.capabilities, principal)
        headers = call.headers  # the caller's extra headers (the trace context), rare: one check
        extra = _header_lines(headers) if headers else b""
        for attempt in (1, 2):
            self._next_id += 1
            upstream_id = self._next_id
            body = encode(Message(id=upstream_id, method=method, params=params))
            try:
                answer, _ = await self._post(
                    session, body, upstream_id, sink, limit, extra, ticket=ticket, required=True, principal=principal
                )
            except _SessionExpired:
                if attempt == 2:
                    raise BackendUnavailable(f"backend {self.name!r} keeps rejecting its session") from None
                self.log.info("%s: upstream session expired; initializing again", self.name)
                session.ready = False
                await self._ensure_session(session)
                continue
            return answer  # type: ignore[return-value]  # required: never None
        raise AssertionError("unreachable")

    def express_ready(self) -> bool:
        """Whether ``express`` can take a handshake-era request in the shared session now
        (a pure check): READY, the handshake era spoken, sessions shared and the shared one
        ready, and an idle open connection, or a full pool to wait in line for (a queued call
        is sent, in its turn, from the callback that frees a connection). False when a
        closed idle connection must be dropped or the pool has room for a new one: the
        general path does both. A backend whose heads depend on the caller
        (``token_exchange``, ``identity_headers``) has this replaced by one answering False."""
        if self.state is not _READY or "handshake" not in self.eras or self.config.session == "per-client":
            return False
        if not self.shared.ready:
            return False
        idle = self._idle
        if idle:
            return not idle[-1].closed
        return len(self._all) >= self.config.pool_size

    def express(self, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer) -> None:
        """Send a handshake-era request in the shared session with no task and no await, on
        the idle connection ``express_ready`` found, or queue it in the full pool's line.

        Only right after ``express_ready()`` returned True, in the same callback. Then
        ``on_answer(answer, error, retry)`` is called exactly once, from a connection
        callback or the deadline tick, with what ``request`` would have returned or raised.
        ``retry`` means "nothing was answered; send it again by the general path" (a reused
        connection the backend had closed, an expired session now marked for initialize, a
        pool slot freed by a closed connection).
        """
        idle = self._idle
        if idle:
            conn = idle.pop()
            conn.reused = True
            self.express_send(conn, method, params, ticket, sink, on_answer)
            return
        pool = self.pool
        queued = QueuedCall(pool, method, params, ticket, sink, on_answer)
        pool.waiters.append(queued)
        self._deadlines.add(queued, self.config.connect_timeout, expire, queued)

    def express_send(
        self, conn: Connection, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer
    ) -> None:
        """Write an express call on ``conn`` (taken for it) and arm its request timeout."""
        session = self.shared
        self._next_id += 1
        upstream_id = self._next_id
        body = encode(Message(id=upstream_id, method=method, params=params))
        exchange = Exchange(upstream_id, sink, on_answer)
        exchange.session = session
        exchange.ticket = ticket
        exchange.limit = limit = self.config.request_timeout or self.default_timeout
        ticket.upstream_id = upstream_id
        ticket.handle = (session, conn, exchange)
        conn.send(exchange, b"%bcontent-length: %d\r\n\r\n%b" % (session.head(self._post_head), len(body), body))
        self._deadlines.add(exchange, limit, Exchange.time_out, exchange)

    def express_answered(self, exchange: Exchange, answer: Message) -> None:
        """An express exchange's plain answer (read by ``Connection`` in one step): straight to its caller."""
        exchange.finished = True
        self._deadlines.discard(exchange)
        exchange.ticket.handle = None  # type: ignore[union-attr]  # a late cancel must find nothing
        try:  # tell(), inline: this is every express call's answer
            exchange.on_answer(answer, None, False)  # type: ignore[misc]
        except Exception:
            self.log.exception("%s: express answer failed", self.name)

    def express_done(self, exchange: Exchange, answer: Message | None, exc: BaseException | None) -> None:
        """An express exchange ended any other way: classify it as ``_post`` and ``request``
        would, and hand that to its ``on_answer``."""
        self._deadlines.discard(exchange)
        outcome = classify(exchange, answer, exc, self.name)
        on_answer, conn, ticket, session = exchange.on_answer, exchange.conn, exchange.ticket, exchange.session
        exchange.on_answer = exchange.conn = exchange.ticket = exchange.sink = None  # no cycles to collect later
        if ticket is not None:
            ticket.handle = None  # a late cancel must not close a connection serving another request
        assert on_answer is not None and conn is not None and session is not None
        if outcome.timed_out:
            self._abandon(conn, session, exchange.upstream_id)
        elif outcome.expired:
            self.log.info("%s: upstream session expired; initializing again", self.name)
            session.ready = False
        self.tell(on_answer, outcome.answer, outcome.error, outcome.retry)

    def tell(self, on_answer: ExpressAnswer, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """Give an express call its outcome; the callback this runs in (a connection's, the
        deadline tick) must survive whatever the caller's answer does."""
        try:
            on_answer(answer, error, retry)
        except Exception:
            self.log.exception("%s: express answer failed", self.name)

    async def _request_stateless(
        self,
        method: str,
        params: Raw | Any,
        headers: dict[str, str] | None,
        sink: MessageSink | None,
        limit: float,
        ticket: Ticket | None,
        principal: Any = None,
    ) -> Message:
        """One self-contained 2026-07-28 POST: routing headers, ``_meta`` in params, no session;
        made for ``principal`` (its credential and identity headers), or the gateway's own."""
        if params is UNSET or b"io.modelcontextprotocol/protocolVersion" not in bytes(params):
            params = with_envelope(params)
        if headers is None and method in NAME_PARAM:
            # The gateway's own request: mirror the name into Mcp-Name as the era requires.
            value = decode_any(params).get(NAME_PARAM[method])
            headers = {"mcp-name": encode_header_value(value)} if isinstance(value, str) else None
        extra = [f"mcp-method: {method}\r\n"]
        if headers:
            extra += [f"{k}: {v}\r\n" for k, v in headers.items()]
        self._next_id += 1
        upstream_id = self._next_id
        body = encode(Message(id=upstream_id, method=method, params=params))
        extra_head = "".join(extra).encode("latin-1")
        answer, _ = await self._post(
            self._stateless, body, upstream_id, sink, limit, extra_head, ticket=ticket, required=True, principal=principal
        )
        return answer  # type: ignore[return-value]  # required: never None

    async def respond(
        self, upstream_id: Any, result: Raw | None = None, error: Raw | None = None, *, session_key: str | None = None
    ) -> None:
        """POST our client's answer to a request the backend sent, in the session it came from."""
        session = await self._session_for(session_key)
        msg = Message(id=upstream_id, result=result) if result is not None else Message(id=upstream_id, error=error)  # type: ignore[arg-type]
        await self._post(session, encode(msg), None, None, self.config.connect_timeout + 5)

    def cancel(self, ticket: Ticket, reason: str = "cancelled by the client") -> None:
        """Handshake era: ``notifications/cancelled``; stateless era: close the response stream."""
        if ticket.handle is None:
            return
        session, conn, exchange = ticket.handle
        exchange.fail(RequestCancelled(reason))
        if session is self._stateless:
            conn.close()  # closing the stream is the stateless era's cancel
        else:
            conn.close()  # its late answer must not be read as another request's
            params = Raw(encode({"requestId": ticket.upstream_id, "reason": reason}))
            self._spawn(self._post_quietly(session, encode(Message(method="notifications/cancelled", params=params))))

    async def notify(self, method: str, params: Raw | Any = UNSET, *, session_key: str | None = None) -> None:
        """POST one notification (the backend answers 202)."""
        session = await self._session_for(session_key)
        body = encode(Message(method=method, params=params))
        await self._post(session, body, None, None, self.config.connect_timeout + 5)

    async def release(self, session_key: str) -> None:
        """DELETE the per-client upstream session of ``session_key``."""
        session = self._per_client.pop(session_key, None)
        if session is not None and session.session_id:
            with contextlib.suppress(Exception):
                await self._delete(session)

    async def _session_for(
        self, session_key: str | None, capabilities: dict[str, Any] | None = None, principal: Any = None
    ) -> UpSession:
        """The upstream session of ``session_key``, initialized if need be; a new per-client one
        belongs to ``principal`` (the caller whose call opens it: its credential opens it)."""
        if session_key is None or self.config.session != "per-client":
            session = self.shared
        else:
            session = self._per_client.get(session_key)
            if session is None:
                if self.config.roots is not None:
                    # The gateway answers roots/list from config: declare the capability so the server asks.
                    capabilities = {**(capabilities or {}), "roots": {}}
                session = self._per_client[session_key] = UpSession(capabilities, principal)
        if not session.ready:
            await self._ensure_session(session)
        return session

    async def _ensure_session(self, session: UpSession) -> None:
        async with session.lock:
            if not session.ready:
                await self._initialize(session)

    async def _initialize(self, session: UpSession) -> None:
        session.session_id = None
        session.version = None
        self._next_id += 1
        body = encode(Message(id=self._next_id, method="initialize", params=initialize_params(session.capabilities)))
        answer, headers = await self._post(session, body, self._next_id, None, self.config.connect_timeout)
        if answer is None or answer.result is UNSET:
            raise BackendUnavailable(f"backend {self.name!r} refused initialize", reason="initialize_failed")
        result = decode_any(answer.result)
        session.session_id = headers.get("mcp-session-id")
        session.version = result.get("protocolVersion") if isinstance(result, dict) else None
        if session is self.shared:
            self.server_info = result if isinstance(result, dict) else {}
        await self._post(session, encode(Message(method="notifications/initialized")), None, None, self.config.connect_timeout)
        session.ready = True

    async def _post(
        self,
        session: UpSession,
        body: bytes,
        upstream_id: Any,
        sink: MessageSink | None,
        limit: float,
        extra: bytes = b"",
        *,
        ticket: Ticket | None = None,
        required: bool = False,
        principal: Any = None,
    ) -> tuple[Message | None, dict[str, str]]:
        """POST ``body`` and await its answer, retrying once on a kept-alive connection the
        backend had closed. ``required``: an empty answer is an error (a request's); else it
        is returned as None (a notification's 202; initialize and discover decide).
        ``principal``: whom it is made for (None: the session's own, ``UpSession.principal``);
        with a credential or identity headers that depend on the caller, its head is made for
        that caller, awaiting a token exchange first (whose failure is raised: nothing is sent)."""
        auth = self.auth
        if auth is not None and auth.per_caller and (who := principal or session.principal) is not None:
            head = auth.post_line + await self._head_for(who) + session.lines()
        else:
            head = session.head(self._post_head)
        data = b"%b%bcontent-length: %d\r\n\r\n%b" % (head, extra, len(body), body)
        deadlines = self._deadlines
        for attempt in (1, 2):
            idle = self._idle
            conn = idle.pop() if idle and not idle[-1].closed else None
            if conn is not None:
                conn.reused = True  # the common case, without the await of Pool.acquire()
            else:
                conn = await self.pool.acquire()
            exchange = Exchange(upstream_id, sink)
            exchange.session = session
            exchange.limit = limit
            if ticket is not None:
                ticket.upstream_id = upstream_id
                ticket.handle = (session, conn, exchange)
            conn.send(exchange, data)
            # A coarse deadline rather than wait_for() or a loop timer: no task, future or timer per request.
            deadlines.add(exchange, limit, exchange.time_out)
            failure: Exception | None = None
            answer: Message | None = None
            try:
                answer, headers = await exchange.future  # type: ignore[misc]
            except Exception as exc:  # what it failed with is classified below
                failure = exc
            else:
                if exchange.status != 404 and (answer is not None or not required):
                    return answer, headers  # the plain end (classify would return it as it is)
            finally:
                deadlines.discard(exchange)
                # Break the exchange -> sink -> caller's stream -> ticket -> exchange cycle, so the
                # request's objects die by reference counting, not in a garbage collection later.
                exchange.sink = None
                if ticket is not None:
                    ticket.handle = None  # a late cancel must not close a connection serving another request
            outcome = classify(exchange, answer, failure, self.name, attempt == 1, required)
            if outcome.timed_out:
                # The connection the exchange is on now: a resumed SSE stream moved it to a new one,
                # and the first went back to the pool, perhaps serving another request already.
                self._abandon(exchange.conn or conn, session, upstream_id)
            if outcome.expired:
                raise _SessionExpired()
            if outcome.retry:
                continue  # a reused keep-alive connection the backend had already closed: once more
            if outcome.error is not None:
                raise outcome.error
            return outcome.answer, headers
        raise AssertionError("unreachable")

    def _abandon(self, conn: Connection, session: UpSession, upstream_id: Any) -> None:
        """A request timed out: its connection's late response can no longer be trusted, and
        the backend is told to stop working on it."""
        conn.close()
        if upstream_id is not None:
            self._cancel_upstream(session, upstream_id)

    def _cancel_upstream(self, session: UpSession, upstream_id: Any) -> None:
        params = Raw(encode({"requestId": upstream_id, "reason": "timeout"}))
        body = encode(Message(method="notifications/cancelled", params=params))
        self._spawn(self._post_quietly(session, body))

    async def _post_quietly(self, session: UpSession, body: bytes) -> None:
        with contextlib.suppress(GatewayError):  # unavailable, timed out, or no token for the session's caller
            await self._post(session, body, None, None, self.config.connect_timeout)

    async def _delete(self, session: UpSession) -> None:
        with contextlib.suppress(GatewayError, ConnectionError, asyncio.TimeoutError, OSError):
            lines = self._head
            if self.auth is not None and self.auth.per_caller and session.principal is not None:
                lines = await self._head_for(session.principal)  # the session's caller deletes it
            head = (
                b"DELETE " + self.path.encode("latin-1") + b" HTTP/1.1\r\n" + lines
                + b"mcp-session-id: " + (session.session_id or "").encode("latin-1") + b"\r\ncontent-length: 0\r\n\r\n"
            )
            conn = await self.pool.acquire()
            exchange = Exchange(None, None)
            conn.send(exchange, head)
            await asyncio.wait_for(asyncio.shield(exchange.future), 2.0)  # type: ignore[arg-type]
        session.session_id = None
        session.ready = False

    # -- responses ------------------------------------------------------------------------------

    def stream_message(self, exchange: Exchange, data: bytes) -> None:
        """One SSE event of ``exchange``'s response stream (or of the notification stream):
        our response ends the exchange; a message before it goes to the exchange's sink; one
        that belongs to no request is a notification, or a server request nobody can answer."""
        if not data.strip():
            return  # a priming event (an id for resumption, no message)
        try:
            msg = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.log.warning("%s: SSE event is not JSON-RPC: %.200r", self.name, data)
            return
        if msg.method is UNSET and msg.id == exchange.upstream_id:
            exchange.answered = True
            exchange.resolve(msg)
        elif msg.method is UNSET:
            self.log.warning("%s: response with unexpected id %r dropped", self.name, msg.id)
        elif msg.id is not UNSET and (answer := self.local_answer(msg)) is not None:
            # Answered from config (roots), whoever is waiting: a client cannot widen it.
            self._spawn(self._respond_quietly(msg.id, None, self._key_of(exchange.session), answer))
        elif exchange.sink is not None and not exchange.answered:
            exchange.sink(msg)
        elif msg.id is UNSET:
            if self.on_notification is not None:
                self.on_notification(self, None, msg)
        else:
            self._refuse_server_request(msg)

    def _refuse_server_request(self, msg: Message, session_key: str | None = None) -> None:
        """A server-to-client request nobody can answer (no client waiting): say so, never leave it hanging."""
        error = Raw(encode({"code": -32601, "message": f"{msg.method}: no client to ask through the gateway"}))
        self._spawn(self._respond_quietly(msg.id, error, session_key))

    async def _respond_quietly(
        self, upstream_id: Any, error: Raw | None, session_key: str | None, result: Raw | None = None
    ) -> None:
        with contextlib.suppress(GatewayError):
            await self.respond(upstream_id, result, error, session_key=session_key)

    def _key_of(self, session: UpSession | None) -> str | None:
        """The front session key of a per-client upstream session (None: the shared one)."""
        return next((key for key, s in self._per_client.items() if s is session), None)

    def complete(self, exchange: Exchange) -> None:
        """A response was read whole: ``exchange`` resolves with its message (None: no body,
        202, or a 404 without JSON, which the classifier reads), or fails; an SSE stream that
        ended before our response is resumed (GET with ``Last-Event-ID``)."""
        if exchange.done():
            return
        if exchange.sse is not None:
            if exchange.upstream_id is None:
                exchange.resolve(None)
            elif exchange.last_id is not None and exchange.session is not None and exchange.resumes < 5:
                exchange.resumes += 1
                self._spawn(self._resume(exchange))
            else:
                exchange.fail(BackendUnavailable(f"backend {self.name!r} ended its stream without a response"))
            return
        status = exchange.status
        body = b"".join(exchange.body)
        if status == 202 or (not body and status < 300) or (status == 404 and not body.lstrip().startswith(b"{")):
            # 404 without JSON: the caller decides (an expired session, or a wrong URL)
            exchange.resolve(None)
            return
        try:
            msg = _decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            if status >= 400:
                exchange.fail(BackendUnavailable(f"backend {self.name!r} answered HTTP {status}", reason="backend_http_error"))
            else:
                exchange.fail(BackendUnavailable(f"backend {self.name!r} sent a body that is not JSON-RPC"))
            return
        if msg.method is UNSET and exchange.upstream_id is not None and msg.id not in (exchange.upstream_id, None):
            exchange.fail(BackendUnavailable(f"backend {self.name!r} answered with the wrong id {msg.id!r}"))
            return
        exchange.resolve(msg)

    async def _resume(self, exchange: Exchange) -> None:
        """The backend closed a response stream before answering (SSE polling): wait the
        retry it asked for, then GET the rest of the stream with ``Last-Event-ID``."""
        await asyncio.sleep(min((exchange.retry or 100) / 1000, 5.0))
        if exchange.done():
            return
        session = exchange.session
        assert session is not None
        lines = self._head
        if self.auth is not None and self.auth.per_caller and session.principal is not None:
            try:
                lines = await self._head_for(session.principal)
            except GatewayError as err:
                exchange.fail(err)
                return
        try:
            conn = await self.pool.open_connection()
        except (OSError, asyncio.TimeoutError) as exc:
            exchange.fail(BackendUnavailable(f"backend {self.name!r}: cannot resume its stream: {connect_problem(exc)}"))
            return
        head = get_request(self.path, lines, session, exchange.last_id or "")
        exchange.status = 0
        exchange.headers = {}
        exchange.sse = None
        conn.send(exchange, head)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
