"""The token-bucket table: both implementations, their agreement, and that the compiled one loaded."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast import _ratelimit_py
from tests.support import compiled_loaded, selected_without_extensions

try:
    from gateway._fast import ratelimit as _ratelimit_c
except ImportError:  # reported by test_compiled_ratelimit_loaded
    _ratelimit_c = None

IMPLS = [pytest.param(_ratelimit_py, id="py")]
if _ratelimit_c is not None:
    IMPLS.insert(0, pytest.param(_ratelimit_c, id="c"))

INF = float("inf")
PAD = _ratelimit_py.WAIT_PAD


@pytest.fixture(params=IMPLS)
def impl(request):  # type: ignore[no-untyped-def]
    return request.param


def test_compiled_ratelimit_loaded() -> None:
    compiled = compiled_loaded("ratelimit", "TokenBuckets")
    assert compiled.WAIT_PAD == _ratelimit_py.WAIT_PAD


def test_selector_honours_no_extensions() -> None:
    assert selected_without_extensions("TokenBuckets") == ["False", "gateway._fast._ratelimit_py"]


def test_burst_then_refusal_with_the_right_wait(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets()
    key = ("alice", "search")
    assert [tb.take(key, 1, 0.0, 2.0, 4.0) for _ in range(4)] == [0.0] * 4
    wait = tb.take(key, 1, 0.0, 2.0, 4.0)
    assert wait == pytest.approx(0.5 + PAD, abs=1e-12)
    assert tb.peek(key, 0.0, 2.0, 4.0) == 0.0  # a refused take takes nothing
    assert tb.take(key, 1, wait, 2.0, 4.0) == 0.0  # retrying after the wait passes
    assert tb.take(key, 1.5, wait, 2.0, 4.0) == pytest.approx((1.5 - 2 * PAD) / 2 + PAD, abs=1e-12)
    assert len(tb) == 1


def test_refill_at_the_rate_capped_at_burst(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets()
    assert tb.peek("k", 5.0, 3.0, 10.0) == 10.0  # no bucket: full, and none is made
    assert len(tb) == 0
    assert tb.take("k", 10, 100.0, 3.0, 10.0) == 0.0
    assert tb.peek("k", 101.0, 3.0, 10.0) == pytest.approx(3.0)
    assert tb.peek("k", 102.5, 3.0, 10.0) == pytest.approx(7.5)
    assert tb.peek("k", 200.0, 3.0, 10.0) == 10.0
    assert tb.take("k", 4, 102.0, 3.0, 10.0) == 0.0  # 6 there, 2 left
    assert tb.peek("k", 102.0, 3.0, 10.0) == pytest.approx(2.0)
    # a clock that goes back refills nothing and does not move the bucket's time back
    assert tb.peek("k", 50.0, 3.0, 10.0) == pytest.approx(2.0)
    assert tb.take("k", 1, 50.0, 3.0, 10.0) == 0.0
    assert tb.peek("k", 103.0, 3.0, 10.0) == pytest.approx(4.0)


def test_cost_above_burst_never_passes(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets()
    assert tb.take("k", 5.0, 0.0, 1.0, 4.0) == INF
    assert tb.peek("k", 0.0, 1.0, 4.0) == 4.0  # nothing taken
    assert tb.take("k", 4.0, 0.0, 1.0, 4.0) == 0.0  # exactly burst passes
    # a rate of zero never refills: a drained bucket waits forever
    assert tb.take("z", 4.0, 0.0, 0.0, 4.0) == 0.0
    assert tb.take("z", 1.0, 299.0, 0.0, 4.0) == INF
    assert tb.take("z", 1.0, 1e6, 0.0, 4.0) == 0.0  # ... until `idle` (300 s) has dropped it
    assert tb.take("free", 0.0, 0.0, 0.0, 0.0) == 0.0  # cost 0 always passes


def test_debit_goes_negative_and_refunds_cap_at_burst(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets()
    key = ("bytes", "alice")
    assert tb.take(key, 100, 0.0, 1000.0, 1000.0) == 0.0  # admitted on an estimate
    assert tb.debit(key, 2400, 0.0, 1000.0, 1000.0) is None  # the response was big
    assert tb.peek(key, 0.0, 1000.0, 1000.0) == pytest.approx(-1500.0)
    assert tb.take(key, 100, 0.0, 1000.0, 1000.0) == pytest.approx(1.6 + PAD)
    assert tb.take(key, 100, 1.6 + PAD, 1000.0, 1000.0) == 0.0
    tb.debit(key, -1e9, 2.0, 1000.0, 1000.0)  # a refund: capped at burst
    assert tb.peek(key, 2.0, 1000.0, 1000.0) == 1000.0
    tb.debit("new", 30, 0.0, 1.0, 10.0)  # debit makes the bucket: full minus cost
    assert tb.peek("new", 0.0, 1.0, 10.0) == -20.0
    assert len(tb) == 2


def test_keys_are_independent(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets()
    a, b = ("alice", "tools/call"), ("bob", "tools/call")
    assert tb.take(a, 2, 0.0, 1.0, 2.0) == 0.0
    assert tb.take(a, 1, 0.0, 1.0, 2.0) > 0.0
    assert tb.take(b, 2, 0.0, 1.0, 2.0) == 0.0
    assert tb.take(("alice", "tools/list"), 1, 0.0, 1.0, 2.0) == 0.0
    assert len(tb) == 3


def test_bounded_under_a_flood_of_new_keys(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets(max_buckets=64, idle=1e9)
    for i in range(5000):
        tb.take(("flood", i), 1, 0.0, 1.0, 10.0)
        assert len(tb) <= 64
    assert len(tb) >= 64 - 64 // 16


def test_a_full_table_drops_the_buckets_closest_to_full(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets(max_buckets=4, idle=1e9)  # 4 // 16 == 0: one slot is freed
    tb.take("heavy", 10, 0.0, 1.0, 10.0)  # full again at t=10
    tb.take("a", 1, 0.0, 1.0, 10.0)  # full again at t=1
    tb.take("b", 2, 0.0, 1.0, 10.0)  # at t=2
    tb.take("c", 1, 0.0, 1.0, 10.0)  # at t=1, a tie with "a": the older goes
    tb.take("new", 1, 0.5, 1.0, 10.0)
    assert len(tb) == 4
    assert tb.peek("heavy", 0.5, 1.0, 10.0) == pytest.approx(0.5)  # still drained
    assert tb.peek("a", 0.5, 1.0, 10.0) == 10.0  # dropped: starts full
    assert tb.peek("c", 0.5, 1.0, 10.0) == pytest.approx(9.5)  # kept


def test_idle_and_full_buckets_are_swept(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets(idle=10.0)  # sweeps at most every 5 s of `now`
    tb.take("stuck", 1, 0.0, 0.0, 1.0)  # rate 0: never full again, kept for `idle`
    tb.take("refills", 1, 0.0, 1.0, 5.0)  # full again at t=1
    tb.take("drained", 100, 0.0, 1.0, 100.0)  # full again at t=100, but idle after 10
    assert len(tb) == 3
    tb.take("other", 1, 4.0, 1.0, 5.0)  # no sweep due yet
    assert len(tb) == 4
    tb.take("other", 1, 6.0, 1.0, 5.0)  # sweep: "refills" is full again, so nothing is lost
    assert len(tb) == 3
    assert tb.peek("refills", 6.0, 1.0, 5.0) == 5.0
    tb.take("other", 1, 11.0, 1.0, 5.0)  # sweep: the other two are idle
    assert len(tb) == 1
    assert tb.peek("stuck", 11.0, 0.0, 1.0) == 1.0  # dropped: starts over full
    tb.clear()
    assert len(tb) == 0


@pytest.mark.parametrize(("rate", "burst", "cost"), [(50.0, 20.0, 1.0), (7.0, 3.0, 1.0), (1000.0, 100.0, 3.0)])
def test_admits_rate_times_time_plus_burst_over_10s(impl, rate: float, burst: float, cost: float) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets()
    step = 0.0005  # a simulated clock, 20 000 tries over 10 s: no sleeping
    admitted = 0
    for i in range(20_001):
        if tb.take(("sim",), cost, i * step, rate, burst) == 0.0:
            admitted += cost
    expected = rate * 10.0 + burst
    assert abs(admitted - expected) <= 0.05 * expected


def test_bad_arguments(impl) -> None:  # type: ignore[no-untyped-def]
    tb = impl.TokenBuckets()
    nan = float("nan")
    for args in [(-1.0, 0.0, 1.0, 1.0), (nan, 0.0, 1.0, 1.0), (INF, 0.0, 1.0, 1.0), (1.0, nan, 1.0, 1.0),
                 (1.0, INF, 1.0, 1.0), (1.0, 0.0, -1.0, 1.0), (1.0, 0.0, 1.0, -1.0), (1.0, 0.0, nan, 1.0)]:
        with pytest.raises(ValueError):
            tb.take("k", *args)
    with pytest.raises(ValueError):
        tb.debit("k", nan, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        tb.peek("k", nan, 1.0, 1.0)
    with pytest.raises(TypeError):
        tb.take(["unhashable"], 1.0, 0.0, 1.0, 1.0)
    assert len(tb) == 0
    assert tb.take("k", 1.0, 0.0, INF, INF) == 0.0  # unlimited is allowed
    for bad in [(0, 1.0), (10, 0.0), (10, -1.0)]:
        with pytest.raises(ValueError):
            impl.TokenBuckets(*bad)
    assert (impl.TokenBuckets(7, 2.5).max_buckets, impl.TokenBuckets(7, 2.5).idle) == (7, 2.5)


# -- the two implementations agree -----------------------------------------------

_costs = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]), st.floats(-2.0, 20.0))
_rates = st.sampled_from([0.0, 0.5, 1.0, 4.0, 1000.0, INF])
_bursts = st.sampled_from([0.0, 1.0, 2.5, 5.0, 100.0, INF])
_ops = st.lists(
    st.tuples(
        st.sampled_from(["take", "take", "take", "debit", "peek", "clear"]),
        st.integers(0, 7),  # key
        _costs,
        st.one_of(st.just(0.0), st.floats(-1.0, 6.0)),  # dt
        _rates,
        _bursts,
    ),
    max_size=60,
)


def _run(module, max_buckets: int, idle: float, start: float, ops):  # type: ignore[no-untyped-def]
    tb = module.TokenBuckets(max_buckets, idle)
    now = start
    out = []
    for op, k, cost, dt, rate, burst in ops:
        now += dt
        key = ("user", k % 3, k)
        try:
            if op == "take":
                out.append(tb.take(key, abs(cost), now, rate, burst))
            elif op == "debit":
                out.append(tb.debit(key, cost, now, rate, burst))
            elif op == "peek":
                out.append(tb.peek(key, now, rate, burst))
            else:
                out.append(tb.clear())
        except ValueError:
            out.append("ValueError")
        out.append(len(tb))
    return out


def _same(a, b) -> bool:  # type: ignore[no-untyped-def]
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


@pytest.mark.skipif(_ratelimit_c is None, reason="compiled ratelimit not built")
@settings(max_examples=400, deadline=None)
@given(st.integers(1, 6), st.sampled_from([0.5, 3.0, 300.0, INF]), st.sampled_from([0.0, 12345.678]), _ops)
def test_implementations_agree(max_buckets: int, idle: float, start: float, ops) -> None:  # type: ignore[no-untyped-def]
    got_c = _run(_ratelimit_c, max_buckets, idle, start, ops)
    got_py = _run(_ratelimit_py, max_buckets, idle, start, ops)
    assert len(got_c) == len(got_py)
    assert all(_same(x, y) for x, y in zip(got_c, got_py)), (got_c, got_py)
