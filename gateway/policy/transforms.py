"""Argument transforms: ``inject`` and ``defaults`` of ``[backends.NAME.tools.TOOL]`` applied to calls.

``Transforms`` is the ``Admission`` that rewrites a ``tools/call``'s ``arguments`` after RBAC
(which decides on what the client sent) and before limits and the cache (which must see the
call as it will be sent, so two calls that become the same call meet in the cache):

- ``inject = { arg = value }``: ``arg`` is set to ``value`` on every call, whatever the client
  sent (a client that sends ``arg`` itself gets the forced value: its own is dropped, and
  since the arguments are decoded into one object, a key sent twice cannot smuggle a second
  value past it).
- ``defaults = { arg = value }``: ``arg`` is set to ``value`` when the client did not send it
  (absent; an explicit ``null`` is a value the client gave, and is kept).

The listed schemas say the same (``gateway.catalog.shaping``): injected arguments are not
listed, defaulted ones are optional and show their ``default``.

Compiled once per config snapshot: a dict of backend name -> the backend's own tool name ->
the values, pre-encoded as JSON. A call to a backend with no transform costs one dict lookup,
and the chain holds no ``Transforms`` at all when no backend has any. A transformed call's
arguments are decoded one level deep (each value stays its raw JSON, so numbers and strings
pass through byte for byte), merged, and encoded once; ``Verdict(params=...)`` carries them.

Arguments that are not a JSON object are refused with -32602 (``invalid_arguments``) rather
than passed on: forwarding them would let a client skip the injected values (a backend might
read an array or a string its own way). Absent or ``null`` arguments are an empty object, so
the injected and default values are still sent. The calls are matched by the backend's own
name (the route), so an alias and passthrough's unlisted names are transformed alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import InvalidParams
from gateway.policy.admission import Admission, Route, Verdict
from gateway.protocol.jsonrpc import Raw, decode_any, decode_params, encode

if TYPE_CHECKING:
    from gateway.config import BackendConfig, Config

__all__ = ["Transform", "Transforms", "build_transforms"]


class Transform:
    """One tool's ``inject`` and ``defaults``, as raw JSON values."""

    __slots__ = ("inject", "defaults")

    def __init__(self, inject: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        self.inject = {key: Raw(encode(value)) for key, value in inject.items()}
        self.defaults = {key: Raw(encode(value)) for key, value in defaults.items()}

    def arguments(self, given: dict[str, Raw]) -> Raw:
        """The arguments to send: the defaults, then what the client gave, then the injected values."""
        return Raw(encode({**self.defaults, **given, **self.inject}))


class Transforms(Admission):
    """Rewrites the ``arguments`` of the ``tools/call``s a transform names (see the module docstring)."""

    __slots__ = ("by_backend",)

    def __init__(self, backends: Mapping[str, BackendConfig]) -> None:
        self.by_backend: dict[str, dict[str, Transform]] = {}
        """Backend name -> the backend's own tool name -> its transform (only backends that have one)."""
        for name, backend in backends.items():
            tools = {tool: Transform(s.inject, s.defaults) for tool, s in backend.tools.items() if s.inject or s.defaults}
            if tools:
                self.by_backend[name] = tools

    def admit(
        self, principal: Any, ctx: Any, method: str, name: str, route: Route, params: dict[str, Raw]
    ) -> Verdict | None:
        tools = self.by_backend.get(route[0].name)
        if tools is None:
            return None
        transform = tools.get(route[1])
        if transform is None or method != "tools/call":  # prompts share the name space of the routes
            return None
        raw = params.get("arguments")
        given = _arguments(raw) if raw is not None else {}
        if given is None:
            error = InvalidParams(
                f"params.arguments of tool {name!r} must be an object", reason="invalid_arguments", data={"name": name}
            )
            return Verdict(error=error)
        return Verdict(params={**params, "arguments": transform.arguments(given)})


def _arguments(raw: Raw) -> dict[str, Raw] | None:
    """The client's arguments one level deep, ``{}`` for ``null``; None when they are not an object."""
    try:
        return decode_params(raw)
    except msgspec.ValidationError:  # JSON, but not an object
        return {} if decode_any(raw) is None else None
    except msgspec.DecodeError:
        return None


def build_transforms(config: Config) -> Transforms | None:
    """The transforms of the enabled backends' tool tables; None when no tool has ``inject`` or ``defaults``."""
    transforms = Transforms({name: b for name, b in config.backends.items() if b.enabled})
    return transforms if transforms.by_backend else None
