"""Unit tests for ``gateway.ops.metrics``: the exposition, bounded labels, sources, registries.

Every test scrapes a ``Metrics`` the way Prometheus would: ``render()`` parsed back with
``prometheus_client.parser`` (and, when it is installed, linted with ``promtool check metrics``),
so what is asserted is the text a scraper reads, not the collector's internals. No sleeps and
no clocks: durations are passed to ``request()`` as plain numbers.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.ops.metrics import (
    BUCKETS,
    CONTENT_TYPE,
    OTHER,
    PREFIX,
    BackendSample,
    Metrics,
)

Series = dict[frozenset, float]
"""One sample name's series: ``{frozenset(label items): value}``."""


# -- helpers ---------------------------------------------------------------------------------


def labels(**kw: str) -> frozenset:
    """A series' label set, as ``scrape`` keys it."""
    return frozenset(kw.items())


def families(metrics: Metrics) -> dict[str, object]:
    """One scrape, parsed: ``{family name: family}`` (counters named without ``_total``)."""
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def scrape(metrics: Metrics) -> dict[str, Series]:
    """One scrape, parsed: ``{sample name: {label set: value}}``; no series may appear twice."""
    out: dict[str, Series] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            series = out.setdefault(sample.name, {})
            key = frozenset(sample.labels.items())
            assert key not in series, f"duplicate series {sample.name}{dict(sample.labels)}"
            series[key] = sample.value
    return out


def value(metrics: Metrics, name: str, **kw: str) -> float:
    """The one value of ``name{kw}`` in a fresh scrape (KeyError when absent)."""
    return scrape(metrics)[name][labels(**kw)]


def requests(metrics: Metrics) -> Series:
    """``mcp_gateway_requests_total``'s series."""
    return scrape(metrics).get(PREFIX + "requests_total", {})


def buckets_of(metrics: Metrics, backend: str) -> list[tuple[str, float]]:
    """``backend``'s histogram buckets as ``(le, cumulative count)``, in exposition order."""
    out = []
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == PREFIX + "request_duration_seconds_bucket" and sample.labels["backend"] == backend:
                out.append((sample.labels["le"], sample.value))
    return out


def source_errors(metrics: Metrics) -> dict[str, float]:
    """``mcp_gateway_metrics_source_errors_total`` by source."""
    series = scrape(metrics).get(PREFIX + "metrics_source_errors_total", {})
    return {dict(key)["source"]: n for key, n in series.items()}


def metrics_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The warnings ``gateway.metrics`` logged."""
    return [r for r in caplog.records if r.name == "gateway.metrics" and r.levelno == logging.WARNING]


def busy() -> Metrics:
    """A ``Metrics`` with something in every family, a failing source included."""
    m = Metrics(version="1.2.3")
    m.request("tools/call", "web", "ok", "echo", 0.004)
    m.request("tools/call", "web", "error", "echo", 1.5)
    m.request("tools/list", "", "cached", "", 0.0001)
    m.request("initialize", "local", "timeout", "", 40.0)
    m.inc_in_flight()
    m.limiter_refused("per_client")
    m.cache_hit()
    m.cache_miss()
    m.cache_evicted(3)
    m.auth_failed("invalid_token")
    m.audit_dropped(2)
    m.gauge_source("sessions", lambda: 7)
    m.gauge_source("audit_queue_depth", lambda: 0)
    m.counter_source("cache_hits", lambda: 10)
    m.backend_source(lambda: [("web", True, "closed", 0, None), ("local", False, "open", 4, 2)])
    m.backend_source(lambda: 1 / 0, name="broken")
    return m


# -- the exposition is valid -----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_finds_no_problem_in_a_busy_exposition() -> None:
    text = busy().render()
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    # promtool prints one line per lint problem (e.g. 'x counter metrics should have "_total" suffix')
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_promtool_check_is_able_to_fail() -> None:
    """The check above would see a problem: promtool lints a bad exposition loudly."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    bad = b"# HELP x_seconds x\n# TYPE x_seconds counter\nx_seconds 1\n"
    done = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, timeout=60)
    assert done.returncode != 0 and b"_total" in done.stdout + done.stderr


def test_every_family_and_sample_name_has_the_prefix() -> None:
    parsed = families(busy())
    assert len(parsed) >= 15
    for name, family in parsed.items():
        assert name.startswith(PREFIX), name
        assert all(s.name.startswith(PREFIX) for s in family.samples), name


