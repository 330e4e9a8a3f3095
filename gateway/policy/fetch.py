"""One small HTTPS GET, off the request path: now ``gateway.httpclient.get`` (shared with the
backends' token requests, which may not import the policy layer); kept under its old names.

``fetch(url, ...)`` opens one connection (TLS with the given client context for
``https://``), sends ``GET`` with ``Connection: close``, reads one response with
h11, and returns ``(status, headers, body)``. Redirects are not followed (a
JWKS URL that moves is a configuration to fix, not a hop to trust), the body is
bounded, and the whole exchange is bounded by one timeout.
"""

from __future__ import annotations

from gateway.httpclient import HttpClientError as FetchError
from gateway.httpclient import get as fetch

__all__ = ["FetchError", "fetch"]
