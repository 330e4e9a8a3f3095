"""Every fixed byte string of the HTTP server, built once at import."""

from __future__ import annotations

from http import HTTPStatus

from gateway.errors import InternalError, RequestTooLarge, error_body

__all__ = [
    "CHUNKED_END",
    "CHUNKED_HEADERS",
    "CLOSE_HEADER",
    "CONTENT_LENGTH",
    "JSON_HEADER_LINES",
    "KEEP_ALIVE_HEADER",
    "SERVER_HEADER",
    "STATUS_LINES",
    "canned",
]

_STATUSES = (200, 202, 204, 400, 401, 403, 404, 405, 406, 408, 409, 413, 414, 415, 421, 429, 431, 500, 501, 503, 504, 505)


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode())


class _StatusLines(dict):  # type: ignore[type-arg]
    """Status code -> status line; unusual codes are built on first use and kept."""

    def __missing__(self, code: int) -> bytes:
        line = self[code] = _status_line(code)
        return line


STATUS_LINES: dict[int, bytes] = _StatusLines({code: _status_line(code) for code in _STATUSES})
SERVER_HEADER = b"server: mcp-gateway\r\n"
CLOSE_HEADER = b"connection: close\r\n"
KEEP_ALIVE_HEADER = b"connection: keep-alive\r\n"
CONTENT_LENGTH = b"content-length: %d\r\n"
CHUNKED_HEADERS = b"transfer-encoding: chunked\r\n"
CHUNKED_END = b"0\r\n\r\n"
JSON_HEADER_LINES = b"content-type: application/json\r\n"  # for Reply.send's pre-encoded headers


def canned(status: int, body: bytes = b"", content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    """A complete response that closes the connection (protocol-level errors)."""
    head = STATUS_LINES[status] + SERVER_HEADER + CLOSE_HEADER
    if body:
        head += b"content-type: " + content_type + b"\r\n"
    return head + CONTENT_LENGTH % len(body) + b"\r\n" + body


BAD_REQUEST = canned(400, b"malformed HTTP request\n")
# The strict edge (gateway.server.protocol): what RFC 9112 refuses, each with its reason.
BAD_HOST = canned(400, b"Host header missing, repeated or invalid\n")
BAD_TARGET = canned(400, b"request target refused: a fragment, or an absolute URI that is not this Host\n")
BAD_FRAMING = canned(400, b"conflicting message framing\n")
CHUNK_LINE_TOO_LONG = canned(400, b"chunk size line or chunk extensions too long\n")
NOT_IMPLEMENTED = canned(501, b"transfer coding not implemented: only chunked is\n")
VERSION_NOT_SUPPORTED = canned(505, b"HTTP version not supported: HTTP/1.1 and HTTP/1.0 are\n")
REQUEST_TIMEOUT = canned(408, b"request headers not received in time\n")
URI_TOO_LONG = canned(414, b"request target too long\n")
HEADERS_TOO_LARGE = canned(431, b"request header section too large\n")
PAYLOAD_TOO_LARGE = canned(
    413, error_body(None, RequestTooLarge("request body too large")), b"application/json"
)
INTERNAL_ERROR = canned(500, error_body(None, InternalError("internal gateway error")), b"application/json")
