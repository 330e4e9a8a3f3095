"""Authentication: who is calling, from ``Authorization: Bearer ...`` (API keys, JWTs) or the
client certificate (mutual TLS); and the OAuth 2.1 resource server's side of it (RFC 9728
metadata, ``WWW-Authenticate`` challenges).

``Authenticator.authenticate(authorization, tls_subject)`` is synchronous and does no I/O
(the express lane calls it from the protocol's read callback, through the header gate). It
answers a ``Principal``, a ``GatewayError`` to refuse with (401 ``Unauthenticated`` with its
``WWW-Authenticate``; 503 when an issuer's keys cannot be had), or ``PENDING``: the token's
issuer keys (or its ``kid``) are not known yet and a fetch is in flight. The general path
then awaits ``wait_for_keys(authorization)`` (bounded by ``fetch_timeout``) and asks again
(still PENDING then: 503, ``keys_late``); the express lane declines a PENDING request to it.

In this order:

1. No ``Authorization`` (or another scheme than ``Bearer``): the client certificate's
   subject, ``Principal("mtls", subject)``, when mutual TLS gave one; else 401 with
   ``WWW-Authenticate: Bearer resource_metadata="..."`` and no error code (RFC 6750 3.1:
   the client may not know it must authenticate).
2. ``Bearer TOKEN``: the verified-token cache first (``MAX_TOKENS`` entries, oldest out
   first): a hit whose expiry (``exp`` + leeway) is still ahead, by one read of
   ``time.time()``, is the answer. So a known token costs a dict lookup, not a signature
   check. Then an empty token, or one longer than ``MAX_TOKEN`` (8 KiB): 401.
3. The token's SHA-256: permanent refusals (malformed, bad signature, expired...) are
   remembered by it (bounded the same way), so a replayed bad token costs a hash and a
   lookup; that memory is cleared whenever an issuer's keys change.
4. API keys: the same digest looked up in a dict of the configured digests, then compared
   with ``hmac.compare_digest``: nothing about a key leaks through timing.
5. A JWT (RFC 8725 is the checklist): three base64url segments (strictly: no padding, no
   other characters), header and payload JSON objects. Refused before any key is looked up:
   ``jku``, ``x5u``, ``jwk``, ``x5c`` (a token never says where its key is, nor carries it),
   ``crit`` (no extension is understood; an empty list is invalid, RFC 7515 4.1.11), ``b64``,
   a ``typ`` other than ``JWT`` / ``at+jwt``, an ``iss`` that is not a configured issuer, an
   ``alg`` not on that issuer's ``algorithms`` (so never ``none`` or an HMAC: the
   configuration allows neither), an empty signature. Then the claims: ``exp`` required and
   a number, not past (with ``leeway``); ``nbf`` and ``iat``, when present, numbers and not
   in the future (with ``leeway``); ``aud`` (a string or a list) containing one of the
   issuer's ``audiences``; a subject (``sub``, else ``client_id``). Then the key: the
   issuer's ``KeySet.lookup(kid, alg)`` (``gateway.policy.jwks``), and the signature,
   verified with pyjwt's algorithm for that ``alg`` only. Roles and scopes come from the
   issuer's ``roles_claim`` and ``scopes_claim`` (dotted paths; a list of strings, or one
   space-separated string). The unverified ``iss`` only chooses whose keys and allow-list
   apply; the signature then proves it. The claims are checked before the key is looked up
   because they can only refuse: an expired or misaddressed token never causes a JWKS
   fetch, nor a signature check. A token without ``kid`` is taken only when its issuer has
   exactly one key that fits its ``alg``.

A token is only ever read from the header: never from the query string or the body.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import logging
import re
from time import time as _now
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from jwt.algorithms import get_default_algorithms

from gateway.errors import BackendUnavailable, Forbidden, GatewayError, Unauthenticated
from gateway.policy.identity import Principal
from gateway.policy.jwks import MISMATCH, PENDING, UNAVAILABLE, UNKNOWN, KeySet

if TYPE_CHECKING:
    from gateway.config import AuthConfig, JwtIssuerConfig

__all__ = [
    "Authenticator",
    "MAX_TOKEN",
    "METADATA_PATH",
    "PENDING",
    "insufficient_scope",
    "www_authenticate",
]

log = logging.getLogger("gateway.auth")

MAX_TOKEN = 8 * 1024
"""Longest bearer token looked at (characters)."""
MAX_TOKENS = 10_000
"""Verified tokens (and permanently refused ones) remembered."""
METADATA_PATH = "/.well-known/oauth-protected-resource"
"""RFC 9728 protected-resource metadata (also served with the resource's path appended)."""

_MAX_SUBJECTS = 1024
_MAX_TIME = 1e15  # seconds: some 30 million years
_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
_KEY_CARRIERS = ("jku", "x5u", "jwk", "x5c")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ALGORITHMS = get_default_algorithms()
_decode_json = msgspec.json.decode


def _quoted(value: str) -> str:
    """A value safe inside an auth-param's quotes (no quote, backslash or control character)."""
    return "".join(ch for ch in value if ch not in '"\\' and " " <= ch <= "~")


def www_authenticate(
    resource_metadata: str | None, error: str | None = None, description: str | None = None, scope: str | None = None
) -> tuple[tuple[str, str], ...]:
    """The ``WWW-Authenticate`` header of a Bearer challenge, as a header tuple."""
    params = []
    if error is not None:
        params.append(f'error="{error}"')
        if description:
            params.append(f'error_description="{_quoted(description)}"')
    if scope:
        params.append(f'scope="{_quoted(scope)}"')
    if resource_metadata is not None:
        params.append(f'resource_metadata="{_quoted(resource_metadata)}"')
    return (("www-authenticate", "Bearer " + ", ".join(params) if params else "Bearer"),)


def insufficient_scope(scope: str, resource_metadata: str | None = None, message: str | None = None) -> Forbidden:
    """The 403 for a caller whose token lacks ``scope`` (space-separated scopes that would help):
    ``WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`` (RFC 6750 3.1), and
    ``data.gateway.scope``. ``Authenticator.insufficient_scope`` fills in the metadata URL."""
    return Forbidden(
        message or f"insufficient scope: this needs {scope}",
        reason="insufficient_scope",
        headers=www_authenticate(resource_metadata, "insufficient_scope", None, scope),
        data={"scope": scope},
    )


def _number(value: Any) -> bool:
    """A time claim: an int or float of sane size (not a bool, NaN, infinity or a 400-digit int)."""
    return type(value) in (int, float) and -_MAX_TIME < value < _MAX_TIME


def _segment(text: str) -> bytes | None:
    """A strict base64url segment (no padding, nothing else), decoded; None if it is not one."""
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    try:
        return binascii.a2b_base64(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), strict_mode=True)
    except binascii.Error:
        return None


