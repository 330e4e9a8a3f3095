"""The observer's core (gateway._fast.observe): both implementations, their agreement, and that
the compiled one loaded. The observer as the gateway runs it is tested end to end in
test_metrics.py, test_audit.py and test_observability.py."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway._fast
from gateway._fast import _observe_py
from gateway.errors import BackendTimeout, CircuitOpen, Forbidden, RateLimited
from gateway.ops.metrics import Metrics
from gateway.ops.observe import outcome_of
from gateway.policy.admission import Noted
from gateway.protocol.jsonrpc import UNSET, Message, Raw
from tests.support import ManualClock, compiled_loaded, selected_without_extensions

try:
    from gateway._fast import observe as _observe_c
except ImportError:  # reported by test_compiled_observe_loaded
    _observe_c = None

# The compiled core counts in the compiled counters, which Metrics uses only when the extensions
# are on (GATEWAY_NO_EXTENSIONS=1 gives it the twin's, and the twin's core).
_PAIRED = _observe_c is not None and gateway._fast.USING_EXTENSIONS
IMPLS = [pytest.param(_observe_py, id="py")]
if _PAIRED:
    IMPLS.insert(0, pytest.param(_observe_c, id="c"))


class _Backend:
    def __init__(self, name: str) -> None:
        self.name = name


class _Rig:
    """One core with real metrics, and a record of every hook it called."""

    def __init__(self, impl: Any, *, metrics: bool = True, finish: bool = True) -> None:
        self.metrics = Metrics() if metrics else None
        self.clock = ManualClock()
        self.finished: list[tuple[Any, ...]] = []
        self.limited: list[BaseException] = []
        self.failures = 0
        self.core = impl.ObserverCore(
            self.metrics, Noted, UNSET, outcome_of, self._finish if finish else None, self.limited.append,
            self._failed, self.clock,
        )

    def _finish(self, *args: Any) -> None:
        self.finished.append(args)

    def _failed(self) -> None:
        assert sys.exc_info()[0] is not None, "failed() is called inside the handler"
        self.failures += 1

    def counts(self) -> dict[tuple[str, ...], tuple[int, list[int], float]]:
        assert self.metrics is not None
        return {
            key: (series.count, list(series.histogram.counts), round(series.histogram.sum, 9))
            for key, series in self.metrics.series.items()
        }


@pytest.fixture(params=IMPLS)
def impl(request):  # type: ignore[no-untyped-def]
    return request.param


def test_compiled_observe_loaded() -> None:
    compiled_loaded("observe", "ObserverCore", "Series", "Histogram", "Count")


def test_selector_honours_no_extensions() -> None:
    assert selected_without_extensions("ObserverCore", "Histogram") == ["False"] + ["gateway._fast._observe_py"] * 2


def test_an_answered_call_is_counted_once_with_its_duration(impl) -> None:  # type: ignore[no-untyped-def]
    rig = _Rig(impl)
    backend = _Backend("floor")
    route = (backend, "echo")
    params = {"arguments": Raw(b"{}")}
    verdict = rig.core.admit(None, "ctx", "tools/call", "floor__echo", route, params)
    assert type(verdict) is Noted and verdict.route is None and verdict.error is None and verdict.result is None
    assert verdict.note == (1000.0, params, route)
    assert rig.metrics.in_flight == 1
    rig.clock.now += 0.003  # 3 ms: the 0.005 bucket (index 3 of the defaults)
    answer = Message(id=1, result=Raw(b"{}"))
    rig.core.outcome(None, "ctx", "tools/call", "floor__echo", route, answer, None, verdict.note)
    assert rig.metrics.in_flight == 0
    counts = rig.counts()
    assert list(counts) == [("tools/call", "floor", "ok", "floor__echo")]
    count, buckets, total = counts[("tools/call", "floor", "ok", "floor__echo")]
    assert count == 1 and buckets[3] == 1 and sum(buckets) == 1 and total == pytest.approx(0.003)
    assert rig.finished == [(None, "ctx", "tools/call", "floor__echo", "floor", answer, None, "ok",
                             pytest.approx(0.003), params)]
    assert rig.failures == 0


def test_a_duration_on_a_bound_falls_in_that_bucket(impl) -> None:  # type: ignore[no-untyped-def]
    rig = _Rig(impl)
    route = (_Backend("b"), "t")
    for seconds in (0.0005, 0.001, 30.0, 31.0):  # on the first, second and last bounds; past them: +Inf
        rig.clock.now = 0.0  # so that the difference is the bound exactly
        note = rig.core.admit(None, None, "prompts/get", "p", route, {}).note
        rig.clock.now += seconds
        rig.core.outcome(None, None, "prompts/get", "p", route, Message(id=1, result=Raw(b"1")), None, note)
    _, buckets, _ = rig.counts()[("prompts/get", "b", "ok", "")]  # tool is "" for every other method
    assert buckets[0] == 1 and buckets[1] == 1 and buckets[-2] == 1 and buckets[-1] == 1


def test_refused_before_admission_counts_no_flight_and_no_time(impl) -> None:  # type: ignore[no-untyped-def]
    rig = _Rig(impl)
    error = Forbidden("disabled")
    rig.core.outcome(None, None, "tools/call", "x__y", None, None, error, None)
    assert rig.metrics.in_flight == 0
    assert rig.counts() == {("tools/call", "", "refused", "x__y"): (1, [1] + [0] * 15, 0.0)}
    assert rig.finished[0][4:] == ("", None, error, "refused", 0.0, None)


def test_a_rate_limited_call_is_reported_to_the_limiter_count(impl) -> None:  # type: ignore[no-untyped-def]
    rig = _Rig(impl)
    route = (_Backend("b"), "t")
    note = rig.core.admit(None, None, "tools/call", "b__t", route, {}).note
    error = RateLimited("slow down", data={"limit": "per-user"})
    rig.core.outcome(None, None, "tools/call", "b__t", None, None, error, note)  # refused by admission: route None
    assert rig.limited == [error]
    assert ("tools/call", "b", "limited", "b__t") in rig.counts()  # the admitted route names the backend


def test_a_failure_inside_is_handled_and_reported(impl) -> None:  # type: ignore[no-untyped-def]
    rig = _Rig(impl)

    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    rig.metrics.new_series = broken  # type: ignore[method-assign]
    route = (_Backend("b"), "t")
    note = rig.core.admit(None, None, "tools/call", "b__t", route, {}).note
    rig.core.outcome(None, None, "tools/call", "b__t", route, Message(id=1, result=Raw(b"1")), None, note)
    assert rig.failures == 1 and rig.finished == []


def test_without_metrics_only_the_finish_runs(impl) -> None:  # type: ignore[no-untyped-def]
    rig = _Rig(impl, metrics=False)
    route = (_Backend("b"), "t")
    note = rig.core.admit(None, None, "resources/read", "u://x", route, {}).note
    rig.clock.now += 0.25
    rig.core.outcome(None, None, "resources/read", "u://x", route, None, BackendTimeout("late"), note)
    assert rig.finished[0][4:8] == ("b", None, rig.finished[0][6], "timeout")
    assert rig.finished[0][8] == pytest.approx(0.25)


def test_the_real_clock_is_monotonic_seconds(impl) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    core = impl.ObserverCore(metrics, Noted, UNSET, outcome_of, None, lambda error: None, lambda: None, None)
    route = (_Backend("b"), "t")
    note = core.admit(None, None, "tools/call", "b__t", route, {}).note
    core.outcome(None, None, "tools/call", "b__t", route, Message(id=1, result=Raw(b"1")), None, note)
    histogram = metrics.series[("tools/call", "b", "ok", "b__t")].histogram
    assert 0.0 <= histogram.sum < 5.0  # the time between two statements, not an epoch or a garbage value


_ERRORS = [None, RateLimited("r", data={"limit": "l"}), BackendTimeout("t"), CircuitOpen("c"), Forbidden("f"),
           RuntimeError("bug")]
_EVENT = st.tuples(
    st.sampled_from(["tools/call", "prompts/get", "resources/read"]),
    st.sampled_from(["a__one", "a__two", "b__one"]),
    st.sampled_from([0, 1, None]),  # the backend index; None: refused before admission (no note)
    st.booleans(),  # routed: the route reaches outcome (else None: answered or refused in admission)
    st.sampled_from(["result", "error", "none"]),
    st.integers(0, len(_ERRORS) - 1),
    st.floats(0.0, 40.0, allow_nan=False),
)


def _run(impl: Any, events: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    rig = _Rig(impl)
    backends = [_Backend("a"), _Backend("b")]
    for method, name, which, routed, kind, error_index, seconds in events:
        route = (backends[which], name.split("__")[-1]) if which is not None else None
        note = rig.core.admit(None, None, method, name, route, {"k": Raw(b"1")}).note if route is not None else None
        rig.clock.now += seconds
        answer = {"result": Message(id=1, result=Raw(b"1")), "error": Message(id=1, error=Raw(b"{}")), "none": None}[kind]
        rig.core.outcome(None, None, method, name, route if routed else None, answer, _ERRORS[error_index], note)
    finished = [(args[2], args[3], args[4], args[7], round(args[8], 9)) for args in rig.finished]
    return rig.counts(), rig.metrics.in_flight, finished, [type(e).__name__ for e in rig.limited], rig.failures


@pytest.mark.skipif(not _PAIRED, reason="compiled observe not built, or the extensions are off")
@settings(max_examples=200, deadline=None)
@given(st.lists(_EVENT, max_size=30))
def test_compiled_and_twin_agree(events: list[tuple[Any, ...]]) -> None:
    assert _run(_observe_c, events) == _run(_observe_py, events)


def test_one_route_under_two_names_or_methods_counts_each_apart(impl) -> None:  # type: ignore[no-untyped-def]
    # The compiled core remembers a route's ok series: a second name (an alias) or method on the
    # same route must not be counted under the first one's labels.
    rig = _Rig(impl)
    route = (_Backend("b"), "t")
    for method, name in [("tools/call", "b__t"), ("tools/call", "alias"), ("prompts/get", "b__t"), ("tools/call", "b__t")]:
        note = rig.core.admit(None, None, method, name, route, {}).note
        rig.core.outcome(None, None, method, name, route, Message(id=1, result=Raw(b"1")), None, note)
    assert {key: value[0] for key, value in rig.counts().items()} == {
        ("tools/call", "b", "ok", "b__t"): 2, ("tools/call", "b", "ok", "alias"): 1, ("prompts/get", "b", "ok", ""): 1,
    }
    assert [args[4] for args in rig.finished] == ["b"] * 4


@pytest.mark.skipif(_observe_c is None, reason="compiled observe not built")
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0001, 100.0, allow_nan=False), min_size=1, max_size=8, unique=True).map(sorted),
    st.lists(st.floats(0.0, 200.0, allow_nan=False), max_size=40),
)
def test_compiled_and_twin_histograms_agree(bounds: list[float], durations: list[float]) -> None:
    le = tuple(str(b) for b in bounds) + ("+Inf",)
    histograms = [_observe_c.Histogram(tuple(bounds), le), _observe_py.Histogram(tuple(bounds), le)]
    for histogram in histograms:
        for seconds in [*durations, *bounds]:  # the bounds themselves: each falls in its own bucket
            histogram.observe(seconds)
    compiled, twin = histograms
    assert compiled.counts == twin.counts and compiled.cumulative() == twin.cumulative()
    assert compiled.sum == twin.sum and compiled.bounds == twin.bounds and compiled.le == twin.le


def test_a_histogram_needs_a_label_per_bucket(impl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="one label per bound"):
        impl.Histogram((0.1, 1.0), ("0.1", "+Inf"))
    histogram = impl.Histogram((0.1, 1.0), ("0.1", "1.0", "+Inf"))
    histogram.observe(0.1)
    histogram.observe(5.0)
    assert histogram.counts == [1, 0, 1] and histogram.cumulative() == [("0.1", 1), ("1.0", 1), ("+Inf", 2)]
