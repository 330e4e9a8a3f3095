"""Build script for the compiled hot path.

Each extension is listed explicitly: the ``.pyx`` modules of gateway/_fast, and
the pure-mode modules (``gateway._fast.pure_mode``): ordinary ``.py`` files
compiled with the ``.pxd`` beside them. ``GATEWAY_DEBUG_BUILD=1`` turns on line
tracing and writes Cython's HTML annotation next to each source, for profiling.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("GATEWAY_DEBUG_BUILD") == "1"

macros = [("CYTHON_TRACE", "1")] if DEBUG else []
extensions = [
    Extension("gateway._fast.router", ["gateway/_fast/router.pyx"], define_macros=macros),
    Extension("gateway._fast.http1", ["gateway/_fast/http1.pyx"], define_macros=macros),
]
# Keep in step with gateway._fast.pure_mode.MODULES (a test checks).
PURE_MODE = [
    "gateway.server.api",
    "gateway.server.protocol",
    "gateway.timers",
    "gateway.mcp.sessions",
    "gateway.mcp.express",
    "gateway.backends.http",
]
pure_mode = [Extension(name, [name.replace(".", "/") + ".py"], define_macros=macros) for name in PURE_MODE]
directives = {"language_level": "3", "linetrace": DEBUG, "embedsignature": True}

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives, annotate=DEBUG)
    # In pure-mode modules only the .pxd types things: the annotations are for readers and
    # type checkers (an async def annotated "-> _Conn" returns a coroutine, not a _Conn).
    + cythonize(pure_mode, compiler_directives={**directives, "annotation_typing": False}, annotate=DEBUG),
)