def test_render_is_the_text_format_the_content_type_names() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    text = busy().render()
    assert isinstance(text, bytes) and text.endswith(b"\n")
    assert b"# TYPE mcp_gateway_requests_total counter\n" in text
    assert b"# TYPE mcp_gateway_request_duration_seconds histogram\n" in text


def test_requests_are_counted_by_their_exact_label_set() -> None:
    m = Metrics()
    for _ in range(3):
        m.request("tools/call", "web", "ok", "echo", 0.01)
    m.request("tools/call", "web", "error", "echo", 0.01)
    m.request("tools/call", "local", "ok", "echo", 0.01)
    m.request("tools/list", "", "cached", "", 0.0)
    assert requests(m) == {
        labels(method="tools/call", backend="web", outcome="ok", tool="echo"): 3,
        labels(method="tools/call", backend="web", outcome="error", tool="echo"): 1,
        labels(method="tools/call", backend="local", outcome="ok", tool="echo"): 1,
        labels(method="tools/list", backend="", outcome="cached", tool=""): 1,
    }


def test_a_fresh_metrics_counts_nothing() -> None:
    s = scrape(Metrics())
    assert PREFIX + "requests_total" not in s
    assert PREFIX + "request_duration_seconds_count" not in s
    assert s[PREFIX + "in_flight"] == {labels(): 0}
    for name in ("cache_hits", "cache_misses", "cache_evictions", "audit_dropped"):
        assert s[PREFIX + name + "_total"] == {labels(): 0}, name
    # no source: no gauge (no number is better than a made-up zero)
    assert PREFIX + "sessions" not in s and PREFIX + "audit_queue_depth" not in s


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    m = Metrics()
    durations = [0.0005, 0.0007, 0.001, 0.2, 30.0, 31.0]  # on the first bound, between, on bounds, past the last
    for seconds in durations:
        m.request("tools/call", "web", "ok", "echo", seconds)
    got = buckets_of(m, "web")
    assert [le for le, _ in got] == [*(str(b) for b in BUCKETS), "+Inf"]
    assert [float(le) for le, _ in got] == [*BUCKETS, math.inf]
    counts = dict(got)
    assert counts["0.0005"] == 1  # 0.0005 is exactly on the bound: in that bucket
    assert counts["0.001"] == 3  # 0.0005, 0.0007 and 0.001 (on the bound)
    assert counts["0.1"] == 3
    assert counts["0.25"] == 4
    assert counts["10.0"] == 4
    assert counts["30.0"] == 5  # 30.0 is on the last bound
    assert counts["+Inf"] == 6  # 31.0 only here
    cumulative = [n for _, n in got]
    assert cumulative == sorted(cumulative)
    s = scrape(m)
    assert s[PREFIX + "request_duration_seconds_count"] == {labels(backend="web"): 6}
    assert s[PREFIX + "request_duration_seconds_sum"] == {labels(backend="web"): sum(durations)}


def test_each_backend_has_its_own_histogram() -> None:
    m = Metrics(buckets=(1.0, 2.0))
    m.request("tools/call", "a", "ok", "t", 0.5)
    m.request("tools/call", "a", "ok", "t", 1.5)
    m.request("tools/list", "b", "ok", "", 2.0)
    m.request("tools/list", "", "refused", "", 0.0)
    assert buckets_of(m, "a") == [("1.0", 1), ("2.0", 2), ("+Inf", 2)]
    assert buckets_of(m, "b") == [("1.0", 0), ("2.0", 1), ("+Inf", 1)]
    assert buckets_of(m, "") == [("1.0", 1), ("2.0", 1), ("+Inf", 1)]
    s = scrape(m)
    assert s[PREFIX + "request_duration_seconds_count"] == {
        labels(backend="a"): 2, labels(backend="b"): 1, labels(backend=""): 1,
    }
    assert s[PREFIX + "request_duration_seconds_sum"] == {
        labels(backend="a"): 2.0, labels(backend="b"): 2.0, labels(backend=""): 0.0,
    }


# -- custom buckets ----------------------------------------------------------------------------


def test_custom_buckets_are_the_histograms_bounds() -> None:
    m = Metrics(buckets=iter([1, 2.5]))  # any iterable of numbers
    assert m.buckets == (1.0, 2.5)
    for seconds in (1, 2, 2.5, 3):
        m.request("tools/call", "web", "ok", "echo", seconds)
    assert buckets_of(m, "web") == [("1.0", 1), ("2.5", 3), ("+Inf", 4)]
    assert value(m, PREFIX + "request_duration_seconds_sum", backend="web") == 8.5


