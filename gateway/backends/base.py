"""What every backend (HTTP, stdio, a child gateway) offers the gateway.

A backend owns its connection(s) to one MCP server and speaks JSON-RPC with
gateway-side ids: the caller hands ``request`` one ``BackendCall`` (the method,
the raw params and how to send them), the backend picks a unique upstream id,
and returns the response ``Message`` (result or error) with that upstream id
still in it; the front puts the client's id back. ``express`` is the per-call
hot path of the handshake era and takes its few arguments directly.

Session policy (``BackendConfig.session``):
- ``shared``: one upstream session for every client (the fast default).
- ``per-client``: one upstream session per front session; the call's
  ``session_key`` selects it and ``release(session_key)`` ends it.

Failures are exceptions from ``gateway.errors``: ``BackendUnavailable`` (down,
restarting, connection refused, process died with the request in flight) and
``BackendTimeout``. A JSON-RPC error that the backend itself answered is not an
exception: it comes back as a ``Message`` with ``error`` set, unchanged. The
error of a request that never left the gateway (a refused connection) is marked
``faults.not_sent``, so the layers in front of a backend (``replicas``,
``guarded``) know it may be sent again.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.protocol.jsonrpc import UNSET, Message, Raw, encode

if TYPE_CHECKING:
    from gateway.config import BackendConfig

__all__ = [
    "Backend",
    "BackendCall",
    "BackendState",
    "ExpressAnswer",
    "MessageSink",
    "NotificationHandler",
    "RequestCancelled",
    "Ticket",
]

class RequestCancelled(Exception):
    """Raised by ``Backend.request`` when the request was cancelled with ``Backend.cancel``."""


class Ticket:
    """Filled in by ``Backend.request`` so the caller can cancel that request later.

    ``upstream_id`` is the id the backend saw; ``handle`` is backend-private
    (the upstream session or process the request went to).
    """

    __slots__ = ("upstream_id", "handle", "future")

    def __init__(self) -> None:
        self.upstream_id: Any = None
        self.handle: Any = None
        self.future: Any = None

class BackendCall:
    """One request for ``Backend.request``: what to send and how.

    Only ``method`` is required; every other field's None means the default
    (the shared session, no sink, the configured timeout, ``preferred_era``, no
    extra headers, no ticket, the gateway's own capabilities, the gateway's own
    request). The backend only reads it: one call object may be sent again.
    """

    __slots__ = {
        "method": "The JSON-RPC method, e.g. ``tools/call``.",
        "params": "The raw JSON of the params object (``Raw``), or ``UNSET`` for none.",
        "session_key": (
            "The front session the request belongs to: with ``per-client`` sessions it selects "
            "(or starts) that upstream session; None, or a ``shared`` backend: the shared session."
        ),
        "sink": (
            "Gets each message the backend sends while answering, before the response "
            "(progress, log lines, server-to-client requests); None: they are not the caller's."
        ),
        "timeout": "Seconds to wait for the answer; None: the backend's configured request timeout.",
        "era": (
            "The protocol era toward the backend (``handshake`` or ``stateless``); None: ``preferred_era``. "
            "In the stateless era ``params`` must carry ``_meta`` (the backend adds the gateway's own if not)."
        ),
        "headers": (
            "Extra headers of the upstream HTTP request: a stateless-era request's routing headers "
            "(``Mcp-Name``, ``Mcp-Param-*``), and in either era the trace context (``traceparent``, "
            "``tracestate``, ``gateway.ops.tracing``); names and values the gateway made, never a client's. "
            "None: none, and the backend derives ``Mcp-Name`` from ``params`` for the gateway's own "
            "stateless-era requests. A stdio backend has no headers (the trace context rides in ``_meta``)."
        ),
        "ticket": "Filled in by the backend so ``Backend.cancel`` can find the request; None: not cancellable.",
        "capabilities": (
            "The client's capabilities, declared when ``session_key`` starts a per-client upstream "
            "session; None: the gateway's own."
        ),
        "principal": (
            "Who the request is made for: the caller's ``Principal`` (``gateway.backends.credentials.Caller``), "
            "whose claims become the backend's ``identity_headers`` and whose own token a ``token_exchange`` "
            "credential exchanges (it is never sent as it is). None: the gateway's own request (catalog lists, "
            "subscriptions) or a caller without one (no ``[auth]``, the stdio front): the backend's own "
            "credential, no identity headers."
        ),
    }

    method: str
    params: Raw | Any
    session_key: str | None
    sink: MessageSink | None
    timeout: float | None
    era: str | None
    headers: dict[str, str] | None
    ticket: Ticket | None
    capabilities: dict[str, Any] | None
    principal: Any

    def __init__(
        self,
        method: str,
        params: Raw | Any = UNSET,
        *,
        session_key: str | None = None,
        sink: MessageSink | None = None,
        timeout: float | None = None,
        era: str | None = None,
        headers: dict[str, str] | None = None,
        ticket: Ticket | None = None,
        capabilities: dict[str, Any] | None = None,
        principal: Any = None,
    ) -> None:
        self.method = method
        self.params = params
        self.session_key = session_key
        self.sink = sink
        self.timeout = timeout
        self.era = era
        self.headers = headers
        self.ticket = ticket
        self.capabilities = capabilities
        self.principal = principal

    def replace(self, **changes: Any) -> BackendCall:
        """A copy with ``changes`` (field name -> value): how a layer in front of a backend sends
        a call with something changed (the guard's remaining deadline, the replica set's sink),
        since a call object is only ever read."""
        copy = BackendCall.__new__(BackendCall)
        for field in BackendCall.__slots__:
            setattr(copy, field, changes[field] if field in changes else getattr(self, field))
        return copy

    def __repr__(self) -> str:
        return f"BackendCall({self.method!r}, era={self.era!r}, session_key={self.session_key!r})"


# Called for a backend notification that belongs to no request (list_changed,
# resources/updated, log lines outside a request). Arguments: the backend, the
# session_key it arrived on (None for shared sessions), the message.
NotificationHandler = Callable[["Backend", "str | None", Message], None]

# Called for each message a backend sends *while* answering one request, before
# the response (progress, log messages, server-to-client requests on an SSE
# response stream). The final response is not passed here; ``request`` returns it.
MessageSink = Callable[[Message], None]

# Called once with the outcome of a call ``Backend.express`` took: (the response,
# None, False); (None, the error ``request`` would raise, False); or (None, None,
# True): nothing was answered, send the request again by the general path.
ExpressAnswer = Callable[["Message | None", "BaseException | None", bool], None]


class BackendState(enum.Enum):
    """Lifecycle of a backend as shown in logs and ``mcp-gateway`` output."""

    STARTING = "starting"
    READY = "ready"
    DOWN = "down"  # failing; retried in the background
    STOPPED = "stopped"


class Backend(abc.ABC):
    """Base class of every backend kind.

    Subclasses set ``state`` and ``server_info`` (the upstream ``initialize``
    result, decoded) and call ``self.on_notification`` for unsolicited
    notifications.
    """

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        self.config = config
        self.state = BackendState.STARTING
        self.last_error: str | None = None
        self.server_info: dict[str, Any] | None = None
        self.on_notification: NotificationHandler | None = None
        self.on_state_change: Callable[[Backend], None] | None = None
        # Protocol eras the backend speaks, found by probing it once:
        # "handshake" (initialize + session) and/or "stateless" (2026-07-28).
        self.eras: frozenset[str] = frozenset({"handshake"})
        # The backend's server/discover result when it speaks the stateless era.
        self.discover: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """What the admin API shows of this backend (``GET /admin/backends``): its state, last
        error, transport, the eras it speaks and the protocol version it answered with."""
        info = self.server_info or {}
        return {
            "state": self.state.value,
            "last_error": self.last_error,
            "transport": self.config.transport,
            "eras": sorted(self.eras),
            "protocol_version": info.get("protocolVersion"),
            "server": info.get("serverInfo"),
        }

    def era_for(self, client_era: str) -> str:
        """The era to use toward this backend for a client of ``client_era``:
        the client's own when the backend speaks it (no translation), else the other."""
        if client_era in self.eras:
            return client_era
        return "handshake" if "handshake" in self.eras else "stateless"

    @property
    def preferred_era(self) -> str:
        """The era of the gateway's own requests (catalog): stateless when spoken,
        because its list results carry the cache hints (ttlMs, cacheScope)."""
        return "stateless" if "stateless" in self.eras else "handshake"

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect or spawn, and initialize the shared upstream session.

        Never raises because the backend is down: it records ``state=DOWN`` and
        ``last_error`` and keeps retrying in the background, so one bad backend
        cannot stop the gateway from starting.
        """

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close connections / end the process cleanly. Idempotent."""

    @abc.abstractmethod
    async def request(self, call: BackendCall) -> Message:
        """Send one request, ``call``, and return the backend's response message.

        ``call.params`` is the raw JSON of the params object (or UNSET).
        ``call.timeout`` overrides the backend's configured request timeout.
        ``call.era`` picks the protocol era (default: ``preferred_era``); in the
        stateless era the params must carry ``_meta`` (the backend adds the
        gateway's own if not). ``call.headers`` are extra HTTP headers (routing
        headers, the trace context). ``call.ticket``, when given, is filled
        in so ``cancel`` can find the request. See ``BackendCall`` for each field.
        """

    @abc.abstractmethod
    async def notify(self, method: str, params: Raw | Any = UNSET, *, session_key: str | None = None) -> None:
        """Send one notification (no answer expected)."""

    def express_ready(self) -> bool:
        """Whether ``express`` can take one handshake-era request in the shared session now,
        with no task (the latency path). A pure check: it changes nothing, so a caller that
        hears False (or decides otherwise after True) serves the request by ``request``.
        Backends that have no such path keep this default."""
        return False

    def express(self, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer) -> None:
        """Send one handshake-era request in the shared session with no task, or queue it to
        be sent without one; ``on_answer`` gets its outcome exactly once (``ExpressAnswer``).
        It never declines: call it only right after ``express_ready()`` returned True, in the
        same callback, with nothing in between that could change this backend. A backend whose
        ``express_ready`` is always False is never asked."""
        raise NotImplementedError

    async def release(self, session_key: str) -> None:
        """End the per-client upstream session for ``session_key`` (no-op for shared)."""

    async def respond(
        self, upstream_id: Any, result: Raw | None = None, error: Raw | None = None, *, session_key: str | None = None
    ) -> None:
        """Answer a request the server sent (sampling, elicitation, roots) in the same session."""
        raise NotImplementedError

    def cancel(self, ticket: Ticket, reason: str = "cancelled by the client") -> None:
        """Tell the backend to stop the request ``ticket`` was filled for, and stop waiting for it."""

    def _set_state(self, state: BackendState, error: str | None = None) -> None:
        """Record a state change and tell whoever watches (the catalog, the logs)."""
        changed = state is not self.state
        self.state = state
        self.last_error = error
        if changed and self.on_state_change is not None:
            self.on_state_change(self)

    def local_answer(self, msg: Message) -> Raw | None:
        """The result of a server-to-client request ``msg`` that the gateway answers itself,
        from config; None when it does not, and the caller goes on as before (relays it to the
        client whose request is in flight, or refuses it).

        ``ping`` is answered ``{}``. ``roots/list`` is answered ``{"roots": [...]}`` from the
        backend's ``roots`` option when that is set, in every upstream session of the backend
        (shared or per-client), so no client is asked; unset, None.
        """
        if msg.method == "ping":
            return Raw(b"{}")
        if msg.method == "roots/list":
            roots = self.config.root_list
            if roots is not None:
                return Raw(encode({"roots": roots}))
        return None
