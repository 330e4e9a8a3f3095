"""Health: what ``GET /healthz`` answers (liveness, with each backend's state)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.protocol.jsonrpc import encode

if TYPE_CHECKING:
    from gateway.backends.base import Backend

__all__ = ["health_body"]


def health_body(backends: Mapping[str, Backend]) -> bytes:
    """``{"status": "ok", "backends": {name: state}}``: the process answers (liveness); the
    backends' states say what it can serve (a readiness check comes with the admin listener)."""
    return encode({"status": "ok", "backends": {name: b.state.value for name, b in backends.items()}})