@pytest.mark.parametrize(
    "bad",
    [(), (1.0, 1.0), (2.0, 1.0), (0.1, 0.5, 0.3), (0.1, math.inf), (math.inf,), (math.nan,), (0.1, math.nan)],
    ids=["empty", "equal", "decreasing", "decreasing-later", "inf-last", "inf-only", "nan", "nan-later"],
)
def test_buckets_that_are_not_finite_and_increasing_raise(bad: tuple[float, ...]) -> None:
    # +Inf always follows the given bounds: an explicit inf would be a second +Inf bucket
    with pytest.raises(ValueError, match="increasing"):
        Metrics(buckets=bad)


# -- bounded cardinality ---------------------------------------------------------------------


def test_tools_past_max_tools_are_counted_under_other_and_the_total_adds_up() -> None:
    m = Metrics(max_tools=2)
    calls = {"a": 2, "b": 1, "c": 3, "d": 1, "e": 4}  # first seen in this order
    for tool, n in calls.items():
        for _ in range(n):
            m.request("tools/call", "web", "ok", tool, 0.01)
    m.request("tools/call", "web", "ok", "a", 0.01)  # a tool within the bound keeps its label
    got = requests(m)
    assert got == {
        labels(method="tools/call", backend="web", outcome="ok", tool="a"): 3,
        labels(method="tools/call", backend="web", outcome="ok", tool="b"): 1,
        labels(method="tools/call", backend="web", outcome="ok", tool=OTHER): 3 + 1 + 4,  # c, d and e
    }
    assert sum(got.values()) == sum(calls.values()) + 1
    assert value(m, PREFIX + "request_duration_seconds_count", backend="web") == sum(got.values())


def test_max_tools_zero_counts_every_tool_under_other() -> None:
    m = Metrics(max_tools=0)
    m.request("tools/call", "web", "ok", "a", 0.01)
    m.request("tools/call", "web", "ok", "b", 0.01)
    assert requests(m) == {labels(method="tools/call", backend="web", outcome="ok", tool=OTHER): 2}


def test_other_methods_always_have_an_empty_tool_and_use_no_tool_slot() -> None:
    m = Metrics(max_tools=1)
    m.request("resources/read", "web", "ok", "not-a-tool", 0.01)
    m.request("prompts/get", "web", "ok", "neither", 0.01)
    m.request("tools/call", "web", "ok", "echo", 0.01)  # still the first tool: its own label
    assert requests(m) == {
        labels(method="resources/read", backend="web", outcome="ok", tool=""): 1,
        labels(method="prompts/get", backend="web", outcome="ok", tool=""): 1,
        labels(method="tools/call", backend="web", outcome="ok", tool="echo"): 1,
    }


def test_an_unknown_outcome_is_counted_as_other_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.metrics")
    m = Metrics()
    m.request("tools/call", "web", "weird", "echo", 0.01)
    m.request("tools/call", "web", "weird", "echo", 0.01)
    m.request("tools/call", "web", "bizarre", "echo", 0.01)
    m.request("tools/call", "web", "ok", "echo", 0.01)
    assert requests(m) == {
        labels(method="tools/call", backend="web", outcome=OTHER, tool="echo"): 3,
        labels(method="tools/call", backend="web", outcome="ok", tool="echo"): 1,
    }
    logged = metrics_logs(caplog)
    assert len(logged) == 1
    assert "'weird'" in logged[0].getMessage() and OTHER in logged[0].getMessage()


def test_methods_and_backends_past_max_label_values_are_other() -> None:
    m = Metrics(max_label_values=2)
    for method in ("initialize", "tools/list", "ping", "resources/list"):
        m.request(method, "web", "ok", "", 0.01)
    for backend in ("local", "far", "farther"):  # "web" took one backend slot already
        m.request("tools/list", backend, "ok", "", 0.5)
    assert requests(m) == {
        labels(method="initialize", backend="web", outcome="ok", tool=""): 1,
        labels(method="tools/list", backend="web", outcome="ok", tool=""): 1,
        labels(method=OTHER, backend="web", outcome="ok", tool=""): 2,
        labels(method="tools/list", backend="local", outcome="ok", tool=""): 1,
        labels(method="tools/list", backend=OTHER, outcome="ok", tool=""): 2,
    }
    # the histogram's backend label has the same bound
    assert scrape(m)[PREFIX + "request_duration_seconds_count"] == {
        labels(backend="web"): 4, labels(backend="local"): 1, labels(backend=OTHER): 2,
    }
    assert value(m, PREFIX + "request_duration_seconds_sum", backend=OTHER) == 1.0


