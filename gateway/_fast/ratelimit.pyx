# cython: language_level=3
"""Compiled token-bucket table (hot path). Pure-Python twin: ``_ratelimit_py.py``.

The twin's docstring is the contract (the algorithm on ``(tokens, last)``, the
wait, eviction); this file implements exactly that, with C doubles. The common
``take`` is one dict lookup and a few float operations on a small ``Bucket``.
"""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError, PyDict_Next, PyDict_SetItem
from cpython.object cimport PyObject
from libc.stdlib cimport free, malloc, qsort

__all__ = ["TokenBuckets", "WAIT_PAD"]

WAIT_PAD = 1e-6
cdef double _WAIT_PAD = WAIT_PAD  # seconds added to a finite wait (see the twin)
cdef double _INF = float("inf")


@cython.final
@cython.freelist(256)
cdef class Bucket:
    """One key's ``(tokens, last)`` and eviction ``deadline`` (fields declared in the .pxd)."""


cdef inline void _refill(Bucket b, double now, double rate, double burst) noexcept:
    """Add ``rate`` tokens per second since ``b.last`` (if ``now`` is later), capped at ``burst``."""
    cdef double tokens = b.tokens
    cdef double elapsed = now - b.last
    if elapsed > 0.0:
        tokens += rate * elapsed
        b.last = now
    if tokens > burst:
        tokens = burst
    b.tokens = tokens


@cython.cdivision(True)  # rate > 0 is checked
cdef inline double _deadline(Bucket b, double rate, double burst, double idle) noexcept:
    """When ``b`` may be dropped: full again, or ``idle`` seconds after ``last``, whichever is first."""
    cdef double tokens = b.tokens
    cdef double d, full
    if tokens >= burst:
        return b.last
    d = b.last + idle
    if rate > 0.0:
        full = b.last + (burst - tokens) / rate
        if full < d:
            d = full
    return d


cdef inline bint _bad(double cost, double now, double rate, double burst) noexcept:
    return not (cost - cost == 0.0 and now - now == 0.0 and rate >= 0.0 and burst >= 0.0)


cdef int _raise_bad(double cost, double now, double rate, double burst) except -1:
    raise ValueError(f"bad bucket arguments: cost={cost!r} now={now!r} rate={rate!r} burst={burst!r}")


cdef int _cmp_double(const void* a, const void* b) noexcept nogil:
    cdef double x = (<const double*>a)[0]
    cdef double y = (<const double*>b)[0]
    return (x > y) - (x < y)


