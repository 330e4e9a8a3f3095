"""The aggregated catalog: every backend's tools, prompts, resources and
resource templates under namespaces, with the routing table built from them.

The catalog is slow-path state. Lists are fetched from backends (all of their
pages) when the gateway starts, when a backend announces ``list_changed``, and
when a backend goes up or down. Each rebuild makes a new immutable
``CatalogSnapshot`` (routing table + pre-encoded result pages) and swaps one
reference, so a request in flight keeps the snapshot it started with and a
list request costs one dict lookup and a slice.

Order is deterministic: backends sorted by name, each backend's items in the
order the backend gave them. A backend that is down or fails to list is left
out of the aggregate (and logged); the others are unaffected.

Each backend's tools pass its ``ToolShaping`` (``gateway.catalog.shaping``: hidden
tools, aliases, descriptions, shaped schemas) at every rebuild, and the pages and
the routing table are both made from what it answers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from gateway._fast import Router, prefix_uri
from gateway.backends.base import Backend, BackendCall, BackendState
from gateway.errors import GatewayError, InvalidParams
from gateway.protocol.jsonrpc import UNSET, Raw, decode_any, encode
from gateway.catalog.names import expose_name
from gateway.catalog.shaping import Shaped, ToolShaping
from gateway.protocol.stateless import x_mcp_headers

__all__ = ["LIST_METHODS", "NO_HINT", "Catalog", "CatalogSnapshot", "Hint", "hint_of", "merge_hints"]

log = logging.getLogger("gateway.catalog")

# list method -> (result key, field that carries the name or URI, capability)
LIST_METHODS: dict[str, tuple[str, str, str]] = {
    "tools/list": ("tools", "name", "tools"),
    "prompts/list": ("prompts", "name", "prompts"),
    "resources/list": ("resources", "uri", "resources"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", "resources"),
}

# Notification -> the list methods it invalidates.
CHANGE_NOTIFICATIONS: dict[str, tuple[str, ...]] = {
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
}

_UNSET: Any = object()
_MAX_BACKEND_PAGES = 100  # a backend that paginates forever is cut off here
_CURSOR_PREFIX = b"gw1:"


def encode_cursor(offset: int) -> str:
    """An opaque cursor for the page starting at ``offset``."""
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + str(offset).encode()).decode()


def decode_cursor(cursor: str) -> int:
    """The offset in a cursor made by ``encode_cursor``; InvalidParams otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode())
        if raw.startswith(_CURSOR_PREFIX):
            offset = int(raw[len(_CURSOR_PREFIX) :])
            if offset >= 0:
                return offset
    except (ValueError, TypeError):
        pass
    raise InvalidParams("invalid pagination cursor", reason="invalid_cursor")


Hint = tuple[int, str]
"""A list result's cache hint in the stateless era: ``(ttlMs, cacheScope)``."""

NO_HINT: Hint = (0, "private")
"""Used when no backend gave a hint (handshake-era backends): do not cache, per user."""


def merge_hints(hints: Iterable[Hint]) -> Hint:
    """The aggregate's hint: the smallest ttl, and private if any part is private."""
    found = list(hints)
    if not found:
        return NO_HINT
    ttl = min(h[0] for h in found)
    scope = "private" if any(h[1] != "public" for h in found) else "public"
    return ttl, scope


def hint_of(result: dict[str, Any]) -> Hint | None:
    """The ``(ttlMs, cacheScope)`` a stateless backend put on a result, if valid."""
    ttl, scope = result.get("ttlMs"), result.get("cacheScope")
    if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0 and scope in ("public", "private"):
        return ttl, scope
    return None


