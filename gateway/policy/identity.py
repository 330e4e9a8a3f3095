"""Who is calling: the ``Principal`` that authentication makes and authorization reads."""

from __future__ import annotations

from typing import Any

__all__ = ["PENDING", "Principal"]


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING = _Pending()
"""Not decided yet: the token's issuer keys are being fetched (the general path awaits them).
Here, not in ``auth``, so the request path can test for it without importing the JWT stack."""


class Principal:
    """An authenticated caller.

    ``issuer`` says how it was authenticated (a JWT issuer's ``iss``, ``"api-key"``, ``"mtls"``);
    ``subject`` who it is within that issuer; ``roles`` and ``scopes`` what RBAC reads;
    ``claims`` the verified token's claims (empty for API keys); ``expires`` the Unix time
    after which it is no longer valid (None: does not expire). ``key`` is what decisions are
    cached by: two principals with equal keys are decided alike.

    ``token`` is the raw bearer token a JWT principal was verified from (None for API keys and
    client certificates): the subject token a ``token_exchange`` backend credential exchanges
    (``gateway.backends.credentials``). It is a secret: never logged, never in ``repr``, never
    sent to a backend as it is, and not part of ``key`` or equality.
    """

    __slots__ = ("issuer", "subject", "roles", "scopes", "claims", "expires", "key", "owner", "token")

    def __init__(
        self,
        issuer: str,
        subject: str,
        roles: frozenset[str] = frozenset(),
        scopes: frozenset[str] = frozenset(),
        claims: dict[str, Any] | None = None,
        expires: float | None = None,
        token: str | None = None,
    ) -> None:
        self.issuer = issuer
        self.subject = subject
        self.roles = roles
        self.scopes = scopes
        self.claims = claims if claims is not None else {}
        self.expires = expires
        self.key = (issuer, subject, roles, scopes)
        self.owner = (issuer, subject)
        """Whom a session this principal makes belongs to (a refreshed token with other scopes keeps it)."""
        self.token = token

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Principal) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Principal({self.issuer!r}, {self.subject!r}, roles={sorted(self.roles)}, scopes={sorted(self.scopes)})"
