"""Listening sockets, graceful shutdown and signals.

``Server`` binds one listener on the running loop (uvloop in production) and
serves an ``App`` with one ``HttpProtocol`` per connection. On SIGTERM or
SIGINT it stops accepting, closes idle keep-alive connections, ends GET
streams, lets requests in flight finish within ``shutdown_timeout``, then
drops whatever is left.

With ``[server] tls_cert_file`` and ``tls_key_file`` it serves HTTPS: uvloop does
the TLS (``gateway.tls.server_context``: TLS 1.2+, ALPN ``http/1.1``) and the
same protocol reads the decrypted stream; with ``tls_client_ca_file`` a client
certificate is required and each connection is a ``MutualTlsProtocol``. A
handshake that fails (a plain-HTTP client, no or a wrong client certificate)
closes that connection only, logged as one line at INFO, no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.server.api import App
from gateway.server.protocol import HttpProtocol, MutualTlsProtocol, ServerState
from gateway.tls import SHUTDOWN_TIMEOUT, server_context

if TYPE_CHECKING:
    from gateway.config import ServerConfig

__all__ = ["Server", "install_uvloop"]

log = logging.getLogger("gateway.server")


def install_uvloop() -> None:
    """Make uvloop the event loop of ``asyncio.run`` (a no-op where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _handshake_problem(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate verify failed: {(exc.verify_message or exc.reason or '').rstrip('.')}"
    return str(exc) or type(exc).__name__


class _LoggedHandshake(ssl.SSLObject):
    """The listener's TLS objects: a failed handshake is logged as one line. (The event loop
    drops such a connection silently, which is right for the other clients, but leaves an
    operator guessing why a client cannot connect.)"""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # the handshake goes on when more bytes arrive
        except Exception as exc:
            log.info("TLS handshake with a client failed: %s", _handshake_problem(exc))
            raise


def listener_tls(config: ServerConfig) -> ssl.SSLContext | None:
    """The listener's TLS context (None: plain HTTP); ``OSError`` naming the files when the
    certificate, key or client CA cannot be loaded."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    try:
        context = server_context(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = ", ".join(f for f in (config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file) if f)
        raise OSError(f"cannot load the TLS certificate, key or client CA ({files}): {exc}") from None
    context.sslobject_class = _LoggedHandshake
    return context


class Server:
    """One listener serving ``app`` with the limits of ``config``."""

    def __init__(self, app: App, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.state = ServerState()
        self._server: asyncio.AbstractServer | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def scheme(self) -> str:
        """``https`` when the listener serves TLS, else ``http``."""
        return "https" if self.config.tls_cert_file is not None else "http"

    async def start(self, *, sock: socket.socket | None = None, reuse_port: bool = False) -> tuple[str, int]:
        """Bind and start accepting; returns the bound ``(host, port)`` (port 0 picks one).
        ``OSError`` when it cannot (the address is taken, the TLS files do not load)."""
        loop = asyncio.get_running_loop()
        context = listener_tls(self.config)
        protocol = MutualTlsProtocol if context is not None and self.config.tls_client_ca_file else HttpProtocol

        def factory() -> HttpProtocol:
            return protocol(self.app, self.config, self.state, loop)

        # A client gets header_timeout for its TLS handshake too, as for its request's headers.
        tls: dict[str, object] = {}
        if context is not None:
            tls = {"ssl": context, "ssl_handshake_timeout": self.config.header_timeout, "ssl_shutdown_timeout": SHUTDOWN_TIMEOUT}
        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=4096, **tls)
        else:
            self._server = await loop.create_server(
                factory, self.config.host, self.config.port, backlog=4096, reuse_port=reuse_port or None, **tls
            )
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), close everything. Idempotent."""
        if self.state.shutting_down:
            return
        self.state.shutting_down = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.state.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        tasks = list(self.state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            if pending:
                log.warning("shutdown deadline passed: %d request(s) cut off", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
        # Requests answered without a task of their own (the app's express lane) are
        # still in their connection's queue: let them finish too, within the same deadline.
        while loop.time() < deadline and any(conn.cycles for conn in self.state.connections):
            await asyncio.sleep(0.01)
        for conn in list(self.state.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self._stopped is not None:
            self._stopped.set()

    async def serve_until_signal(
        self, on_ready: Callable[[], None] | None = None, on_signal: Callable[[], None] | None = None
    ) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully. ``on_ready`` runs once the
        signal handlers are in place (the CLI prints its "listening" line there, so a SIGTERM
        sent as soon as that line is read is a clean shutdown, not a kill); ``on_signal`` runs
        when the signal arrives, before the shutdown starts (readiness turns 503 there)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            if on_ready is not None:
                on_ready()
            await stop.wait()
            if on_signal is not None:
                on_signal()
            log.info("signal received: shutting down (up to %.0f s for requests in flight)", self.config.shutdown_timeout)
            await self.shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
