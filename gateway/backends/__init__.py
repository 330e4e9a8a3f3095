"""Backends: the MCP servers behind the gateway (HTTP, stdio).

``create_backend`` builds each ``[backends.NAME]``: an HTTP backend (one URL), a
replica set (``urls``: ``replicas.ReplicaSet``, one HTTP backend per URL) or a
stdio backend; and, only when ``max_concurrency``, a ``breaker`` or ``retries``
is set, the guard in front of it (``guarded.Guarded``), so a backend with none
of them is used bare and costs what it always did.
"""

from __future__ import annotations

from gateway.backends.base import Backend, BackendState
from gateway.config import BackendConfig

__all__ = ["Backend", "BackendState", "create_backend"]


def create_backend(name: str, config: BackendConfig, *, default_timeout: float) -> Backend:
    """The backend object for one ``[backends.NAME]`` entry (not started yet)."""
    backend: Backend
    if config.transport == "http":
        urls = config.url_list
        if len(urls) > 1:
            from gateway.backends.replicas import ReplicaSet

            backend = ReplicaSet(name, config, default_timeout=default_timeout)
        else:
            from gateway.backends.http import HttpBackend

            backend = HttpBackend(name, config, default_timeout=default_timeout, url=urls[0])
    else:
        from gateway.backends.stdio import StdioBackend

        backend = StdioBackend(name, config, default_timeout=default_timeout)
    from gateway.backends.guarded import Guarded, needs_guard

    if needs_guard(config):
        backend = Guarded(backend, config, default_timeout=default_timeout)
    return backend