def test_limits_and_reasons_past_max_label_values_are_other() -> None:
    m = Metrics(max_label_values=2)
    for limit in ("global", "per_client", "per_tool", "global", "per_ip", "per_tool"):
        m.limiter_refused(limit)
    for reason in ("invalid_token", "expired", "no_credential", "wrong_audience", "expired"):
        m.auth_failed(reason)
    s = scrape(m)
    assert s[PREFIX + "limiter_refusals_total"] == {
        labels(limit="global"): 2, labels(limit="per_client"): 1, labels(limit=OTHER): 3,
    }
    assert s[PREFIX + "auth_failures_total"] == {
        labels(reason="invalid_token"): 1, labels(reason="expired"): 2, labels(reason=OTHER): 2,
    }


# -- the plain hot-path counters ------------------------------------------------------------


def test_in_flight_follows_inc_and_dec() -> None:
    m = Metrics()
    assert value(m, PREFIX + "in_flight") == 0
    for _ in range(3):
        m.inc_in_flight()
    assert value(m, PREFIX + "in_flight") == 3
    m.dec_in_flight()
    assert value(m, PREFIX + "in_flight") == 2
    m.dec_in_flight()
    m.dec_in_flight()
    assert value(m, PREFIX + "in_flight") == 0


def test_cache_and_audit_counters_count_what_they_are_told() -> None:
    m = Metrics()
    m.cache_hit()
    m.cache_hit()
    m.cache_miss()
    m.cache_evicted()
    m.cache_evicted(4)
    m.audit_dropped()
    m.audit_dropped(9)
    s = scrape(m)
    assert s[PREFIX + "cache_hits_total"] == {labels(): 2}
    assert s[PREFIX + "cache_misses_total"] == {labels(): 1}
    assert s[PREFIX + "cache_evictions_total"] == {labels(): 5}
    assert s[PREFIX + "audit_dropped_total"] == {labels(): 10}


def test_build_info_has_the_version_label() -> None:
    assert scrape(Metrics(version="9.8.7"))[PREFIX + "build_info"] == {labels(version="9.8.7"): 1}
    assert scrape(Metrics())[PREFIX + "build_info"] == {labels(version=__version__): 1}


# -- sources -------------------------------------------------------------------------------


def test_a_gauge_source_is_read_at_each_scrape() -> None:
    m = Metrics()
    sessions = [3]
    m.gauge_source("sessions", lambda: sessions[0])
    assert value(m, PREFIX + "sessions") == 3
    sessions[0] = 11
    assert value(m, PREFIX + "sessions") == 11
    m.gauge_source("sessions", lambda: 2.5)  # registering the name again replaces the source
    assert value(m, PREFIX + "sessions") == 2.5
    assert PREFIX + "audit_queue_depth" not in scrape(m)


def test_a_counter_source_is_added_to_the_hot_path_count() -> None:
    m = Metrics()
    hits = [10]
    m.cache_hit()
    m.cache_hit()
    m.counter_source("cache_hits", lambda: hits[0])
    assert value(m, PREFIX + "cache_hits_total") == 12
    hits[0] = 15
    m.cache_hit()
    assert value(m, PREFIX + "cache_hits_total") == 18
    m.counter_source("cache_hits", lambda: 100)  # replaced, as a reload does
    assert value(m, PREFIX + "cache_hits_total") == 103
    assert value(m, PREFIX + "cache_misses_total") == 0  # the other counters are untouched


def test_unknown_source_names_raise() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="no gauge source 'nope'"):
        m.gauge_source("nope", lambda: 1)
    with pytest.raises(ValueError, match="no counter source 'sessions'"):
        m.counter_source("sessions", lambda: 1)  # a gauge's name is no counter's
    with pytest.raises(ValueError, match="no gauge source 'cache_hits'"):
        m.gauge_source("cache_hits", lambda: 1)


