"""Metrics: plain counters on the request path, Prometheus families only at scrape time.

``Metrics`` keeps what the gateway counts itself in ints, dicts and the compiled counters of
``gateway._fast`` (``Series``, ``Histogram``, ``Count``: C fields the observer's compiled core
increments), and touches no ``prometheus_client`` object per request: no metric child, no
lock (each worker process runs one event loop, and every increment happens on it). ``collect()``, called by
``render()`` through the registry, turns those numbers into ``CounterMetricFamily``,
``GaugeMetricFamily`` and ``HistogramMetricFamily`` objects for that one scrape. Each
``Metrics`` has its own ``CollectorRegistry``: tests and several gateways in one process never
share the global one.

The hot path (each a plain method; the first sight of a label set takes a slower branch that
bounds cardinality, every later call is a dict get and set):

- ``request(method, backend, outcome, tool, seconds)``: ``mcp_gateway_requests_total`` and
  ``mcp_gateway_request_duration_seconds``;
- ``inc_in_flight()`` / ``dec_in_flight()``: ``mcp_gateway_in_flight``;
- ``limiter_refused(limit)``, ``cache_hit()``, ``cache_miss()``, ``cache_evicted(n)``,
  ``auth_failed(reason)``, ``audit_dropped(n)``.

What another component already counts is read from it at scrape time instead (a *source*: a
callable registered once, by name; registering the same name again replaces it, as a reload
that builds a new component does):

- ``gauge_source(name, fn)``: ``fn() -> number`` is the gauge (``GAUGE_SOURCES``:
  ``sessions``, ``audit_queue_depth``). With no source the gauge is left out: no number is
  better than a made-up zero.
- ``counter_source(name, fn)``: ``fn() -> number`` is added to the hot-path count of the same
  counter (``COUNTER_SOURCES``: ``cache_hits``, ``cache_misses``, ``cache_evictions``,
  ``audit_dropped``). A component uses one way or the other: the hot-path method, or a source.
- ``backend_source(fn, name="backends")``: ``fn()`` yields ``(backend, up, breaker_state,
  trips, restarts)`` rows (``BackendSample``): ``mcp_gateway_backend_up``,
  ``mcp_gateway_breaker_state``, ``mcp_gateway_breaker_trips_total`` and
  ``mcp_gateway_stdio_restarts_total``. ``breaker_state`` is 0/1/2 or the breaker's own word
  (``closed``, ``half-open``, ``open``); a field that does not apply (no breaker, not a stdio
  backend) is None and leaves that backend out of that family. A later row for the same
  backend, from any source, replaces an earlier one.

For example::

    metrics.gauge_source("sessions", lambda: len(sessions))
    metrics.counter_source("cache_hits", lambda: cache.stats()["hits"])
    metrics.backend_source(lambda: ((b.name, b.state is BackendState.READY, None, None, None)
                                    for b in backends.values()))

A source that raises (or returns something that is not a number) does not break the scrape:
that family (for a backend source: that source's rows) is left out of this scrape, the failure
is counted in ``mcp_gateway_metrics_source_errors_total{source}``, and the first failure of
each source is logged, with its traceback (a scrape every few seconds must not flood the log).

Label values are bounded so that no client can grow the series without end: only the first
``max_tools`` distinct tool names get their own ``tool`` value, later ones are counted under
``tool="_other"`` (totals are kept); ``method``, ``backend``, ``limit`` and ``reason`` are bounded
the same way by ``max_label_values``. An ``outcome`` outside ``OUTCOMES`` is counted as
``_other`` (and logged once): it is a bug of the caller, and the total must still add up.
Methods other than ``tools/call`` always have ``tool=""``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway import __version__
from gateway._fast import Count, Histogram, Series

__all__ = [
    "BREAKER_STATES",
    "BUCKETS",
    "CONTENT_TYPE",
    "COUNTER_SOURCES",
    "GAUGE_SOURCES",
    "OTHER",
    "OUTCOMES",
    "PREFIX",
    "BackendSample",
    "Metrics",
]

log = logging.getLogger("gateway.metrics")

PREFIX = "mcp_gateway_"
"""The prefix of every family's name."""

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The content type to serve ``render()`` with. The 0.0.4 text format: every scraper reads it
(Prometheus before 3.0 knows no other text version), and with only plain legacy names in it the
bytes are what the newer version would carry anyway."""

OUTCOMES = frozenset({"ok", "error", "refused", "limited", "cached", "timeout", "unavailable", "cancelled", "pending"})
"""The values of the ``outcome`` label (the observer's vocabulary, ``gateway.ops.observe.OUTCOMES``)."""

OTHER = "_other"
"""The label value that a value past its label's bound (or an unknown outcome) is counted under."""

BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""The default upper bounds (seconds) of ``mcp_gateway_request_duration_seconds``: from a local answer
(a cache hit, well under a millisecond) to the slowest tool calls; +Inf follows."""


BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
"""``mcp_gateway_breaker_state``'s values, by the breaker's words (``gateway.backends.breaker``)."""

GAUGE_SOURCES = {
    "sessions": "Sessions the gateway holds.",
    "audit_queue_depth": "Audit records queued, not yet written.",
}
"""The names ``gauge_source`` takes (``mcp_gateway_<name>``), with each gauge's help."""

COUNTER_SOURCES = {
    "cache_hits": "Requests answered from the cache.",
    "cache_misses": "Cacheable requests the cache could not answer.",
    "cache_evictions": "Cache entries evicted to make room.",
    "audit_dropped": "Audit records dropped because the queue was full.",
}
"""The names ``counter_source`` takes (``mcp_gateway_<name>_total``), with each counter's help."""


class BackendSample(NamedTuple):
    """One backend's row from a ``backend_source``; None: the field does not apply to it."""

    backend: str
    up: bool
    breaker_state: int | str | None = None
    trips: float | None = None
    restarts: float | None = None


class _Bound:
    """The values one label has had, capped: the first ``limit`` distinct values keep their own
    label value, later ones are ``OTHER``. Only asked on the first sight of a label set."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        seen = self.seen
        if value in seen:
            return value
        if len(seen) < self.limit:
            seen.add(value)
            return value
        return OTHER


_MAX_RAW_KEYS = 100_000  # raw label sets remembered for the one-lookup path


class Metrics(Collector):
    """The gateway's metrics (see the module docstring): counted on the hot path, read from
    sources and turned into Prometheus families at scrape time.

    ``version``: the ``version`` label of ``mcp_gateway_build_info``; ``max_tools``: how many
    distinct tool names get their own ``tool`` label value; ``max_label_values``: the same
    bound for ``method``, ``backend``, ``limit`` and ``reason``; ``buckets``: the latency
    histogram's upper bounds in seconds, increasing (+Inf follows)."""

    CONTENT_TYPE = CONTENT_TYPE
    """The content type of ``render()``'s bytes (the module's ``CONTENT_TYPE``)."""

    __slots__ = (
        "version", "registry", "buckets", "_le", "flight", "cache_hits", "cache_misses", "cache_evictions", "audit_drops",
        "_requests", "series", "_durations", "_limiter", "_auth", "_tools", "_methods", "_backends", "_limits", "_reasons",
        "_gauge_sources", "_counter_sources", "_backend_sources", "_source_errors", "_warned_outcome",
    )

    def __init__(
        self, version: str = __version__, *, max_tools: int = 100, max_label_values: int = 100,
        buckets: Iterable[float] = BUCKETS,
    ) -> None:
        self.version = version
        self.buckets = tuple(float(b) for b in buckets)
        if not self.buckets or any(not a < b for a, b in zip(self.buckets, self.buckets[1:] + (math.inf,))):
            raise ValueError(f"buckets must be one or more increasing bounds, got {self.buckets}")
        self._le = tuple(floatToGoString(b) for b in self.buckets) + ("+Inf",)  # formatted once
        self.flight = Count()
        """Routed requests in flight (``mcp_gateway_in_flight``), a C integer the observer's core
        counts in (``in_flight`` reads it)."""
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_evictions = 0
        self.audit_drops = 0
        self._requests: dict[tuple[str, str, str, str], Series] = {}
        """The series by their bounded labels (what a scrape shows)."""
        self.series: dict[tuple[str, str, str, str], Series] = {}
        """The same series by the labels as given: what ``request`` looks up (and the observer's
        compiled core, which does ``request``'s work itself: a get here, ``new_series`` when it misses)."""
        self._durations: dict[str, Histogram] = {}
        self._limiter: dict[str, int] = {}
        self._auth: dict[str, int] = {}
        self._tools = _Bound(max_tools)
        self._methods = _Bound(max_label_values)
        self._backends = _Bound(max_label_values)
        self._limits = _Bound(max_label_values)
        self._reasons = _Bound(max_label_values)
        self._gauge_sources: dict[str, Callable[[], float]] = {}
        self._counter_sources: dict[str, Callable[[], float]] = {}
        self._backend_sources: dict[str, Callable[[], Iterable[tuple]]] = {}
        self._source_errors: dict[str, int] = {}
        self._warned_outcome = False
        self.registry = CollectorRegistry()
        """This gateway's own registry (never the global one)."""
        self.registry.register(self)

    # -- the hot path --------------------------------------------------------------------------

    def request(self, method: str, backend: str, outcome: str, tool: str, seconds: float) -> None:
        """One routed request ended: count it under ``(method, backend, outcome, tool)`` and
        observe its duration in ``backend``'s histogram. ``tool`` is the tool's name for
        ``tools/call``, else ``""``; ``backend`` is ``""`` when none was chosen (a refusal, a
        local answer); ``outcome`` is one of ``OUTCOMES``."""
        # One dict lookup per request: the label set's series holds its count and its backend's
        # histogram (a 4-tuple hashes its cached string hashes; no second lookup to store).
        series = self.series.get((method, backend, outcome, tool))
        if series is None:  # first sight of this label set, or one past a bound: normalise it
            series = self.new_series(method, backend, outcome, tool)
        series.count += 1
        series.histogram.observe(seconds)

    @property
    def in_flight(self) -> int:
        """Routed requests started and not yet ended."""
        return self.flight.value

    def inc_in_flight(self) -> None:
        """A routed request started (``mcp_gateway_in_flight``)."""
        self.flight.value += 1

    def dec_in_flight(self) -> None:
        """A routed request that ``inc_in_flight`` counted ended."""
        self.flight.value -= 1

    def limiter_refused(self, limit: str) -> None:
        """The rate limit named ``limit`` refused a request (``mcp_gateway_limiter_refusals_total``)."""
        _count(self._limiter, self._limits, limit)

    def cache_hit(self) -> None:
        """The cache answered a request (``mcp_gateway_cache_hits_total``)."""
        self.cache_hits += 1

    def cache_miss(self) -> None:
        """The cache could not answer a cacheable request (``mcp_gateway_cache_misses_total``)."""
        self.cache_misses += 1

    def cache_evicted(self, n: int = 1) -> None:
        """The cache evicted ``n`` entries (``mcp_gateway_cache_evictions_total``)."""
        self.cache_evictions += n

    def auth_failed(self, reason: str) -> None:
        """A credential was refused, for ``reason`` (``mcp_gateway_auth_failures_total``): a
        short fixed word such as ``invalid_token``, never the error's text."""
        _count(self._auth, self._reasons, reason)

    def audit_dropped(self, n: int = 1) -> None:
        """The audit queue was full and ``n`` records were dropped (``mcp_gateway_audit_dropped_total``)."""
        self.audit_drops += n

    def new_series(self, method: str, backend: str, outcome: str, tool: str) -> Series:
        """The series of a label set seen for the first time: its bounded labels' series (shared
        with every label set that maps to the same), remembered under the raw labels too."""
        key = self._request_key(method, backend, outcome, tool)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = Series(self._histogram(key[1]))
        if len(self.series) < _MAX_RAW_KEYS:  # past it, unbounded raw labels take this slow path
            self.series[(method, backend, outcome, tool)] = series
        return series

    def _request_key(self, method: str, backend: str, outcome: str, tool: str) -> tuple[str, str, str, str]:
        """The label set a request is counted under, every label within its bound."""
        if outcome not in OUTCOMES:
            if not self._warned_outcome:
                self._warned_outcome = True
                log.warning("metrics: unknown request outcome %r counted as %r (logged once)", outcome, OTHER)
            outcome = OTHER
        tool = self._tools(tool) if method == "tools/call" else ""
        return (self._methods(method), self._backends(backend), outcome, tool)

    def _histogram(self, backend: str) -> Histogram:
        """``backend``'s histogram, made on first sight (``OTHER``'s past the bound)."""
        label = self._backends(backend)
        histogram = self._durations.get(label)
        if histogram is None:
            histogram = self._durations[label] = Histogram(self.buckets, self._le)
        return histogram

    # -- sources, read at scrape time -----------------------------------------------------------

    def gauge_source(self, name: str, fn: Callable[[], float]) -> None:
        """Read the gauge ``mcp_gateway_<name>`` from ``fn()`` at each scrape (``GAUGE_SOURCES``)."""
        if name not in GAUGE_SOURCES:
            raise ValueError(f"no gauge source {name!r}; known: {', '.join(sorted(GAUGE_SOURCES))}")
        self._gauge_sources[name] = fn

    def counter_source(self, name: str, fn: Callable[[], float]) -> None:
        """Add ``fn()`` to the counter ``mcp_gateway_<name>_total`` at each scrape (``COUNTER_SOURCES``).
        ``fn`` must only grow (a counter that falls reads as a restart)."""
        if name not in COUNTER_SOURCES:
            raise ValueError(f"no counter source {name!r}; known: {', '.join(sorted(COUNTER_SOURCES))}")
        self._counter_sources[name] = fn

    def backend_source(self, fn: Callable[[], Iterable[tuple]], name: str = "backends") -> None:
        """Read per-backend rows ``(backend, up, breaker_state, trips, restarts)`` from ``fn()``
        at each scrape (``BackendSample``; the module docstring). ``name`` tells sources apart
        (in ``mcp_gateway_metrics_source_errors_total``, and for replacing one)."""
        self._backend_sources[name] = fn

    # -- the scrape --------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition of every family, to serve with ``CONTENT_TYPE``."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """Every family, built now from the counters and the sources (called by the registry)."""
        yield from self._requests_families()
        yield from self._scalar_families()
        yield from self._backend_families()
        yield from self._labelled_counter("limiter_refusals", "Requests refused by a rate limit.", "limit",
                                          self._limiter)
        yield from self._labelled_counter("auth_failures", "Credentials refused, by reason.", "reason", self._auth)
        info = GaugeMetricFamily(PREFIX + "build_info", "The gateway's version (always 1).", labels=["version"])
        info.add_metric([self.version], 1)
        yield info
        # last: it counts the failures of the sources read above, this scrape's included
        yield from self._labelled_counter("metrics_source_errors", "Scrape-time metric sources that raised.",
                                          "source", self._source_errors)

    def _requests_families(self) -> Iterator[Metric]:
        # copies: a dict copy is atomic, so a scrape from another thread cannot see one change size
        requests = CounterMetricFamily(PREFIX + "requests", "Routed requests, by how they ended.",
                                       labels=["method", "backend", "outcome", "tool"])
        for labels, series in self._requests.copy().items():
            requests.add_metric(labels, series.count)
        yield requests
        durations = HistogramMetricFamily(PREFIX + "request_duration_seconds",
                                          "Routed requests' durations, by backend.", labels=["backend"])
        for backend, histogram in self._durations.copy().items():
            buckets = histogram.cumulative()
            durations.add_metric([backend], buckets, histogram.sum)
        yield durations
        yield GaugeMetricFamily(PREFIX + "in_flight", "Routed requests started and not yet ended.", self.in_flight)

    def _scalar_families(self) -> Iterator[Metric]:
        own = {"cache_hits": self.cache_hits, "cache_misses": self.cache_misses,
               "cache_evictions": self.cache_evictions, "audit_dropped": self.audit_drops}
        for name, help_text in COUNTER_SOURCES.items():
            value: float = own[name]
            fn = self._counter_sources.get(name)
            if fn is not None:
                read = self._read(name, fn)
                if read is None:
                    continue  # a counter without its source's part would look like a reset
                value += read
            yield CounterMetricFamily(PREFIX + name, help_text, value)
        for name, help_text in GAUGE_SOURCES.items():
            fn = self._gauge_sources.get(name)
            read = self._read(name, fn) if fn is not None else None
            if read is not None:
                yield GaugeMetricFamily(PREFIX + name, help_text, read)

    def _backend_families(self) -> Iterator[Metric]:
        rows: dict[str, BackendSample] = {}
        for name, fn in list(self._backend_sources.items()):
            read = self._read(name, lambda fn=fn: [_backend_sample(row) for row in fn()], rows=True)
            for sample in read or ():
                rows[sample.backend] = sample
        up = GaugeMetricFamily(PREFIX + "backend_up", "1 when the backend is ready, else 0.", labels=["backend"])
        state = GaugeMetricFamily(PREFIX + "breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                                  labels=["backend"])
        trips = CounterMetricFamily(PREFIX + "breaker_trips", "Times the backend's circuit opened.", labels=["backend"])
        restarts = CounterMetricFamily(PREFIX + "stdio_restarts", "Times the stdio backend's process was restarted.",
                                       labels=["backend"])
        for backend, sample in sorted(rows.items()):
            up.add_metric([backend], 1 if sample.up else 0)
            for family, value in ((state, sample.breaker_state), (trips, sample.trips), (restarts, sample.restarts)):
                if value is not None:
                    family.add_metric([backend], value)
        yield from (up, state, trips, restarts)

    def _labelled_counter(self, name: str, help_text: str, label: str, counts: dict[str, int]) -> Iterator[Metric]:
        family = CounterMetricFamily(PREFIX + name, help_text, labels=[label])
        for value, n in sorted(counts.copy().items()):
            family.add_metric([value], n)
        yield family

    def _read(self, name: str, fn: Callable[[], object], *, rows: bool = False) -> object | None:
        """``fn()`` checked (a number; with ``rows``, a backend source's list of rows), or None
        when it failed: counted, and logged on the source's first failure."""
        try:
            value = fn()
            if rows:
                if not isinstance(value, list):
                    raise TypeError(f"a backend source returned {type(value).__name__}, not rows")
                return value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"the source returned {type(value).__name__}, not a number")
            number = float(value)
            if math.isnan(number):
                raise ValueError("NaN")
            return number
        except Exception:
            failures = self._source_errors.get(name, 0)
            self._source_errors[name] = failures + 1
            if not failures:
                log.warning("metrics source %r failed; left out of scrapes while it fails (logged once)", name,
                            exc_info=True)
            return None


def _count(counts: dict[str, int], bound: _Bound, value: str) -> None:
    """One more under ``value`` (or under what ``bound`` makes of a value not seen yet)."""
    n = counts.get(value)
    if n is None:
        value = bound(value)
        n = counts.get(value, 0)
    counts[value] = n + 1


def _backend_sample(row: tuple) -> BackendSample:
    """A source's row, checked and with the breaker's word as its number."""
    sample = BackendSample(*row)
    if not isinstance(sample.backend, str):
        raise TypeError(f"backend name {sample.backend!r} is not a string")
    state = sample.breaker_state
    if isinstance(state, str):
        state = BREAKER_STATES[state]
    elif state is not None and state not in (0, 1, 2):
        raise ValueError(f"breaker state {state!r} is not 0, 1 or 2")
    trips = None if sample.trips is None else float(sample.trips)
    restarts = None if sample.restarts is None else float(sample.restarts)
    return BackendSample(sample.backend, bool(sample.up), state, trips, restarts)
