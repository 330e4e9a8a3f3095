"""Coarse deadlines: many short-lived timeouts checked on one periodic tick.

A loop timer per request (``call_later`` and then ``cancel``) costs a timer
object, a heap insertion and removal and a handle close in libuv, and a request
that is answered in microseconds pays all of it for a timeout measured in
seconds. ``Deadlines`` keeps each deadline as one dict entry instead, and one
tick every ``resolution`` seconds (only while any deadline is pending) fires
the expired ones. A deadline fires between its time and one resolution later,
which is precise enough for request timeouts and keep-alive comments.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["Deadlines"]

log = logging.getLogger("gateway.timers")


class Deadlines:
    """Pending deadlines keyed by an object (the request they guard)."""

    __slots__ = ("_resolution", "_due", "_loop", "_tick")

    def __init__(self, resolution: float = 0.05) -> None:
        self._resolution = resolution
        # key -> (loop time it expires, callback, its argument)
        self._due: dict[Any, tuple[float, Callable[[Any], None], Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Any, delay: float, callback: Callable[[Any], None], arg: Any = None) -> None:
        """Call ``callback(arg)`` about ``delay`` seconds from now unless ``discard(key)`` comes first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (tests): no tick runs there yet
            self._loop, self._tick = loop, None
        self._due[key] = (loop.time() + delay, callback, arg)
        if self._tick is None:
            self._tick = loop.call_later(self._resolution, self._check)

    def discard(self, key: Any) -> None:
        """Forget ``key``'s deadline (no error if it fired or never existed)."""
        self._due.pop(key, None)

    def _check(self) -> None:
        self._tick = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        expired = [key for key, entry in self._due.items() if entry[0] <= now]
        for key in expired:
            entry = self._due.pop(key, None)
            if entry is None:  # an earlier callback discarded it
                continue
            try:
                entry[1](entry[2])
            except Exception:  # one failing callback must not stop the others
                log.exception("deadline callback failed")
        if self._due:
            self._tick = loop.call_later(self._resolution, self._check)
