"""The compiled hot path, with a pure-Python twin for every module.

The compiled module is used unless ``GATEWAY_NO_EXTENSIONS=1`` is set or the
interpreter is not CPython; if it is missing (not built), the twin is used and
``USING_EXTENSIONS`` is False, which a test turns into a failure.
"""

from __future__ import annotations

import os
import platform

__all__ = [
    "LRU",
    "Count",
    "Histogram",
    "ObserverCore",
    "Series",
    "USING_EXTENSIONS",
    "Router",
    "TokenBuckets",
    "cache_key",
    "keep_alive",
    "parse_request",
    "parse_response",
    "prefix_uri",
]

_WANT = os.environ.get("GATEWAY_NO_EXTENSIONS", "") in ("", "0") and platform.python_implementation() == "CPython"

USING_EXTENSIONS = False
if _WANT:
    try:
        from gateway._fast.http1 import keep_alive, parse_request, parse_response
        from gateway._fast.lru import LRU, cache_key
        from gateway._fast.observe import Count, Histogram, ObserverCore, Series
        from gateway._fast.ratelimit import TokenBuckets
        from gateway._fast.router import Router, prefix_uri

        USING_EXTENSIONS = True
    except ImportError:  # not built: the twin keeps the gateway working
        pass
if not USING_EXTENSIONS:
    from gateway._fast._http1_py import keep_alive, parse_request, parse_response  # type: ignore[assignment]
    from gateway._fast._lru_py import LRU, cache_key  # type: ignore[assignment]
    from gateway._fast._observe_py import Count, Histogram, ObserverCore, Series  # type: ignore[assignment]
    from gateway._fast._ratelimit_py import TokenBuckets  # type: ignore[assignment]
    from gateway._fast._router_py import Router, prefix_uri  # type: ignore[assignment]
