"""The result cache and its key builder: both implementations, their agreement, and that the compiled one loaded."""

from __future__ import annotations

import json
import sys

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway._fast
from gateway._fast import _lru_py
from tests.support import compiled_loaded, selected_without_extensions

try:
    from gateway._fast import lru as _lru_c
except ImportError:  # reported by test_compiled_lru_loaded
    _lru_c = None

IMPLS = [pytest.param(_lru_py, id="py")]
if _lru_c is not None:
    IMPLS.insert(0, pytest.param(_lru_c, id="c"))

O = _lru_py.ENTRY_OVERHEAD


@pytest.fixture(params=IMPLS)
def impl(request):  # type: ignore[no-untyped-def]
    return request.param


def size(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + O


def counters(cache) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    return (cache.hits, cache.misses, cache.evictions, cache.expired)


# -- loading ------------------------------------------------------------------


def test_compiled_lru_loaded() -> None:
    compiled = compiled_loaded("lru", "LRU", "cache_key")
    assert gateway._fast.cache_key is compiled.cache_key


def test_selector_honours_no_extensions() -> None:
    assert selected_without_extensions("LRU", "cache_key") == ["False", "gateway._fast._lru_py", "gateway._fast._lru_py"]


def test_same_overhead() -> None:
    if _lru_c is not None:
        assert _lru_c.ENTRY_OVERHEAD == _lru_py.ENTRY_OVERHEAD


# -- the cache ------------------------------------------------------------------


def test_get_put_and_counters(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, 10_000)
    assert cache.get(b"a", 0.0) is None
    cache.put(b"a", b"1", 10.0, 0.0)
    assert cache.get(b"a", 1.0) == b"1"
    assert (len(cache), cache.bytes) == (1, size(b"a", b"1"))
    assert counters(cache) == (1, 1, 0, 0)
    assert (cache.max_entries, cache.max_bytes) == (10, 10_000)


def test_entry_count_eviction_is_lru_order(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(3, 10_000)
    for key in (b"a", b"b", b"c"):
        cache.put(key, key, 100.0, 0.0)
    assert cache.get(b"a", 1.0) == b"a"  # a is now the newest: b is the oldest
    cache.put(b"d", b"d", 100.0, 1.0)
    assert cache.get(b"b", 1.0) is None
    assert [cache.get(k, 1.0) for k in (b"a", b"c", b"d")] == [b"a", b"c", b"d"]
    assert (len(cache), cache.evictions) == (3, 1)
    cache.put(b"e", b"e", 100.0, 1.0)  # the oldest is now a (read before c and d)
    assert cache.get(b"a", 1.0) is None and len(cache) == 3


def test_replacing_refreshes_recency_and_is_not_an_eviction(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(2, 10_000)
    cache.put(b"a", b"1", 100.0, 0.0)
    cache.put(b"b", b"2", 100.0, 0.0)
    cache.put(b"a", b"333", 100.0, 0.0)
    assert (len(cache), cache.bytes, cache.evictions) == (2, size(b"a", b"333") + size(b"b", b"2"), 0)
    cache.put(b"c", b"4", 100.0, 0.0)  # b is the oldest
    assert cache.get(b"b", 0.0) is None
    assert cache.get(b"a", 0.0) == b"333"


def test_expiry(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, 10_000)
    cache.put(b"a", b"1", 5.0, 0.0)
    assert cache.get(b"a", 4.999) == b"1"
    assert cache.get(b"a", 5.0) is None  # fresh only while now < expires
    assert (len(cache), cache.bytes) == (0, 0)
    assert counters(cache) == (1, 1, 0, 1)
    assert cache.get(b"a", 5.0) is None  # gone: a plain miss now
    assert counters(cache) == (1, 2, 0, 1)


def test_already_expired_is_not_stored_and_drops_the_old(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, 10_000)
    cache.put(b"a", b"1", 50.0, 0.0)
    cache.put(b"a", b"2", 10.0, 10.0)
    assert len(cache) == 0 and cache.get(b"a", 11.0) is None


def test_byte_budget_eviction(impl) -> None:  # type: ignore[no-untyped-def]
    budget = 3 * size(b"k0", b"x" * 100)
    cache = impl.LRU(100, budget)
    for i in range(3):
        cache.put(b"k%d" % i, b"x" * 100, 100.0, 0.0)
    assert (len(cache), cache.bytes) == (3, budget)
    cache.put(b"k3", b"x" * 150, 100.0, 0.0)  # 50 bytes over: k0 and k1 must go
    assert [cache.get(b"k%d" % i, 0.0) is not None for i in range(4)] == [False, False, True, True]
    assert cache.evictions == 2 and cache.bytes <= budget


def test_evicting_an_expired_entry_counts_as_expired(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(1, 10_000)
    cache.put(b"a", b"1", 5.0, 0.0)
    cache.put(b"b", b"2", 50.0, 6.0)
    cache.put(b"c", b"3", 50.0, 6.0)
    assert (cache.expired, cache.evictions) == (1, 1)


def test_oversized_value_not_stored(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, 1000)
    cache.put(b"small", b"1", 100.0, 0.0)
    cache.put(b"big", b"x" * 1000, 100.0, 0.0)
    assert cache.get(b"big", 0.0) is None
    assert cache.get(b"small", 0.0) == b"1"  # nothing evicted for it
    assert cache.evictions == 0
    fits = b"x" * (1000 - O - len(b"edge"))
    cache.put(b"edge", fits, 100.0, 0.0)  # exactly max_bytes: stored, alone
    assert cache.get(b"edge", 0.0) == fits and cache.bytes == 1000 and len(cache) == 1
    cache.put(b"small", b"x" * 2000, 100.0, 0.0)  # oversized replacement: the old entry goes too
    assert cache.get(b"small", 0.0) is None


def test_the_key_counts_towards_the_budget(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, O + 100)
    cache.put(b"k" * 101, b"", 100.0, 0.0)
    assert len(cache) == 0


def test_zero_budgets_store_nothing(impl) -> None:  # type: ignore[no-untyped-def]
    for entries, nbytes in ((0, 10_000), (10, 0)):
        cache = impl.LRU(entries, nbytes)
        cache.put(b"a", b"1", 100.0, 0.0)
        assert len(cache) == 0
    with pytest.raises(ValueError):
        impl.LRU(-1, 10)
    with pytest.raises(ValueError):
        impl.LRU(1, -10)


def test_drop_and_clear(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, 10_000)
    cache.put(b"a", b"1", 100.0, 0.0)
    cache.put(b"b", b"2", 100.0, 0.0)
    assert cache.drop(b"a") is True
    assert cache.drop(b"a") is False
    assert (len(cache), cache.bytes) == (1, size(b"b", b"2"))
    cache.get(b"b", 0.0)
    cache.clear()
    assert (len(cache), cache.bytes) == (0, 0)
    assert cache.get(b"b", 0.0) is None
    assert counters(cache) == (1, 1, 0, 0)  # clear keeps the counters
    cache.put(b"c", b"3", 100.0, 0.0)  # usable after clear
    assert cache.get(b"c", 0.0) == b"3"


def test_tags(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, 10_000)
    cache.put(b"d1", b"1", 100.0, 0.0, tag="docs")
    cache.put(b"w1", b"2", 100.0, 0.0, tag="web")
    cache.put(b"d2", b"3", 100.0, 0.0, "docs")
    cache.put(b"u", b"4", 100.0, 0.0)
    assert cache.drop_tag("nope") == 0
    assert cache.drop_tag("".join(["do", "cs"])) == 2  # compared by equality, not identity
    assert [cache.get(k, 0.0) for k in (b"d1", b"w1", b"d2", b"u")] == [None, b"2", None, b"4"]
    assert (len(cache), cache.bytes) == (2, size(b"w1", b"2") + size(b"u", b"4"))
    cache.put(b"w1", b"5", 100.0, 0.0, tag="docs")  # a replacement takes the new tag
    assert cache.drop_tag("web") == 0
    assert cache.drop_tag(None) == 1  # the untagged
    assert cache.drop_tag("docs") == 1 and len(cache) == 0
    assert counters(cache)[2:] == (0, 0)  # drops are not evictions


def test_order_survives_drops(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(3, 10_000)
    for key, tag in ((b"a", "x"), (b"b", "y"), (b"c", "x")):
        cache.put(key, key, 100.0, 0.0, tag)
    cache.drop_tag("x")
    cache.put(b"d", b"d", 100.0, 0.0)
    cache.put(b"e", b"e", 100.0, 0.0)
    cache.put(b"f", b"f", 100.0, 0.0)  # b is the oldest left
    assert cache.get(b"b", 0.0) is None and len(cache) == 3


def test_types(impl) -> None:  # type: ignore[no-untyped-def]
    cache = impl.LRU(10, 10_000)
    for bad in ("a", bytearray(b"a"), None):
        with pytest.raises(TypeError):
            cache.put(bad, b"1", 100.0, 0.0)
        with pytest.raises(TypeError):
            cache.get(bad, 0.0)
        with pytest.raises(TypeError):
            cache.drop(bad)
        with pytest.raises(TypeError):
            cache.put(b"a", bad, 100.0, 0.0)
    cache.put(b"a", b"1", 100, 0)  # int times are fine
    assert cache.get(b"a", 99) == b"1"


def test_entries_freed_without_the_cycle_collector(impl) -> None:  # type: ignore[no-untyped-def]
    value = b"a value that is not interned" * 3
    before = sys.getrefcount(value)
    cache = impl.LRU(10, 10_000)
    for i in range(5):
        cache.put(b"k%d" % i, value, 100.0, 0.0)
    cache.drop(b"k0")
    cache.get(b"k1", 0.0)
    assert sys.getrefcount(value) == before + 4
    del cache  # the ring is cut in dealloc: reference counting alone frees the entries
    assert sys.getrefcount(value) == before


# -- the two caches agree --------------------------------------------------------

_keys = st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"ff" * 10])
_tags = st.sampled_from([None, "x", "y"])
# Times are small half-integers so that "now == expires" (stale) comes up often.
_op = st.one_of(
    st.tuples(st.just("get"), _keys, st.integers(0, 12)),
    st.tuples(st.just("put"), _keys, st.integers(0, 300), st.integers(0, 12), st.integers(-2, 8), _tags),
    st.tuples(st.just("drop"), _keys),
    st.tuples(st.just("tag"), _tags),
    st.tuples(st.just("clear")),
)


def _run(module, max_entries: int, max_bytes: int, ops):  # type: ignore[no-untyped-def]
    cache = module.LRU(max_entries, max_bytes)
    out = []
    for op in ops:
        if op[0] == "get":
            out.append(cache.get(op[1], op[2] / 2))
        elif op[0] == "put":
            _, key, length, now, ttl, tag = op
            out.append(cache.put(key, key[:1] * length, (now + ttl) / 2, now / 2, tag))
        elif op[0] == "drop":
            out.append(cache.drop(op[1]))
        elif op[0] == "tag":
            out.append(cache.drop_tag(op[1]))
        else:
            out.append(cache.clear())
        out.append((len(cache), cache.bytes, counters(cache)))
        assert len(cache) <= max_entries and cache.bytes <= max_bytes
    return out


@pytest.mark.skipif(_lru_c is None, reason="compiled lru not built")
@settings(max_examples=400, deadline=None)
@given(st.integers(0, 5), st.integers(0, 4 * O + 600), st.lists(_op, max_size=60))
def test_caches_agree(max_entries: int, max_bytes: int, ops) -> None:  # type: ignore[no-untyped-def]
    assert _run(_lru_c, max_entries, max_bytes, ops) == _run(_lru_py, max_entries, max_bytes, ops)


# -- the key builder --------------------------------------------------------------

ALICE = ("api-key", "alice", frozenset({"reader"}), frozenset())


def test_key_order_and_spacing_are_canonical(impl) -> None:  # type: ignore[no-untyped-def]
    one = impl.cache_key(ALICE, "tools/call", "docs__search", b'{"a":1,"b":2}')
    assert one == impl.cache_key(ALICE, "tools/call", "docs__search", b' { "b" : 2 ,\n"a":1 } ')
    assert one == impl.cache_key(ALICE, "tools/call", "docs__search", msgspec.Raw(b'{"b":2,"a":1}'))
    assert one == impl.cache_key(ALICE, "tools/call", "docs__search", memoryview(b'{"b":2,"a":1}'))
    assert one != impl.cache_key(ALICE, "tools/call", "docs__search", b'{"a":2,"b":1}')


def test_nested_objects(impl) -> None:  # type: ignore[no-untyped-def]
    a = impl.cache_key(None, "tools/call", "t", b'{"q":{"z":[1,{"y":1,"x":2}],"a":null},"p":"s"}')
    b = impl.cache_key(None, "tools/call", "t", b'{"p":"s","q":{"a":null,"z":[1,{"x":2,"y":1}]}}')
    assert a == b == b'[null,"tools/call","t",{"p":"s","q":{"a":null,"z":[1,{"x":2,"y":1}]}}]'
    # array order is meaning, not spelling
    assert impl.cache_key(None, "m", "t", b"[1,2]") != impl.cache_key(None, "m", "t", b"[2,1]")


def test_absent_empty_and_null(impl) -> None:  # type: ignore[no-untyped-def]
    absent = impl.cache_key(ALICE, "tools/call", "t", None)
    assert absent == impl.cache_key(ALICE, "tools/call", "t", b"{}") == impl.cache_key(ALICE, "tools/call", "t", b" {} ")
    assert impl.cache_key(ALICE, "tools/call", "t", b"null") not in (absent, None)


def test_numbers_keep_their_value(impl) -> None:  # type: ignore[no-untyped-def]
    def key(args: bytes) -> bytes | None:
        return impl.cache_key(None, "tools/call", "t", args)

    assert len({key(b'{"n":1}'), key(b'{"n":1.0}'), key(b'{"n":1.00}'), key(b'{"n":1e0}'), key(b'{"n":true}')}) == 5
    assert key(b'{"n":0.1}') != key(b'{"n":0.10000000000000000001}')  # the same double, different numbers
    assert key(b'{"n":18446744073709551616}') != key(b'{"n":18446744073709551617}')
    assert key(b'{"n":1e400}') is not None  # out of a double's range: its text is kept
    assert key(b'{"s":"\\u0061"}') == key(b'{"s":"a"}')  # strings compare decoded


@pytest.mark.parametrize(
    "args",
    [
        b"{",
        b"",
        b'{"a":1,}',
        b'{"a":1} x',
        b'{"a":"\xff"}',
        b'{"a":"\\ud800"}',
        b"[" * 10_000 + b"]" * 10_000,
        b"1" * 5000,
        b'{"q":1,"q":2}',
        b'{"q":1,"q":1}',
        b'{"a":{"q":1,"r":[{"x":1,"x":2}]}}',
        b'{"a\\"":1,"a\\"":2}',
    ],
)
def test_not_cacheable(impl, args: bytes) -> None:  # type: ignore[no-untyped-def]
    assert impl.cache_key(ALICE, "tools/call", "t", args) is None


def test_colons_and_quotes_in_strings_are_not_members(impl) -> None:  # type: ignore[no-untyped-def]
    args = b'{"a:b":"c:d","e\\\\":"\\":","f":["::",{"g\\"h:":1}]}'
    key = impl.cache_key(ALICE, "tools/call", "t", args)
    assert key is not None and key.endswith(b',{"a:b":"c:d","e\\\\":"\\":","f":["::",{"g\\"h:":1}]}]')


def test_scopes_never_meet(impl) -> None:  # type: ignore[no-untyped-def]
    bob = ("api-key", "bob", frozenset({"reader"}), frozenset())
    keys = {
        impl.cache_key(scope, "tools/call", "t", b"{}")
        for scope in (None, "null", ALICE, bob, "alice", ("api-key", "alice", frozenset(), frozenset()))
    }
    assert len(keys) == 6
    # sets are sorted: the same roles in any order are one scope
    ab = impl.cache_key(("i", "s", frozenset({"a", "b", "c"}), frozenset()), "m", "t", None)
    assert ab == impl.cache_key(("i", "s", frozenset({"c", "b", "a"}), frozenset()), "m", "t", None)


def test_separators_cannot_collide(impl) -> None:  # type: ignore[no-untyped-def]
    crafted = [
        ("a", "tools/call", "b,c", b"{}"),
        ("a,b", "tools/call", "c", b"{}"),
        ('a","tools/call","b', "tools/call", "b", b"{}"),
        ("a", 'tools/call","b', "b", b"{}"),
        ("a", "tools/call", 'b",{}]', None),
        ("a", "tools/call", "b", b'{"x":"]"}'),
        ("a", "tools/call", 'b",{"x":"', b'{"]":1}'),
    ]
    keys = [impl.cache_key(*c) for c in crafted]
    assert None not in keys and len(set(keys)) == len(crafted)


def test_key_builder_types(impl) -> None:  # type: ignore[no-untyped-def]
    for bad in ("{}", 5, [1]):
        with pytest.raises(TypeError):
            impl.cache_key(None, "m", "t", bad)
    with pytest.raises(TypeError):
        impl.cache_key(None, None, "t", None)
    with pytest.raises(TypeError):
        impl.cache_key(None, "m", None, None)


_text = st.text(alphabet=st.sampled_from('ab",:[]{}\\\u00e9\x00 '), max_size=6)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=12,
)
_scope = st.none() | _text | st.tuples(_text, _text, st.frozensets(_text, max_size=2), st.frozensets(_text, max_size=2))


def _shuffled(value, rnd) -> str:  # type: ignore[no-untyped-def]
    """``value`` as JSON with every object's keys in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return "{" + ",".join(json.dumps(k) + ":" + _shuffled(v, rnd) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_shuffled(v, rnd) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_scope, _text, _text, _json), min_size=2, max_size=6), st.randoms())
def test_different_calls_never_meet(calls, rnd) -> None:  # type: ignore[no-untyped-def]
    for module in (m.values[0] for m in IMPLS):
        keys = {}
        for scope, method, name, args in calls:
            identity = (scope, method, name, json.dumps(args, sort_keys=True))
            key = module.cache_key(scope, method, name, _shuffled(args, rnd).encode())
            assert key is not None
            assert keys.setdefault(key, identity) == identity  # one key, one call
        assert len(keys) == len({(s, m, n, json.dumps(a, sort_keys=True)) for s, m, n, a in calls})


_raw_json = st.one_of(
    st.builds(lambda v, r: _shuffled(v, r).encode(), _json, st.randoms()),
    # duplicate keys, escapes and broken text
    st.builds(lambda k, a, b: b'{"%s":%s,"%s":%s}' % (k, a, k, b), st.sampled_from([b"a", b'a\\"', b"a:", b"\\\\"]),
              st.sampled_from([b"1", b'"x"', b"[]"]), st.sampled_from([b"2", b'":"', b"{}"])),
    st.binary(max_size=20),
    st.text(alphabet=st.sampled_from('{}[]":,\\ab1 '), max_size=20).map(str.encode),
)


@pytest.mark.skipif(_lru_c is None, reason="compiled lru not built")
@settings(max_examples=500, deadline=None)
@given(_scope, _text, _raw_json)
def test_key_builders_agree(scope, name: str, args: bytes) -> None:  # type: ignore[no-untyped-def]
    got = _lru_c.cache_key(scope, "tools/call", name, args)
    assert got == _lru_py.cache_key(scope, "tools/call", name, args)
    if got is not None:  # a cacheable call has no duplicate keys: Python's json agrees on its value
        pairs: list[list[str]] = []
        decoded = json.loads(args, object_pairs_hook=lambda p: pairs.append([k for k, _ in p]) or dict(p))
        assert all(len(set(keys)) == len(keys) for keys in pairs)
        assert json.loads(got)[3] == decoded