def test_a_raising_source_is_left_out_counted_logged_once_and_the_rest_is_intact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.metrics")
    m = Metrics()
    m.request("tools/call", "web", "ok", "echo", 0.01)
    m.cache_hit()
    m.cache_miss()
    m.gauge_source("sessions", lambda: 1 / 0)
    m.counter_source("cache_hits", lambda: {}["missing"])
    m.gauge_source("audit_queue_depth", lambda: 4)
    for scrapes in (1, 2, 3):
        s = scrape(m)
        assert PREFIX + "sessions" not in s
        assert PREFIX + "cache_hits_total" not in s  # without its source's part it would look like a reset
        assert s[PREFIX + "cache_misses_total"] == {labels(): 1}
        assert s[PREFIX + "audit_queue_depth"] == {labels(): 4}
        assert s[PREFIX + "requests_total"] == {labels(method="tools/call", backend="web", outcome="ok", tool="echo"): 1}
        # this scrape's failures are counted in this scrape (the family comes last)
        assert s[PREFIX + "metrics_source_errors_total"] == {labels(source="sessions"): scrapes,
                                                            labels(source="cache_hits"): scrapes}
    logged = metrics_logs(caplog)
    assert sorted(r.args[0] for r in logged) == ["cache_hits", "sessions"]  # once each, in three scrapes
    assert all(r.exc_info is not None for r in logged)  # with the traceback
    assert {r.exc_info[0] for r in logged} == {ZeroDivisionError, KeyError}


def test_a_source_that_recovers_is_back_in_the_next_scrape() -> None:
    m = Metrics()
    broken = [True]

    def sessions() -> int:
        if broken[0]:
            raise RuntimeError("not yet")
        return 5

    m.gauge_source("sessions", sessions)
    assert PREFIX + "sessions" not in scrape(m)
    broken[0] = False
    assert value(m, PREFIX + "sessions") == 5
    assert source_errors(m) == {"sessions": 1}  # the one failed scrape stays counted


@pytest.mark.parametrize("bad", [math.nan, "many", object(), None], ids=["nan", "word", "object", "none"])
def test_a_source_returning_no_number_is_left_out_and_counted(bad: object) -> None:
    m = Metrics()
    m.cache_miss()
    m.gauge_source("audit_queue_depth", lambda: bad)
    m.counter_source("cache_misses", lambda: bad)
    s = scrape(m)
    assert PREFIX + "audit_queue_depth" not in s
    assert PREFIX + "cache_misses_total" not in s
    assert source_errors(m) == {"audit_queue_depth": 2, "cache_misses": 2}  # two scrapes


@pytest.mark.parametrize("name", ["sessions", "cache_hits"])
def test_a_gauge_or_counter_source_returning_a_list_does_not_break_the_scrape(name: str) -> None:
    m = Metrics()
    m.request("tools/call", "web", "ok", "echo", 0.01)
    register = m.gauge_source if name == "sessions" else m.counter_source
    register(name, lambda: [1, 2])
    s = scrape(m)  # today: TypeError out of render(), the whole scrape lost
    assert s[PREFIX + "requests_total"]
    assert source_errors(m) == {name: 2}


# -- backend sources -------------------------------------------------------------------------


def test_backend_rows_give_up_breaker_state_trips_and_restarts() -> None:
    m = Metrics()
    m.backend_source(lambda: [
        ("a", True, "closed", 0, 3),
        ("b", True, "half-open", 1, None),
        ("c", False, "open", 2.0, None),
        ("d", True, 2, 5, None),  # a number is taken as it is
        BackendSample("e", False),  # no breaker, not stdio: only up
        ("f", 1),  # fields left off are None; up is truthiness
    ])
    s = scrape(m)
    assert s[PREFIX + "backend_up"] == {
        labels(backend="a"): 1, labels(backend="b"): 1, labels(backend="c"): 0,
        labels(backend="d"): 1, labels(backend="e"): 0, labels(backend="f"): 1,
    }
    assert s[PREFIX + "breaker_state"] == {
        labels(backend="a"): 0, labels(backend="b"): 1, labels(backend="c"): 2, labels(backend="d"): 2,
    }
    assert s[PREFIX + "breaker_trips_total"] == {
        labels(backend="a"): 0, labels(backend="b"): 1, labels(backend="c"): 2, labels(backend="d"): 5,
    }
    assert s[PREFIX + "stdio_restarts_total"] == {labels(backend="a"): 3}


def test_a_backend_source_may_yield_its_rows_lazily_and_is_read_at_each_scrape() -> None:
    m = Metrics()
    state = {"a": "closed"}
    m.backend_source(lambda: ((name, True, word, None, None) for name, word in state.items()))
    assert value(m, PREFIX + "breaker_state", backend="a") == 0
    state["a"] = "open"
    state["b"] = "half-open"
    assert scrape(m)[PREFIX + "breaker_state"] == {labels(backend="a"): 2, labels(backend="b"): 1}


