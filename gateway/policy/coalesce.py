"""Coalescing: identical calls in flight at the same time share one upstream call.

Admission is synchronous, so a call cannot wait in ``admit``; the waiting is
split in two:

- The first call of a key is the **leader**. Its ``admit`` makes a ``Flight``,
  registers it under the key and leaves it as the request's note (``Verdict.note``),
  so the leader's own ``outcome`` ends it. The leader goes upstream as usual.
- A call of the same key admitted while the flight is up is a **follower**. Its
  ``admit`` answers ``Verdict(wait=flight.follow(owner))``: a ``Follower``, the
  ``gateway.policy.admission.Pending`` the front waits on (the general path awaits
  a future, the express lane replies from the callback). Nothing of it is sent
  upstream while it waits. Each follower was admitted once, as every call is.

``Flight.settle`` is called once from the leader's outcome with what may be
shared: the leader's answer (a result or the backend's JSON-RPC error), or a
``GatewayError`` that says the backend could not answer (down, timed out, circuit
open), or nothing. Nothing is shared when the leader was cancelled by its own
client, failed for a reason of its own (a header mismatch, a refused token
exchange), or got an answer meant for it alone (an ``input_required`` round, input
it gave mid-call): each follower then sends its own call upstream, as the call it
was admitted as, and is not admitted again. With ``private`` set (the backend
marked the result ``cacheScope: "private"``) the answer goes only to followers of
the leader's own principal; the others go upstream themselves.

Every follower gets its own id back: the front answers it with its own request's
id. A follower's callback runs inside the leader's outcome; one that raises is
logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.policy.admission import Pending

if TYPE_CHECKING:
    from gateway.protocol.jsonrpc import Message

__all__ = ["Flight", "Follower"]

log = logging.getLogger("gateway.cache")

Settled = Callable[["Message | None", "BaseException | None"], None]
"""A follower's callback: ``(answer, error)`` as ``Pending.then`` says."""

_WAITING: Any = object()


class Follower(Pending):
    """One call waiting for a ``Flight`` (``Pending``): ``then(callback)`` once."""

    __slots__ = ("flight", "owner", "callback", "settled")

    def __init__(self, flight: Flight, owner: Any) -> None:
        self.flight = flight
        self.owner = owner
        """Whose call this is (the principal's key, or None): a private answer needs the leader's."""
        self.callback: Settled | None = None
        self.settled: Any = _WAITING
        """``(answer, error)`` once the flight settled before ``then`` was called."""

    def then(self, callback: Settled) -> None:
        """Call ``callback(answer, error)`` when the flight settles (now, if it has)."""
        settled = self.settled
        if settled is _WAITING:
            self.callback = callback
            return
        self.settled = None
        callback(*settled)

    def give(self, answer: Message | None, error: BaseException | None) -> None:
        """The flight settled: hand this follower its share (kept until ``then`` if it has not waited yet)."""
        callback, self.callback = self.callback, None
        if callback is None:
            self.settled = (answer, error)
            return
        try:
            callback(answer, error)
        except Exception:  # one follower's failure must not cost the leader or the others their answers
            log.exception("a coalesced call's answer failed")


class Flight:
    """One leader's call in flight and the followers waiting for it (see the module docstring).

    ``key`` is what identical calls share (the cache key: scope, era, method, name,
    arguments); ``owner`` the leader's principal key (None: no principal).
    """

    __slots__ = ("key", "owner", "followers", "done")

    def __init__(self, key: bytes, owner: Any) -> None:
        self.key = key
        self.owner = owner
        self.followers: list[Follower] = []
        self.done = False

    def follow(self, owner: Any) -> Follower:
        """A follower for a call of ``owner`` (its principal key), to wait on this flight."""
        follower = Follower(self, owner)
        if self.done:  # settled already (only if the cache kept a settled flight): nothing to share
            follower.give(None, None)
        else:
            self.followers.append(follower)
        return follower

    def settle(self, answer: Message | None, error: BaseException | None, private: bool = False) -> None:
        """The leader's call ended: each follower gets ``(answer, error)`` (``(None, None)``: go
        upstream yourself), and with ``private`` only those of the leader's principal do."""
        if self.done:
            return
        self.done = True
        followers, self.followers = self.followers, []
        for follower in followers:
            if private and follower.owner != self.owner:
                follower.give(None, None)
            else:
                follower.give(answer, error)
