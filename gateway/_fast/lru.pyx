# cython: language_level=3
"""The result cache and its key builder (compiled; twin: ``_lru_py.py``, which documents the contract).

The layout is declared in ``lru.pxd``: a dict from key to ``_Entry``, the entries
threaded on an intrusive ring (``_root.next`` the oldest, ``_root.prev`` the
newest), so a hit is one dict lookup and four relinks, and an eviction takes the
oldest without a search. The ring's links are strong references both ways: an
entry's links are cut when it leaves, and the whole ring's when the cache is
cleared or deallocated, so no entry waits for the cycle collector.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import msgspec

__all__ = ["ENTRY_OVERHEAD", "LRU", "cache_key"]

ENTRY_OVERHEAD = 256
"""Bytes charged to every entry on top of ``len(key) + len(value)`` (see the twin)."""

cdef Py_ssize_t _OVERHEAD = ENTRY_OVERHEAD


@cython.final
@cython.freelist(256)
cdef class _Entry:
    pass


cdef inline int _check_key(object key) except -1:
    # Cython's ``bytes`` arguments take exact bytes or None: None is refused here.
    if key is None:
        raise TypeError("a cache key is bytes, not None")
    return 0


@cython.final
cdef class LRU:
    """A least-recently-used cache of bytes values with per-entry expiry, an entry
    budget and a byte budget (see ``gateway._fast._lru_py.LRU`` for the contract)."""

    def __init__(self, Py_ssize_t max_entries, Py_ssize_t max_bytes):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries = {}
        self._root = _Entry()
        self._root.prev = self._root
        self._root.next = self._root
        self._bytes = 0
        self.hits = self.misses = self.evictions = self.expired = 0

    def __dealloc__(self):
        # Cut the ring so its entries go now, by reference counting. (After the cycle
        # collector's tp_clear the root is already None: nothing left to cut.)
        if self._root is not None:
            self.clear()
            self._root.prev = self._root.next = None

    def __len__(self):
        return len(self._entries)

    # -- the cache interface --------------------------------------------------

    cpdef object get(self, bytes key, double now):
        """The fresh value under ``key``, made the newest; None on a miss (an expired
        entry is removed and counted in ``expired`` and ``misses``)."""
        _check_key(key)
        cdef object found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        cdef _Entry entry = <_Entry>found
        if entry.expires <= now:
            self._remove(entry)
            self.expired += 1
            self.misses += 1
            return None
        if entry is not self._root.prev:
            entry.prev.next = entry.next
            entry.next.prev = entry.prev
            self._link_newest(entry)
        self.hits += 1
        return entry.value

    cpdef void put(self, bytes key, bytes value, double expires, double now, object tag=None) except *:
        """Store ``value`` under ``key`` until ``expires``, as the newest entry, replacing
        any entry under ``key``; evict the oldest until both budgets hold."""
        _check_key(key)
        if value is None:
            raise TypeError("a cached value is bytes, not None")
        cdef Py_ssize_t size = PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(value) + _OVERHEAD
        cdef object found = self._entries.get(key)
        if found is not None:
            self._remove(<_Entry>found)
        if expires <= now or size > self.max_bytes or self.max_entries == 0:
            return
        cdef _Entry oldest
        while len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes:
            oldest = self._root.next
            self._remove(oldest)
            if oldest.expires <= now:
                self.expired += 1
            else:
                self.evictions += 1
        cdef _Entry entry = _Entry()
        entry.key = key
        entry.value = value
        entry.tag = tag
        entry.expires = expires
        entry.size = size
        self._entries[key] = entry
        self._bytes += size
        self._link_newest(entry)

    cpdef bint drop(self, bytes key) except -1:
        """Remove the entry under ``key``; True if there was one."""
        _check_key(key)
        cdef object found = self._entries.get(key)
        if found is None:
            return False
        self._remove(<_Entry>found)
        return True

    cpdef Py_ssize_t drop_tag(self, object tag) except -1:
        """Remove every entry stored with ``tag`` (compared with ``==``); how many went.
        One pass over the entries: for the rare event of a backend's list changing."""
        cdef Py_ssize_t dropped = 0
        cdef _Entry entry = self._root.next
        cdef _Entry after
        while entry is not self._root:
            after = entry.next
            if entry.tag == tag:
                self._remove(entry)
                dropped += 1
            entry = after
        return dropped

    cpdef void clear(self) noexcept:
        """Remove every entry (the counters keep counting)."""
        cdef _Entry entry = self._root.next
        cdef _Entry after
        while entry is not self._root:
            after = entry.next
            entry.prev = entry.next = None
            entry = after
        self._root.prev = self._root.next = self._root
        self._entries.clear()
        self._bytes = 0

    @property
    def bytes(self):
        """The entries' total size: sum of ``len(key) + len(value) + ENTRY_OVERHEAD``."""
        return self._bytes

    # -- the ring -------------------------------------------------------------

    cdef void _link_newest(self, _Entry entry) noexcept:
        cdef _Entry newest = self._root.prev
        entry.prev = newest
        entry.next = self._root
        newest.next = entry
        self._root.prev = entry

    cdef int _remove(self, _Entry entry) except -1:
        entry.prev.next = entry.next
        entry.next.prev = entry.prev
        entry.prev = entry.next = None
        del self._entries[entry.key]
        self._bytes -= entry.size
        return 0


# -- the key builder ----------------------------------------------------------

# Floats keep their text (msgspec.Raw): two spellings of a float never meet, and
# two different numbers never round to one key. Integers are exact Python ints.
cdef object _decode = msgspec.json.Decoder(float_hook=msgspec.Raw).decode
cdef object _encode = msgspec.json.Encoder(order="sorted").encode
cdef bytes _EMPTY = b"{}"


cdef Py_ssize_t _members(const char* p, Py_ssize_t n) noexcept:
    """The colons outside strings of valid JSON: its number of object members."""
    cdef Py_ssize_t i = 0, count = 0
    cdef bint in_string = False
    cdef char c
    while i < n:
        c = p[i]
        if in_string:
            if c == b"\\":
                i += 1  # the escaped character cannot end the string
            elif c == b'"':
                in_string = False
        elif c == b'"':
            in_string = True
        elif c == b":":
            count += 1
        i += 1
    return count


cpdef bytes cache_key(object scope, str method, str name, object arguments):
    """The cache key of a call, or None if its arguments are not cacheable (see the twin)."""
    cdef Py_buffer view
    cdef bytes canonical, head
    if method is None or name is None:
        raise TypeError("method and name are str")
    if arguments is None:
        canonical = _EMPTY
    else:
        PyObject_GetBuffer(arguments, &view, PyBUF_SIMPLE)  # TypeError unless bytes-like
        try:
            try:
                canonical = _encode(_decode(arguments))
            except (ValueError, RecursionError):  # msgspec's DecodeError and ValidationError are ValueErrors
                return None
            if _members(<const char*>view.buf, view.len) != _members(
                PyBytes_AS_STRING(canonical), PyBytes_GET_SIZE(canonical)
            ):
                return None  # a duplicate key: which one a backend reads is its choice, not ours
        finally:
            PyBuffer_Release(&view)
    head = _encode((scope, method, name))
    return head[:-1] + b"," + canonical + b"]"
