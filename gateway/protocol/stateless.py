"""The 2026-07-28 (stateless) era: what a request must carry, checked in order.

A stateless request is one POST with everything in it: the body's
``params._meta`` carries the protocol version and the client's capabilities,
and routing headers repeat what the body says so that intermediaries can route
without parsing JSON. The gateway may read those headers, but it decides from
the body, so every header that disagrees with the body is refused (400 with
-32020) before anything is routed.

The checks, first failure wins:

1. ``params._meta`` is an object with the protocol version and capabilities
   keys (else -32602);
2. ``MCP-Protocol-Version`` equals the body's version, ``Mcp-Method`` equals the
   method and, for tools/call, prompts/get and resources/read, ``Mcp-Name``
   equals the name or URI (else -32020);
3. the version is one the gateway serves (else -32022 with ``supported``);
4. for tools/call, every ``Mcp-Param-*`` declared by the tool's ``x-mcp-header``
   annotations agrees with the argument (else -32020); see ``param_headers``.

Header values may be sent as ``=?base64?...?=`` when they would not survive
HTTP; ``decode_header_value`` undoes that.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.errors import HeaderMismatch, InvalidParams, UnsupportedProtocolVersion
from gateway.protocol.versions import STATELESS_VERSIONS

__all__ = [
    "CAPABILITIES_KEY",
    "as_stateless_result",
    "CLIENT_INFO_KEY",
    "Envelope",
    "LOG_LEVEL_KEY",
    "NAME_PARAM",
    "VERSION_KEY",
    "check_envelope",
    "check_param_headers",
    "decode_header_value",
    "encode_header_value",
    "param_headers",
    "x_mcp_headers",
]

VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"

NAME_PARAM: dict[str, str] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Methods whose ``Mcp-Name`` header mirrors a body param, and that param."""

