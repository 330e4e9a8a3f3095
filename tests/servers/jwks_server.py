"""A JWKS provider for the authentication tests: HTTPS (a trustme CA) in the test's own event loop,
and the keys and tokens it vouches for.

``JwksServer`` serves ``/jwks`` with whatever ``keys`` it holds now, with ``cache_control``, and
counts ``fetches``. ``status`` other than 200 answers that status (the provider is broken);
``down()`` stops listening (the provider is unreachable), ``up()`` listens again on the same port.
``hold`` (an Event, or None) makes each answer wait until it is set, so a test can have many
requests join one fetch in flight without sleeping.

``SigningKey`` makes an RSA or EC key pair with ``cryptography`` and signs tokens with pyjwt;
``forge`` builds a token from raw parts, for the attacks pyjwt would refuse to make.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import ssl
import time
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["JwksServer", "SigningKey", "b64url", "claims_for", "forge"]


def b64url(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes | str = b"") -> str:
    """A token from raw parts (``signature`` as bytes, or a segment given as it is)."""
    sig = signature if isinstance(signature, str) else b64url(signature)
    return f"{b64url(header)}.{b64url(claims)}.{sig}"


class SigningKey:
    """One key pair: ``kind`` ``"RSA"`` (2048 bits) or ``"EC"`` (P-256)."""

    def __init__(self, kid: str, kind: str = "RSA") -> None:
        self.kid = kid
        self.kind = kind
        if kind == "RSA":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
        self.public = self.private.public_key()

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.kind == "RSA" else ECAlgorithm
        jwk = algorithm.to_jwk(self.public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def token(self, claims: dict[str, Any], *, headers: dict[str, Any] | None = None, alg: str | None = None) -> str:
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers={"kid": self.kid, **(headers or {})})


def claims_for(
    issuer: str, audience: str | list[str], subject: str = "alice", ttl: float = 600, **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + ttl, **extra}


class JwksServer:
    """The JWKS endpoint (see the module docstring); ``async with`` starts and stops it."""

    def __init__(self, folder: pathlib.Path, keys: list[SigningKey]) -> None:
        self.keys = list(keys)
        self.cache_control: str | None = "max-age=300"
        self.status = 200
        self.fetches = 0
        self.hold: asyncio.Event | None = None
        self._ca = trustme.CA()
        self.ca_file = str(folder / "jwks-ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1").configure_cert(self._context)
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks"

    async def __aenter__(self) -> JwksServer:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.fetches += 1
            if self.hold is not None:
                await self.hold.wait()
            body = json.dumps({"keys": [k.jwk for k in self.keys]}).encode()
            head = f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            if self.cache_control is not None:
                head += f"cache-control: {self.cache_control}\r\n"
            writer.write(head.encode() + b"connection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
