"""What the way a call ended means to the parts that guard a backend: the breaker,
the retries and the replica set read it here, so they agree.

Two questions, asked of the exception a backend's ``request`` raised (or an
express call's error):

- ``failed``: did the *backend* fail? A timeout, a transport error (a refused
  or broken connection, a stream that ended early, a body that is not
  JSON-RPC) and an HTTP 5xx do. A JSON-RPC error the backend answered is an
  answer, not an exception, and never gets here. The gateway's own refusals
  (a full queue, an open circuit), a backend already known to be down (nothing
  was sent), a cancel, a credential the gateway could not get: not the
  backend's failure.
- ``never_sent``: did the request never leave the gateway (the connection was
  refused, no pool connection came free)? Such a call may be sent again
  whatever it is, since the backend never saw it. The place that knows marks
  the error with ``not_sent``.
"""

from __future__ import annotations

from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError

__all__ = ["QUEUE_TIMEOUT", "failed", "never_sent", "not_sent"]

QUEUE_TIMEOUT = "queue_timeout"
"""The reason of a ``BackendTimeout`` for a call that waited its whole deadline in the
concurrency queue (it never reached the backend)."""

# BackendUnavailable reasons that are no failure of the backend itself: the gateway's own
# refusal (overloaded), a backend already known to be down (refused before sending), no
# token from the token endpoint (the backend was never asked).
_NOT_THE_BACKEND = frozenset({"overloaded", "backend_down", "backend_token", "circuit_open"})


def not_sent(err: GatewayError) -> GatewayError:
    """Mark ``err`` as the error of a request that never left the gateway; returns it."""
    err.never_sent = True  # type: ignore[attr-defined]
    return err


def never_sent(exc: BaseException | None) -> bool:
    """Whether ``exc`` was marked ``not_sent``: the backend never saw the request."""
    return getattr(exc, "never_sent", False)


def failed(exc: BaseException | None) -> bool:
    """Whether a call that ended with ``exc`` (None: an answer) counts as a failure of the
    backend: a timeout, a transport error or an HTTP 5xx (see the module docstring)."""
    if isinstance(exc, BackendTimeout):
        return exc.reason != QUEUE_TIMEOUT
    if isinstance(exc, BackendUnavailable):
        if exc.reason in _NOT_THE_BACKEND:
            return False
        # Of what never left, only a refused connection says something about the backend
        # (a pool with no free connection is the gateway's own limit).
        return not never_sent(exc) or exc.reason == "backend_connection"
    return False
