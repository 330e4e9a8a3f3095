"""A backend's circuit breaker (``[backends.NAME.breaker]``).

Three states:

- **closed**: calls go through; each one's end is counted in a ``Window`` of
  ``window`` seconds (calls, and failures: ``faults.failed``). When at least
  ``min_calls`` calls ended in the window and ``failure_ratio`` of them failed,
  the circuit opens.
- **open**: for ``open_for`` seconds every call is refused at once with
  ``CircuitOpen`` (503, -32056, ``Retry-After``: the seconds left, rounded up),
  and nothing is sent upstream.
- **half-open**: after ``open_for``, up to ``half_open_calls`` probe calls go
  through at once (others are refused, ``Retry-After: 1``). A probe that
  succeeds closes the circuit (with an empty window); one that fails opens it
  again for ``open_for``; one that ends neither way (cancelled by its client)
  frees its probe slot.

Calls that started before the circuit opened and end while it is open or
half-open are not counted: only probes decide then. The state moves from open
to half-open when a call asks (``admit``), so ``state`` alone is a pure check
the express lane can make (anything but closed: take the general path).

The clock is injected (``clock()``, monotonic seconds) so tests can drive it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.backends.window import Window
from gateway.errors import CircuitOpen

if TYPE_CHECKING:
    from gateway.config import BreakerConfig

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"

_CALLS, _FAILURES = 0, 1


class Breaker:
    """The circuit of one backend (see the module docstring)."""

    __slots__ = ("name", "config", "clock", "state", "window", "open_until", "probes", "opened", "log")

    def __init__(self, name: str, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.state = CLOSED
        """``closed``, ``open`` or ``half-open``."""
        self.window = Window(config.window, 2)
        self.open_until = 0.0
        """While open: the clock time the first probe may go."""
        self.probes = 0
        """While half-open: probes in flight."""
        self.opened = 0
        """How many times the circuit opened (for logs and tests)."""
        self.log = logging.getLogger(f"gateway.backend.{name}")

    def admit(self) -> bool:
        """Let one call through, or raise ``CircuitOpen``. True when the call is a half-open probe
        (hand that back to ``ended``)."""
        state = self.state
        if state is CLOSED:
            return False
        now = self.clock()
        if state is OPEN:
            if now < self.open_until:
                raise self._refusal(self.open_until - now)
            self.state = HALF_OPEN
            self.probes = 0
        if self.probes >= self.config.half_open_calls:
            raise self._refusal(1.0)
        self.probes += 1
        return True

    def ended(self, probe: bool, failed: bool | None, now: float | None = None) -> None:
        """A call let through by ``admit`` ended: ``failed`` True (a failure of the backend), False
        (an answer), None (neither: cancelled, refused before it was sent). ``probe``: what
        ``admit`` returned for it. ``now``: the clock's time, if the caller has it."""
        if probe:
            if self.state is not HALF_OPEN:
                return
            self.probes -= 1
            if failed is None:
                return  # its slot is free for another probe
            if failed:
                self._open(self.clock())
            else:
                self.state = CLOSED
                self.window.clear()
                self.log.info("%s: a probe call succeeded: circuit closed", self.name)
            return
        if failed is None or self.state is not CLOSED:
            return  # only probes decide while open or half-open
        if now is None:
            now = self.clock()
        window = self.window
        window.add(now, _CALLS)
        if failed:
            window.add(now, _FAILURES)
            calls, failures = window.totals(now)
            if calls >= self.config.min_calls and failures >= self.config.failure_ratio * calls:
                self._open(now)

    def _open(self, now: float) -> None:
        self.log.warning(
            "%s: circuit open for %g s (%s)", self.name, self.config.open_for,
            "a probe call failed" if self.state is HALF_OPEN else "too many failed calls",
        )
        self.state = OPEN
        self.open_until = now + self.config.open_for
        self.opened += 1
        self.window.clear()

    def _refusal(self, seconds: float) -> CircuitOpen:
        wait = max(1, math.ceil(seconds))
        return CircuitOpen(
            f"backend {self.name!r} is failing: its circuit breaker is open; retry in {wait} s",
            headers=(("retry-after", str(wait)),),
            data={"retryAfterMs": wait * 1000},
        )
