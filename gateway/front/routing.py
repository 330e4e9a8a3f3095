"""Routing and admission: from an exposed name to an admitted ``(backend, name)``.

Every routed request, in both eras, both fronts and both paths, goes through
``Routing``: ``resolve`` finds the route of an exposed name (the catalog's
routing table, then the passthrough fallback) or raises the unknown-name
error; ``admit`` calls ``Admission.admit`` exactly once and applies what it
decided. ``route_noted`` is the two together, for the general path (it also
gives the note admission left for the request's outcome; ``route`` drops it);
the express lane calls them apart, because it must make its last decline (is
the backend free for the fast send?) after resolving and before admitting.
A coalesced call (``Verdict.wait``) is raised as ``Answered`` with the
``Pending`` to wait on, and the front reports its outcome when it is answered.

A request's params are handled as ``{key: raw JSON}``: only the routing key
(``name``, ``uri`` or ``ref``) is decoded; the arguments stay bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import Disabled, GatewayError, InvalidParams, ResourceNotFound
from gateway.policy.admission import Admission, Pending, Route, Verdict
from gateway.protocol.jsonrpc import UNSET, Raw, decode_any, decode_params, encode

if TYPE_CHECKING:
    from gateway.catalog.aggregate import Catalog
    from gateway.front.sessions import RequestContext
    from gateway.protocol.jsonrpc import Message

__all__ = ["ROUTED", "Answered", "Routing", "params_raw", "params_with"]

_METHOD_OF = {"tool": "tools/call", "prompt": "prompts/get", "resource": "resources/read"}
"""The routed method of each kind of name (what a refusal before admission is reported as)."""

ROUTED: dict[str, tuple[str, str]] = {
    "tools/call": ("name", "tool"),
    "prompts/get": ("name", "prompt"),
    "resources/read": ("uri", "resource"),
    "resources/subscribe": ("uri", "resource"),
    "resources/unsubscribe": ("uri", "resource"),
}
"""Routed method -> (the params key it is routed by, the kind of item). ``completion/complete``
is routed by its ``ref`` (``Routing.route_ref``)."""

_decode_str = msgspec.json.Decoder(str).decode


class Answered(Exception):
    """Raised by ``Routing.admit`` when admission answered locally: with a result (a cache hit),
    ``result`` is the raw result, to be sent with the client's id; for a coalesced call, ``wait``
    is the ``Pending`` to wait on and ``route`` where to send the call should it have to go
    upstream itself (its params already rewritten)."""

    def __init__(self, result: Raw | bytes | None, wait: Pending | None = None, route: Route | None = None) -> None:
        super().__init__("answered by admission")
        self.result = result
        self.wait = wait
        self.route = route


class Routing:
    """Name resolution and the one admission call of each routed request."""

    __slots__ = ("catalog", "admission", "passthrough", "admit_call")

    def __init__(self, catalog: Catalog, admission: Admission, passthrough: bool) -> None:
        self.catalog = catalog
        self.admission = admission
        self.passthrough = passthrough
        """``[gateway] passthrough``: the only backend answers for names it did not list."""
        self.admit_call = admission.admit
        """``Admission.admit``, bound once. Only ``admit`` and the express lane call it (the lane
        inlines ``admit``'s common case, "go", to save a call per request)."""

    def resolve(self, kind: str, value: str, ctx: RequestContext | None = None) -> Route:
        """The route of an exposed tool, prompt or resource name, or the unknown-name error
        (-32602; -32002 for a resource in the handshake era). ``ctx`` None: handshake era."""
        router = self.catalog.snapshot.router
        if kind == "tool":
            route = router.resolve_tool(value)
        elif kind == "prompt":
            route = router.resolve_prompt(value)
        else:
            route = router.resolve_uri(value)
        return route if route is not None else self.fallback(kind, value, ctx)

    def fallback(self, kind: str, value: str, ctx: RequestContext | None) -> Route:
        """A name the routing table does not know: the kill switch's refusal (-32057, 403) when it
        is disabled, else the passthrough backend's, or the unknown-name error."""
        catalog = self.catalog
        key = "name" if kind != "resource" else "uri"
        error: GatewayError
        if catalog.disabled_tools or catalog.disabled_backends:
            reason = catalog.disabled_reason(kind, value)
            if reason is not None:
                error = Disabled(f"{reason} by an operator", data={key: value})
                self._refused(ctx, kind, value, error)
                raise error
        if self.passthrough and self.catalog.backends:
            # Passthrough: the backend answers for names it did not list, as it would directly.
            return (next(iter(self.catalog.backends.values())), value)
        if kind == "resource" and (ctx is None or ctx.era == "handshake"):
            error = ResourceNotFound(f"resource not found: {value}", data={key: value}, spec_data={"uri": value})
        else:
            error = InvalidParams(f"unknown {kind}: {value}", reason=f"unknown_{kind}", data={key: value})
        self._refused(ctx, kind, value, error)
        raise error

    def _refused(self, ctx: RequestContext | None, kind: str, value: str, error: GatewayError) -> None:
        """A routed request refused before admission (disabled, unknown): the observer (metrics,
        audit, access log) still sees the decision. ``ctx`` None: the express lane, which declines
        and leaves the request to the general path, which reports it."""
        if ctx is not None and self.admission.observes_outcomes:
            self.admission.outcome(ctx.principal, ctx, _METHOD_OF[kind], value, None, None, error, None)

    def admit(self, ctx: RequestContext, method: str, name: str, route: Route, params: dict[str, Raw]) -> Route:
        """Admit one resolved request: the route to send it on (``params`` rewritten in place
        when admission says so). Raises the refusal (a ``GatewayError``) or ``Answered``."""
        verdict = self.admit_call(ctx.principal, ctx, method, name, route, params)
        return route if verdict is None else self.apply(ctx, method, name, route, params, verdict)

    def apply(
        self, ctx: RequestContext, method: str, name: str, route: Route, params: dict[str, Raw], verdict: Verdict
    ) -> Route:
        """What a ``Verdict`` says: the route (and ``params``, in place) to go on, or the refusal
        raised, or ``Answered`` raised with a local result or a call to wait for. A coalesced
        call's outcome is the front's to report, when it is answered."""
        admission = self.admission
        if verdict.error is not None or verdict.result is not None:
            if admission.observes_outcomes:
                admission.outcome(ctx.principal, ctx, method, name, None, None, verdict.error, verdict.note)
            if verdict.error is not None:
                raise verdict.error
            raise Answered(verdict.result)
        if verdict.params is not None:
            params.clear()
            params.update(verdict.params)
        if verdict.route is not None:
            route = verdict.route
        if verdict.wait is not None:
            raise Answered(None, verdict.wait, route)
        return route

    def route(self, ctx: RequestContext, method: str, kind: str, value: str, params: dict[str, Raw]) -> Route:
        """``resolve`` then ``admit``, for a request whose outcome nobody reports (a note left for
        it is dropped)."""
        return self.admit(ctx, method, value, self.resolve(kind, value, ctx), params)

    def route_noted(
        self, ctx: RequestContext, method: str, kind: str, value: str, params: dict[str, Raw]
    ) -> tuple[Route, Any]:
        """``resolve`` then ``admit``, the general path's one call per routed request: the route,
        and the note admission left for this request's outcome (None: none)."""
        route = self.resolve(kind, value, ctx)
        verdict = self.admit_call(ctx.principal, ctx, method, value, route, params)
        if verdict is None:
            return route, None
        return self.apply(ctx, method, value, route, params, verdict), verdict.note

    def route_ref(self, ctx: RequestContext, params: dict[str, Raw]) -> Route:
        """``completion/complete``: routed by ``params.ref`` (a prompt name or a resource
        template URI), admitted, and ``ref`` rewritten to the backend's own name."""
        ref = decode_any(params["ref"])
        if not isinstance(ref, dict):
            raise InvalidParams("params.ref must be an object")
        key = "name" if ref.get("type") == "ref/prompt" else "uri"
        value = ref.get(key)
        if not isinstance(value, str):
            raise InvalidParams(f"params.ref.{key} must be a string")
        router = self.catalog.snapshot.router
        route = router.resolve_prompt(value) if key == "name" else router.resolve_uri(value)
        if route is None:
            raise InvalidParams(f"unknown completion target: {value}", reason="unknown_ref", data={key: value})
        route = self.admit(ctx, "completion/complete", value, route, params)
        params["ref"] = Raw(encode({**ref, key: route[1]}))
        return route


def params_raw(msg: Message, key: str, ctx: RequestContext | None = None) -> tuple[dict[str, Raw], Raw]:
    """Params as ``{key: raw}`` (decoded already by the envelope checks, if ``ctx`` has them),
    and the raw value under ``key``; -32602 when there is no such key."""
    if msg.params is UNSET:
        raise InvalidParams(f"params.{key} is required")
    try:
        if ctx is not None and ctx.params is not None:
            params, ctx.params = ctx.params, None
        else:
            params = decode_params(msg.params)
        return params, params[key]
    except (msgspec.ValidationError, msgspec.DecodeError, KeyError):
        raise InvalidParams(f"params must be an object with {key!r}") from None


def params_with(msg: Message, key: str, ctx: RequestContext | None = None) -> tuple[dict[str, Raw], str]:
    """Params as ``{key: raw}`` plus the decoded string under ``key``."""
    params, raw = params_raw(msg, key, ctx)
    try:
        value: Any = _decode_str(raw)
    except msgspec.ValidationError:
        raise InvalidParams(f"params.{key} must be a string") from None
    except msgspec.DecodeError:
        raise InvalidParams(f"params must be an object with a string {key!r}") from None
    return params, value

