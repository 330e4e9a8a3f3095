"""Modules compiled by Cython in pure-Python mode: one source that is also its own twin.

The request path's per-call objects (the HTTP protocol and its reply cycles,
the request, the deadlines, the express lane's call, the backend connection and
its exchanges) live in ordinary modules where they belong. Each module named in
``MODULES`` has a ``.pxd`` file beside it that declares those classes as
extension types with typed attributes and C-level methods; ``setup.py`` compiles
the ``.py`` with it into an extension module beside the source, which the import
system then prefers. Attribute access becomes a C struct read and calls between
declared methods C calls, without a second copy of the code to keep in step.

The interpreted ``.py`` is the pure-Python twin. ``GATEWAY_NO_EXTENSIONS=1``
(``gateway._fast`` calls ``use_sources``) makes these imports load it instead,
and so does ``GATEWAY_PURE_MODE_SOURCES=1``, which keeps the ``.pyx`` modules
compiled (to measure what compiling these modules buys, and only that);
``tests/test_pure_mode.py`` runs the same tests against both, and checks that the
compiled modules really loaded and are not older than their sources.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

__all__ = ["MODULES", "compiled", "use_sources"]

# Keep in step with PURE_MODE in setup.py (a test checks).
MODULES = (
    "gateway.server.api",
    "gateway.server.protocol",
    "gateway.timers",
    "gateway.mcp.sessions",
    "gateway.mcp.express",
    "gateway.backends.http",
)


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds the ``.py`` of a module in ``MODULES`` ahead of its compiled extension."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES:
            return None
        leaf = name.rpartition(".")[2] + ".py"
        for entry in path or sys.path:  # type: ignore[attr-defined]
            source = os.path.join(entry, leaf)
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(name, source)
        return None


def use_sources() -> None:
    """From now on, import the modules in ``MODULES`` from their ``.py`` (the twin)."""
    if not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst())


def compiled(module: ModuleType) -> bool:
    """True if ``module`` was loaded from a compiled extension, not from its source."""
    return (module.__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