class CatalogSnapshot:
    """One immutable view of the aggregate: routing table and encoded pages.

    Pages are encoded twice: plain for the handshake era, and with
    ``resultType``/``ttlMs``/``cacheScope`` for the stateless era.
    """

    __slots__ = (
        "router", "items", "_pages", "_stateless_pages", "page_size", "generation", "hints", "upstream",
        "_annotations", "_upstream_annotations",
    )

    def __init__(
        self,
        router: Router,
        items: dict[str, list[dict[str, Any]]],
        page_size: int,
        generation: int,
        hints: dict[str, Hint] | None = None,
        upstream: dict[str, tuple[Any, frozenset[str]]] | None = None,
    ) -> None:
        self.router = router
        self.items = items
        self.page_size = page_size
        self.generation = generation
        self.hints = hints or {}
        self.upstream = upstream or {}
        """Exposed tool name -> (the backend's own ``inputSchema``, the arguments the gateway fills),
        for the tools whose listed schema was shaped (``inject``, ``defaults``)."""
        self._annotations: dict[str, Any] | None = None
        self._upstream_annotations: dict[str, Any] = {}
        self._pages = {method: self._encode_pages(method, page_size, None) for method in LIST_METHODS}
        self._stateless_pages = {
            method: self._encode_pages(method, page_size, self.hints.get(method, NO_HINT)) for method in LIST_METHODS
        }

    def _encode_pages(self, method: str, page_size: int, hint: Hint | None) -> list[bytes]:
        return _encode_pages(LIST_METHODS[method][0], self.items.get(method, []), page_size, hint)

    def header_annotations(self, tool: str) -> list[tuple[tuple[str, ...], str, str]] | None:
        """The ``x-mcp-header`` annotations of an exposed tool's listed input schema (built once per
        snapshot): what a client mirrors in its ``Mcp-Param-*`` headers. The arguments the gateway
        fills (``inject``, ``defaults``) are left out: the client did not send them, and the
        arguments it is checked against are the ones admission rewrote."""
        if self._annotations is None:
            found = {str(t.get("name")): x_mcp_headers(t.get("inputSchema")) for t in self.items.get("tools/list", ())}
            for name, (_, filled) in self.upstream.items():
                own = found.get(name)
                if own:
                    found[name] = [a for a in own if a[0][0] not in filled]
            self._annotations = found
        return self._annotations.get(tool)

    def upstream_header_annotations(self, tool: str) -> list[tuple[tuple[str, ...], str, str]] | None:
        """The ``x-mcp-header`` annotations of the backend's own input schema of an exposed tool:
        what the ``Mcp-Param-*`` headers toward a stateless backend mirror (the filled arguments
        included). The same as ``header_annotations`` for a tool whose schema is not shaped."""
        shaped = self.upstream.get(tool)
        if shaped is None:
            return self.header_annotations(tool)
        found = self._upstream_annotations.get(tool, _UNSET)
        if found is _UNSET:
            found = self._upstream_annotations[tool] = x_mcp_headers(shaped[0])
        return found

    def page(self, method: str, cursor: str | None, stateless: bool = False) -> bytes:
        """The encoded result of ``method`` for ``cursor`` (None: the first page)."""
        return self.page_in(self._stateless_pages[method] if stateless else self._pages[method], cursor)

    def page_in(self, pages: list[bytes], cursor: str | None) -> bytes:
        """The page of ``pages`` (this snapshot's, or ``filtered_pages``) that ``cursor`` names."""
        if cursor is None:
            return pages[0]
        offset = decode_cursor(cursor)
        index, rest = divmod(offset, self.page_size)
        if rest or index >= len(pages):
            raise InvalidParams("pagination cursor out of range", reason="invalid_cursor")
        return pages[index]

    def filtered_pages(
        self, method: str, keep: Callable[[dict[str, Any]], bool], stateless: bool = False, private: bool = False
    ) -> list[bytes] | None:
        """The pages of ``method`` holding only the items ``keep`` accepts (same order, page size,
        cursor format and hints as ``page``), to be served with ``page_in``; None when they would
        be the snapshot's own pages. ``private``: the list depends on the caller, so a stateless
        page says ``cacheScope: private`` even where the backends said ``public``."""
        items = self.items.get(method, [])
        kept = [item for item in items if keep(item)]
        hint = self.hints.get(method, NO_HINT) if stateless else None
        if private and hint is not None and hint[1] != "private":
            hint = (hint[0], "private")
        elif len(kept) == len(items):
            return None
        return _encode_pages(LIST_METHODS[method][0], kept, self.page_size, hint)


