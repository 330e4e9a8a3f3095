"""An OAuth 2.0 token endpoint for the backend-credential tests: HTTPS (a certificate from the
tests' trustme CA, ``tests.support.Pki``) in the test's own event loop.

``TokenServer`` answers ``POST /token`` (``application/x-www-form-urlencoded``) for one client
(``client_id``, ``client_secret``), authenticated with HTTP Basic (RFC 6749 2.3.1, the id and
secret form-encoded) or in the form; anything else is 401 ``invalid_client``. Two grants:

- ``client_credentials``: a new token ``cc-N`` each time, ``expires_in = cc_expires_in``;
- ``urn:ietf:params:oauth:grant-type:token-exchange`` (RFC 8693): the ``subject_token`` must be
  a JWT signed by ``subject_key`` (verified with pyjwt, audience ``subject_audience``) and
  ``subject_token_type`` one of the RFC's; then a new token ``xt-SUBJECT-N`` for the
  ``audience`` asked, ``expires_in = xt_expires_in``. A subject token that does not verify, or
  a subject in ``refuse_subjects``, is 400 ``invalid_grant`` (RFC 8693 2.2.2).

Every request is recorded in ``requests`` (``{"headers", "form", "client", "grant"}``, the
form decoded); ``count(grant)`` says how many of a grant arrived (a test waits on it, never on
time). ``status`` other than 200 answers that status with ``{"error": error}`` whatever is
asked (the endpoint is broken); ``answer`` (a dict), when set, is sent as the 200 body instead
of a token (for malformed answers); ``hold`` (an Event, or None) makes each answer wait until
it is set.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import jwt

__all__ = ["TOKEN_EXCHANGE", "TokenServer"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_SUBJECT_TYPES = {"urn:ietf:params:oauth:token-type:access_token", "urn:ietf:params:oauth:token-type:jwt"}


class TokenServer:
    """The token endpoint (see the module docstring); ``async with`` starts it and gives its URL."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        client_id: str = "gateway",
        client_secret: str = "s3cret:with spaces&symbols",
        subject_key: Any = None,
        subject_audience: str | None = None,
    ) -> None:
        self.context = context
        self.client_id = client_id
        self.client_secret = client_secret
        self.subject_key = subject_key
        self.subject_audience = subject_audience
        self.cc_expires_in: float | None = 3600
        self.xt_expires_in: float | None = 3600
        self.refuse_subjects: set[str] = set()
        self.status = 200
        self.error = "server_error"
        self.answer: dict[str, Any] | None = None
        self.hold: asyncio.Event | None = None
        self.requests: list[dict[str, Any]] = []
        self.issued = 0
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def count(self, grant: str) -> int:
        """How many requests of ``grant`` (``client_credentials``, ``token_exchange``) arrived."""
        return sum(1 for r in self.requests if r["grant"] == grant)

    async def __aenter__(self) -> TokenServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- one request ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            form = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True))
            status, answer = self._decide(lines[0], headers, form)
            if self.hold is not None:
                await self.hold.wait()
            data = json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
                f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _client(self, headers: dict[str, str], form: dict[str, str]) -> str | None:
        """Which client authentication was used (``basic`` or ``post``), None if it failed."""
        basic = headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                pair = base64.b64decode(basic[6:], validate=True).decode()
            except ValueError:
                return None
            ident, _, secret = pair.partition(":")
            ok = unquote_plus(ident) == self.client_id and unquote_plus(secret) == self.client_secret
            return "basic" if ok and "client_secret" not in form else None
        if form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret:
            return "post"
        return None

    def _decide(self, line: str, headers: dict[str, str], form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        grant = "token_exchange" if grant == TOKEN_EXCHANGE else grant
        client = self._client(headers, form)
        self.requests.append({"line": line, "headers": headers, "form": form, "client": client, "grant": grant})
        if not line.startswith("POST /token ") or headers.get("content-type") != "application/x-www-form-urlencoded":
            return 400, {"error": "invalid_request"}
        if self.status != 200:
            return self.status, {"error": self.error, "error_description": "the endpoint is broken\r\nreally"}
        if client is None:
            return 401, {"error": "invalid_client"}
        if self.answer is not None:
            return 200, self.answer
        if grant == "client_credentials":
            return 200, self._issue("cc", self.cc_expires_in)
        if grant != "token_exchange":
            return 400, {"error": "unsupported_grant_type"}
        if form.get("subject_token_type") not in _SUBJECT_TYPES or not form.get("audience"):
            return 400, {"error": "invalid_request"}
        try:
            claims = jwt.decode(
                form.get("subject_token", ""), self.subject_key, algorithms=["RS256", "ES256"], audience=self.subject_audience
            )
        except jwt.PyJWTError:
            return 400, {"error": "invalid_grant", "error_description": "subject token refused"}
        if claims["sub"] in self.refuse_subjects:
            return 400, {"error": "invalid_grant", "error_description": "not allowed"}
        answer = self._issue(f"xt-{claims['sub']}", self.xt_expires_in)
        answer["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        return 200, answer

    def _issue(self, prefix: str, expires_in: float | None) -> dict[str, Any]:
        self.issued += 1
        answer: dict[str, Any] = {"access_token": f"{prefix}-{self.issued}", "token_type": "Bearer"}
        if expires_in is not None:
            answer["expires_in"] = expires_in
        return answer
