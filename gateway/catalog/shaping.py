"""Tool shaping: what of one backend's tool list is exposed, under which name, with which
description and input schema (``[backends.NAME.tools.TOOL]``, ``hide_destructive``, ``read_only``).

``ToolShaping`` is compiled once from a backend's config and applied by the catalog to that
backend's fetched list at every rebuild (start, ``list_changed``, a backend going up or down),
so the listed pages (both eras, and RBAC's filtered pages, which filter the listed names) and
the routing table always come from the same shaping: lists and calls never disagree.

What each setting means:

- ``hide = true``: the tool is neither listed nor routed; a call to it is answered exactly as
  a call to a name that does not exist (the catalog simply does not know it).
- ``hide_destructive = true`` (per backend): hides every tool that may be destructive by its
  annotations. MCP's defaults are ``readOnlyHint: false`` and ``destructiveHint: true``, and
  ``destructiveHint`` means something only when ``readOnlyHint`` is false; so a tool is
  destructive unless ``readOnlyHint`` is true or ``destructiveHint`` is false. Only the JSON
  booleans count: a hint of any other type is treated as absent (the safe reading).
- ``read_only = true`` (per backend): exposes only the tools annotated ``readOnlyHint: true``.
  The annotation rules apply whatever the tool's own table says (an alias does not unhide).
- ``alias``: the tool is exposed as ``namespace + separator + alias``, and the routing table
  sends that name to the backend's own one; the backend's own name is no longer exposed. An
  alias may take the name of a tool that is hidden or aliased away itself (a swap). An alias
  that collides with another tool of the backend that is still exposed under its own name
  loses: that tool keeps its name, and the aliased tool is not exposed at all (neither name,
  so nothing appears under a name the operator did not choose), with a warning in the log
  (logger ``gateway.catalog``, once per collision). The config loader refuses the collisions
  it can see (two aliases alike, an alias naming a configured tool); this one depends on
  what the backend lists.
- ``description``: listed instead of the backend's.
- ``inject``: removed from the listed ``inputSchema`` (from ``properties`` and ``required``);
  the values are forced on every call by ``gateway.policy.transforms``.
- ``defaults``: no longer ``required`` in the listed schema (the gateway fills them), and shown
  as the property's ``default``; filled on calls by ``gateway.policy.transforms``.

A tool whose listed schema differs from the backend's keeps the backend's own schema next to
it (``Shaped.upstream_schema``): the stateless era's ``x-mcp-header`` mirroring toward the
backend needs the arguments the gateway fills, and the check of the client's own headers
must leave them out (see ``CatalogSnapshot.header_annotations``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from gateway.config import BackendConfig, ToolShapeConfig

__all__ = ["Shaped", "ToolShaping", "destructive", "read_only"]

log = logging.getLogger("gateway.catalog")

_NOTHING: frozenset[str] = frozenset()


class Shaped(NamedTuple):
    """One exposed tool of a backend, as shaped."""

    original: str
    """The backend's own name: what calls are sent with."""
    name: str
    """The name to expose, before namespacing: the alias, or the original."""
    item: dict[str, Any]
    """The listed tool (description and ``inputSchema`` shaped); its ``name`` is set by the catalog."""
    upstream_schema: Any
    """The backend's own ``inputSchema`` when the listed one differs; None when they are the same."""
    filled: frozenset[str]
    """The arguments the gateway fills on calls (``inject`` and ``defaults``)."""


def _annotations(tool: dict[str, Any]) -> dict[str, Any]:
    found = tool.get("annotations")
    return found if isinstance(found, dict) else {}


def read_only(tool: dict[str, Any]) -> bool:
    """Whether the tool is annotated ``readOnlyHint: true`` (the JSON boolean)."""
    return _annotations(tool).get("readOnlyHint") is True


def destructive(tool: dict[str, Any]) -> bool:
    """Whether the tool may be destructive by MCP's annotation defaults (see the module docstring)."""
    annotations = _annotations(tool)
    return annotations.get("readOnlyHint") is not True and annotations.get("destructiveHint") is not False