def test_a_later_sources_row_replaces_the_earlier_one_for_the_same_backend() -> None:
    m = Metrics()
    m.backend_source(lambda: [("a", True, "closed", 1, 7), ("b", True, "closed", 0, None)], name="first")
    m.backend_source(lambda: [("a", False, "open", 5, None)], name="second")
    s = scrape(m)
    assert s[PREFIX + "backend_up"] == {labels(backend="a"): 0, labels(backend="b"): 1}
    assert s[PREFIX + "breaker_state"] == {labels(backend="a"): 2, labels(backend="b"): 0}
    assert s[PREFIX + "breaker_trips_total"] == {labels(backend="a"): 5, labels(backend="b"): 0}
    # the whole row is replaced: "second" has no restarts for a, so a has none
    assert PREFIX + "stdio_restarts_total" not in s


def test_registering_a_backend_source_name_again_replaces_it() -> None:
    m = Metrics()
    m.backend_source(lambda: [("old", True)])
    m.backend_source(lambda: [("new", True)])  # both "backends"
    assert scrape(m)[PREFIX + "backend_up"] == {labels(backend="new"): 1}


@pytest.mark.parametrize(
    "bad_row",
    [("x", True, 7, None, None), ("x", True, "ajar", None, None), (42, True), ("x",), ("x", True, None, "many")],
    ids=["state-7", "unknown-word", "name-not-str", "too-short", "trips-not-a-number"],
)
def test_a_bad_backend_row_fails_its_whole_source_counted(
    bad_row: tuple, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.metrics")
    m = Metrics()
    m.backend_source(lambda: [("fine", True, "closed", 0, 0)], name="good")
    m.backend_source(lambda: [("also_fine", True, "closed", 0, 0), bad_row], name="bad")
    s = scrape(m)
    # none of "bad"'s rows, not even the good one before the bad one; "good" intact
    assert s[PREFIX + "backend_up"] == {labels(backend="fine"): 1}
    assert s[PREFIX + "breaker_state"] == {labels(backend="fine"): 0}
    assert s[PREFIX + "breaker_trips_total"] == {labels(backend="fine"): 0}
    assert s[PREFIX + "stdio_restarts_total"] == {labels(backend="fine"): 0}
    assert s[PREFIX + "metrics_source_errors_total"] == {labels(source="bad"): 1}
    assert [r.args[0] for r in metrics_logs(caplog)] == ["bad"]


def test_a_raising_backend_source_leaves_the_other_families_intact() -> None:
    m = busy()  # its "broken" backend source raises
    s = scrape(m)
    assert s[PREFIX + "backend_up"] == {labels(backend="web"): 1, labels(backend="local"): 0}
    assert s[PREFIX + "breaker_state"] == {labels(backend="web"): 0, labels(backend="local"): 2}
    assert s[PREFIX + "stdio_restarts_total"] == {labels(backend="local"): 2}
    assert s[PREFIX + "sessions"] == {labels(): 7}
    assert s[PREFIX + "cache_hits_total"] == {labels(): 11}
    assert s[PREFIX + "in_flight"] == {labels(): 1}
    assert sum(s[PREFIX + "requests_total"].values()) == 4
    assert s[PREFIX + "metrics_source_errors_total"] == {labels(source="broken"): 1}


# -- registries ------------------------------------------------------------------------------


def test_each_metrics_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    before = generate_latest(REGISTRY)
    one, two = Metrics(), Metrics()  # in one registry, the second would be a duplicate
    assert one.registry is not two.registry
    assert REGISTRY not in (one.registry, two.registry)
    one.request("tools/call", "web", "ok", "echo", 0.01)
    one.cache_hit()
    two.request("tools/list", "local", "error", "", 0.01)
    assert requests(one) == {labels(method="tools/call", backend="web", outcome="ok", tool="echo"): 1}
    assert requests(two) == {labels(method="tools/list", backend="local", outcome="error", tool=""): 1}
    assert value(two, PREFIX + "cache_hits_total") == 0
    after = generate_latest(REGISTRY)
    assert PREFIX.encode() not in after
    assert {f.name for f in REGISTRY.collect()} == {f.name for f in text_string_to_metric_families(before.decode())}
