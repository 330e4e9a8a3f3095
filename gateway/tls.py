"""TLS contexts, made once from the config: the listener's (HTTPS, optionally mutual) and the
client one for ``https://`` backends and identity providers."""

from __future__ import annotations

import ssl

__all__ = ["SHUTDOWN_TIMEOUT", "client_context", "peer_subject", "server_context"]

SHUTDOWN_TIMEOUT = 5.0
"""Seconds a closing TLS connection waits for the peer's close_notify (the event loop's default,
30 s, would keep a connection to a hung peer, and its pool slot, that long)."""


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


def peer_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The subject of the peer's certificate as an RFC 4514 string, most specific first
    (``CN=alice,OU=ops,O=Example``), with the RFC's escaping, so no attribute's value can pass
    for another attribute (a CN ``"alice,O=admins"`` reads ``CN=alice\\,O=admins``).
    Attributes RFC 4514 names no short form for are written as their dotted OID. None when the
    peer sent no certificate."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509  # only with mutual TLS, once per connection

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()
