"""Attacks on the gateway's token checks (RFC 8725 as the checklist), through a real gateway.

One in-process gateway on a real socket, with ``[auth]`` (API keys, an issuer whose JWKS is
served over HTTPS by ``tests.servers.jwks_server``, and a second issuer with a JWKS file), in
front of a scripted MCP backend. A legitimate client (alice) opens a session first; then every
attack is a ``tools/call`` in alice's session, with the attacker's ``Authorization`` (so a
known session id earns nothing, and the express lane sees each attack too). Each must be
refused with 401, -32051, and ``WWW-Authenticate: Bearer ...`` carrying ``error="invalid_token"``
exactly when a bearer token was presented; none may reach the backend. After all of them,
alice is still served.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.servers.jwks_server import JwksServer, SigningKey, b64url, claims_for, forge
from tests.test_auth import (
    API_KEY,
    EC_KEY,
    ISSUER,
    OTHER_ISSUER,
    RESOURCE,
    RSA_KEY,
    Client,
    auth_gateway,
    auth_toml,
    error_of,
    exchange,
    good_token,
)
from tests.test_express import Scripted

pytestmark = pytest.mark.asyncio(loop_scope="module")

ATTACKER = SigningKey("k1")  # a key of the attacker's, even named like the real one
ATTACKER_EC = SigningKey("evil-ec", "EC")


class Target:
    def __init__(self, port: int, backend: Scripted, alice: Client) -> None:
        self.port = port
        self.backend = backend
        self.alice = alice


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    folder = tmp_path_factory.mktemp("attacks")
    backend = Scripted(lambda n, msg: ("ok", {"n": n}))
    async with JwksServer(folder, [RSA_KEY, EC_KEY]) as jwks, backend as url:
        async with auth_gateway(url, auth_toml(jwks, folder)) as (gw, _):
            alice = Client(gw.port, f"Bearer {good_token('alice')}")
            assert (await alice.open()).status_code == 200
            assert (await alice.call(0)).status_code == 200
            yield Target(gw.port, backend, alice)


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for this gateway, changed (a value of None removes the claim)."""
    base = claims_for(ISSUER, RESOURCE, "mallory", realm={"roles": ["admin"]})
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(key: SigningKey = RSA_KEY, header: dict[str, Any] | None = None, **changes: Any) -> str:
    return key.token(claims(**changes), headers=header)


def segments(token: str) -> list[str]:
    return token.split(".")


