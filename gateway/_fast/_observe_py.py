"""Pure-Python twin of ``gateway._fast.observe`` (same API, same behaviour).

``ObserverCore`` is the per-request work of the observer (``gateway.ops.observe.Observer``):
its ``admit`` and ``outcome`` are the admission chain's first policy's, bound as they are,
so that a request with metrics on pays two calls into compiled code and no Python frame.
Everything it needs is handed in, so this layer imports nothing of the gateway's:

- ``metrics``: None, or the ``gateway.ops.metrics.Metrics`` to count in. It is used through
  its hot-path fields, read once: ``flight`` (a ``Count`` of the requests in flight),
  ``series`` (a dict from the raw label set ``(method, backend, outcome, tool)`` to a
  ``Series``) and ``new_series(method, backend, outcome, tool)``, called when that dict has no
  entry, which returns the label set's series (and remembers it in ``series``).
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
name for ``tools/call``, else ``""``) gets one more count, and its histogram observes the
seconds. (The compiled core also remembers, per route, the series of its ``ok`` outcome,
which saves hashing the name: the series found are the same.)

The counters themselves:

- ``Histogram(bounds, le)``: a count per bucket of durations, ``bounds`` a tuple of increasing
  floats (the last bucket, +Inf, follows), ``le`` their labels; ``observe(seconds)`` counts one
  in the first bucket whose bound is at least ``seconds`` (``bisect_left``: a value on a bound
  falls in that bucket) and adds it to ``sum``; ``counts`` is the list of counts (not
  cumulative); ``cumulative()`` is ``[(le, count <= le), ...]``, +Inf last.
- ``Series(histogram)``: one label set's ``count`` (an int) and the ``histogram`` of its
  backend (shared by every series of that backend).
- ``Count()``: one integer ``value``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

__all__ = ["Count", "Histogram", "ObserverCore", "Series"]

_new = object.__new__


class Histogram:
    """One backend's durations (see the module docstring)."""

    __slots__ = ("bounds", "counts", "le", "sum")

    def __init__(self, bounds: tuple[float, ...], le: tuple[str, ...]) -> None:
        self.bounds = tuple(bounds)
        self.le = tuple(le)
        if len(self.le) != len(self.bounds) + 1:
            raise ValueError("le needs one label per bound and one for +Inf")
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration: ``le`` is inclusive, so a value on a bound falls in that bucket."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count <= le)`` for every bucket, +Inf last: what Prometheus expects."""
        out, running = [], 0
        for le, count in zip(self.le, self.counts):
            running += count
            out.append((le, running))
        return out


class Series:
    """One label set's count, and the histogram of its backend."""

    __slots__ = ("count", "histogram")

    def __init__(self, histogram: Histogram) -> None:
        self.count = 0
        self.histogram = histogram


class Count:
    """One integer."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class ObserverCore:
    """The observer's ``admit`` and ``outcome`` (see the module docstring)."""

    __slots__ = ("metrics", "noted", "unset", "outcome_of", "finish", "limited", "failed", "clock", "series", "flight")

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
        self.series = metrics.series if metrics is not None else None
        self.flight = metrics.flight if metrics is not None else None

    def admit(self, principal: Any, ctx: Any, method: str, name: str, route: Any, params: Any) -> Any:
        """Count the request in flight; go, with the note ``(started, params, route)``."""
        if self.flight is not None:
            self.flight.value += 1
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
                    self.flight.value -= 1
                tool = name if method == "tools/call" else ""
                series = self.series.get((method, backend, outcome, tool))
                if series is None:
                    series = metrics.new_series(method, backend, outcome, tool)
                series.count += 1
                series.histogram.observe(seconds)
                if outcome == "limited" and error is not None:
                    self.limited(error)
            if self.finish is not None:
                self.finish(principal, ctx, method, name, backend, answer, error, outcome, seconds, params)
        except Exception:
            self.failed()
