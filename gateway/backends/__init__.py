"""Backends: the MCP servers behind the gateway (HTTP, stdio)."""

from __future__ import annotations

from gateway.backends.base import Backend, BackendState
from gateway.config import BackendConfig

__all__ = ["Backend", "BackendState", "create_backend"]


def create_backend(name: str, config: BackendConfig, *, default_timeout: float) -> Backend:
    """The backend object for one ``[backends.NAME]`` entry (not started yet)."""
    if config.transport == "http":
        from gateway.backends.http import HttpBackend

        return HttpBackend(name, config, default_timeout=default_timeout)
    from gateway.backends.stdio import StdioBackend

    return StdioBackend(name, config, default_timeout=default_timeout)
