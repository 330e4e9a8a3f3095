"""Client streams: what reaches a client while a backend serves its request, and after.

``ClientStream`` turns a backend's mid-request messages (progress, log lines,
server-to-client requests) into an SSE response, started lazily; the general
path and the express lane both use it. ``Relays`` remembers the requests the
gateway sent to handshake-era clients until they answer. ``Listener`` is one
stateless-era ``subscriptions/listen`` stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gateway.errors import GatewayError
from gateway.front.answers import SSE_HEADERS, sse_event
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, encode

if TYPE_CHECKING:
    from gateway.backends.base import Backend
    from gateway.front.bridge import PendingCall
    from gateway.front.sessions import RequestContext
    from gateway.server.api import Reply

__all__ = ["LEVELS", "LIST_FLAGS", "ClientStream", "Listener", "Relays", "StreamHost", "level_of", "spawn"]

log = logging.getLogger("gateway.front")

NEEDS_CAPABILITY = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
"""Server-to-client request -> the client capability it needs."""

RelayAnswer = Callable[["Raw | None", "Raw | None"], None]
_background: set[asyncio.Future[None]] = set()


def spawn(coro: Awaitable[None]) -> None:
    """Run slow-path relay work (an answer to a backend) in the background, kept referenced."""
    task = asyncio.ensure_future(_quietly(coro))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _quietly(coro: Awaitable[None]) -> None:
    try:
        await coro
    except GatewayError as err:
        log.warning("relaying to a backend failed: %s", err.message)


class Relays:
    """Requests the gateway sent to handshake-era clients (relayed from a backend or its own),
    by gateway id, until the client answers: ``add`` one, ``take`` its answer callback."""

    __slots__ = ("_waiting", "_next")

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[RelayAnswer, str]] = {}
        self._next = 0

    def add(self, on_answer: RelayAnswer, session_id: str) -> str:
        """Remember a request to the client of ``session_id``; returns its gateway id."""
        self._next += 1
        relay_id = f"gw-r{self._next}"
        self._waiting[relay_id] = (on_answer, session_id)
        return relay_id

    def take(self, relay_id: Any, session_id: str) -> RelayAnswer | None:
        """The callback for the answer ``relay_id`` from ``session_id``; None (and nothing
        taken) when that session was not asked that."""
        waiting = self._waiting.get(relay_id) if isinstance(relay_id, str) else None
        if waiting is None or waiting[1] != session_id:
            return None
        del self._waiting[relay_id]
        return waiting[0]


class StreamHost(Protocol):
    """What a ``ClientStream`` needs of its front (``McpFront`` is one)."""

    relays: Relays
    on_backend_notification: Callable[[Backend, str | None, Message], None] | None

    def start_input(self, stream: ClientStream, msg: Message) -> None:
        """A backend asked a stateless client something: hold the call (``gateway.front.bridge``)."""


LIST_FLAGS = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
_SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"


class Listener:
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
        self.reply.write(sse_event(encode(Message(method=msg.method, params=Raw(encode(params))))))




LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}


def level_of(msg: Message) -> str | None:
    """The ``level`` of a ``notifications/message``, or None."""
    try:
        level = decode_any(msg.params).get("level") if msg.params is not UNSET else None
    except (msgspec.DecodeError, AttributeError):
        return None
    return level if isinstance(level, str) else None


class ClientStream:
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
        self, front: StreamHost, reply: Reply, backend: Backend, ctx: RequestContext, session_key: str | None
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

    def rebind(self, other: ClientStream) -> None:
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
        needed = NEEDS_CAPABILITY.get(method)  # type: ignore[arg-type]
        if session is None or needed is None or needed not in (self.ctx.capabilities or {}):
            error = {"code": -32601, "message": f"the client cannot answer {method!r} (capability not declared)"}
            future.set_result((None, Raw(encode(error))))
            return future
        
        def answered(result: Raw | None, error: Raw | None) -> None:
            if not future.done():
                future.set_result((result, error))

        relay_id = self.front.relays.add(answered, session.id)
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
            level = level_of(msg)
            if wanted is None or (level is not None and LEVEL_RANK.get(level, 99) < LEVEL_RANK.get(wanted, 0)):
                return
        self._write(encode(msg))

    def keep_alive(self, every: float) -> None:
        """Timer callback: an SSE comment on a long call's response, then again later."""
        if self.reply.closed or self.pending is not None:
            return
        if not self.started:
            self.started = True
            self.reply.start_stream(200, SSE_HEADERS)
        self.reply.write(b": keep-alive\n\n")
        self.keepalive = asyncio.get_running_loop().call_later(every, self.keep_alive, every)

    def _write(self, data: bytes) -> None:
        if self.reply.closed:
            return
        if not self.started:
            self.started = True
            self.reply.start_stream(200, SSE_HEADERS)
        self.reply.write(sse_event(data))

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
            spawn(self.backend.respond(msg.id, Raw(b"{}"), session_key=self.session_key))
            return
        needed = NEEDS_CAPABILITY.get(msg.method)  # type: ignore[arg-type]
        session = self.ctx.session
        if session is None and self.pending is not None:
            self.pending.server_request(msg)  # becomes input_required for the stateless client
            return
        if session is None and self.bridging:
            self.front.start_input(self, msg)
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
            spawn(self.backend.respond(msg.id, None, error, session_key=self.session_key))
            return
        assert session is not None
        backend, upstream_id, session_key, front = self.backend, msg.id, self.session_key, self.front

        def answered(result: Raw | None, error: Raw | None) -> None:
            spawn(backend.respond(upstream_id, result, error, session_key=session_key))

        relay_id = front.relays.add(answered, session.id)
        self._write(encode(Message(id=relay_id, method=msg.method, params=msg.params)))

    def finish(self, body: bytes) -> None:
        if not self.reply.closed:
            self.reply.write(sse_event(body))
            self.reply.end()
