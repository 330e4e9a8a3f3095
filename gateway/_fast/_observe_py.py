"""Pure-Python twin of ``gateway._fast.observe`` (same API, same behaviour).

``ObserverCore`` is the per-request work of the observer (``gateway.ops.observe.Observer``):
its ``admit`` and ``outcome`` are the admission chain's first policy's, bound as they are,
so that a request with metrics on pays two calls into compiled code and no Python frame.
Everything it needs is handed in, so this layer imports nothing of the gateway's:

- ``metrics``: None, or the ``gateway.ops.metrics.Metrics`` to count in. It is used through
  its hot-path fields: ``in_flight`` (an int), ``series`` (a dict from the raw label set
  ``(method, backend, outcome, tool)`` to a series with an int ``count`` and a ``histogram``
  whose ``bounds`` is a tuple of increasing floats, ``counts`` a list of ints one longer,
  ``sum`` a float) and ``new_series(method, backend, outcome, tool)``, called on a label set's
  first sight, which returns its series (and remembers it in ``series``).
- ``noted``: the verdict class of a note-only "go" (``gateway.policy.admission.Noted``), made
  without its ``__init__`` (``object.__new__``) and given its ``note``.
- ``unset``: the value of ``Message.error`` when the answer is a result.
- ``outcome_of(route, answer, error)``: the outcome word when it is not the plain ``ok``.
- ``finish``: None, or called with ``(principal, ctx, method, name, backend, answer, error,
  outcome, seconds, params)`` after the counting: the audit record and the access line.
- ``limited(error)``: called when metrics are on and the outcome is ``limited`` with an error.
- ``failed()``: called inside the handler when anything above raised (it logs the exception):
  an observer's bug never fails a request that was answered.
- ``clock``: None for ``time.perf_counter`` (the compiled module reads the same monotonic
  clock itself), or a function returning seconds (tests).

``admit`` counts the request in flight and returns a ``noted`` verdict whose note is
``(started, params, route)``. ``outcome`` with that note measures the seconds since
``started``; without a note (a request refused before admission) the seconds are 0 and
nothing was counted in flight. The backend is that of ``route``, else of the admitted route,
else ``""``. With metrics, the series of ``(method, backend, outcome, tool)`` (``tool`` the
name for ``tools/call``, else ``""``) gets one more count, and its histogram one more
duration in the first bucket whose bound is at least the seconds (``bisect_left``; the last
bucket is +Inf) and the seconds added to its sum.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

__all__ = ["ObserverCore"]

_new = object.__new__


class ObserverCore:
    """The observer's ``admit`` and ``outcome`` (see the module docstring)."""

    __slots__ = ("metrics", "noted", "unset", "outcome_of", "finish", "limited", "failed", "clock")

    def __init__(
        self,
        metrics: Any,
        noted: type,
        unset: Any,
        outcome_of: Callable[[Any, Any, Any], str],
        finish: Callable[..., None] | None,
        limited: Callable[[BaseException], None],
        failed: Callable[[], None],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.metrics = metrics
        self.noted = noted
        self.unset = unset
        self.outcome_of = outcome_of
        self.finish = finish
        self.limited = limited
        self.failed = failed
        self.clock = clock if clock is not None else time.perf_counter

    def admit(self, principal: Any, ctx: Any, method: str, name: str, route: Any, params: Any) -> Any:
        """Count the request in flight; go, with the note ``(started, params, route)``."""
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight += 1
        verdict = _new(self.noted)
        verdict.note = (self.clock(), params, route)
        return verdict

    def outcome(
        self, principal: Any, ctx: Any, method: str, name: str, route: Any, answer: Any, error: Any, note: Any = None
    ) -> None:
        """Count how the request ended, then ``finish`` it (see the module docstring)."""
        try:
            if note is not None:
                started, params, admitted = note
                seconds = self.clock() - started
            else:
                started = params = admitted = None
                seconds = 0.0
            if error is None and answer is not None and answer.error is self.unset:
                outcome = "ok"
            else:
                outcome = self.outcome_of(route, answer, error)
            chosen = route if route is not None else admitted
            backend = chosen[0].name if chosen is not None else ""
            metrics = self.metrics
            if metrics is not None:
                if started is not None:
                    metrics.in_flight -= 1
                tool = name if method == "tools/call" else ""
                series = metrics.series.get((method, backend, outcome, tool))
                if series is None:
                    series = metrics.new_series(method, backend, outcome, tool)
                series.count += 1
                histogram = series.histogram
                histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
                histogram.sum += seconds
                if outcome == "limited" and error is not None:
                    self.limited(error)
            if self.finish is not None:
                self.finish(principal, ctx, method, name, backend, answer, error, outcome, seconds, params)
        except Exception:
            self.failed()