def _encode_pages(key: str, items: list[dict[str, Any]], page_size: int, hint: Hint | None) -> list[bytes]:
    """``items`` as encoded list results of ``page_size`` items, each but the last with its
    ``nextCursor``; with ``hint``, the stateless era's ``resultType``/``ttlMs``/``cacheScope``."""
    pages = []
    for start in range(0, max(len(items), 1), page_size):
        result: dict[str, Any] = {key: items[start : start + page_size]}
        if start + page_size < len(items):
            result["nextCursor"] = encode_cursor(start + page_size)
        if hint is not None:
            result.update(resultType="complete", ttlMs=hint[0], cacheScope=hint[1])
        pages.append(encode(result))
    return pages


class Catalog:
    """Fetches backends' lists and keeps the current ``CatalogSnapshot``.

    ``on_change(methods)`` is called after a rebuild with the list methods whose
    aggregate changed, so the front can send ``list_changed`` to clients.
    """

    def __init__(
        self,
        backends: dict[str, Backend],
        *,
        separator: str = "__",
        passthrough: bool = False,
        page_size: int = 100,
        list_timeout: float = 5.0,
        on_change: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.backends = backends
        self.separator = separator
        self.passthrough = passthrough
        self.page_size = page_size
        self.list_timeout = list_timeout
        self.on_change = on_change
        # Called with a backend's name after its lists were fetched again (its list_changed, a
        # change of its state) and, from the front, on its resources/updated: what was learnt
        # from it may be stale (the result cache, gateway.policy.cache, drops its entries).
        self.on_backend_change: list[Callable[[str], None]] = []
        # backend name -> list method -> that backend's own items (unprefixed)
        self._fetched: dict[str, dict[str, list[dict[str, Any]]]] = {}
        # backend name -> list method -> the cache hint its first page carried
        self._hints: dict[str, dict[str, Hint]] = {}
        self._lock = asyncio.Lock()
        self._generation = 0
        # backend name -> the shaping of its tool list, compiled once from its config
        self._shaping = {name: ToolShaping(name, b.config) for name, b in backends.items()}
        # The kill switch (set_disabled): exposed tool names and backend names left out of every
        # list and of the routing table, so lists and calls agree from the same snapshot.
        self.disabled_tools: frozenset[str] = frozenset()
        self.disabled_backends: frozenset[str] = frozenset()
        # (Under passthrough the config refuses hiding and aliases: unlisted names reach the backend.)
        self.snapshot = self._build()

    async def refresh(self, names: Iterable[str] | None = None, methods: Iterable[str] | None = None) -> None:
        """Refetch ``methods`` (default all) of backends ``names`` (default all) and rebuild."""
        names = list(self.backends) if names is None else list(names)
        methods = list(LIST_METHODS) if methods is None else list(methods)
        async with self._lock:
            await asyncio.gather(*(self._fetch_backend(self.backends[n], methods) for n in names))
            old = self.snapshot
            self.snapshot = self._build()
            changed = {m for m in LIST_METHODS if old.items.get(m) != self.snapshot.items.get(m)}
        for name in names:
            self.backend_changed(name)
        if changed and self.on_change is not None:
            self.on_change(changed)

    def set_disabled(self, tools: Iterable[str], backends: Iterable[str]) -> None:
        """The kill switch: rebuild now without these exposed tools and backends (they are neither
        listed nor routed; ``disabled_reason`` explains a call to one), and announce the change."""
        self.disabled_tools = frozenset(tools)
        self.disabled_backends = frozenset(backends)
        old = self.snapshot
        self.snapshot = self._build()
        changed = {m for m in LIST_METHODS if old.items.get(m) != self.snapshot.items.get(m)}
        if changed and self.on_change is not None:
            self.on_change(changed)

    def replace_backends(self, backends: dict[str, Backend], rebuild: bool = True) -> None:
        """A reload: serve ``backends`` from now on (kept ones with what was fetched of them, new
        ones empty until ``refresh`` fetches them), with each one's shaping compiled anew."""
        self.backends = backends
        self._shaping = {name: ToolShaping(name, b.config) for name, b in backends.items()}
        for gone in set(self._fetched) - set(backends):
            del self._fetched[gone]
            self._hints.pop(gone, None)
        if rebuild:
            old = self.snapshot
            self.snapshot = self._build()
            changed = {m for m in LIST_METHODS if old.items.get(m) != self.snapshot.items.get(m)}
            if changed and self.on_change is not None:
                self.on_change(changed)

    def disabled_reason(self, kind: str, value: str) -> str | None:
        """Why an exposed name the routing table does not know is refused by the kill switch (its
        tool, or the backend it belongs to, is disabled); None when it is not."""
        if kind == "tool" and value in self.disabled_tools:
            return f"tool {value!r} is disabled"
        for name in self.disabled_backends:
            backend = self.backends.get(name)
            if backend is None:
                continue
            if self.passthrough:
                return f"backend {name!r} is disabled"
            namespace = backend.config.namespace or name
            if value.startswith(namespace + (self.separator if kind != "resource" else "+")):
                return f"backend {name!r} is disabled"
        return None

    def backend_changed(self, name: str) -> None:
        """Tell the ``on_backend_change`` hooks that backend ``name`` changed (its lists were fetched
        again, or it has just announced a change: what was learnt from it may be stale)."""
        for hook in self.on_backend_change:
            hook(name)

    async def _fetch_backend(self, backend: Backend, methods: list[str]) -> None:
        fetched = self._fetched.setdefault(backend.name, {})
        if backend.state is not BackendState.READY:
            return  # keep what it had: its routes stay (calls get a clear "down" error), its items are not listed
        capabilities = (backend.server_info or {}).get("capabilities") or {}
        for method in methods:
            if LIST_METHODS[method][2] not in capabilities:
                fetched.pop(method, None)
                continue
            try:
                fetched[method], hint = await self._fetch_all_pages(backend, method)
                hints = self._hints.setdefault(backend.name, {})
                if hint is None:
                    hints.pop(method, None)
                else:
                    hints[method] = hint
            except (GatewayError, asyncio.TimeoutError, ValueError, msgspec.DecodeError) as exc:
                log.warning("backend %r: %s failed, its items are left out: %s", backend.name, method, exc)
                fetched.pop(method, None)

    async def _fetch_all_pages(self, backend: Backend, method: str) -> tuple[list[dict[str, Any]], Hint | None]:
        key = LIST_METHODS[method][0]
        items: list[dict[str, Any]] = []
        hint: Hint | None = None
        cursor = None
        for _ in range(_MAX_BACKEND_PAGES):
            params = Raw(encode({"cursor": cursor})) if cursor else UNSET
            msg = await backend.request(BackendCall(method, params, timeout=self.list_timeout))
            if msg.result is UNSET:
                raise ValueError(f"error result: {bytes(msg.error) if msg.error is not UNSET else b'?'!r}")
            result = decode_any(msg.result)
            page = result.get(key) if isinstance(result, dict) else None
            if not isinstance(page, list):
                raise ValueError(f"result has no {key!r} list")
            items.extend(item for item in page if isinstance(item, dict))
            if hint is None:
                hint = hint_of(result)
            cursor = result.get("nextCursor")
            if not cursor:
                return items, hint
        log.warning("backend %r: %s has more than %d pages; truncated", backend.name, method, _MAX_BACKEND_PAGES)
        return items, hint

    def _build(self) -> CatalogSnapshot:
        self._generation += 1
        order = sorted(self.backends)
        if self.passthrough:
            return self._build_passthrough(order[0] if order else None)
        router = Router()
        items: dict[str, list[dict[str, Any]]] = {m: [] for m in LIST_METHODS}
        upstream: dict[str, tuple[Any, frozenset[str]]] = {}
        taken_tools: set[str] = set()
        taken_prompts: set[str] = set()
        disabled = self.disabled_tools
        for name in order:
            if name in self.disabled_backends:
                continue  # the kill switch: nothing of it listed or routed
            backend = self.backends[name]
            namespace = backend.config.namespace or name
            router.add_namespace(namespace, backend)
            fetched = self._fetched.get(name, {})
            if backend.state is not BackendState.READY:
                # Down: its last known tools and prompts still route (to a clear
                # BackendUnavailable) but nothing of it is listed until it is back.
                self._route_only(router, backend, namespace, fetched, taken_tools, taken_prompts)
                continue
            for shaped in self._shaped_tools(name, fetched):
                exposed = expose_name(namespace, shaped.name, self.separator, taken_tools)
                if exposed in disabled:
                    continue
                router.add_tool(exposed, backend, shaped.original)
                items["tools/list"].append({**shaped.item, "name": exposed})
                if shaped.upstream_schema is not None or shaped.filled:
                    upstream[exposed] = (shaped.upstream_schema, shaped.filled)
            for prompt in fetched.get("prompts/list", ()):
                exposed = expose_name(namespace, str(prompt.get("name", "")), self.separator, taken_prompts)
                router.add_prompt(exposed, backend, prompt.get("name", ""))
                items["prompts/list"].append({**prompt, "name": exposed})
            for res in fetched.get("resources/list", ()):
                items["resources/list"].append({**res, "uri": prefix_uri(namespace, str(res.get("uri", "")))})
            for tpl in fetched.get("resources/templates/list", ()):
                uri_template = prefix_uri(namespace, str(tpl.get("uriTemplate", "")))
                items["resources/templates/list"].append({**tpl, "uriTemplate": uri_template})
        return CatalogSnapshot(router, items, self.page_size, self._generation, self._merged_hints(order), upstream)

    def _shaped_tools(self, name: str, fetched: dict[str, list[dict[str, Any]]]) -> list[Shaped]:
        """Backend ``name``'s fetched tools as its shaping exposes them."""
        return self._shaping[name].shape(fetched.get("tools/list", ()))

    def _merged_hints(self, names: list[str]) -> dict[str, Hint]:
        """Per list method, the hint of the aggregate over the backends that are listed."""
        listed = [n for n in names if self.backends[n].state is BackendState.READY]
        merged: dict[str, Hint] = {}
        for method in LIST_METHODS:
            parts = [self._hints.get(n, {}).get(method) for n in listed if method in self._fetched.get(n, {})]
            merged[method] = NO_HINT if any(p is None for p in parts) else merge_hints(p for p in parts if p)
        return merged

    def _route_only(
        self,
        router: Router,
        backend: Backend,
        namespace: str,
        fetched: dict[str, list[dict[str, Any]]],
        taken_tools: set[str],
        taken_prompts: set[str],
    ) -> None:
        for shaped in self._shaped_tools(backend.name, fetched):
            exposed = expose_name(namespace, shaped.name, self.separator, taken_tools)
            if exposed not in self.disabled_tools:
                router.add_tool(exposed, backend, shaped.original)
        for prompt in fetched.get("prompts/list", ()):
            name = str(prompt.get("name", ""))
            router.add_prompt(expose_name(namespace, name, self.separator, taken_prompts), backend, name)

    def _build_passthrough(self, name: str | None) -> CatalogSnapshot:
        if name in self.disabled_backends:
            name = None  # the kill switch: the only backend is off, nothing routes
        backend = self.backends[name] if name is not None else None
        router = Router(passthrough=backend)
        fetched = self._fetched.get(name, {}) if name is not None else {}
        tools = self._shaped_tools(name, fetched) if name is not None else []
        tools = [shaped for shaped in tools if shaped.name not in self.disabled_tools]
        upstream: dict[str, tuple[Any, frozenset[str]]] = {}
        for shaped in tools:
            try:
                router.add_tool(shaped.name, backend, shaped.original)
            except ValueError:
                log.warning("backend %r lists %r twice; the first one wins", name, shaped.name)
            if shaped.upstream_schema is not None or shaped.filled:
                upstream.setdefault(shaped.name, (shaped.upstream_schema, shaped.filled))
        for item in fetched.get("prompts/list", ()):
            try:
                router.add_prompt(str(item.get("name", "")), backend, str(item.get("name", "")))
            except ValueError:
                log.warning("backend %r lists %r twice; the first one wins", name, item.get("name"))
        listed = backend is not None and backend.state is BackendState.READY
        items = {m: list(fetched.get(m, ())) if listed else [] for m in LIST_METHODS}
        if listed:
            items["tools/list"] = [{**shaped.item, "name": shaped.name} for shaped in tools]
        hints = self._merged_hints([name]) if name is not None else {}
        return CatalogSnapshot(router, items, self.page_size, self._generation, hints, upstream)
