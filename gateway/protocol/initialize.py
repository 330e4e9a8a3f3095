"""The handshake's ``initialize`` and the stateless era's envelope, as both sides write them.

The front reads a client's ``initialize`` params (``InitializeParams``); the
backends write the gateway's own (``initialize_params``) and add the stateless
era's ``_meta`` keys to requests they send a 2026-07-28 server (``with_envelope``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway import __version__
from gateway.protocol.jsonrpc import UNSET, Raw, decode_any, encode
from gateway.protocol.stateless import CAPABILITIES_KEY, CLIENT_INFO_KEY, VERSION_KEY
from gateway.protocol.versions import STATELESS_VERSION

__all__ = [
    "GATEWAY_CLIENT_CAPABILITIES",
    "InitializeParams",
    "UPSTREAM_PROTOCOL_VERSION",
    "client_info",
    "decode_initialize",
    "initialize_params",
    "with_envelope",
]

UPSTREAM_PROTOCOL_VERSION = "2025-11-25"
"""The version the gateway asks backends for in ``initialize``."""


GATEWAY_CLIENT_CAPABILITIES: dict[str, Any] = {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}
"""What the gateway declares in a shared upstream session: everything it can relay
to a client. A request for a capability the calling client did not declare is
refused by the gateway (never forwarded), so a backend is never answered by a
client that cannot answer."""


class InitializeParams(msgspec.Struct):
    """What the front reads of a client's ``initialize`` params."""

    protocolVersion: str = ""
    capabilities: dict[str, Any] = {}
    clientInfo: Any = None


decode_initialize = msgspec.json.Decoder(InitializeParams).decode
"""``initialize`` params bytes -> ``InitializeParams`` (raises ``msgspec.ValidationError``)."""


def client_info() -> dict[str, str]:
    """The gateway's own ``clientInfo`` toward backends."""
    return {"name": "mcp-gateway", "version": __version__}


def initialize_params(capabilities: dict[str, Any] | None = None) -> Raw:
    """The params of the gateway's own ``initialize`` toward a backend."""
    caps = GATEWAY_CLIENT_CAPABILITIES if capabilities is None else capabilities
    return Raw(encode({"protocolVersion": UPSTREAM_PROTOCOL_VERSION, "capabilities": caps, "clientInfo": client_info()}))


def with_envelope(params: Raw | Any, capabilities: Any = None, client_info_: Any = None) -> Raw:
    """``params`` with the stateless era's ``_meta`` keys added where missing.

    Used when the gateway itself asks a stateless backend (catalog, probes) and
    when a handshake-era client's request goes to a stateless-only backend
    (then ``capabilities``/``client_info_`` are that client's).
    """
    decoded = decode_any(params) if params is not UNSET else {}
    body = decoded if isinstance(decoded, dict) else {}
    meta = body.get("_meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta[VERSION_KEY] = STATELESS_VERSION
    meta.setdefault(CAPABILITIES_KEY, capabilities if capabilities is not None else {})
    meta.setdefault(CLIENT_INFO_KEY, client_info_ if client_info_ is not None else client_info())
    body["_meta"] = meta
    return Raw(encode(body))
