# cython: language_level=3
"""Compiled namespace routing table (hot path). Pure-Python twin: ``_router_py.py``.

Built once per catalog snapshot; queried once per routed request. Result tuples
are made at add time, so a lookup allocates nothing.
"""

cimport cython

__all__ = ["Router", "prefix_uri"]


cpdef str prefix_uri(str namespace, str uri):
    """The exposed form of a backend's resource URI: ``namespace+uri``."""
    return namespace + "+" + uri


@cython.final
cdef class Router:
    """Prefixed name -> (backend, original name); exposed URI -> (backend, original URI)."""

    cdef dict _tools
    cdef dict _prompts
    cdef dict _namespaces
    cdef object _passthrough

    def __init__(self, passthrough=None):
        self._tools = {}
        self._prompts = {}
        self._namespaces = {}
        self._passthrough = passthrough

    cpdef add_tool(self, str exposed, object backend, str original):
        """Route tool ``exposed`` to ``original`` on ``backend`` (ValueError if taken)."""
        if exposed in self._tools:
            raise ValueError(f"duplicate tool name {exposed!r}")
        self._tools[exposed] = (backend, original)

    cpdef add_prompt(self, str exposed, object backend, str original):
        """Route prompt ``exposed`` to ``original`` on ``backend`` (ValueError if taken)."""
        if exposed in self._prompts:
            raise ValueError(f"duplicate prompt name {exposed!r}")
        self._prompts[exposed] = (backend, original)

    cpdef add_namespace(self, str namespace, object backend):
        """Route URIs ``namespace+...`` to ``backend`` (ValueError if taken)."""
        if namespace in self._namespaces:
            raise ValueError(f"duplicate namespace {namespace!r}")
        self._namespaces[namespace] = backend

    cpdef object resolve_tool(self, str exposed):
        """``(backend, original name)`` or None."""
        return self._tools.get(exposed)

    cpdef object resolve_prompt(self, str exposed):
        """``(backend, original name)`` or None."""
        return self._prompts.get(exposed)

    cpdef object resolve_uri(self, str uri):
        """``(backend, original URI)`` for ``namespace+original``, or None."""
        cdef Py_ssize_t plus, colon
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
        return (backend, uri[plus + 1:])

    @property
    def tool_count(self):
        """Number of routed tools."""
        return len(self._tools)

    @property
    def prompt_count(self):
        """Number of routed prompts."""
        return len(self._prompts)
