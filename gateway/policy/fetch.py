"""One small HTTPS GET, off the request path: what the JWKS key sets fetch their keys with.

``fetch(url, ...)`` opens one connection (TLS with the given client context for
``https://``), sends ``GET`` with ``Connection: close``, reads one response with
h11, and returns ``(status, headers, body)``. Redirects are not followed (a
JWKS URL that moves is a configuration to fix, not a hop to trust), the body is
bounded, and the whole exchange is bounded by one timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import h11

from gateway import __version__

__all__ = ["FetchError", "fetch"]

_MAX_BODY = 1024 * 1024
"""Largest body read (a JWKS is a few KiB)."""


class FetchError(Exception):
    """The fetch failed: unreachable, TLS refused, timed out, malformed or too large."""


async def fetch(
    url: str,
    *,
    context: ssl.SSLContext | None,
    timeout: float,
    max_bytes: int = _MAX_BODY,
) -> tuple[int, dict[str, str], bytes]:
    """``GET url``: ``(status, headers with lower-case names, body)``; ``FetchError`` on failure."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise FetchError(f"bad port in {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return await asyncio.wait_for(
            _exchange(
                parts.hostname, port, parts.netloc.rpartition("@")[2], target, context if secure else None, max_bytes
            ),
            timeout,
        )
    except asyncio.TimeoutError:
        raise FetchError(f"no answer from {url} within {timeout:g} s") from None
    except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
        raise FetchError(f"{url}: {exc}") from None


async def _exchange(
    host: str, port: int, netloc: str, target: str, context: ssl.SSLContext | None, max_bytes: int
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if context is not None else None
    )
    try:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[
                ("host", netloc),
                ("accept", "application/json"),
                ("user-agent", f"mcp-gateway/{__version__}"),
                ("connection", "close"),
            ],
        )
        writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))  # type: ignore[operator]
        await writer.drain()
        status, headers, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_bytes:
                    raise FetchError(f"body larger than {max_bytes} bytes")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if not status:
            raise FetchError("connection closed before a response")
        return status, headers, bytes(body)
    finally:
        writer.close()
