"""What the gateway tells its operators, across config snapshots: metrics, the audit log, the
access log.

``Telemetry`` owns the long-lived parts (the ``Metrics`` counters, the ``AuditLog`` writer) and
makes, for each config snapshot, the ``Observer`` that goes first in the admission chain
(``observer()``; None when nothing observes, so the request path pays nothing). A reload keeps
the counters and the audit chain (a changed ``[audit]`` table closes the old log, flushed, and
opens the new one); the cache's counters, which a reload starts from zero, are carried over so
that ``mcp_gateway_cache_*_total`` never falls.

Besides routed requests (the observer's), it records:

- authentication failures (``auth_failed``): ``mcp_gateway_auth_failures_total{reason}`` and an
  audit record ``{"event": "auth", "decision": "deny", ...}``;
- operators' actions (``admin_event``): the kill switch, reloads, session ends and cache flushes
  by the admin API, each an audit record ``{"event": "admin", ...}``.

With ``--workers``, each worker writes its own audit file, ``PATH.wN`` (one writer per file:
the chain is a sequence), verified each on its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.ops.audit import AuditError, AuditLog
from gateway.ops.metrics import Metrics
from gateway.ops.observe import Observer

if TYPE_CHECKING:
    from gateway.config import AuditConfig, Config

__all__ = ["Telemetry", "audit_path"]

log = logging.getLogger("gateway.telemetry")

_CACHE_COUNTERS = (("cache_hits", "hits"), ("cache_misses", "misses"), ("cache_evictions", "evictions"))


def audit_path(path: str, worker: str | None) -> str:
    """The file one process writes: ``path``, or ``path.wN`` for worker N of ``--workers``."""
    if worker is None or path == "-":
        return path
    return f"{path}.w{worker}"


def _audit_log(config: AuditConfig | None, worker: str | None) -> AuditLog | None:
    if config is None:
        return None
    path = audit_path(config.path, worker)
    if path != config.path:
        config = msgspec.structs.replace(config, path=path)
    return AuditLog(config)


class Telemetry:
    """Metrics, audit and access log for one gateway process (the module docstring).

    ``cache_stats``: returns the running cache's counters (``CacheAdmission.stats()``) or None;
    ``trace_of``: a request context's trace id, or None."""

    def __init__(
        self,
        config: Config,
        *,
        cache_stats: Callable[[], dict[str, int] | None] = lambda: None,
        trace_of: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.worker = os.environ.get("MCP_GATEWAY_WORKER")
        self.trace_of = trace_of
        self._cache_stats = cache_stats
        self._cache_base = dict.fromkeys(("hits", "misses", "evictions"), 0)
        self.metrics: Metrics | None = None
        # The scrape-time sources (``watch``): None until the gateway hands them in.
        self._sessions: Callable[[], int] | None = None
        self._backends: Callable[[], Iterable[tuple[str, bool, Any, Any, Any]]] | None = None
        self.audit: AuditLog | None = _audit_log(config.audit, self.worker)
        self.access = config.server.access_log
        self._audit_config = config.audit
        self._metrics_config = config.metrics
        if config.metrics is not None:
            self.metrics = self._new_metrics(config)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the audit log (``AuditError`` when it cannot be opened or continued)."""
        if self.audit is not None:
            try:
                self.audit.start()
            except Exception:
                self.audit = None  # nothing to flush or close: the log never opened
                raise

    async def close(self) -> None:
        """Flush and close the audit log: every record submitted so far is written."""
        if self.audit is not None:
            await self.audit.close()

    async def reconfigure(self, config: Config) -> None:
        """A reload to ``config``: keep what did not change, swap what did (before the new
        admission chain, made by ``observer()``, goes live)."""
        if config.audit != self._audit_config:
            await self._swap_audit(config.audit)
        if config.metrics != self._metrics_config:
            self.metrics = self._new_metrics(config) if config.metrics is not None else None
            self._metrics_config = config.metrics
        self.access = config.server.access_log

    async def _swap_audit(self, wanted: AuditConfig | None) -> None:
        """Close the running audit log (flushed: the new one may write the same file, which the
        old one locks) and open the new one; records of calls still in flight go to the new log
        (``AuditLog.successor``). A new log that cannot be opened is refused with one log line,
        and the old table's log is opened again: the audit never stops by a reload."""
        old = self.audit
        if old is not None:
            await old.close()
        new = _audit_log(wanted, self.worker)
        if new is not None:
            try:
                new.start()
            except AuditError as exc:
                log.error("reload: [audit] cannot be used, the previous audit log goes on: %s", exc)
                wanted, new = self._audit_config, _audit_log(self._audit_config, self.worker)
                if new is not None:
                    new.start()
        if old is not None:
            old.successor = new
        self.audit, self._audit_config = new, wanted
        if self.metrics is not None:
            self._watch_audit(self.metrics)

    def cache_replaced(self) -> None:
        """The cache is about to be replaced (a reload): its counters so far become the base."""
        stats = self._cache_stats()
        if stats:
            for key in self._cache_base:
                self._cache_base[key] += stats.get(key, 0)

    # -- what the gateway hands in ------------------------------------------------------------------

    def observer(self) -> Observer | None:
        """The first policy of a new admission chain, or None when nothing observes."""
        if self.metrics is None and self.audit is None and not self.access:
            return None
        return Observer(self.metrics, self.audit, self.access, trace_of=self.trace_of)

    def watch(
        self,
        sessions: Callable[[], int],
        backends: Callable[[], Iterable[tuple[str, bool, Any, Any, Any]]],
    ) -> None:
        """Register the scrape-time sources: the session count and one row per backend."""
        self._sessions, self._backends = sessions, backends
        if self.metrics is not None:
            self._sources(self.metrics)

    def auth_failed(self, reason: str, message: str, client_ip: str | None) -> None:
        """A request's credential was refused (never the credential itself in the record)."""
        if self.metrics is not None:
            self.metrics.auth_failed(reason)
        if self.audit is not None:
            self.audit.submit({
                "time": time.time(), "event": "auth", "decision": "deny", "outcome": "refused", "rule": reason,
                "error": message[:200], "client_ip": client_ip,
            })

    def admin_event(self, action: str, **fields: Any) -> None:
        """An operator's action (kill switch, reload, flush...), audited."""
        if self.audit is not None:
            self.audit.submit({"time": time.time(), "event": "admin", "action": action, **fields})

    # -- inside -------------------------------------------------------------------------------------

    def _new_metrics(self, config: Config) -> Metrics:
        assert config.metrics is not None
        metrics = Metrics(max_tools=config.metrics.tool_labels, buckets=config.metrics.buckets)
        if self._sessions is not None:
            self._sources(metrics)
        return metrics

    def _sources(self, metrics: Metrics) -> None:
        metrics.gauge_source("sessions", self._sessions)
        metrics.backend_source(self._backends)
        for name, key in _CACHE_COUNTERS:
            metrics.counter_source(name, self._cache_counter(key))
        self._watch_audit(metrics)

    def _watch_audit(self, metrics: Metrics) -> None:
        audit = self.audit
        if audit is not None:
            metrics.gauge_source("audit_queue_depth", lambda: audit.depth)
            metrics.counter_source("audit_dropped", lambda: audit.dropped)

    def _cache_counter(self, key: str) -> Callable[[], int]:
        def read() -> int:
            stats = self._cache_stats() or {}
            return self._cache_base[key] + stats.get(key, 0)

        return read
