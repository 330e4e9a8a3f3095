"""The observer: metrics, the audit log and the access log, fed by the admission point.

``Observer`` is the first policy of the admission chain (``build_admission``), so it
sees every routed request once, in every era and on both paths: its ``admit``
leaves a note (when the request started, and its params), and its ``outcome`` sees
how the request ended, refusals by the later policies (RBAC, limits) and local
answers (cache hits) included. Per request it does little, in compiled code
(``gateway._fast.ObserverCore``, whose methods are its ``admit`` and ``outcome``): a
clock read and a small note in ``admit``; in ``outcome`` plain counter increments,
one dict put on the audit queue (``AuditLog.submit``; the writer task serialises,
chains and writes it) and one access-log line when that log is on. It never raises
into the request path.

An outcome is one word (``OUTCOMES``): ``ok``; ``error`` (the backend answered a
JSON-RPC error, or the gateway failed); ``refused`` (RBAC, the kill switch,
credentials); ``limited`` (a rate limit); ``cached`` (answered by admission);
``timeout``; ``unavailable`` (down, overloaded, circuit open); ``cancelled``;
``pending`` (a stateless client was asked for input; its retry is a new request).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway._fast import ObserverCore
from gateway.backends.base import RequestCancelled
from gateway.errors import BackendTimeout, BackendUnavailable, CircuitOpen, GatewayError, RateLimited, RequestTooLarge
from gateway.policy.admission import Admission, Noted, Route
from gateway.protocol.jsonrpc import UNSET

if TYPE_CHECKING:
    from gateway.protocol.jsonrpc import Message, Raw

__all__ = ["OUTCOMES", "Observer", "outcome_of", "write_access"]

access_log = logging.getLogger("gateway.access")

OUTCOMES = ("ok", "error", "refused", "limited", "cached", "timeout", "unavailable", "cancelled", "pending")
"""Every value of the ``outcome`` label and audit field."""

_BY_ERROR: dict[type, str] = {
    RateLimited: "limited",
    RequestTooLarge: "limited",
    BackendTimeout: "timeout",
    BackendUnavailable: "unavailable",
    CircuitOpen: "unavailable",
}


def outcome_of(route: Route | None, answer: Message | None, error: BaseException | None) -> str:
    """The outcome word of one admitted request (see the module docstring)."""
    if error is not None:
        found = _BY_ERROR.get(type(error))
        if found is not None:
            return found
        if isinstance(error, GatewayError):
            return "refused" if 400 <= error.http_status < 500 and error.http_status not in (408, 413) else "error"
        return "cancelled" if isinstance(error, RequestCancelled) else "error"
    if answer is None:
        return "cached" if route is None else "pending"
    return "ok" if answer.error is UNSET else "error"


class Observer(Admission):
    """Sees every routed request's start and end (the module docstring).

    ``metrics``: a ``gateway.ops.metrics.Metrics`` (or None); ``audit``: a
    ``gateway.ops.audit.AuditLog`` (or None); ``access``: write one access-log line per
    request (``gateway.access``, INFO); ``trace_of``: the trace id of a request's context
    (tracing, when it is on), else None."""

    observes_outcomes = True

    def __init__(
        self,
        metrics: Any = None,
        audit: Any = None,
        access: bool = False,
        *,
        clock: Callable[[], float] = time.perf_counter,
        trace_of: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.access = access
        self.trace_of = trace_of
        self.worker = os.environ.get("MCP_GATEWAY_WORKER")
        self._next = 0
        # admit and outcome are the compiled core's (gateway._fast.observe), bound here: the
        # chain and the express lane call them with no Python frame per request.
        # The audit alone (the common case) is the core's finish itself: one Python frame less.
        finish = self._audit if audit is not None and not access else self._finish if access else None
        core = ObserverCore(
            metrics, Noted, UNSET, outcome_of, finish, self._limited, _failed, None if clock is time.perf_counter else clock,
        )
        self.admit = core.admit  # type: ignore[method-assign]
        self.outcome = core.outcome  # type: ignore[method-assign]

    def _limited(self, error: BaseException) -> None:
        """A rate-limit refusal, counted by the limit that made it."""
        self.metrics.limiter_refused((getattr(error, "extra", None) or {}).get("limit") or type(error).__name__)

    def _finish(
        self, principal: Any, ctx: Any, method: str, name: str, backend: str, answer: Message | None,
        error: BaseException | None, outcome: str, seconds: float, params: dict[str, Raw] | None,
    ) -> None:
        """After the counting: the audit record and the access-log line, those that are on."""
        if self.audit is not None:
            self._audit(principal, ctx, method, name, backend, answer, error, outcome, seconds, params)
        if self.access:
            self._access(principal, method, name, backend, outcome, error, seconds)

    def _audit(
        self, principal: Any, ctx: Any, method: str, name: str, backend: str, answer: Message | None,
        error: BaseException | None, outcome: str, seconds: float, params: dict[str, Raw] | None,
    ) -> None:
        self._next += 1
        record: dict[str, Any] = {
            "time": time.time(),
            "request": f"{self.worker}-{self._next}" if self.worker else self._next,
            "trace": self.trace_of(ctx) if self.trace_of is not None else None,
            "principal": {  # the caller: issuer, subject and the client's own name
                "issuer": principal.issuer if principal is not None else None,
                "subject": principal.subject if principal is not None else None,
                "client": client.get("name") if isinstance(client := getattr(ctx, "client_info", None), dict) else None,
            },
            "session": ctx.session_key,
            "era": ctx.era,
            "method": method,
            "name": name,
            "backend": backend or None,
            "decision": "deny" if outcome in ("refused", "limited") else "allow",
            "outcome": outcome,
            "latency_ms": int(seconds * 1e6) / 1000,  # whole microseconds (round() costs twice as much)
            "bytes_in": sum(map(len, params.values())) if params else 0,
            "bytes_out": len(answer.result) if answer is not None and answer.result is not UNSET else 0,
        }
        if error is not None:
            record["code"] = getattr(error, "code", None)
            extra = getattr(error, "extra", None) or {}
            record["rule"] = extra.get("rule") or extra.get("limit") or getattr(error, "reason", type(error).__name__)
        if params is not None and "arguments" in params:
            record["arguments"] = params["arguments"]  # raw bytes: the writer digests (or redacts) them
        self.audit.submit(record)

    def _access(
        self, principal: Any, method: str, name: str, backend: str, outcome: str, error: BaseException | None, seconds: float
    ) -> None:
        status = getattr(error, "http_status", 200) if error is not None else 200
        write_access(principal, method, name, backend, status, outcome, seconds)


def write_access(principal: Any, method: str, name: str, backend: str, status: int, outcome: str, seconds: float) -> None:
    """One access-log line (``gateway.access``, INFO): the observer's for routed requests, the
    front's (``McpFront.on_access``) for the others (lists, initialize, notifications, streams)."""
    who = f"{principal.issuer}/{principal.subject}" if principal is not None else "-"
    access_log.info(
        "%s %s %s backend=%s status=%s outcome=%s %.2fms",
        who, method, name or "-", backend or "-", status, outcome, seconds * 1000.0,
        extra={"fields": {"principal": who, "method": method, "name": name or None, "backend": backend or None,
                          "status": status, "outcome": outcome, "latency_ms": round(seconds * 1000.0, 3)}},
    )


def _failed() -> None:
    """Inside the core's handler: an observer's bug must not fail a request that was answered."""
    logging.getLogger("gateway.observe").exception("observing a request failed")
