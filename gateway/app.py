"""The gateway as one object: backends, catalog, sessions and the MCP front,
wired together and started and stopped in the right order.

``Gateway`` is the ``App`` the HTTP server calls (``await gateway(request, reply)``).
Backend events flow upward through it: a backend's ``list_changed`` or a change
of its state refreshes that backend's part of the catalog, and a changed
aggregate is announced to clients on their GET streams.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
import logging
import os

from gateway.backends import Backend, BackendState, create_backend
from gateway._fast import prefix_uri
from gateway.config import Config
from gateway.catalog.aggregate import CHANGE_NOTIFICATIONS, Catalog
from gateway.front.endpoint import McpFront
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, encode
from gateway.front.sessions import Session, SessionStore
from gateway.policy.admission import Admission
from gateway.policy.chain import build_admission
from gateway.server.api import Reply, Request

if TYPE_CHECKING:
    from gateway.policy.auth import Authenticator

__all__ = ["Gateway"]

log = logging.getLogger("gateway")

# Aggregate list method -> the notification clients get when it changes.
_CHANGED_NOTIFICATION = {
    "tools/list": "notifications/tools/list_changed",
    "prompts/list": "notifications/prompts/list_changed",
    "resources/list": "notifications/resources/list_changed",
    "resources/templates/list": "notifications/resources/list_changed",
}


def _worker_secret() -> bytes | None:
    """The session-signing key shared by ``--workers`` processes (set by the parent), if any."""
    value = os.environ.get("MCP_GATEWAY_SESSION_SECRET")
    return value.encode() if value else None


class Gateway:
    """Everything behind the listener, built from one ``Config``."""

    def __init__(self, config: Config, admission: Admission | None = None) -> None:
        """``admission``: the admission chain every routed request passes (default: the one
        ``config`` asks for, ``gateway.policy.chain.build_admission``; none: admit all)."""
        self.config = config
        if admission is None:
            admission = build_admission(config)
        timeout = config.gateway.request_timeout
        self.backends: dict[str, Backend] = {
            name: create_backend(name, bc, default_timeout=timeout)
            for name, bc in config.backends.items()
            if bc.enabled
        }
        self.sessions = SessionStore(
            config.server.session_idle_timeout, on_end=self._session_ended, secret=_worker_secret()
        )
        self.catalog = Catalog(
            self.backends,
            separator=config.gateway.separator,
            passthrough=config.gateway.passthrough,
            page_size=config.gateway.page_size,
            list_timeout=config.gateway.list_timeout,
            on_change=self._catalog_changed,
        )
        # Authentication ([auth], or mutual TLS alone): None when neither is configured.
        mtls = config.server.tls_client_ca_file is not None
        self.authenticator: Authenticator | None = None
        if config.auth is not None or mtls:
            from gateway.policy.auth import Authenticator  # the JWT stack, only when it is used (memory)

            self.authenticator = Authenticator(config.auth, mtls=mtls, path=config.server.path)
        self.front = McpFront(config, self.catalog, self.sessions, admission, self.authenticator)
        self.front.on_backend_notification = self._backend_notification
        # The HTTP protocol offers each request here first (see gateway.front.express).
        self.express = self.front.express
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        for backend in self.backends.values():
            backend.on_notification = self._backend_notification
            backend.on_state_change = self._backend_state_changed

    async def __call__(self, request: Request, reply: Reply) -> None:
        """The ``App`` contract: hand the request to the MCP front."""
        await self.front(request, reply)

    async def start(self) -> None:
        """Start every backend (a failing one does not stop the others), then build the catalog."""
        if self.authenticator is not None:
            self.authenticator.start()  # the first JWKS fetches, in the background
        await asyncio.gather(*(b.start() for b in self.backends.values()))
        self._started = True
        await self.catalog.refresh()
        self.sessions.start_sweeper()
        for backend in self.backends.values():
            if backend.state is not BackendState.READY:
                log.warning("backend %r is %s: %s", backend.name, backend.state.value, backend.last_error)

    async def stop(self) -> None:
        """End sessions, stop background work and every backend."""
        self._started = False
        await self.sessions.close()
        if self._tasks:
            # Ending the sessions released their per-client upstream sessions: let that finish
            # (briefly) before the rest of the background work is cancelled.
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(b.stop() for b in self.backends.values()), return_exceptions=True)
        if self.authenticator is not None:
            await self.authenticator.stop()

    def status(self) -> list[tuple[str, str, str | None]]:
        """``(name, state, last_error)`` per backend, for the CLI and logs."""
        return [(b.name, b.state.value, b.last_error) for b in self.backends.values()]

    # -- events from backends ----------------------------------------------------------------

    def _backend_notification(self, backend: Backend, session_key: str | None, msg: Message) -> None:
        methods = CHANGE_NOTIFICATIONS.get(msg.method)  # type: ignore[arg-type]
        if methods is not None:
            # What was learnt from it (cached results) is dropped now, not when the new lists are in.
            self.catalog.backend_changed(backend.name)
            self._spawn(self.catalog.refresh([backend.name], methods))
        elif msg.method == "notifications/resources/updated" and msg.params is not UNSET:
            self._resource_updated(backend, msg.params)

    def _resource_updated(self, backend: Backend, params: Raw) -> None:
        """Map the backend's URI to the one clients see, then tell the subscribers."""
        decoded = decode_any(params)
        uri = decoded.get("uri") if isinstance(decoded, dict) else None
        if not isinstance(uri, str):
            return
        if not self.config.gateway.passthrough:
            uri = prefix_uri(backend.config.namespace or backend.name, uri)
            decoded["uri"] = uri
        self.front.resource_updated(uri, Raw(encode(decoded)))

    def _backend_state_changed(self, backend: Backend) -> None:
        log.info("backend %r is now %s%s", backend.name, backend.state.value,
                 f" ({backend.last_error})" if backend.last_error else "")
        if self._started:
            self._spawn(self.catalog.refresh([backend.name]))

    def _catalog_changed(self, methods: set[str]) -> None:
        for method in sorted({_CHANGED_NOTIFICATION[m] for m in methods}):
            self.front.broadcast(encode(Message(method=method)), method)

    def _session_ended(self, session: Session) -> None:
        for backend in self.backends.values():
            if backend.config.session == "per-client":
                self._spawn(backend.release(session.id))

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        """Run slow-path work in the background, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coro) -> None:  # type: ignore[no-untyped-def]
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed")
