"""HTTP/1.1 message heads in one pass, for the common case (pure-Python twin of ``http1.pyx``).

The HTTP server and the HTTP backend receive, almost always, a whole plain
message in one read: a request line or status line, a few headers, a body
sized by ``Content-Length``. These functions parse exactly that, in one call,
instead of a parser callback per header. Anything else (a head or body split
over reads, chunked transfer coding, ``Upgrade``, a character outside the
grammar, a limit exceeded) returns ``None`` and the caller hands the bytes to
httptools (llhttp), which has the last word on unusual and malformed input.
So this parser must only be right about what it accepts, and it accepts a
strict subset of RFC 9112.

A request is plain only if the server would accept its head as it stands
(``gateway.server.protocol`` applies the same rules on httptools' path and
answers the rest): the target is origin-form without a fragment (``#``), the
version is HTTP/1.0 or HTTP/1.1, and ``Host`` appears on one line at most, with
a non-empty value of ``HOST_CHARS`` only; HTTP/1.1 requires it (RFC 9112 3.2),
HTTP/1.0 may leave it out. A second ``Host`` line is declined rather than
joined, so that duplicates are never mistaken for one value.

Both functions return header names lower-cased, values without surrounding
whitespace, repeated headers joined with ``", "``.
"""

from __future__ import annotations

__all__ = ["keep_alive", "parse_request", "parse_response"]

# tchar (RFC 9110 5.6.2): the characters of a header name.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# field-vchar, SP and HTAB (RFC 9110 5.5): the characters of a header value.
_VALUE = frozenset([9, 32, *range(0x21, 0x7F), *range(0x80, 0x100)])
_METHOD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TARGET = frozenset(range(0x21, 0x7F)) - {0x23}  # not "#": a fragment is never sent (RFC 9112 3.2)
HOST_CHARS = frozenset(b"!$%&'()*+-.0123456789:;=ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~")
"""Bytes of a ``Host`` value: RFC 3986 host and port (unreserved, pct-encoded, sub-delims, ":" and the
brackets of an IP literal), without ",": a reg-name may hold one, no DNS name or address does, and it
is what two joined ``Host`` lines look like."""
_REFUSED = ("transfer-encoding", "upgrade")  # left to httptools: chunked bodies, protocol switches
_MAX_NAME = 256
_MAX_METHOD = 16
_MAX_DIGITS = 15


def _headers(
    data: bytes, pos: int, head_end: int, max_headers: int, request: bool
) -> tuple[dict[str, str], int, int] | None:
    """Header lines in ``data[pos:head_end]`` (each ending CRLF): ``(headers, content_length, hosts)``.

    ``content_length`` is -1 when absent. For a ``request``, ``hosts`` counts the ``Host``
    lines (0 or 1: a second one, or an empty or invalid value, is not plain); 0 for a response.
    """
    headers: dict[str, str] = {}
    length = -1
    count = 0
    hosts = 0
    while pos < head_end:
        eol = data.find(b"\r\n", pos, head_end + 2)
        line = data[pos:eol]
        pos = eol + 2
        count += 1
        if count > max_headers:
            return None
        colon = line.find(b":")
        if colon <= 0 or colon > _MAX_NAME:
            return None
        name_bytes = line[:colon]
        if not all(c in _TCHAR for c in name_bytes):
            return None
        value_bytes = line[colon + 1 :]
        if not all(c in _VALUE for c in value_bytes):
            return None
        name = name_bytes.decode("latin-1").lower()
        value = value_bytes.strip(b" \t").decode("latin-1")
        if name in _REFUSED:
            return None
        if name == "content-length":
            if length >= 0 or not value or len(value) > _MAX_DIGITS or not value.isdigit() or not value.isascii():
                return None
            length = int(value)
        elif name == "host" and request:
            if hosts or not value or not all(c in HOST_CHARS for c in value.encode("latin-1")):
                return None
            hosts = 1
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    return headers, length, hosts


def parse_request(
    data: bytes, start: int, max_url: int, max_headers: int, max_head: int, max_body: int
) -> tuple[str, str, bool, dict[str, str], int, int] | None:
    """A complete plain request at ``data[start:]``, or None (let httptools have it).

    Plain includes the strict rules of the module docstring (target, version, ``Host``).
    Returns ``(method, target, http11, headers, body_start, end)``: the body is
    ``data[body_start:end]`` and the next request starts at ``end``. None also
    when a limit would be exceeded (target length, header count, head size,
    body size), so that the slow path answers it with the right status.
    """
    head_end = data.find(b"\r\n\r\n", start)
    if head_end < 0 or head_end - start > max_head:
        return None
    eol = data.find(b"\r\n", start)
    line = data[start:eol]
    sp1 = line.find(b" ")
    if sp1 <= 0 or sp1 > _MAX_METHOD or not all(c in _METHOD for c in line[:sp1]):
        return None
    sp2 = line.find(b" ", sp1 + 1)
    if sp2 < 0 or sp2 == sp1 + 1 or sp2 - sp1 - 1 > max_url:
        return None
    target = line[sp1 + 1 : sp2]
    # Origin-form only (a path from "/"): httptools judges every other form (it refuses ":/", say).
    if target[:1] != b"/" or not all(c in _TARGET for c in target):
        return None
    version = line[sp2 + 1 :]
    if version == b"HTTP/1.1":
        http11 = True
    elif version == b"HTTP/1.0":
        http11 = False
    else:
        return None
    parsed = _headers(data, eol + 2, head_end, max_headers, True)
    if parsed is None:
        return None
    headers, length, hosts = parsed
    if length > max_body or (http11 and not hosts):  # HTTP/1.1 requires Host
        return None
    body_start = head_end + 4
    end = body_start + max(length, 0)
    if end > len(data):
        return None
    return line[:sp1].decode("ascii"), target.decode("latin-1"), http11, headers, body_start, end


def parse_response(data: bytes, start: int, max_headers: int) -> tuple[int, bool, dict[str, str], int, int] | None:
    """A complete response with a ``Content-Length`` body at ``data[start:]``, or None.

    Returns ``(status, http11, headers, body_start, end)``. Responses without
    ``Content-Length`` (chunked, or read until close) and 1xx are left to httptools.
    """
    head_end = data.find(b"\r\n\r\n", start)
    if head_end < 0:
        return None
    eol = data.find(b"\r\n", start)
    line = data[start:eol]
    if len(line) < 13 or line[:7] != b"HTTP/1." or line[8] != 32 or line[12] != 32:
        return None
    if line[7] == 49:  # "1"
        http11 = True
    elif line[7] == 48:  # "0"
        http11 = False
    else:
        return None
    digits = line[9:12]
    if not (digits.isdigit() and digits.isascii()) or digits[0] == 48:
        return None
    status = int(digits)
    if status < 200 or not all(c in _VALUE for c in line[13:]):
        return None
    parsed = _headers(data, eol + 2, head_end, max_headers, False)
    if parsed is None:
        return None
    headers, length, _ = parsed
    if length < 0:
        return None
    body_start = head_end + 4
    end = body_start + length
    if end > len(data):
        return None
    return status, http11, headers, body_start, end


def keep_alive(http11: bool, connection: str | None) -> bool:
    """Whether the connection stays open after this message (RFC 9112 9.3), from the
    version and the ``Connection`` header: 1.1 unless ``close``, 1.0 only with ``keep-alive``."""
    if connection is None:
        return http11
    tokens = {t.strip() for t in connection.lower().split(",")}
    return "close" not in tokens if http11 else "keep-alive" in tokens