def _json_object(segment: str) -> dict[str, Any] | None:
    data = _segment(segment)
    if data is None:
        return None
    try:
        value = _decode_json(data)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested deeper than msgspec goes
        return None
    return value if isinstance(value, dict) else None


def _claim(claims: dict[str, Any], path: str | None) -> frozenset[str]:
    """The strings at a dotted path: a list of strings, or one space-separated string."""
    if not path:
        return frozenset()
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return frozenset()
        value = value.get(part)
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


class _Refusal(Exception):
    """A token refused; ``permanent``: the same token will always be refused (remembered)."""

    def __init__(self, description: str, permanent: bool = True) -> None:
        super().__init__(description)
        self.description = description
        self.permanent = permanent


class _Issuer:
    __slots__ = ("config", "keys", "algorithms", "audiences")

    def __init__(self, config: JwtIssuerConfig, keys: KeySet) -> None:
        self.config = config
        self.keys = keys
        self.algorithms = frozenset(config.algorithms)
        self.audiences = frozenset(config.audiences)


class Authenticator:
    """Built once from ``[auth]`` (and whether the listener asks for client certificates);
    see the module docstring. ``keyset_options`` go to each issuer's ``KeySet`` (tests shorten
    its intervals)."""

    def __init__(
        self,
        auth: AuthConfig | None,
        *,
        mtls: bool = False,
        path: str = "/mcp",
        fetch_timeout: float = 5.0,
        **keyset_options: Any,
    ) -> None:
        self.mtls = mtls
        self.fetch_timeout = fetch_timeout
        self.generation = 0
        """Bumped when an issuer's keys lose a key: whoever caches principals (the header gate)
        forgets them then."""
        self.resource = auth.resource if auth is not None else None
        self.resource_metadata: str | None = None
        """The URL of this resource's RFC 9728 metadata (None without ``[auth] resource``)."""
        self.metadata_paths: frozenset[str] = frozenset()
        """The paths the metadata is served at (unauthenticated)."""
        self.metadata_body: bytes | None = None
        if auth is not None and auth.resource is not None:
            parts = urlsplit(auth.resource)
            suffix = parts.path.rstrip("/")
            self.resource_metadata = f"{parts.scheme}://{parts.netloc}{METADATA_PATH}{suffix}"
            self.metadata_paths = frozenset({METADATA_PATH, METADATA_PATH + suffix, METADATA_PATH + path.rstrip("/")})
            document: dict[str, Any] = {"resource": auth.resource}
            if auth.authorization_servers:
                document["authorization_servers"] = list(auth.authorization_servers)
            if auth.scopes_supported:
                document["scopes_supported"] = list(auth.scopes_supported)
            document["bearer_methods_supported"] = ["header"]
            self.metadata_body = msgspec.json.encode(document)
        self.api_keys: dict[bytes, tuple[bytes, Principal]] = {}
        self.issuers: dict[str, _Issuer] = {}
        if auth is not None:
            for entry in auth.api_keys:
                if entry.key_sha256 is not None:
                    digest = bytes.fromhex(entry.key_sha256)
                else:
                    assert entry.key is not None
                    digest = hashlib.sha256(entry.key.encode()).digest()
                principal = Principal("api-key", entry.subject, frozenset(entry.roles), frozenset(entry.scopes))
                self.api_keys[digest] = (digest, principal)
            for issuer in auth.jwt:
                keys = KeySet(issuer, timeout=fetch_timeout, on_change=self._keys_changed, **keyset_options)
                self.issuers[issuer.issuer] = _Issuer(issuer, keys)
        self.bearer = bool(self.api_keys or self.issuers)
        """Whether ``Authorization: Bearer`` is read at all (no credentials configured: mTLS only)."""
        self._tokens: dict[str, Principal] = {}
        self._refused: dict[bytes, GatewayError] = {}
        self._errors: dict[str, Unauthenticated] = {}
        self._subjects: dict[str, Principal] = {}
        self.missing = Unauthenticated(
            "authentication required: send Authorization: Bearer <token>",
            reason="unauthenticated",
            headers=www_authenticate(self.resource_metadata),
        )
        """The refusal of a request without credentials (one object, as the gate caches errors)."""
        self.keys_late = BackendUnavailable(
            "the token issuer's keys (JWKS) could not be fetched in time; retry shortly", reason="jwks_unavailable"
        )
        """The 503 for a request still PENDING after ``wait_for_keys``."""
        self.keys_unavailable = BackendUnavailable(
            "the token issuer's keys (JWKS) are unavailable; retry shortly", reason="jwks_unavailable"
        )
        """The 503 for a token whose issuer has no keys (never fetched, or stale too long)."""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start each issuer's key refreshing (the first fetch now)."""
        for issuer in self.issuers.values():
            issuer.keys.start()

    async def stop(self) -> None:
        await asyncio.gather(*(issuer.keys.stop() for issuer in self.issuers.values()))

    # -- deciding ------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, tls_subject: str | None) -> Any:
        """``Principal``, ``GatewayError`` or ``PENDING`` (module docstring); never awaits."""
        token = None
        if authorization is not None and self.bearer:
            scheme, _, rest = authorization.partition(" ")
            if scheme.lower() == "bearer":
                token = rest.strip(" ")
        if token is None:
            if tls_subject is not None and self.mtls:
                return self._mtls(tls_subject)
            return self.missing
        principal = self._tokens.get(token)
        if principal is not None:
            if principal.expires is None or _now() < principal.expires:
                return principal
            del self._tokens[token]
        if not token:
            return self.invalid_token("empty bearer token")
        if len(token) > MAX_TOKEN:
            return self.invalid_token(f"token longer than {MAX_TOKEN} characters")
        digest = hashlib.sha256(token.encode()).digest()
        refused = self._refused.get(digest)
        if refused is not None:
            return refused
        entry = self.api_keys.get(digest)
        if entry is not None and hmac.compare_digest(entry[0], digest):
            return entry[1]
        try:
            if token.count(".") != 2 or not self.issuers:
                raise _Refusal("neither a known API key nor a JWT" if self.api_keys else "malformed token (not a JWT)")
            try:
                result = self._verify_jwt(token)
            except _Refusal:
                raise
            except Exception:  # input no check foresaw: refused, never a 500 (and never accepted)
                log.debug("token refused on an unexpected error", exc_info=True)
                raise _Refusal("malformed token", permanent=False) from None
        except _Refusal as refusal:
            error = self.invalid_token(refusal.description)
            if refusal.permanent:
                self._remember(self._refused, digest, error)
            return error
        if isinstance(result, Principal) and result.expires is not None:
            self._remember(self._tokens, token, result)
        return result

    async def wait_for_keys(self, authorization: str | None) -> None:
        """Await the key fetch a PENDING answer is waiting on (at most ``fetch_timeout`` s)."""
        issuer = self._issuer_named_in(authorization)
        waits = [i.keys for i in self.issuers.values()] if issuer is None else [issuer.keys]
        await asyncio.gather(*(keys.wait(self.fetch_timeout) for keys in waits))

    def invalid_token(self, description: str) -> Unauthenticated:
        """401 for a presented token that is refused: ``error="invalid_token"`` (one object per
        description, as the refusal memory keeps many)."""
        error = self._errors.get(description)
        if error is None:
            error = self._errors[description] = Unauthenticated(
                f"invalid token: {description}",
                reason="invalid_token",
                headers=www_authenticate(self.resource_metadata, "invalid_token", description),
            )
        return error

    def insufficient_scope(self, scope: str, message: str | None = None) -> Forbidden:
        """``insufficient_scope(scope)`` with this resource's metadata URL."""
        return insufficient_scope(scope, self.resource_metadata, message)

    # -- internals -----------------------------------------------------------------------------

    def _mtls(self, subject: str) -> Principal:
        principal = self._subjects.get(subject)
        if principal is None:
            if len(self._subjects) >= _MAX_SUBJECTS:
                self._subjects.clear()
            principal = self._subjects[subject] = Principal("mtls", subject)
        return principal

    @staticmethod
    def _remember(cache: dict[Any, Any], token: Any, value: Any) -> None:
        if len(cache) >= MAX_TOKENS:
            cache.pop(next(iter(cache)))
        cache[token] = value

    def _verify_jwt(self, token: str) -> Any:
        head, body, sig = token.split(".")
        header, claims, signature = _json_object(head), _json_object(body), _segment(sig)
        if header is None or claims is None or signature is None:
            raise _Refusal("malformed token")
        for name in _KEY_CARRIERS:
            if name in header:
                raise _Refusal(f"header parameter {name} is not accepted")
        if "crit" in header or "b64" in header:
            raise _Refusal("critical header extensions are not accepted")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYPES):
            raise _Refusal("not an access token (typ)")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise _Refusal("malformed kid")
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _Refusal("unknown or missing issuer (iss)")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise _Refusal("algorithm not accepted for this issuer")
        if not signature:
            raise _Refusal("unsigned token")
        expires = self._check_claims(issuer, claims)
        subject = claims.get("sub", claims.get("client_id"))
        if not isinstance(subject, str) or not subject:
            raise _Refusal("no subject (sub)")
        key = issuer.keys.lookup(kid, alg)
        if key is PENDING:
            return PENDING
        if key is UNAVAILABLE:
            return self.keys_unavailable
        if key is UNKNOWN:
            raise _Refusal("unknown signing key (kid)", permanent=False)
        if key is MISMATCH:
            raise _Refusal("the signing key does not fit the algorithm")
        try:
            valid = _ALGORITHMS[alg].verify(f"{head}.{body}".encode("ascii"), key, signature)
        except Exception:  # a signature of the wrong shape for the key: refused, never a 500
            valid = False
        if not valid:
            raise _Refusal("signature verification failed")
        config = issuer.config
        return Principal(
            config.issuer,
            subject,
            _claim(claims, config.roles_claim),
            _claim(claims, config.scopes_claim),
            claims,
            expires,
            token=token,  # the subject token a token_exchange backend credential exchanges
        )

    @staticmethod
    def _check_claims(issuer: _Issuer, claims: dict[str, Any]) -> float:
        """The time checks and ``aud``; returns until when the token may be used (``exp`` + leeway)."""
        leeway = issuer.config.leeway
        now = _now()
        exp = claims.get("exp")
        if exp is None:
            raise _Refusal("no expiry (exp)")
        if not _number(exp):
            raise _Refusal("exp is not a number")
        if now > exp + leeway:
            raise _Refusal("token expired")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if not _number(value):
                raise _Refusal(f"{name} is not a number")
            if value > now + leeway:
                raise _Refusal(
                    "token not valid yet" if name == "nbf" else "token issued in the future", permanent=False
                )
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
        if not audiences or not any(isinstance(a, str) and a in issuer.audiences for a in audiences):
            raise _Refusal("not for this audience (aud)")
        return float(exp) + leeway

    def _issuer_named_in(self, authorization: str | None) -> _Issuer | None:
        if authorization is None:
            return None
        token = authorization.partition(" ")[2].strip(" ")
        parts = token.split(".")
        if len(parts) != 3:
            return None
        claims = _json_object(parts[1])
        iss = claims.get("iss") if claims is not None else None
        return self.issuers.get(iss) if isinstance(iss, str) else None

    def _keys_changed(self, keys: KeySet, removed: bool) -> None:
        self._refused.clear()
        if removed:  # a key left the set: what it verified is no longer trusted
            for token in [t for t, p in self._tokens.items() if p.issuer == keys.issuer]:
                del self._tokens[token]
            self.generation += 1
