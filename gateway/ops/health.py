"""Health: what ``GET /healthz`` answers (liveness, with each backend's state) and ``GET /readyz``
(readiness, on the admin listener)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.protocol.jsonrpc import encode

if TYPE_CHECKING:
    from gateway.backends.base import Backend

__all__ = ["health_body", "readiness"]


def health_body(backends: Mapping[str, Backend]) -> bytes:
    """``{"status": "ok", "backends": {name: state}}``: the process answers (liveness); the
    backends' states say what it can serve (a readiness check comes with the admin listener)."""
    return encode({"status": "ok", "backends": {name: b.state.value for name, b in backends.items()}})


def readiness(backends: Mapping[str, Backend], draining: bool) -> tuple[bool, bytes]:
    """``GET /readyz``: ready (200) when the gateway can serve: not draining, and every backend
    marked ``required = true`` ready, or, when none is marked, at least one backend ready (a
    gateway with no backends at all is ready: it serves its empty catalog). The body says why."""
    states = {name: b.state.value for name, b in backends.items()}
    required = [name for name, b in backends.items() if b.config.required]
    if draining:
        ready, why = False, "draining"
    elif required:
        waiting = [name for name in required if states[name] != "ready"]
        ready = not waiting
        why = "required backends ready" if ready else f"required backends not ready: {', '.join(waiting)}"
    elif backends:
        ready = any(state == "ready" for state in states.values())
        why = "a backend is ready" if ready else "no backend is ready"
    else:
        ready, why = True, "no backends configured"
    return ready, encode({"ready": ready, "reason": why, "backends": states})
