"""One small HTTP(S) exchange, off the request path: what the JWKS key sets fetch their keys
with (``get``), what a backend's credential asks a token endpoint with (``post_form``), and
what the span exporter sends its batches with (``post_json``, ``gateway.ops.tracing``).

Each call opens one connection (TLS with the given client context for ``https://``), sends one
request with ``Connection: close``, reads one response with h11, and returns ``(status,
headers, body)``. Redirects are not followed (a URL that moves is a configuration to fix, not a
hop to trust), the body is bounded, and the whole exchange is bounded by one timeout. Neutral
ground: the policy layer (``policy.jwks``) and the backends (``backends.credentials``) both use
it, and it imports nothing of either.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

import h11

from gateway import __version__

__all__ = ["HttpClientError", "MAX_BODY", "get", "post_form", "post_json"]

MAX_BODY = 1024 * 1024
"""Largest body read by default (a JWKS or a token response is a few KiB)."""


class HttpClientError(Exception):
    """The exchange failed: unreachable, TLS refused, timed out, malformed or too large."""


async def get(
    url: str,
    *,
    context: ssl.SSLContext | None,
    timeout: float,
    max_bytes: int = MAX_BODY,
) -> tuple[int, dict[str, str], bytes]:
    """``GET url``: ``(status, headers with lower-case names, body)``; ``HttpClientError`` on failure."""
    return await _request("GET", url, None, (), context, timeout, max_bytes)


async def post_form(
    url: str,
    fields: Mapping[str, str],
    *,
    context: ssl.SSLContext | None,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    max_bytes: int = MAX_BODY,
) -> tuple[int, dict[str, str], bytes]:
    """``POST url`` with ``fields`` as an ``application/x-www-form-urlencoded`` body (and extra
    request ``headers``, e.g. ``authorization``): ``(status, headers, body)``; ``HttpClientError``
    on failure."""
    body = urlencode(list(fields.items())).encode("ascii")
    extra = [("content-type", "application/x-www-form-urlencoded")]
    extra += [(k.lower(), v) for k, v in (headers or {}).items()]
    return await _request("POST", url, body, extra, context, timeout, max_bytes)


async def post_json(
    url: str,
    body: bytes,
    *,
    context: ssl.SSLContext | None,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    max_bytes: int = MAX_BODY,
) -> tuple[int, dict[str, str], bytes]:
    """``POST url`` with ``body`` (JSON bytes, ``application/json``) and extra request ``headers``:
    ``(status, headers, body)``; ``HttpClientError`` on failure."""
    extra = [("content-type", "application/json")]
    extra += [(k.lower(), v) for k, v in (headers or {}).items()]
    return await _request("POST", url, body, extra, context, timeout, max_bytes)


async def _request(
    method: str,
    url: str,
    body: bytes | None,
    headers: list[tuple[str, str]] | tuple[()],
    context: ssl.SSLContext | None,
    timeout: float,
    max_bytes: int,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpClientError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise HttpClientError(f"bad port in {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return await asyncio.wait_for(
            _exchange(
                method,
                parts.hostname,
                port,
                parts.netloc.rpartition("@")[2],
                target,
                body,
                list(headers),
                context if secure else None,
                max_bytes,
            ),
            timeout,
        )
    except asyncio.TimeoutError:
        raise HttpClientError(f"no answer from {url} within {timeout:g} s") from None
    except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
        raise HttpClientError(f"{url}: {exc}") from None


async def _exchange(
    method: str,
    host: str,
    port: int,
    netloc: str,
    target: str,
    body: bytes | None,
    headers: list[tuple[str, str]],
    context: ssl.SSLContext | None,
    max_bytes: int,
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if context is not None else None
    )
    try:
        conn = h11.Connection(h11.CLIENT)
        lines = [
            ("host", netloc),
            ("accept", "application/json"),
            ("user-agent", f"mcp-gateway/{__version__}"),
            ("connection", "close"),
            *headers,
        ]
        if body is not None:
            lines.append(("content-length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=target, headers=lines))
        if body:
            data += conn.send(h11.Data(data=body))  # type: ignore[operator]
        writer.write(data + conn.send(h11.EndOfMessage()))  # type: ignore[operator]
        await writer.drain()
        status, answer_headers, answer = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                answer += event.data
                if len(answer) > max_bytes:
                    raise HttpClientError(f"body larger than {max_bytes} bytes")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if not status:
            raise HttpClientError("connection closed before a response")
        return status, answer_headers, bytes(answer)
    finally:
        writer.close()
