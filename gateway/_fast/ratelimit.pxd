# cython: language_level=3
"""The token-bucket table's layout and C-level API (see ``_ratelimit_py.py`` for the algorithm).

Compiled modules can ``cimport`` ``TokenBuckets`` and call ``take``/``debit``
at C level (the class is final: no virtual dispatch).
"""

cimport cython


@cython.final
cdef class Bucket:
    """One key's state ``(tokens, last)`` plus its eviction ``deadline`` (bookkeeping, not state)."""
    cdef double tokens
    cdef double last
    cdef double deadline


@cython.final
cdef class TokenBuckets:
    cdef dict _buckets        # key -> Bucket, in insertion order (ties in eviction go first-in)
    cdef Py_ssize_t _max      # the most buckets held at once
    cdef double _idle         # seconds an unused, not-yet-full bucket is kept
    cdef double _interval     # seconds of ``now`` between sweeps (idle / 2)
    cdef double _next_sweep   # the ``now`` at or after which the next call sweeps

    cpdef double take(self, object key, double cost, double now, double rate, double burst) except -1.0
    cpdef void debit(self, object key, double cost, double now, double rate, double burst) except *
    cpdef double peek(self, object key, double now, double rate, double burst) except? -1.0
    cpdef void clear(self) noexcept

    cdef Bucket _lookup(self, object key, double now, double rate, double burst)
    cdef int _sweep(self, double now) except -1
    cdef int _make_room(self, double now) except -1