def _shaped_schema(schema: Any, shape: ToolShapeConfig) -> Any:
    """The listed ``inputSchema``: injected arguments removed, defaulted ones optional with their
    ``default`` shown. A schema that is not an object (a backend's odd one) is left as it is."""
    if not isinstance(schema, dict):
        return schema
    listed = dict(schema)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        kept: dict[str, Any] = {}
        for key, value in properties.items():
            if key in shape.inject:
                continue
            if key in shape.defaults and isinstance(value, dict):
                value = {**value, "default": shape.defaults[key]}
            kept[key] = value
        listed["properties"] = kept
    required = schema.get("required")
    if isinstance(required, list):
        still = [r for r in required if r not in shape.inject and r not in shape.defaults]
        if still:
            listed["required"] = still
        else:
            del listed["required"]  # an empty "required" is invalid in older JSON Schema drafts
    return listed


class ToolShaping:
    """The shaping of one backend's tool list, compiled from its config (see the module docstring)."""

    __slots__ = ("backend", "shapes", "hide_destructive", "read_only", "active", "_warned")

    def __init__(self, backend: str, config: BackendConfig) -> None:
        self.backend = backend
        self.shapes: dict[str, ToolShapeConfig] = dict(config.tools)
        """The backend's own tool name -> its ``[backends.NAME.tools.TOOL]`` table."""
        self.hide_destructive = config.hide_destructive
        self.read_only = config.read_only
        self.active = bool(self.shapes) or self.hide_destructive or self.read_only
        """False when there is nothing to shape: ``shape`` then passes the list through."""
        self._warned: set[tuple[str, ...]] = set()

    @property
    def hides(self) -> bool:
        """Whether some tool may be left out or renamed (hidden, by annotations, or aliased)."""
        return self.hide_destructive or self.read_only or any(s.hide or s.alias for s in self.shapes.values())

    def exposes(self, tool: dict[str, Any]) -> bool:
        """Whether ``tool`` (as the backend lists it) is exposed at all, under some name."""
        shape = self.shapes.get(str(tool.get("name", "")))
        if shape is not None and shape.hide:
            return False
        if self.read_only and not read_only(tool):
            return False
        return not (self.hide_destructive and destructive(tool))

    def shape(self, tools: Iterable[dict[str, Any]]) -> list[Shaped]:
        """The backend's tools (its own list, in its order) as exposed: hidden ones left out,
        aliases, descriptions and schemas applied."""
        listed = list(tools)
        if not self.active:
            return [Shaped(str(t.get("name", "")), str(t.get("name", "")), t, None, _NOTHING) for t in listed]
        exposed = [t for t in listed if self.exposes(t)]
        # Names still exposed as themselves: an alias may not take one of these.
        own = {str(t.get("name", "")) for t in exposed if not self._alias_of(str(t.get("name", "")))}
        out: list[Shaped] = []
        for tool in exposed:
            original = str(tool.get("name", ""))
            shape = self.shapes.get(original)
            if shape is None:
                out.append(Shaped(original, original, tool, None, _NOTHING))
                continue
            name = shape.alias or original
            if name != original and name in own:
                self._warn_once(
                    ("alias", original, name),
                    "backend %r: tool %r has alias %r, which is the name of another tool of this backend, "
                    "still exposed as itself; that tool keeps its name and %r is not exposed (choose another alias)",
                    self.backend, original, name, original,
                )
                continue
            out.append(self._shaped(tool, original, name, shape))
        self._warn_unknown({str(t.get("name", "")) for t in listed})
        return out

    def _alias_of(self, original: str) -> str | None:
        shape = self.shapes.get(original)
        return shape.alias if shape is not None and shape.alias != original else None

    def _shaped(self, tool: dict[str, Any], original: str, name: str, shape: ToolShapeConfig) -> Shaped:
        item = tool
        upstream = None
        filled = _NOTHING
        if shape.description is not None:
            item = {**item, "description": shape.description}
        if shape.inject or shape.defaults:
            upstream = tool.get("inputSchema")
            item = {**item, "inputSchema": _shaped_schema(upstream, shape)}
            filled = frozenset(shape.inject) | frozenset(shape.defaults)
        return Shaped(original, name, item, upstream, filled)

    def _warn_unknown(self, names: set[str]) -> None:
        """A tool table naming no tool the backend lists is most likely a typo: say so, once."""
        if not names:
            return  # nothing listed (yet): the backend is down or has no tools
        for tool in self.shapes:
            if tool not in names:
                self._warn_once(
                    ("unknown", tool),
                    "backend %r: [backends.%s.tools.%s] names no tool the backend lists (its own names, not the exposed ones)",
                    self.backend, self.backend, tool,
                )

    def _warn_once(self, key: tuple[str, ...], message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