_SENTINEL = re.compile(r"^=\?base64\?(.*)\?=$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_TYPES = frozenset({"string", "integer", "boolean"})
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


class Envelope:
    """What ``_meta`` said about the client of one stateless request."""

    __slots__ = ("version", "capabilities", "client_info", "log_level")

    def __init__(self, version: str, capabilities: Any, client_info: Any, log_level: Any) -> None:
        self.version = version
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        self.client_info = client_info
        self.log_level = log_level


def check_envelope(method: str, params: Any, headers: Mapping[str, str]) -> Envelope:
    """Checks 1-3 above for one request; returns its envelope or raises."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        raise InvalidParams(
            f"params._meta must be an object with {VERSION_KEY!r} and {CAPABILITIES_KEY!r}", reason="missing_meta"
        )
    missing = [key for key in (VERSION_KEY, CAPABILITIES_KEY) if key not in meta]
    if missing:
        raise InvalidParams(f"params._meta is missing {', '.join(missing)}", reason="missing_meta")
    version = meta[VERSION_KEY]
    if headers.get("mcp-protocol-version") != version:
        raise HeaderMismatch("MCP-Protocol-Version header does not match params._meta's protocol version")
    if headers.get("mcp-method") != method:
        raise HeaderMismatch("Mcp-Method header does not match the body's method")
    key = NAME_PARAM.get(method)
    if key is not None:
        value = params.get(key)
        if value is not None and decode_header_value(headers.get("mcp-name")) != value:
            raise HeaderMismatch(f"Mcp-Name header does not match params.{key}")
    if version not in STATELESS_VERSIONS:
        raise UnsupportedProtocolVersion(
            "Unsupported protocol version",
            spec_data={"supported": list(STATELESS_VERSIONS), "requested": str(version)},
        )
    return Envelope(version, meta[CAPABILITIES_KEY], meta.get(CLIENT_INFO_KEY), meta.get(LOG_LEVEL_KEY))


# -- header values ---------------------------------------------------------------------------


def encode_header_value(value: str) -> str:
    """``value`` as it may travel in a header: verbatim when safe, else base64 in the sentinel."""
    if _PRINTABLE.match(value) and value == value.strip() and not _SENTINEL.match(value):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode("ascii") + "?="


def decode_header_value(value: str | None) -> str | None:
    """Inverse of ``encode_header_value``; None for a malformed sentinel (it can never match)."""
    if value is None:
        return None
    value = value.strip(" \t")  # optional whitespace around a field value is not part of it
    if not value.startswith("=?"):
        return value  # the common case: not the base64 sentinel
    found = _SENTINEL.match(value)
    if found is None:
        return value
    payload = found.group(1)
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw).decode("ascii") != payload:
            return None  # not canonical: two encodings of one value must not both match
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


# -- x-mcp-header ----------------------------------------------------------------------------


def _positions(schema: Any, path: tuple[str, ...] | None = ()) -> Iterator[tuple[tuple[str, ...] | None, dict]]:
    """Every sub-schema with its chain of ``properties`` keys (None once off that chain)."""
    stack: list[tuple[tuple[str, ...] | None, Any]] = [(path, schema)]
    while stack:
        where, node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield where, node
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                stack.extend(((*where, k) if where is not None else None, v) for k, v in value.items())
            elif key in ("allOf", "anyOf", "oneOf", "prefixItems") and isinstance(value, list):
                stack.extend((None, v) for v in value)
            elif key in ("$defs", "definitions", "patternProperties", "dependentSchemas") and isinstance(value, dict):
                stack.extend((None, v) for v in value.values())
            elif key in ("items", "contains", "additionalProperties", "not", "if", "then", "else",
                         "unevaluatedItems", "unevaluatedProperties", "propertyNames", "contentSchema"):
                stack.append((None, value))


def x_mcp_headers(schema: Any) -> list[tuple[tuple[str, ...], str, str]] | None:
    """``(argument path, header token, JSON type)`` per ``x-mcp-header`` annotation.

    None when an annotation is invalid (not on a plain property chain, not an
    RFC 9110 token, not on a string/integer/boolean, or a duplicate ignoring
    case): the spec says such a tool is unusable for header mirroring, so
    nothing is mirrored or checked for it.
    """
    found: list[tuple[tuple[str, ...], str, str]] = []
    seen: set[str] = set()
    for path, node in _positions(schema):
        if "x-mcp-header" not in node:
            continue
        token, kind = node["x-mcp-header"], node.get("type")
        if not path or not isinstance(token, str) or not _TOKEN.match(token) or kind not in _HEADER_TYPES:
            return None
        if token.lower() in seen:
            return None
        seen.add(token.lower())
        found.append((path, token, kind))
    return found


def _value_at(arguments: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(arguments, dict):
            return None
        arguments = arguments.get(key)
    return arguments


def _render(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def param_headers(annotations: list[tuple[tuple[str, ...], str, str]] | None, arguments: Any) -> dict[str, str]:
    """The ``Mcp-Param-*`` headers a stateless ``tools/call`` carries for these arguments."""
    headers: dict[str, str] = {}
    for path, token, _ in annotations or ():
        rendered = _render(_value_at(arguments, path))
        if rendered is not None:
            headers[f"mcp-param-{token.lower()}"] = encode_header_value(rendered)
    return headers


def _same(kind: str, value: Any, rendered: str, header: str) -> bool:
    if kind == "integer" and not isinstance(value, bool) and isinstance(value, (int, float)) and _NUMBER.match(header):
        whole, _, fraction = header.partition(".")
        return not fraction.strip("0") and float(value).is_integer() and int(whole) == int(value)
    return header == rendered


def check_param_headers(
    annotations: list[tuple[tuple[str, ...], str, str]] | None, arguments: Any, headers: Mapping[str, str]
) -> None:
    """Check 4: each declared ``Mcp-Param-*`` header and its argument are present together and equal."""
    for path, token, kind in annotations or ():
        name = f"Mcp-Param-{token}"
        raw = headers.get(name.lower())
        value = _value_at(arguments, path)
        rendered = _render(value) if value is not None else None
        if rendered is None:
            if raw is not None:
                raise HeaderMismatch(f"{name} header is present but argument {'.'.join(path)!r} is not")
            continue
        if raw is None:
            raise HeaderMismatch(f"{name} header is missing but argument {'.'.join(path)!r} is present")
        decoded = decode_header_value(raw)
        if decoded is None:
            raise HeaderMismatch(f"{name} header has a malformed base64 value")
        if not _same(kind, value, rendered, decoded):
            raise HeaderMismatch(f"{name} header does not match argument {'.'.join(path)!r}")


_COMPLETE = b'"resultType":"complete"'
_READ_HINTS = b',"ttlMs":0,"cacheScope":"private"'


def as_stateless_result(result: bytes, method: str) -> bytes:
    """A handshake-era backend's result as a stateless-era client gets it: ``resultType`` spliced in
    (and, for ``resources/read``, the hints not to keep it: the backend gave none). A result that is
    not an object is left as it is."""
    if not result.startswith(b"{"):
        return result
    fields = _COMPLETE + (_READ_HINTS if method == "resources/read" else b"")
    rest = result[1:].lstrip()
    return b"{" + fields + (b"}" if rest == b"}" else b"," + rest)
