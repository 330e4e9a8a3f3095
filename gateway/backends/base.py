"""What every backend (HTTP, stdio, a child gateway) offers the gateway.

A backend owns its connection(s) to one MCP server and speaks JSON-RPC with
gateway-side ids: the caller hands it a method and raw params, the backend
picks a unique upstream id, and returns the response ``Message`` (result or
error) with that upstream id still in it; the front puts the client's id back.

Session policy (``BackendConfig.session``):
- ``shared``: one upstream session for every client (the fast default).
- ``per-client``: one upstream session per front session; ``session_key`` on
  ``request`` selects it and ``release(session_key)`` ends it.

Failures are exceptions from ``gateway.errors``: ``BackendUnavailable`` (down,
restarting, connection refused, process died with the request in flight) and
``BackendTimeout``. A JSON-RPC error that the backend itself answered is not an
exception: it comes back as a ``Message`` with ``error`` set, unchanged.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.mcp.jsonrpc import UNSET, Message, Raw

if TYPE_CHECKING:
    from gateway.config import BackendConfig

__all__ = ["Backend", "BackendState", "NotificationHandler", "MessageSink", "initialize_params"]

UPSTREAM_PROTOCOL_VERSION = "2025-11-25"
"""The version the gateway asks backends for in ``initialize``."""


def initialize_params() -> Raw:
    """The params of the gateway's own ``initialize`` toward a backend."""
    from gateway import __version__
    from gateway.mcp.jsonrpc import encode

    return Raw(
        encode(
            {
                "protocolVersion": UPSTREAM_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcp-gateway", "version": __version__},
            }
        )
    )

# Called for a backend notification that belongs to no request (list_changed,
# resources/updated, log lines outside a request). Arguments: the backend, the
# session_key it arrived on (None for shared sessions), the message.
NotificationHandler = Callable[["Backend", "str | None", Message], None]

# Called for each message a backend sends *while* answering one request, before
# the response (progress, log messages, server-to-client requests on an SSE
# response stream). The final response is not passed here; ``request`` returns it.
MessageSink = Callable[[Message], None]


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
    async def request(
        self,
        method: str,
        params: Raw | Any = UNSET,
        *,
        session_key: str | None = None,
        sink: MessageSink | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Send one request and return the backend's response message.

        ``params`` is the raw JSON of the params object (or UNSET). ``timeout``
        overrides the backend's configured request timeout.
        """

    @abc.abstractmethod
    async def notify(self, method: str, params: Raw | Any = UNSET, *, session_key: str | None = None) -> None:
        """Send one notification (no answer expected)."""

    async def release(self, session_key: str) -> None:
        """End the per-client upstream session for ``session_key`` (no-op for shared)."""

    def _set_state(self, state: BackendState, error: str | None = None) -> None:
        """Record a state change and tell whoever watches (the catalog, the logs)."""
        changed = state is not self.state
        self.state = state
        self.last_error = error
        if changed and self.on_state_change is not None:
            self.on_state_change(self)
