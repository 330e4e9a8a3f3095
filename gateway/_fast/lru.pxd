# cython: language_level=3
"""The result cache's layout and C-level API (see ``_lru_py.py`` for the contract).

Compiled modules can ``cimport`` ``LRU`` and ``cache_key`` and call them at C
level (the classes are final: no virtual dispatch).
"""

cimport cython


@cython.final
cdef class _Entry:
    """One cached value and its place in the recency ring (strong links both ways:
    the cache breaks them when an entry leaves, and when the cache itself goes)."""
    cdef bytes key
    cdef bytes value
    cdef object tag           # what ``drop_tag`` matches (a backend's name), or None
    cdef double expires       # fresh while ``now < expires``
    cdef Py_ssize_t size      # len(key) + len(value) + ENTRY_OVERHEAD
    cdef _Entry prev          # the next older entry (the root after the oldest)
    cdef _Entry next          # the next newer entry (the root after the newest)


@cython.final
cdef class LRU:
    cdef dict _entries        # key -> _Entry
    cdef _Entry _root         # ring sentinel: _root.next is the oldest entry, _root.prev the newest
    cdef Py_ssize_t _bytes    # sum of the entries' sizes
    cdef readonly Py_ssize_t max_entries
    cdef readonly Py_ssize_t max_bytes
    cdef readonly Py_ssize_t hits
    cdef readonly Py_ssize_t misses
    cdef readonly Py_ssize_t evictions
    cdef readonly Py_ssize_t expired

    cpdef object get(self, bytes key, double now)
    cpdef void put(self, bytes key, bytes value, double expires, double now, object tag=*) except *
    cpdef bint drop(self, bytes key) except -1
    cpdef Py_ssize_t drop_tag(self, object tag) except -1
    cpdef void clear(self) noexcept

    cdef void _link_newest(self, _Entry entry) noexcept
    cdef int _remove(self, _Entry entry) except -1


cpdef bytes cache_key(object scope, str method, str name, object arguments)
