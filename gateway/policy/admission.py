"""The admission point: every routed request passes ``Admission.admit`` exactly once.

A routed request is one the gateway sends to a backend on a client's behalf:
``tools/call``, ``prompts/get``, ``resources/read``, ``resources/subscribe`` and
``unsubscribe``, ``completion/complete``. Both fronts (HTTP and stdio), both
eras and both paths (the general coroutine path and the express lane) resolve
the exposed name with ``gateway.front.routing.Routing`` and then call ``admit``
once, before anything is sent upstream. Retries inside a backend (a reused
connection the backend had closed, an expired upstream session) are the same
admitted request and are not admitted again.

``admit`` is synchronous and must never await: the express lane calls it from
the HTTP protocol's read callback. Anything slow a policy needs (a JWKS fetch,
a token exchange) happens off the request path. It returns:

- ``None``: go, unchanged (the common case, with no allocation);
- a ``Verdict`` with ``route`` and/or ``params`` set: go, rewritten (an alias,
  injected arguments);
- a ``Verdict`` with ``error`` (a ``GatewayError``: refused, with its HTTP
  status and JSON-RPC code) or ``result`` (the raw result bytes of a local
  answer, such as a cache hit): answered here, nothing reaches a backend.

``outcome`` is the companion hook that sees how each admitted request ended
(the cache store, the limiter's byte debit, metrics and audit plug in there);
it is called only when ``observes_outcomes`` is true, so the empty chain costs
nothing per request. ``page`` is the one filter through which the catalog's
list pages pass per principal (RBAC will answer a page of what the caller may
see there).

The planned order inside ``admit`` (``docs/architecture.md``): kill switch ->
RBAC -> transforms -> limits -> cache lookup -> coalescing. Today the chain is
empty: ``Admission`` admits everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.backends.base import Backend
    from gateway.catalog.aggregate import CatalogSnapshot
    from gateway.errors import GatewayError
    from gateway.protocol.jsonrpc import Message, Raw

__all__ = ["Admission", "Route", "Verdict"]

Route = tuple["Backend", str]
"""Where a routed request goes: the backend and the name (or URI) it knows the item by."""


class Verdict:
    """What ``admit`` decided when it is not a plain "go" (see the module docstring)."""

    __slots__ = ("route", "params", "error", "result")

    def __init__(
        self,
        *,
        route: Route | None = None,
        params: dict[str, Raw] | None = None,
        error: GatewayError | None = None,
        result: Raw | bytes | None = None,
    ) -> None:
        self.route = route
        """Send here instead (go, rewritten)."""
        self.params = params
        """Send these params instead, as ``{key: raw JSON}`` (go, rewritten)."""
        self.error = error
        """Refused: answered with this error, nothing sent upstream."""
        self.result = result
        """Answered locally with this result (raw JSON), nothing sent upstream."""


class Admission:
    """The admission chain of one config snapshot. This base admits everything.

    ``principal`` is who the header gate says is calling (``None`` until
    authentication exists); ``ctx`` is the request's
    ``gateway.front.sessions.RequestContext`` (era, version, session,
    capabilities); ``method`` the JSON-RPC method; ``name`` the exposed name or
    URI; ``route`` the resolved ``(backend, original name)``; ``params`` the
    request's params as ``{key: raw JSON}`` (arguments undecoded).
    """

    observes_outcomes = False
    """True when ``outcome`` must be called (a subclass that overrides it sets this)."""

    def admit(
        self, principal: Any, ctx: Any, method: str, name: str, route: Route, params: dict[str, Raw]
    ) -> Verdict | None:
        """Decide one routed request, synchronously; ``None`` means go unchanged."""
        return None

    def outcome(
        self,
        principal: Any,
        ctx: Any,
        method: str,
        name: str,
        route: Route | None,
        answer: Message | None,
        error: BaseException | None,
    ) -> None:
        """How an admitted request ended: the backend's ``answer`` (result or JSON-RPC error),
        or the ``error`` the gateway answered with (a refusal, a timeout, a cancel). ``route``
        is None for a request refused by ``admit``."""

    def page(self, principal: Any, ctx: Any, snapshot: CatalogSnapshot, method: str, cursor: str | None) -> bytes:
        """The list page this principal gets (``tools/list`` and the other list methods);
        the base gives every caller the whole catalog's page."""
        return snapshot.page(method, cursor, ctx.era == "stateless")
