"""Pure-Python twin of ``gateway._fast.lru``: the result cache and its key builder.

Used when ``GATEWAY_NO_EXTENSIONS=1`` is set, on non-CPython interpreters, or when
the compiled module is missing. Tests run both and check that they agree.

The cache (``LRU``)
-------------------
Keys and values are ``bytes`` (exactly: not subclasses, not None). An entry is
fresh while ``now < expires``; ``now`` is whatever clock the caller uses
(``time.monotonic()``), passed in so the cache never reads a clock itself.

- ``get(key, now)``: the fresh value, and the entry becomes the newest (a hit);
  else None (a miss). An expired entry found here is removed and counted in both
  ``expired`` and ``misses``.
- ``put(key, value, expires, now, tag=None)``: any entry under ``key`` is removed
  first (a replacement, not an eviction); the new one is stored as the newest
  unless it is already expired (``expires <= now``), its size exceeds
  ``max_bytes``, or ``max_entries`` is 0 — then nothing is stored. Before storing,
  the oldest entries are evicted until both budgets hold; an evicted entry that
  was already expired counts in ``expired``, a fresh one in ``evictions``.
- An entry's size is ``len(key) + len(value) + ENTRY_OVERHEAD``. The key counts
  because it holds the call's canonical arguments, which the client chooses.
- ``drop(key) -> bool`` and ``drop_tag(tag) -> int`` remove entries without
  counting them; ``tag`` is what ``put`` was given (a backend's name, so that its
  ``list_changed`` drops its results), compared with ``==``. ``clear()`` removes
  everything. ``len()``, ``bytes`` (the entries' total size), ``max_entries``,
  ``max_bytes``, and the counters ``hits``, ``misses``, ``evictions``, ``expired``
  (ints that only grow, read at scrape time) describe the cache.

``get``, ``put``, ``drop`` are O(1); ``drop_tag`` is one pass over the entries.

The key builder (``cache_key``)
-------------------------------
``cache_key(scope, method, name, arguments)`` is the JSON array
``[scope, method, name, arguments]`` with the arguments canonicalised, as bytes,
or None when the arguments are not cacheable:

- ``scope`` is whose result it is: a principal's key (``Principal.key``, a tuple
  of str and frozensets; or any value msgspec encodes) or None, the shared scope.
  None encodes as ``null``, which no principal's key does, so a shared entry is
  never a principal's and one principal's never another's. Sets are sorted.
- ``method`` is the JSON-RPC method, ``name`` the exposed tool or prompt name or
  resource URI.
- ``arguments`` is the raw JSON of the call's arguments (any bytes-like object,
  e.g. ``msgspec.Raw``), or None when the call had none. It is decoded and
  re-encoded with object keys sorted (recursively), without whitespace, so calls
  that differ only in key order or spacing meet. Absent arguments (None) and
  ``{}`` meet; ``null`` is kept apart (a backend may answer it otherwise). Floats
  keep their exact text (``1.0``, ``1.00`` and ``1e0`` stay apart: two numbers
  never round into one key); integers are exact; strings are compared decoded
  (``"\\u0061"`` meets ``"a"``).
- Not cacheable (None): invalid JSON (including invalid UTF-8, lone surrogates,
  numbers out of range, nesting too deep) and any object with a duplicate key
  (``{"q": 1, "q": 2}``): backends differ in which one they read, and the call is
  forwarded as sent, so a key naming one of them could be a wrong answer.

Because the key is one JSON array, two different ``(scope, method, name,
canonical arguments)`` never share a key, whatever separators the strings hold.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from operator import index

import msgspec

__all__ = ["ENTRY_OVERHEAD", "LRU", "cache_key"]

ENTRY_OVERHEAD = 256
"""Bytes charged to every entry on top of ``len(key) + len(value)``: what the entry
object, its dict slot and the key's and value's object headers take, measured on
64-bit CPython 3.11 at about 210 bytes compiled and 270 in this twin."""


class _Entry:
    __slots__ = ("value", "tag", "expires", "size")

    def __init__(self, value: bytes, tag: object, expires: float, size: int) -> None:
        self.value = value
        self.tag = tag
        self.expires = expires
        self.size = size


def _check_key(key: object) -> None:
    if type(key) is not bytes:
        raise TypeError(f"a cache key is bytes, not {type(key).__name__}")


class LRU:
    """A least-recently-used cache of bytes values with per-entry expiry, an entry
    budget and a byte budget (the contract is the module's docstring)."""

    __slots__ = ("_entries", "_bytes", "max_entries", "max_bytes", "hits", "misses", "evictions", "expired")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        max_entries, max_bytes = index(max_entries), index(max_bytes)
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self.hits = self.misses = self.evictions = self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> bytes | None:
        """The fresh value under ``key``, made the newest; None on a miss (an expired
        entry is removed and counted in ``expired`` and ``misses``)."""
        _check_key(key)
        now = float(now)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires <= now:
            self._remove(key)
            self.expired += 1
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.value

    def put(self, key: bytes, value: bytes, expires: float, now: float, tag: object = None) -> None:
        """Store ``value`` under ``key`` until ``expires``, as the newest entry, replacing
        any entry under ``key``; evict the oldest until both budgets hold."""
        _check_key(key)
        if type(value) is not bytes:
            raise TypeError(f"a cached value is bytes, not {type(value).__name__}")
        expires, now = float(expires), float(now)
        size = len(key) + len(value) + ENTRY_OVERHEAD
        if key in self._entries:
            self._remove(key)
        if expires <= now or size > self.max_bytes or self.max_entries == 0:
            return
        entries = self._entries
        while len(entries) >= self.max_entries or self._bytes + size > self.max_bytes:
            _, oldest = entries.popitem(last=False)
            self._bytes -= oldest.size
            if oldest.expires <= now:
                self.expired += 1
            else:
                self.evictions += 1
        entries[key] = _Entry(value, tag, expires, size)
        self._bytes += size

    def drop(self, key: bytes) -> bool:
        """Remove the entry under ``key``; True if there was one."""
        _check_key(key)
        if key not in self._entries:
            return False
        self._remove(key)
        return True

    def drop_tag(self, tag: object) -> int:
        """Remove every entry stored with ``tag`` (compared with ``==``); how many went.
        One pass over the entries: for the rare event of a backend's list changing."""
        doomed = [key for key, entry in self._entries.items() if entry.tag == tag]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def clear(self) -> None:
        """Remove every entry (the counters keep counting)."""
        self._entries.clear()
        self._bytes = 0

    def _remove(self, key: bytes) -> None:
        self._bytes -= self._entries.pop(key).size

    @property
    def bytes(self) -> int:
        """The entries' total size: sum of ``len(key) + len(value) + ENTRY_OVERHEAD``."""
        return self._bytes


# Floats keep their text (msgspec.Raw): two spellings of a float never meet, and
# two different numbers never round to one key. Integers are exact Python ints.
_decode = msgspec.json.Decoder(float_hook=msgspec.Raw).decode
_encode = msgspec.json.Encoder(order="sorted").encode
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _members(data: bytes) -> int:
    """The colons outside strings of valid JSON: its number of object members."""
    return _STRING.sub(b"", data).count(b":")


def cache_key(scope: object, method: str, name: str, arguments: bytes | None) -> bytes | None:
    """The cache key of a call, or None if its arguments are not cacheable (see the module's
    docstring: the key is the JSON array ``[scope, method, name, canonical arguments]``)."""
    if type(method) is not str or type(name) is not str:
        raise TypeError("method and name are str")
    if arguments is None:
        canonical = b"{}"
    else:
        raw = arguments if type(arguments) is bytes else memoryview(arguments).tobytes()  # TypeError unless bytes-like
        try:
            canonical = _encode(_decode(raw))
        except (ValueError, RecursionError):  # msgspec's DecodeError and ValidationError are ValueErrors
            return None
        if _members(raw) != _members(canonical):
            return None  # a duplicate key: which one a backend reads is its choice, not ours
    head = _encode((scope, method, name))
    return head[:-1] + b"," + canonical + b"]"