@cython.final
cdef class TokenBuckets:
    """A bounded table of token buckets, one per key (see the twin for the algorithm).

    ``max_buckets``: the most buckets held at once (>= 1). ``idle``: seconds
    after its last use that a bucket which is not yet full again is dropped
    anyway (> 0; ``inf`` keeps it until it is full or the table is full).
    """

    def __init__(self, Py_ssize_t max_buckets=100_000, double idle=300.0):
        if max_buckets < 1 or not idle > 0.0:
            raise ValueError(f"need max_buckets >= 1 and idle > 0, got {max_buckets!r}, {idle!r}")
        self._buckets = {}
        self._max = max_buckets
        self._idle = idle
        self._interval = idle / 2.0
        self._next_sweep = -_INF

    @cython.cdivision(True)  # rate > 0 is checked
    cpdef double take(self, object key, double cost, double now, double rate, double burst) except -1.0:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 if taken, else the seconds to wait (inf: never).

        A refused call takes nothing. ``cost > burst`` (or ``rate == 0`` with
        too few tokens) can never pass and returns ``inf``.
        """
        cdef Bucket b
        cdef double tokens, wait
        if _bad(cost, now, rate, burst):
            _raise_bad(cost, now, rate, burst)
        if cost < 0.0:
            raise ValueError(f"take: cost must be >= 0, got {cost!r}")
        b = self._lookup(key, now, rate, burst)
        tokens = b.tokens
        if tokens >= cost:
            b.tokens = tokens - cost
            wait = 0.0
        elif cost > burst or not rate > 0.0:
            wait = _INF
        else:
            wait = (cost - tokens) / rate + _WAIT_PAD
        b.deadline = _deadline(b, rate, burst, self._idle)
        return wait

    cpdef void debit(self, object key, double cost, double now, double rate, double burst) except *:
        """Subtract ``cost`` after the fact (may go negative, so later takes wait); a negative cost refunds."""
        cdef Bucket b
        cdef double tokens
        if _bad(cost, now, rate, burst):
            _raise_bad(cost, now, rate, burst)
        b = self._lookup(key, now, rate, burst)
        tokens = b.tokens - cost
        if tokens > burst:
            tokens = burst
        b.tokens = tokens
        b.deadline = _deadline(b, rate, burst, self._idle)

    cpdef double peek(self, object key, double now, double rate, double burst) except? -1.0:
        """The tokens ``key`` has at ``now`` (``burst`` for a key with no bucket); changes nothing."""
        cdef PyObject* p
        cdef Bucket b
        cdef double tokens, elapsed
        if _bad(0.0, now, rate, burst):
            _raise_bad(0.0, now, rate, burst)
        p = PyDict_GetItemWithError(self._buckets, key)
        if p is NULL:
            return burst
        b = <Bucket>p
        tokens = b.tokens
        elapsed = now - b.last
        if elapsed > 0.0:
            tokens += rate * elapsed
        if tokens > burst:
            tokens = burst
        return tokens

    cpdef void clear(self) noexcept:
        """Drop every bucket."""
        self._buckets.clear()
        self._next_sweep = -_INF

    def __len__(self):
        return len(self._buckets)

    @property
    def max_buckets(self):
        """The most buckets held at once."""
        return self._max

    @property
    def idle(self):
        """Seconds after which an unused bucket is dropped even if not yet full."""
        return self._idle

    # -- the bucket for a call, and eviction -----------------------------------

    cdef Bucket _lookup(self, object key, double now, double rate, double burst):
        """``key``'s bucket refilled to ``now`` (a new full one if missing), after a sweep when one is due."""
        cdef PyObject* p
        cdef Bucket b
        if now >= self._next_sweep:
            self._sweep(now)
        p = PyDict_GetItemWithError(self._buckets, key)
        if p is not NULL:
            b = <Bucket>p
            _refill(b, now, rate, burst)
            return b
        if len(self._buckets) >= self._max:
            self._make_room(now)
        b = Bucket.__new__(Bucket)
        b.tokens = burst
        b.last = now
        b.deadline = now
        PyDict_SetItem(self._buckets, key, b)
        return b

    cdef int _sweep(self, double now) except -1:
        """Drop every bucket whose deadline has passed."""
        cdef Py_ssize_t pos = 0
        cdef PyObject* k
        cdef PyObject* v
        cdef list victims = []
        self._next_sweep = now + self._interval
        while PyDict_Next(self._buckets, &pos, &k, &v):
            if (<Bucket>v).deadline <= now:
                victims.append(<object>k)
        for key in victims:
            del self._buckets[key]
        return 0

    cdef int _make_room(self, double now) except -1:
        """Sweep, then drop the earliest deadlines until ``max // 16`` (at least one) slots are free."""
        cdef Py_ssize_t n, i, excess, ties, pos = 0
        cdef double cutoff, d
        cdef double* ordered
        cdef PyObject* k
        cdef PyObject* v
        cdef list victims = []
        self._sweep(now)
        n = len(self._buckets)
        excess = n - (self._max - max(1, self._max // 16))
        if excess <= 0:
            return 0
        ordered = <double*>malloc(n * sizeof(double))
        if ordered is NULL:
            raise MemoryError()
        i = 0
        while PyDict_Next(self._buckets, &pos, &k, &v):
            ordered[i] = (<Bucket>v).deadline
            i += 1
        qsort(ordered, n, sizeof(double), _cmp_double)
        cutoff = ordered[excess - 1]
        i = excess - 1
        while i > 0 and ordered[i - 1] == cutoff:
            i -= 1
        ties = excess - i  # how many at exactly the cutoff go
        free(ordered)
        pos = 0
        while PyDict_Next(self._buckets, &pos, &k, &v):
            d = (<Bucket>v).deadline
            if d < cutoff:
                victims.append(<object>k)
            elif d == cutoff and ties > 0:
                victims.append(<object>k)
                ties -= 1
        for key in victims:
            del self._buckets[key]
        return 0
