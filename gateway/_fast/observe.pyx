# cython: language_level=3
"""Compiled observer core (hot path). Pure-Python twin: ``_observe_py.py``.

The twin's docstring is the contract; this file does exactly that without a Python frame:
the clock is read with ``clock_gettime(CLOCK_MONOTONIC)`` (what ``time.perf_counter`` reads
on Linux), the verdict is made by its type's ``tp_new`` (no ``__init__``), and the bucket is
found by a binary search over the bounds' C doubles (``bisect_left``'s answer).
"""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError
from cpython.object cimport PyObject, PyTypeObject
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

__all__ = ["ObserverCore"]

cdef tuple _EMPTY = ()


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline Py_ssize_t _bucket(tuple bounds, double seconds) except -1:
    """``bisect_left(bounds, seconds)``: the first index whose bound is >= ``seconds``."""
    cdef Py_ssize_t lo = 0
    cdef Py_ssize_t hi = len(bounds)
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if <double>bounds[mid] < seconds:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cython.final
cdef class ObserverCore:
    """The observer's ``admit`` and ``outcome`` (the twin's docstring)."""

    cdef readonly object metrics, noted, unset, outcome_of, finish, limited, failed, clock
    cdef PyTypeObject* _type

    def __init__(self, metrics, type noted, unset, outcome_of, finish, limited, failed, clock=None):
        self.metrics = metrics
        self.noted = noted
        self._type = <PyTypeObject*>noted
        self.unset = unset
        self.outcome_of = outcome_of
        self.finish = finish
        self.limited = limited
        self.failed = failed
        self.clock = clock

    cdef inline double _time(self) except? -1.0:
        if self.clock is None:
            return _now()
        return self.clock()

    def admit(self, principal, ctx, method, name, route, params):
        """Count the request in flight; go, with the note ``(started, params, route)``."""
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight += 1
        verdict = self._type.tp_new(self.noted, <PyObject*>_EMPTY, NULL)
        verdict.note = (self._time(), params, route)
        return verdict

    def outcome(self, principal, ctx, method, name, route, answer, error, note=None):
        """Count how the request ended, then ``finish`` it (the twin's docstring)."""
        cdef double seconds
        cdef bint started
        cdef object params = None
        cdef object admitted = None
        cdef object histogram
        cdef PyObject* found
        try:
            if note is not None:
                begun, params, admitted = <tuple>note
                seconds = self._time() - <double>begun
                started = True
            else:
                seconds = 0.0
                started = False
            if error is None and answer is not None and answer.error is self.unset:
                outcome = "ok"
            else:
                outcome = self.outcome_of(route, answer, error)
            chosen = route if route is not None else admitted
            backend = chosen[0].name if chosen is not None else ""
            metrics = self.metrics
            if metrics is not None:
                if started:
                    metrics.in_flight -= 1
                tool = name if method == "tools/call" else ""
                key = (method, backend, outcome, tool)
                found = PyDict_GetItemWithError(<dict>metrics.series, key)
                if found is NULL:
                    series = metrics.new_series(method, backend, outcome, tool)
                else:
                    series = <object>found
                series.count += 1
                histogram = series.histogram
                counts = <list>histogram.counts
                index = _bucket(<tuple>histogram.bounds, seconds)
                counts[index] += 1
                histogram.sum += seconds
                if outcome == "limited" and error is not None:
                    self.limited(error)
            if self.finish is not None:
                self.finish(principal, ctx, method, name, backend, answer, error, outcome, seconds, params)
        except Exception:
            self.failed()