def hs256_with_public_key() -> str:
    """RS/HS confusion: HS256, the HMAC secret being the RSA public key a verifier holds."""
    pem = RSA_KEY.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    head = b64url({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    body = b64url(claims())
    return f"{head}.{body}.{b64url(hmac.new(pem, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"


def swapped_signature() -> str:
    mine, theirs = segments(signed()), segments(good_token("alice", jti="other"))
    return f"{mine[0]}.{mine[1]}.{theirs[2]}"


def tampered_payload() -> str:
    head, _, sig = segments(good_token("alice"))
    return f"{head}.{b64url(claims(sub='alice', realm={'roles': ['admin']}))}.{sig}"


def infinite_exp() -> str:
    head, body, sig = segments(signed())
    text = json.dumps(claims(exp=None))[:-1] + ', "exp": 1e999}'
    return f"{head}.{b64url(text)}.{sig}"


def with_raw_payload(payload: str) -> str:
    head, _, sig = segments(signed())
    return f"{head}.{b64url(payload)}.{sig}"


# Each attack: (the Authorization value, or None; the request path). A value of None presents
# no bearer token, so the challenge carries no error code; any other presents one.
ATTACKS: dict[str, Callable[[], tuple[str | None, str]]] = {
    "alg none": lambda: ("Bearer " + forge({"alg": "none", "typ": "JWT", "kid": "k1"}, claims()), "/mcp"),
    "alg none, signature kept": lambda: (
        "Bearer " + forge({"alg": "none", "kid": "k1"}, claims(), segments(signed())[2]),
        "/mcp",
    ),
    "alg None (case)": lambda: ("Bearer " + forge({"alg": "None", "kid": "k1"}, claims()), "/mcp"),
    "HS256 with the RSA public key as HMAC secret": lambda: ("Bearer " + hs256_with_public_key(), "/mcp"),
    "PS256, not on the allow-list": lambda: ("Bearer " + RSA_KEY.token(claims(), alg="PS256"), "/mcp"),
    "untrusted key, the real kid": lambda: ("Bearer " + signed(ATTACKER), "/mcp"),
    "untrusted key, its own kid": lambda: ("Bearer " + signed(ATTACKER_EC), "/mcp"),
    "expired": lambda: ("Bearer " + signed(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "/mcp"),
    "nbf in the future": lambda: ("Bearer " + signed(nbf=int(time.time()) + 3600), "/mcp"),
    "iat in the future beyond leeway": lambda: ("Bearer " + signed(iat=int(time.time()) + 3600), "/mcp"),
    "wrong aud": lambda: ("Bearer " + signed(aud="https://evil.example/mcp"), "/mcp"),
    "no aud": lambda: ("Bearer " + signed(aud=None), "/mcp"),
    "another issuer's audience": lambda: ("Bearer " + signed(aud="https://other-api.example"), "/mcp"),
    "wrong iss": lambda: ("Bearer " + signed(iss="https://evil.example"), "/mcp"),
    "another issuer's name on our issuer's key": lambda: (
        "Bearer " + signed(iss=OTHER_ISSUER, aud="https://other-api.example"),
        "/mcp",
    ),
    "missing exp": lambda: ("Bearer " + signed(exp=None), "/mcp"),
    "non-numeric exp": lambda: ("Bearer " + signed(exp=str(int(time.time()) + 600)), "/mcp"),
    "boolean exp": lambda: ("Bearer " + signed(exp=True), "/mcp"),
    "infinite exp": lambda: ("Bearer " + infinite_exp(), "/mcp"),
    "a 400-digit exp": lambda: (
        "Bearer " + with_raw_payload(json.dumps(claims(exp=None))[:-1] + ', "exp": 1' + "0" * 400 + "}"),
        "/mcp",
    ),
    "payload nested deeper than the decoder goes": lambda: (
        "Bearer " + with_raw_payload('{"a":' + "[" * 2000 + "]" * 2000 + "}"),
        "/mcp",
    ),
    "no subject": lambda: ("Bearer " + signed(sub=None), "/mcp"),
    "unknown kid": lambda: ("Bearer " + signed(header={"kid": "not-a-real-kid"}), "/mcp"),
    "kid of an EC key, alg RS256": lambda: ("Bearer " + signed(header={"kid": "e1"}), "/mcp"),
    "jku header": lambda: ("Bearer " + signed(ATTACKER, header={"jku": "https://evil.example/jwks.json"}), "/mcp"),
    "x5u header": lambda: ("Bearer " + signed(ATTACKER, header={"x5u": "https://evil.example/cert.pem"}), "/mcp"),
    "embedded jwk header": lambda: ("Bearer " + signed(ATTACKER, header={"jwk": ATTACKER.jwk}), "/mcp"),
    "x5c header": lambda: ("Bearer " + signed(header={"x5c": ["MIIB"]}), "/mcp"),
    "unknown crit": lambda: ("Bearer " + signed(header={"crit": ["urn:evil:ext"], "urn:evil:ext": True}), "/mcp"),
    "typ of another kind of token": lambda: ("Bearer " + signed(header={"typ": "dpop+jwt"}), "/mcp"),
    "stripped signature": lambda: ("Bearer " + ".".join(segments(good_token("alice"))[:2]) + ".", "/mcp"),
    "swapped signature (another token's)": lambda: ("Bearer " + swapped_signature(), "/mcp"),
    "tampered payload": lambda: ("Bearer " + tampered_payload(), "/mcp"),
    "payload not an object": lambda: ("Bearer " + with_raw_payload("[1, 2, 3]"), "/mcp"),
    "oversized token": lambda: ("Bearer " + signed(pad="x" * 7000), "/mcp"),
    "malformed base64": lambda: ("Bearer " + "eyJ!bGciOiJSUzI1NiJ9." + ".".join(segments(signed())[1:]), "/mcp"),
    "padded base64": lambda: ("Bearer " + ".".join(s + "==" for s in segments(signed())), "/mcp"),
    "two segments": lambda: ("Bearer " + ".".join(segments(signed())[:2]), "/mcp"),
    "four segments": lambda: ("Bearer " + signed() + ".AAAA", "/mcp"),
    "five segments (JWE-shaped)": lambda: ("Bearer " + signed() + ".AAAA.BBBB", "/mcp"),
    "wrong API key": lambda: ("Bearer " + API_KEY[:-1] + "?", "/mcp"),
    "empty bearer": lambda: ("Bearer ", "/mcp"),
    "Bearer alone": lambda: ("Bearer", "/mcp"),
    "two Authorization headers (joined)": lambda: (f"Bearer {good_token('alice')}, Bearer {signed()}", "/mcp"),
    "Bearer with no space": lambda: (None, "Bearer" + good_token("alice")),
    "Basic scheme": lambda: (None, "Basic " + b64url("alice:password")),
    "token in the query string": lambda: (None, "?access_token=" + good_token("alice")),
    "no credentials at all": lambda: (None, ""),
}


# Why each presented token must be refused (a fragment of its error_description): a refusal
# for another reason would mean a check is missing or comes too late.
REASONS = {
    "alg none": "algorithm not accepted",
    "alg none, signature kept": "algorithm not accepted",
    "alg None (case)": "algorithm not accepted",
    "HS256 with the RSA public key as HMAC secret": "algorithm not accepted",
    "PS256, not on the allow-list": "algorithm not accepted",
    "untrusted key, the real kid": "signature verification failed",
    "untrusted key, its own kid": "unknown signing key",
    "expired": "token expired",
    "nbf in the future": "not valid yet",
    "iat in the future beyond leeway": "issued in the future",
    "wrong aud": "audience",
    "no aud": "audience",
    "another issuer's audience": "audience",
    "wrong iss": "issuer",
    "another issuer's name on our issuer's key": "unknown signing key",
    "missing exp": "no expiry",
    "non-numeric exp": "exp is not a number",
    "boolean exp": "exp is not a number",
    "infinite exp": "malformed token",
    "a 400-digit exp": "exp is not a number",
    "payload nested deeper than the decoder goes": "malformed token",
    "no subject": "no subject",
    "unknown kid": "unknown signing key",
    "kid of an EC key, alg RS256": "does not fit the algorithm",
    "jku header": "jku is not accepted",
    "x5u header": "x5u is not accepted",
    "embedded jwk header": "jwk is not accepted",
    "x5c header": "x5c is not accepted",
    "unknown crit": "critical header extensions",
    "typ of another kind of token": "not an access token",
    "stripped signature": "unsigned token",
    "swapped signature (another token's)": "signature verification failed",
    "tampered payload": "signature verification failed",
    "payload not an object": "malformed token",
    "oversized token": "longer than 8192",
    "malformed base64": "malformed token",
    "padded base64": "malformed token",
    "two segments": "neither a known API key nor a JWT",
    "four segments": "neither a known API key nor a JWT",
    "five segments (JWE-shaped)": "neither a known API key nor a JWT",
    "wrong API key": "neither a known API key nor a JWT",
    "empty bearer": "empty bearer token",
    "Bearer alone": "empty bearer token",
    "two Authorization headers (joined)": "neither a known API key nor a JWT",
}


def request_for(name: str) -> tuple[dict[str, str], str, bool]:
    """The attack's headers and path, and whether a bearer token is presented."""
    authorization, where = ATTACKS[name]()
    if authorization is not None:
        return {"authorization": authorization}, where, True
    if where.startswith("?"):
        return {}, "/mcp" + where, False
    return ({"authorization": where} if where else {}), "/mcp", False


async def test_there_are_enough_attacks() -> None:
    assert len(ATTACKS) >= 25
    assert set(REASONS) == {name for name in ATTACKS if request_for(name)[2]}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_attack_is_refused(target: Target, name: str) -> None:
    headers, path, presented = request_for(name)
    headers["mcp-session-id"] = target.alice.session  # alice's session: a known id earns nothing
    calls = target.backend.calls
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "web__work", "arguments": {}}}
    response = await exchange(target.port, "POST", path, headers, body)
    status, code, challenge = error_of(response)
    assert (status, code) == (401, -32051), response.text
    assert challenge is not None and challenge.startswith("Bearer"), challenge
    assert 'resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp"' in challenge
    assert ('error="invalid_token"' in challenge) == presented, challenge
    if presented:
        description = challenge.partition('error_description="')[2].partition('"')[0]
        assert REASONS[name] in description, challenge
        assert REASONS[name] in json.loads(response.text)["error"]["message"]
    assert target.backend.calls == calls  # nothing reached the backend


async def test_the_query_string_is_never_read_on_get_either(target: Target) -> None:
    path = f"/mcp?access_token={good_token('alice')}"
    response = await exchange(
        target.port, "GET", path, {"accept": "text/event-stream", "mcp-session-id": target.alice.session}
    )
    assert error_of(response)[:2] == (401, -32051)


async def test_after_the_attacks_the_legitimate_client_is_still_served(target: Target) -> None:
    response = await target.alice.call(10)
    assert response.status_code == 200 and "result" in json.loads(response.text)
    fresh = Client(target.port, f"Bearer {good_token('alice', jti='new')}")
    assert (await fresh.call(11, session=target.alice.session)).status_code == 200
    keyed = Client(target.port, f"Bearer {API_KEY}")
    assert (await keyed.open()).status_code == 200 and (await keyed.call(12)).status_code == 200
