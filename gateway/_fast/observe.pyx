# cython: language_level=3
"""Compiled observer core and counters (hot path). Pure-Python twin: ``_observe_py.py``.

The twin's docstring is the contract; this file does exactly that without a Python frame:
the clock is read with ``clock_gettime(CLOCK_MONOTONIC)`` (what ``time.perf_counter`` reads
on Linux), the verdict is made by its type's ``tp_new`` (no ``__init__``), the counters are C
fields, and the bucket is found by a binary search over C doubles (``bisect_left``'s answer).

One addition the twin does without: per route (the routing table's own tuple, so the lookup
hashes two cached hashes and matches by identity), the ``ok`` series of the method and
exposed name last counted on it. A hit skips building and hashing the 4-tuple key, whose
exposed name is a new string every request; the name and method are compared before the
remembered series is used, so a route reached under another name takes the full lookup.
"""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyTypeObject
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

__all__ = ["Count", "Histogram", "ObserverCore", "Series"]

cdef tuple _EMPTY = ()
cdef Py_ssize_t _MAX_ROUTES = 4096  # routes remembered per core (one core per config snapshot)


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


@cython.final
cdef class Histogram:
    """One backend's durations (the twin's docstring)."""

    cdef double* _bounds
    cdef long long* _counts
    cdef Py_ssize_t _n  # bounds; the counts are one more (+Inf)
    cdef public double sum
    cdef readonly tuple bounds
    cdef readonly tuple le

    def __cinit__(self, bounds, le):
        cdef Py_ssize_t i
        self.bounds = tuple(bounds)
        self.le = tuple(le)
        self._n = len(self.bounds)
        if len(self.le) != self._n + 1:
            raise ValueError("le needs one label per bound and one for +Inf")
        self._bounds = <double*>PyMem_Malloc((self._n + 1) * sizeof(double))
        self._counts = <long long*>PyMem_Malloc((self._n + 1) * sizeof(long long))
        if self._bounds is NULL or self._counts is NULL:
            raise MemoryError()
        for i in range(self._n):
            self._bounds[i] = self.bounds[i]
        for i in range(self._n + 1):
            self._counts[i] = 0
        self.sum = 0.0

    def __dealloc__(self):
        PyMem_Free(self._bounds)
        PyMem_Free(self._counts)

    cdef inline void _observe(self, double seconds) noexcept:
        cdef Py_ssize_t lo = 0
        cdef Py_ssize_t hi = self._n
        cdef Py_ssize_t mid
        while lo < hi:  # bisect_left: the first bound >= seconds
            mid = (lo + hi) >> 1
            if self._bounds[mid] < seconds:
                lo = mid + 1
            else:
                hi = mid
        self._counts[lo] += 1
        self.sum += seconds

    def observe(self, double seconds):
        """Count one duration: ``le`` is inclusive, so a value on a bound falls in that bucket."""
        self._observe(seconds)

    @property
    def counts(self):
        """The count of each bucket (not cumulative), +Inf last: a new list."""
        return [self._counts[i] for i in range(self._n + 1)]

    def cumulative(self):
        """``(le, count <= le)`` for every bucket, +Inf last: what Prometheus expects."""
        cdef long long running = 0
        out = []
        for i in range(self._n + 1):
            running += self._counts[i]
            out.append((self.le[i], running))
        return out


@cython.final
cdef class Series:
    """One label set's count, and the histogram of its backend."""

    cdef public long long count
    cdef readonly Histogram histogram

    def __init__(self, Histogram histogram):
        self.count = 0
        self.histogram = histogram


@cython.final
cdef class Count:
    """One integer."""

    cdef public long long value


@cython.final
cdef class _Known:
    """What a route's last ``ok`` was counted as: the method, the exposed name, the backend's
    name and the series."""

    cdef object method, name, backend
    cdef Series series


@cython.final
cdef class ObserverCore:
    """The observer's ``admit`` and ``outcome`` (the twin's docstring)."""

    cdef readonly object metrics, noted, unset, outcome_of, finish, limited, failed, clock
    cdef PyTypeObject* _type
    cdef dict _series
    cdef Count _flight
    cdef dict _routes

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
        self._routes = {}
        if metrics is not None:
            self._series = metrics.series
            self._flight = metrics.flight

    cdef inline double _time(self) except? -1.0:
        if self.clock is None:
            return _now()
        return self.clock()

    def admit(self, principal, ctx, method, name, route, params):
        """Count the request in flight; go, with the note ``(started, params, route)``."""
        if self._flight is not None:
            self._flight.value += 1
        verdict = self._type.tp_new(self.noted, <PyObject*>_EMPTY, NULL)
        verdict.note = (self._time(), params, route)
        return verdict

    def outcome(self, principal, ctx, method, name, route, answer, error, note=None):
        """Count how the request ended, then ``finish`` it (the twin's docstring)."""
        cdef double seconds
        cdef bint started, ok
        cdef object params = None
        cdef object admitted = None
        cdef object backend = None
        cdef Series series = None
        cdef _Known known
        cdef PyObject* found
        try:
            if note is not None:
                begun, params, admitted = <tuple>note
                seconds = self._time() - <double>begun
                started = True
            else:
                seconds = 0.0
                started = False
            ok = error is None and answer is not None and answer.error is self.unset
            outcome = "ok" if ok else self.outcome_of(route, answer, error)
            chosen = route if route is not None else admitted
            if self.metrics is not None:
                if started:
                    self._flight.value -= 1
                if ok and chosen is not None:
                    found = PyDict_GetItemWithError(self._routes, chosen)
                    if found is not NULL:
                        known = <_Known>found
                        if known.name == name and known.method == method:
                            series = known.series
                            backend = known.backend
                if series is None:
                    backend = chosen[0].name if chosen is not None else ""
                    series = self._lookup(method, backend, outcome, name)
                    if ok and chosen is not None and len(self._routes) < _MAX_ROUTES:
                        known = _Known.__new__(_Known)
                        known.method, known.name, known.backend, known.series = method, name, backend, series
                        PyDict_SetItem(self._routes, chosen, known)
                series.count += 1
                series.histogram._observe(seconds)
                if outcome == "limited" and error is not None:
                    self.limited(error)
            elif self.finish is not None:
                backend = chosen[0].name if chosen is not None else ""
            if self.finish is not None:
                self.finish(principal, ctx, method, name, backend, answer, error, outcome, seconds, params)
        except Exception:
            self.failed()

    cdef Series _lookup(self, method, backend, outcome, name):
        """The series of the raw label set, made by ``new_series`` on its first sight."""
        tool = name if method == "tools/call" else ""
        found = PyDict_GetItemWithError(self._series, (method, backend, outcome, tool))
        if found is not NULL:
            return <Series?><object>found
        return self.metrics.new_series(method, backend, outcome, tool)
