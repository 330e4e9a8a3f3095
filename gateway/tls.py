"""TLS contexts, made once from the config: the listener's (HTTPS, optionally mutual) and the
client one for ``https://`` backends and identity providers."""

from __future__ import annotations

import ssl

__all__ = ["client_context", "server_context"]


def server_context(cert_file: str, key_file: str, client_ca_file: str | None = None) -> ssl.SSLContext:
    """The listener's context: TLS 1.2+, ALPN ``http/1.1``; with ``client_ca_file``, a client
    certificate signed by that CA is required (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    if client_ca_file is not None:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context verifying the peer's certificate and host name against ``ca_file``, or the
    system trust store (which honours ``SSL_CERT_FILE``); ``verify=False`` verifies nothing."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
