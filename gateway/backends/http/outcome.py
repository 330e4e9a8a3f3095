"""What an exchange's end means to its caller: one classifier for both paths.

The general path (``HttpBackend.request`` through ``_post``) raises what it
finds; the express path (``HttpBackend.express_done``) calls back with it. Both
turn the end of an exchange (its answer, or the exception it failed with) into
an ``Outcome`` with ``classify``, so a timeout, a closed connection, an expired
session or a wrong URL mean the same on both. ``classify`` is pure: what the
caller must also do (close a connection, tell the backend to cancel, mark a
session for initialize) is flagged in the outcome, and done by the caller.

A plain end (a response, no 404) is taken by each caller before this is called.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.protocol.jsonrpc import Message

if TYPE_CHECKING:
    from gateway.backends.http.connection import Exchange

__all__ = ["Outcome", "classify"]


class Outcome(NamedTuple):
    """One exchange's end, for its caller: an ``answer`` to return, an ``error`` to raise,
    or ``retry`` (nothing was answered: send the request again). ``answer`` and ``error``
    are both None for a request whose answer may be empty (a notification's 202)."""

    answer: Message | None
    error: BaseException | None
    retry: bool
    # With retry: the upstream session is gone; initialize it again before the retry.
    expired: bool = False
    # With error: no answer in time; close the connection (its late response cannot be
    # trusted) and tell the backend to cancel the request.
    timed_out: bool = False


def classify(
    exchange: Exchange,
    answer: Message | None,
    exc: BaseException | None,
    name: str,
    resend: bool = True,
    required: bool = True,
) -> Outcome:
    """The outcome of ``exchange``, which ended with ``answer`` (``exc`` None) or failed with ``exc``.

    ``name`` is the backend's, for the messages. ``resend``: the request may be sent
    again if nothing was sent on a reused connection (False on the last attempt).
    ``required``: a request that must have an answer (False for notifications, client
    answers, initialize, whose callers decide about an empty one).
    """
    if isinstance(exc, asyncio.TimeoutError):
        error = BackendTimeout(f"backend {name!r} did not answer within {exchange.limit:g} s")
        return Outcome(None, error, False, timed_out=True)
    if isinstance(exc, ConnectionError):
        if resend and exchange.conn.reused and not exchange.got_bytes:  # type: ignore[union-attr]
            return Outcome(None, None, True)  # a kept-alive connection the backend had closed
        return Outcome(None, BackendUnavailable(f"backend {name!r}: {exc}", reason="backend_connection"), False)
    if exc is not None:
        return Outcome(None, exc, False)  # RequestCancelled, or a BackendUnavailable the exchange failed with
    session_id = exchange.session.session_id  # type: ignore[union-attr]
    if exchange.status == 404 and (session_id or answer is None):
        if session_id and exchange.upstream_id is not None:
            return Outcome(None, None, True, expired=True)
        error = BackendUnavailable(f"backend {name!r} answered HTTP 404 (wrong URL?)", reason="backend_http_error")
        return Outcome(None, error, False)
    if answer is None and required:
        return Outcome(None, BackendUnavailable(f"backend {name!r} answered a request with no response"), False)
    return Outcome(answer, None, False)
