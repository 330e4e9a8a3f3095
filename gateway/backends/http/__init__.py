"""The Streamable HTTP backend (``HttpBackend``), one concept per module, each
importing only the ones listed before it:

- ``session``: an upstream MCP session (its id, version and head lines), and the
  stateless era's pseudo-session;
- ``connection``: one keep-alive connection (the asyncio protocol) and the
  exchange it serves, one request and its response;
- ``outcome``: what an exchange's end means to its caller (``classify``), one
  classifier for the general path and the express path;
- ``pool``: the keep-alive pool, its line of waiters, and an express call
  queued in that line;
- ``stream``: the stream held open for notifications that belong to no request
  (GET, or ``subscriptions/listen``);
- ``backend``: ``HttpBackend``, which puts them together.
"""

from __future__ import annotations

from gateway.backends.http.backend import HttpBackend

__all__ = ["HttpBackend"]
