"""A backend's concurrency limit and its queue (``max_concurrency``, ``max_queue``).

At most ``limit`` calls are in flight to the backend (all its replicas
together); up to ``queue`` more wait, in arrival order, for a slot. A slot
freed while calls wait passes straight to the first of them (``inflight``
stays at the limit), so a call arriving meanwhile cannot take it first and
leave a waiter starving. A call beyond both is refused at once: 503
``BackendUnavailable`` (reason ``overloaded``) with ``Retry-After``, nothing
sent. A waiting call gives up at its deadline (a ``BackendTimeout``, reason
``queue_timeout``: it never reached the backend), or when its client cancels it
(``cancel``: ``RequestCancelled``), and leaves the queue either way.

The express lane counts its calls here too: it asks ``free()`` (a pure check)
and then ``take()``s the slot in the same callback; a full gate sends the call
down the general path, which waits in the queue (``enter``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from gateway.backends.base import RequestCancelled
from gateway.backends.faults import QUEUE_TIMEOUT
from gateway.errors import BackendTimeout, BackendUnavailable

__all__ = ["Gate"]

_RETRY_AFTER = (("retry-after", "1"),)  # a slot frees as soon as any call in flight ends


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


def _handed(waiter: asyncio.Future[None]) -> bool:
    """Whether ``leave`` handed ``waiter`` a slot."""
    return waiter.done() and not waiter.cancelled() and waiter.exception() is None


class Gate:
    """``limit`` calls in flight, ``queue`` more waiting (see the module docstring)."""

    __slots__ = ("name", "limit", "queue", "inflight", "waiters", "queued")

    def __init__(self, name: str, limit: int, queue: int) -> None:
        self.name = name
        self.limit = limit
        self.queue = queue
        self.inflight = 0
        """Calls holding a slot (sent, or about to be)."""
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.queued: dict[Any, asyncio.Future[None]] = {}
        """ticket -> its waiter, for ``cancel``."""

    def free(self) -> bool:
        """Whether a call can take a slot now without waiting (a pure check)."""
        return self.inflight < self.limit

    def take(self) -> None:
        """Take a slot ``free()`` just said is there."""
        self.inflight += 1

    async def enter(self, timeout: float, ticket: Any = None) -> None:
        """Take a slot, waiting in line at most ``timeout`` seconds; raises the ``overloaded``
        refusal at once when the line is full too, ``BackendTimeout`` at the deadline, and
        ``RequestCancelled`` when ``cancel(ticket)`` came first. Each ``enter`` that returns
        must be matched by one ``leave``."""
        if self.inflight < self.limit:
            self.inflight += 1
            return
        if len(self.waiters) >= self.queue:
            raise self.overloaded()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        if ticket is not None:
            self.queued[ticket] = waiter
        # A timer per queued call: only calls that wait pay for one.
        timer = loop.call_later(max(timeout, 0.0), _expire, waiter)
        try:
            await waiter  # a slot handed over by leave(): inflight already counts this call
        except asyncio.TimeoutError:
            raise BackendTimeout(
                f"backend {self.name!r}: no free slot within {timeout:g} s "
                f"({self.limit} calls in flight, {len(self.waiters)} waiting)",
                reason=QUEUE_TIMEOUT,
            ) from None
        except BaseException:
            if _handed(waiter):
                self.leave()  # the slot came, then this call was cancelled: pass it on
            raise
        finally:
            timer.cancel()
            if ticket is not None:
                self.queued.pop(ticket, None)
            if not _handed(waiter):  # still in line (leave() pops the waiters it serves)
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass

    def leave(self) -> None:
        """A call that held a slot ended: the slot goes to the first waiter, else it is free."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inflight -= 1

    def cancel(self, ticket: Any, reason: str) -> bool:
        """End the wait of the queued call of ``ticket`` (``RequestCancelled``); False when
        that call is not waiting here."""
        waiter = self.queued.pop(ticket, None)
        if waiter is None or waiter.done():
            return False
        waiter.set_exception(RequestCancelled(reason))
        return True

    def close(self) -> None:
        """The backend stopped: every waiting call fails."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(BackendUnavailable(f"backend {self.name!r} stopped", reason="backend_down"))
        self.waiters.clear()

    def overloaded(self) -> BackendUnavailable:
        """The refusal of a call beyond ``limit`` in flight and ``queue`` waiting."""
        return BackendUnavailable(
            f"backend {self.name!r} is overloaded: {self.limit} calls in flight and {self.queue} waiting; retry shortly",
            reason="overloaded",
            headers=_RETRY_AFTER,
        )
