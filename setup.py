"""Build script for the compiled hot path in gateway/_fast.

Each extension is listed explicitly. ``GATEWAY_DEBUG_BUILD=1`` turns on line
tracing and writes Cython's HTML annotation next to each .pyx, for profiling.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("GATEWAY_DEBUG_BUILD") == "1"

macros = [("CYTHON_TRACE", "1")] if DEBUG else []
extensions = [
    Extension("gateway._fast.router", ["gateway/_fast/router.pyx"], define_macros=macros),
    Extension("gateway._fast.http1", ["gateway/_fast/http1.pyx"], define_macros=macros),
    Extension("gateway._fast.lru", ["gateway/_fast/lru.pyx"], define_macros=macros),
    Extension("gateway._fast.ratelimit", ["gateway/_fast/ratelimit.pyx"], define_macros=macros),
    Extension("gateway._fast.observe", ["gateway/_fast/observe.pyx"], define_macros=macros),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "linetrace": DEBUG, "embedsignature": True},
        annotate=DEBUG,
    ),
)
