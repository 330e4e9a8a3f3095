"""Pure-Python twin of ``gateway._fast.router`` (same API, same behaviour).

Used when ``GATEWAY_NO_EXTENSIONS=1`` is set, on non-CPython interpreters, or
when the compiled module is missing. Tests run both and check that they agree.
"""

from __future__ import annotations

__all__ = ["Router", "prefix_uri"]


def prefix_uri(namespace: str, uri: str) -> str:
    """The exposed form of a backend's resource URI: ``namespace+uri``."""
    return namespace + "+" + uri


class Router:
    """Prefixed name -> (backend, original name); exposed URI -> (backend, original URI).

    Built once per catalog snapshot; every lookup is one dict access returning a
    tuple prepared when the entry was added.
    """

    __slots__ = ("_tools", "_prompts", "_namespaces", "_passthrough")

    def __init__(self, passthrough: object | None = None) -> None:
        self._tools: dict[str, tuple[object, str]] = {}
        self._prompts: dict[str, tuple[object, str]] = {}
        self._namespaces: dict[str, object] = {}
        self._passthrough = passthrough

    def add_tool(self, exposed: str, backend: object, original: str) -> None:
        """Route tool ``exposed`` to ``original`` on ``backend`` (ValueError if taken)."""
        if exposed in self._tools:
            raise ValueError(f"duplicate tool name {exposed!r}")
        self._tools[exposed] = (backend, original)

    def add_prompt(self, exposed: str, backend: object, original: str) -> None:
        """Route prompt ``exposed`` to ``original`` on ``backend`` (ValueError if taken)."""
        if exposed in self._prompts:
            raise ValueError(f"duplicate prompt name {exposed!r}")
        self._prompts[exposed] = (backend, original)

    def add_namespace(self, namespace: str, backend: object) -> None:
        """Route URIs ``namespace+...`` to ``backend`` (ValueError if taken)."""
        if namespace in self._namespaces:
            raise ValueError(f"duplicate namespace {namespace!r}")
        self._namespaces[namespace] = backend

    def resolve_tool(self, exposed: str) -> tuple[object, str] | None:
        """``(backend, original name)`` or None."""
        return self._tools.get(exposed)

    def resolve_prompt(self, exposed: str) -> tuple[object, str] | None:
        """``(backend, original name)`` or None."""
        return self._prompts.get(exposed)

    def resolve_uri(self, uri: str) -> tuple[object, str] | None:
        """``(backend, original URI)`` for ``namespace+original``, or None.

        The namespace ends at the first ``+`` that comes before the first ``:``
        (namespaces never contain ``+``; the original scheme may).
        """
        if self._passthrough is not None:
            return (self._passthrough, uri)
        plus = uri.find("+")
        if plus < 0:
            return None
        colon = uri.find(":")
        if 0 <= colon < plus:
            return None
        backend = self._namespaces.get(uri[:plus])
        if backend is None:
            return None
        return (backend, uri[plus + 1 :])

    @property
    def tool_count(self) -> int:
        """Number of routed tools."""
        return len(self._tools)

    @property
    def prompt_count(self) -> int:
        """Number of routed prompts."""
        return len(self._prompts)
