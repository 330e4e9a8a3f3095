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
  answer, such as a cache hit): answered here, nothing reaches a backend;
- a ``Verdict`` with ``wait`` (a ``Pending``: an identical call is in flight,
  and this one is answered with its answer, a coalesced call; only for
  ``tools/call``, ``prompts/get`` and ``resources/read``);
- a ``Verdict`` with ``note`` (alone, or with a rewrite): go, and hand this
  opaque value to the ``outcome`` of the same request (the key a result is
  stored under, the in-flight entry its followers wait on).

``outcome`` is the companion hook that sees how each admitted request ended
(the cache store, the limiter's byte debit, metrics and audit plug in there);
it is called only when ``observes_outcomes`` is true, so the empty chain costs
nothing per request; its last argument, ``note``, is what ``admit`` left for
that request (None when it left none). ``page`` is the one
filter through which the catalog's list pages pass per principal (RBAC will
answer a page of what the caller may see there). ``attach`` is called once
with the catalog the front routes over, for a policy that reads it (tool
annotations) or must hear that a backend changed (``Catalog.on_backend_change``).

The order inside ``admit`` (``docs/architecture.md``, built by
``gateway.policy.chain.build_admission``): kill switch (to come) -> RBAC ->
transforms -> limits -> cache lookup -> coalescing. This base class admits
everything; with no policy configured the front has no chain at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.backends.base import Backend
    from gateway.catalog.aggregate import Catalog, CatalogSnapshot
    from gateway.errors import GatewayError
    from gateway.protocol.jsonrpc import Message, Raw

__all__ = ["Admission", "Noted", "Pending", "Route", "Verdict"]

Route = tuple["Backend", str]
"""Where a routed request goes: the backend and the name (or URI) it knows the item by."""


class Pending:
    """An admitted call waiting for an identical one in flight (``Verdict.wait``, coalescing).

    ``then(callback)`` calls ``callback(answer, error)`` once, when the call it waits for has
    ended (at once if it already has), with one of:

    - ``(answer, None)``: answer with ``answer``, the backend's ``Message`` (a result or a
      JSON-RPC error, in the era the backend was spoken to), as if it were this call's own;
    - ``(None, error)``: answer with this ``GatewayError``;
    - ``(None, None)``: nothing to share (the other call was cancelled, or its answer was
      for its own caller only): send this call upstream itself. It is admitted already and
      must not be admitted again.

    The callback may run inside another request's ``outcome``: it must not raise.
    """

    __slots__ = ()

    def then(self, callback: Callable[[Message | None, BaseException | None], None]) -> None:
        """Call ``callback(answer, error)`` once the call waited for has ended."""
        raise NotImplementedError


class Verdict:
    """What ``admit`` decided when it is not a plain "go" (see the module docstring)."""

    __slots__ = ("route", "params", "error", "result", "wait", "note")

    def __init__(
        self,
        *,
        route: Route | None = None,
        params: dict[str, Raw] | None = None,
        error: GatewayError | None = None,
        result: Raw | bytes | None = None,
        wait: Pending | None = None,
        note: Any = None,
    ) -> None:
        self.route = route
        """Send here instead (go, rewritten)."""
        self.params = params
        """Send these params instead, as ``{key: raw JSON}`` (go, rewritten)."""
        self.error = error
        """Refused: answered with this error, nothing sent upstream."""
        self.result = result
        """Answered locally with this result (raw JSON), nothing sent upstream."""
        self.wait = wait
        """Answered with the answer of an identical call in flight (``Pending``); ``route`` and
        ``params`` still say how to send it should it have to go upstream itself."""
        self.note = note
        """Handed to ``outcome`` for this request (any value; None: no note)."""


class Noted(Verdict):
    """A verdict that only leaves a note (go as routed, ``outcome`` gets ``note``): what an
    observing policy returns for every request, so it is made with one slot write (the other
    fields are None for every instance: class attributes over the slots)."""

    __slots__ = ()
    route = params = error = result = wait = None  # type: ignore[assignment]

    def __init__(self, note: Any) -> None:
        self.note = note


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
        note: Any = None,
    ) -> None:
        """How an admitted request ended: the backend's ``answer`` (result or JSON-RPC error),
        or the ``error`` the gateway answered with (a refusal, a timeout, a cancel). ``route``
        is None for a request refused or answered by ``admit``; ``answer`` and ``error`` are
        both None for a local answer and for a stateless client's call the backend asked
        something (its ``input_required`` went out; the retry is admitted anew). ``note`` is
        what ``admit`` left for this request (``Verdict.note``), None when it left none."""

    def attach(self, catalog: Catalog) -> None:
        """Called once by the front with the catalog it routes over; the base needs nothing of it."""

    def detach(self, catalog: Catalog) -> None:
        """Called once when a reload replaces this admission: undo what ``attach`` registered."""

    def page(self, principal: Any, ctx: Any, snapshot: CatalogSnapshot, method: str, cursor: str | None) -> bytes:
        """The list page this principal gets (``tools/list`` and the other list methods);
        the base gives every caller the whole catalog's page."""
        return snapshot.page(method, cursor, ctx.era == "stateless")
