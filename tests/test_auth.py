"""Authentication (``gateway.policy.auth``, ``gateway.policy.jwks``, the header gate's ``AuthGate``).

The keys are real (RSA 2048 and EC P-256, made with ``cryptography``), the JWKS provider is a
real HTTPS server in the test's loop (``tests.servers.jwks_server``, a trustme CA), and the
gateway tests run an in-process gateway on real sockets in front of a scripted MCP backend.
Nothing sleeps to synchronise: a fetch in flight is held by an Event, the debounce and the
negative cache run on an injected clock, refreshes are awaited with ``eventually``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import ServerConfig, load_config_text
from gateway.errors import BackendUnavailable, Forbidden, Unauthenticated
from gateway.front.gate import AuthGate, HeaderGate
from gateway.policy import auth as auth_module
from gateway.policy.admission import Admission
from gateway.policy.auth import PENDING, Authenticator, insufficient_scope
from gateway.policy.identity import Principal
from gateway.policy.jwks import max_age
from gateway.server.api import Request
from gateway.server.listener import Server
from tests.servers.jwks_server import JwksServer, SigningKey, claims_for
from tests.support import ManualClock, eventually
from tests.test_express import ACCEPT, Response, Running, Scripted

ISSUER = "https://idp.example"
OTHER_ISSUER = "https://other.example"
RESOURCE = "https://gw.example/mcp"
API_KEY = "ci-key-0123456789abcdef"
ENV_KEY = "env-key-fedcba9876543210"

RSA_KEY = SigningKey("k1")
EC_KEY = SigningKey("e1", "EC")
ROTATED_KEY = SigningKey("k2")
OTHER_KEY = SigningKey("o1")


def good_token(subject: str = "alice", key: SigningKey = RSA_KEY, **extra: Any) -> str:
    return key.token(claims_for(ISSUER, RESOURCE, subject, realm={"roles": ["dev"]}, scope="tools:call", **extra))


def auth_toml(jwks: JwksServer, folder: pathlib.Path) -> str:
    """The ``[auth]`` the gateway tests use: two API keys, an HTTPS issuer and a file issuer."""
    other = folder / "other-jwks.json"
    other.write_text(json.dumps({"keys": [OTHER_KEY.jwk]}))
    return f"""
[auth]
resource = "{RESOURCE}"
authorization_servers = ["{ISSUER}"]
scopes_supported = ["tools:call", "tools:list"]

[[auth.api_keys]]
subject = "ci-bot"
key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
roles = ["ops"]
scopes = ["tools:call"]

[[auth.api_keys]]
subject = "env-bot"
key = "${{TEST_ENV_KEY}}"
roles = ["env"]

[[auth.jwt]]
issuer = "{ISSUER}"
audiences = ["{RESOURCE}"]
jwks_url = "{jwks.url}"
ca_file = "{jwks.ca_file}"
algorithms = ["RS256", "ES256"]
roles_claim = "realm.roles"
leeway = 30

[[auth.jwt]]
issuer = "{OTHER_ISSUER}"
audiences = ["https://other-api.example"]
jwks_file = "{other}"
algorithms = ["RS256"]
"""


class Recording(Admission):
    """Admits everything; records the principal of each admitted call."""

    def __init__(self) -> None:
        self.principals: list[Any] = []

    def admit(self, principal: Any, ctx: Any, method: str, name: str, route: Any, params: Any) -> None:
        self.principals.append(principal)
        return None


@contextlib.asynccontextmanager
async def auth_gateway(
    backend_url: str, auth: str, *, admission: Admission | None = None, express: bool = True
) -> AsyncIterator[tuple[Running, Gateway]]:
    """An in-process gateway with ``auth`` (TOML text) on a real socket; its express lane counted."""
    text = f"""
[server]
port = 0

[gateway]
express = {str(express).lower()}

[backends.web]
url = {backend_url!r}

{auth}
"""
    config = load_config_text(text, fmt="toml", env={"TEST_ENV_KEY": ENV_KEY})
    gateway = Gateway(config, admission if admission is not None else Admission())
    await gateway.start()
    front = gateway.front
    taken: list[bool] = []
    lane = front.express
    if lane is not None:

        def counting(request: Any, reply: Any) -> bool:
            verdict = lane(request, reply)
            taken.append(verdict)
            return verdict

        front.express = counting  # type: ignore[assignment]
    listener = Server(front, config.server)
    _, port = await listener.start()
    try:
        yield Running(f"http://127.0.0.1:{port}/mcp", taken, listener), gateway
    finally:
        await listener.shutdown()
        await gateway.stop()


async def exchange(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None, timeout: float = 20
) -> Response:
    """One request on a fresh connection (closed after it), read to the end within ``timeout`` s."""
    data = json.dumps(body).encode() if body is not None else b""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "connection: close",
        f"content-length: {len(data)}",
    ]
    if body is not None:
        lines += [f"accept: {ACCEPT}", "content-type: application/json", "mcp-protocol-version: 2025-11-25"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return Response(await asyncio.wait_for(reader.read(), timeout))
    finally:
        writer.close()


class Client:
    """A handshake-era client presenting ``authorization`` (or nothing) on every request."""

    def __init__(self, port: int, authorization: str | None) -> None:
        self.port = port
        self.authorization = authorization
        self.session = ""

    def headers(self, session: str | None = None) -> dict[str, str]:
        out = {}
        if self.authorization is not None:
            out["authorization"] = self.authorization
        session = self.session if session is None else session
        if session:
            out["mcp-session-id"] = session
        return out

    async def open(self) -> Response:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        response = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
        if response.status_code == 200:
            self.session = response.headers["mcp-session-id"]
            await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return response

    async def post(self, body: Any, session: str | None = None) -> Response:
        return await exchange(self.port, "POST", "/mcp", self.headers(session), body)

    async def call(self, request_id: Any = 1, session: str | None = None) -> Response:
        msg = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": "web__work", "arguments": {}},
        }
        return await self.post(msg, session)


def error_of(response: Response) -> tuple[int, int | None, str | None]:
    """Status, JSON-RPC error code and the WWW-Authenticate header of a refusal."""
    body = json.loads(response.text) if response.text else {}
    return response.status_code, body.get("error", {}).get("code"), response.headers.get("www-authenticate")


async def settle(authenticator: Authenticator, authorization: str) -> Any:
    """authenticate, and after PENDING, again once the keys came (what the general path does)."""
    result = authenticator.authenticate(authorization, None)
    if result is PENDING:
        await authenticator.wait_for_keys(authorization)
        result = authenticator.authenticate(authorization, None)
    return result


def issuer_toml(jwks: JwksServer, algorithms: str = '["RS256", "ES256"]') -> str:
    return f"""
[auth]
resource = "{RESOURCE}"

[[auth.jwt]]
issuer = "{ISSUER}"
audiences = ["{RESOURCE}"]
jwks_url = "{jwks.url}"
ca_file = "{jwks.ca_file}"
algorithms = {algorithms}
roles_claim = "realm.roles"
"""


def authenticator_for(jwks: JwksServer, **options: Any) -> Authenticator:
    config = load_config_text(issuer_toml(jwks), fmt="toml")
    return Authenticator(config.auth, **options)


# -- API keys -----------------------------------------------------------------------------------


async def test_api_keys_give_their_principal_and_anything_else_is_401(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    recording = Recording()
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks, Scripted(lambda n, msg: ("ok", {"n": n})) as url:
        async with auth_gateway(url, auth_toml(jwks, tmp_path), admission=recording) as (gw, _):
            client = Client(gw.port, f"Bearer {API_KEY}")
            assert (await client.open()).status_code == 200
            called = await client.call()
            env = Client(gw.port, f"Bearer {ENV_KEY}")  # the key given as ${TEST_ENV_KEY}
            assert (await env.open()).status_code == 200
            await env.call()
            refused = {
                "wrong key": await Client(gw.port, "Bearer not-the-key-0123456789").open(),
                "one character off": await Client(gw.port, f"Bearer {API_KEY[:-1]}X").open(),
                "empty bearer": await Client(gw.port, "Bearer ").open(),
                "missing": await Client(gw.port, None).open(),
            }
    assert called.status_code == 200 and json.loads(called.text)["result"] == {"n": 1}
    ci, env_bot = recording.principals
    assert (ci.issuer, ci.subject, ci.roles, ci.scopes) == ("api-key", "ci-bot", {"ops"}, {"tools:call"})
    assert (env_bot.subject, env_bot.roles) == ("env-bot", {"env"})
    digest = hashlib.sha256(API_KEY.encode()).digest()
    assert (digest, digest) in compared  # the match was made by the constant-time comparison
    metadata = 'resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp"'
    for name, response in refused.items():
        status, code, challenge = error_of(response)
        assert (status, code) == (401, -32051), name
        assert challenge is not None and challenge.startswith("Bearer ") and metadata in challenge, name
        assert ('error="invalid_token"' in challenge) == (name != "missing"), name


# -- JWT: the happy paths ------------------------------------------------------------------------


@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["RS256", "ES256"])
async def test_a_jwt_signed_by_a_jwks_key_is_the_principal_it_names(tmp_path: pathlib.Path, key: SigningKey) -> None:
    async with JwksServer(tmp_path, [RSA_KEY, EC_KEY]) as jwks:
        authenticator = authenticator_for(jwks)
        authenticator.start()
        token = key.token(
            claims_for(ISSUER, ["someone-else", RESOURCE], "bob", realm={"roles": ["dev", "ops"]}, scope="a b")
        )
        principal = await settle(authenticator, f"Bearer {token}")
        again = authenticator.authenticate(f"bearer {token}", None)  # the scheme is case-insensitive
        await authenticator.stop()
    assert isinstance(principal, Principal)
    assert (principal.issuer, principal.subject, principal.roles, principal.scopes) == (
        ISSUER,
        "bob",
        {"dev", "ops"},
        {"a", "b"},
    )
    assert principal.claims["aud"] == ["someone-else", RESOURCE]
    assert principal.expires == pytest.approx(time.time() + 600 + 30, abs=5)
    assert again is principal
    assert jwks.fetches == 1  # fetched over HTTPS once, at start


async def test_a_verified_token_costs_a_lookup_until_it_expires(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []
    rs256 = auth_module._ALGORITHMS["RS256"]

    class Counting:
        def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
            verified.append("RS256")
            return rs256.verify(msg, key, sig)

    monkeypatch.setitem(auth_module._ALGORITHMS, "RS256", Counting())
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        authenticator = authenticator_for(jwks)
        token = f"Bearer {good_token(ttl=60)}"
        first = await settle(authenticator, token)
        for _ in range(5):
            assert authenticator.authenticate(token, None) is first
        assert verified == ["RS256"]
        # Past exp + leeway the remembered principal is not used: the token is refused, as expired.
        later = time.time() + 60 + 31
        monkeypatch.setattr(auth_module, "_now", lambda: later)
        expired = authenticator.authenticate(token, None)
        await authenticator.stop()
    assert isinstance(expired, Unauthenticated) and "expired" in expired.message


# -- JWKS: fetching, refreshing, rotation ---------------------------------------------------------


def test_cache_control_max_age_is_held_within_bounds() -> None:
    assert max_age("public, max-age=120", 600, 60, 86400) == 120
    assert max_age("max-age=5", 600, 60, 86400) == 60
    assert max_age("max-age=999999999", 600, 60, 86400) == 86400
    assert max_age("no-cache", 600, 60, 86400) == 60
    assert max_age("no-store, max-age=3000", 600, 60, 86400) == 60
    assert max_age(None, 600, 60, 86400) == 600
    assert max_age("max-age=soon", 600, 60, 86400) == 600


async def test_the_keys_are_refetched_after_max_age(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        jwks.cache_control = "max-age=7200"
        authenticator = authenticator_for(jwks)
        keys = authenticator.issuers[ISSUER].keys
        authenticator.start()
        await eventually(lambda: keys.keys is not None, message="the first fetch never ended")
        assert keys.max_age == 7200 and keys.next_refresh - keys.fetched_at == pytest.approx(7200)
        await authenticator.stop()
        # A short max-age (the minimum lowered for the test): refreshed by the timer, again and again.
        jwks.cache_control = "max-age=0"
        fast = authenticator_for(jwks, min_refresh=0.05)
        fast.start()
        before = jwks.fetches
        await eventually(lambda: jwks.fetches >= before + 3, message="the keys were not refreshed")
        assert fast.issuers[ISSUER].keys.max_age == 0.05
        await fast.stop()


async def test_stale_keys_are_served_while_the_provider_is_down(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        jwks.cache_control = "max-age=0"
        authenticator = authenticator_for(jwks, min_refresh=0.05, debounce=0.05)
        keys = authenticator.issuers[ISSUER].keys
        authenticator.start()
        assert isinstance(await settle(authenticator, f"Bearer {good_token()}"), Principal)
        jwks.status = 500  # broken ...
        await eventually(lambda: keys.failures >= 1, message="no failed refresh")
        broken = await settle(authenticator, f"Bearer {good_token(jti='after-500')}")
        await jwks.down()  # ... then unreachable
        failures = keys.failures
        await eventually(lambda: keys.failures > failures, message="no failed refresh while down")
        down = await settle(authenticator, f"Bearer {good_token(jti='while-down')}")
        assert keys.last_error is not None
        jwks.status = 200
        await jwks.up()
        await eventually(lambda: keys.failures == 0, message="the provider came back but no refresh succeeded")
        await authenticator.stop()
    assert isinstance(broken, Principal) and isinstance(down, Principal)  # new tokens, verified with stale keys


async def test_an_unknown_kid_refetches_once_and_the_new_key_works(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        authenticator = authenticator_for(jwks)
        authenticator.start()
        assert isinstance(await settle(authenticator, f"Bearer {good_token()}"), Principal)
        assert jwks.fetches == 1
        jwks.keys.append(ROTATED_KEY)  # the provider rotates: a new key, tokens signed with it
        rotated = f"Bearer {good_token('carol', key=ROTATED_KEY)}"
        assert authenticator.authenticate(rotated, None) is PENDING
        await authenticator.wait_for_keys(rotated)
        principal = authenticator.authenticate(rotated, None)
        await authenticator.stop()
    assert isinstance(principal, Principal) and principal.subject == "carol"
    assert jwks.fetches == 2


async def test_a_flood_of_unknown_kids_costs_one_fetch_and_the_negative_cache_holds(tmp_path: pathlib.Path) -> None:
    clock = ManualClock()
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        authenticator = authenticator_for(jwks, clock=clock)
        authenticator.start()
        assert isinstance(await settle(authenticator, f"Bearer {good_token()}"), Principal)
        assert jwks.fetches == 1
        clock.now += 11  # past the debounce
        jwks.hold = asyncio.Event()  # the fetch the flood causes stays in flight until released

        def forged(kid: str) -> str:
            return f"Bearer {RSA_KEY.token(claims_for(ISSUER, RESOURCE), headers={'kid': kid})}"

        flood = [forged(f"bogus-{i}") for i in range(100)]
        first = [authenticator.authenticate(token, None) for token in flood]
        assert first == [PENDING] * 100  # the first started the fetch; the others joined it
        await eventually(lambda: jwks.fetches == 2, message="the fetch did not reach the provider")
        jwks.hold.set()
        await asyncio.gather(*(authenticator.wait_for_keys(token) for token in flood))
        after = [authenticator.authenticate(token, None) for token in flood]
        assert all(isinstance(r, Unauthenticated) and "unknown signing key" in r.message for r in after)
        # A second flood at once: inside the debounce, refused with no fetch at all.
        assert all(
            isinstance(authenticator.authenticate(forged(f"new-{i}"), None), Unauthenticated) for i in range(100)
        )
        assert jwks.fetches == 2
        # Past the debounce: a kid of the flood is in the negative cache (no fetch) ...
        clock.now += 11
        assert isinstance(authenticator.authenticate(forged("bogus-7"), None), Unauthenticated)
        assert jwks.fetches == 2
        # ... a kid never asked for may be a rotation: one fetch.
        fresh = forged("fresh")
        assert authenticator.authenticate(fresh, None) is PENDING
        await authenticator.wait_for_keys(fresh)
        assert jwks.fetches == 3
        # Past the negative cache's 5 minutes, the flood's kids may cause a fetch again.
        clock.now += 301
        assert authenticator.authenticate(forged("bogus-7"), None) is PENDING
        await authenticator.wait_for_keys(forged("bogus-7"))
        await authenticator.stop()
    assert jwks.fetches == 4


async def test_a_key_removed_from_the_jwks_stops_verified_tokens_at_once(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY, ROTATED_KEY]) as jwks:
        authenticator = authenticator_for(jwks, debounce=3600)
        token = f"Bearer {good_token()}"
        assert isinstance(await settle(authenticator, token), Principal)
        generation = authenticator.generation
        jwks.keys = [ROTATED_KEY]  # k1 is revoked
        await authenticator.issuers[ISSUER].keys._fetch_now()
        refused = authenticator.authenticate(token, None)
        await authenticator.stop()
    assert authenticator.generation == generation + 1
    assert isinstance(refused, Unauthenticated)


async def test_no_keys_and_an_unreachable_provider_is_503(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        pass  # stopped: nothing listens on its port
    authenticator = authenticator_for(jwks)
    result = await settle(authenticator, f"Bearer {good_token()}")
    assert isinstance(result, BackendUnavailable) and result.reason == "jwks_unavailable"
    assert authenticator.issuers[ISSUER].keys.failures == 1
    await authenticator.stop()


async def test_a_provider_that_does_not_answer_in_time_is_503_not_a_hang(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        jwks.hold = asyncio.Event()  # not set in time: the provider accepts and does not answer
        authenticator = authenticator_for(jwks, fetch_timeout=0.3)
        gate = HeaderGate(ServerConfig(), authenticator)
        request = _request(f"Bearer {good_token()}")
        assert gate.check(request)[0] is PENDING
        error, principal = await gate.check_after_keys(request)
        jwks.hold.set()
        await authenticator.stop()
    assert isinstance(error, BackendUnavailable) and error.reason == "jwks_unavailable" and principal is None


# -- the header gate -----------------------------------------------------------------------------


def _request(authorization: str | None, tls_subject: str | None = None) -> Request:
    headers = {"host": "127.0.0.1:8080", "content-type": "application/json", "accept": ACCEPT}
    if authorization is not None:
        headers["authorization"] = authorization
    request = Request("POST", "/mcp", "", headers, b"")
    if tls_subject is not None:
        request = _TlsRequest(request, tls_subject)  # type: ignore[assignment]
    return request


class _TlsRequest:
    """A request on a mutual-TLS connection, as the listener makes them (``tls_subject``)."""

    def __init__(self, request: Request, subject: str) -> None:
        self.method, self.path, self.query = request.method, request.path, request.query
        self.headers, self.body, self.tls_subject = request.headers, request.body, subject


async def test_the_gate_keeps_verdicts_until_the_principal_expires_and_never_keeps_pending(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.front import gate as gate_module

    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        authenticator = authenticator_for(jwks)
        gate = HeaderGate(ServerConfig(), authenticator)
        assert type(gate) is AuthGate and type(HeaderGate(ServerConfig())) is HeaderGate
        request = _request(f"Bearer {good_token(ttl=60)}")
        assert gate.check(request) == (PENDING, None)
        assert gate._verdicts == {}  # PENDING is never kept
        error, principal = await gate.check_after_keys(request)
        assert error is None and principal.subject == "alice"
        assert gate.check(_request(request.headers["authorization"])) == (None, principal)  # a cache hit
        later = time.time() + 60 + 31
        monkeypatch.setattr(gate_module, "_now", lambda: later)
        monkeypatch.setattr(auth_module, "_now", lambda: later)
        error, principal = gate.check(_request(request.headers["authorization"]))
        await authenticator.stop()
    assert isinstance(error, Unauthenticated) and principal is None  # not kept past the token's expiry


def test_mutual_tls_without_authorization_is_the_certificate_subject() -> None:
    config = load_config_text(
        f'[auth]\nresource = "{RESOURCE}"\n[[auth.api_keys]]\nsubject = "k"\nkey = "{API_KEY}"\n', fmt="toml"
    )
    authenticator = Authenticator(config.auth, mtls=True)
    gate = HeaderGate(ServerConfig(), authenticator)
    _, principal = gate.check(_request(None, "CN=client,O=Example"))  # type: ignore[arg-type]
    assert principal == Principal("mtls", "CN=client,O=Example")
    _, keyed = gate.check(_request(f"Bearer {API_KEY}", "CN=client,O=Example"))  # type: ignore[arg-type]
    assert keyed.issuer == "api-key"  # credentials presented win over the certificate
    error, _ = gate.check(_request(None))
    assert isinstance(error, Unauthenticated)  # no certificate, no credentials
    # Mutual TLS alone (no [auth]): the certificate is the principal, Authorization is not read.
    alone = HeaderGate(ServerConfig(), Authenticator(None, mtls=True))
    assert alone.check(_request("Bearer whatever", "CN=solo"))[1] == Principal("mtls", "CN=solo")  # type: ignore[arg-type]


def test_insufficient_scope_is_a_403_with_the_scope_to_ask_for() -> None:
    config = load_config_text(f'[auth]\nresource = "{RESOURCE}"\n', fmt="toml")
    err = Authenticator(config.auth).insufficient_scope("tools:call files:read")
    assert isinstance(err, Forbidden) and err.http_status == 403 and err.reason == "insufficient_scope"
    assert err.headers == (
        (
            "www-authenticate",
            'Bearer error="insufficient_scope", scope="tools:call files:read", '
            'resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp"',
        ),
    )
    assert err.to_error()["data"]["gateway"]["scope"] == "tools:call files:read"
    assert insufficient_scope('x"y').headers[0][1] == 'Bearer error="insufficient_scope", scope="xy"'
    # Without [auth] resource there is no metadata to point at: a bare challenge, no metadata paths.
    bare = Authenticator(
        load_config_text('[auth]\n[[auth.api_keys]]\nsubject = "k"\nkey = "0123456789abcdef"\n', fmt="toml").auth
    )
    assert bare.missing.headers == (("www-authenticate", "Bearer"),) and bare.metadata_paths == frozenset()
    assert bare.invalid_token("x").headers == (
        ("www-authenticate", 'Bearer error="invalid_token", error_description="x"'),
    )


# -- through the gateway -------------------------------------------------------------------------


async def test_protected_resource_metadata_at_both_paths_without_credentials(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks, Scripted(lambda n, msg: ("ok", {})) as url:
        async with auth_gateway(url, auth_toml(jwks, tmp_path)) as (gw, _):
            documents = [
                await exchange(gw.port, "GET", "/.well-known/oauth-protected-resource"),
                await exchange(gw.port, "GET", "/.well-known/oauth-protected-resource/mcp"),
            ]
            health = await exchange(gw.port, "GET", "/healthz")
            other = await exchange(gw.port, "GET", "/.well-known/oauth-protected-resource/elsewhere")
            refused = await exchange(gw.port, "GET", "/mcp", {"accept": "text/event-stream"})
    for response in documents:
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert json.loads(response.text) == {
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "scopes_supported": ["tools:call", "tools:list"],
            "bearer_methods_supported": ["header"],
        }
    assert health.status_code == 200  # /healthz stays unauthenticated
    assert other.status_code == 404
    status, code, challenge = error_of(refused)
    assert (status, code) == (401, -32051)
    assert challenge == 'Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp"'


async def test_without_auth_nothing_changes(tmp_path: pathlib.Path) -> None:
    async with Scripted(lambda n, msg: ("ok", {"n": n})) as url, auth_gateway(url, "") as (gw, gateway):
        assert gateway.authenticator is None and type(gateway.front.gate) is HeaderGate
        client = Client(gw.port, "Bearer anything-at-all")
        assert (await client.open()).status_code == 200
        called = await client.call()
        metadata = await exchange(gw.port, "GET", "/.well-known/oauth-protected-resource")
    assert called.status_code == 200 and json.loads(called.text)["result"] == {"n": 1}
    assert metadata.status_code == 404


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_a_session_is_bound_to_its_principal(tmp_path: pathlib.Path, express: bool) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks, Scripted(lambda n, msg: ("ok", {"n": n})) as url:
        async with auth_gateway(url, auth_toml(jwks, tmp_path), express=express) as (gw, _):
            alice = Client(gw.port, f"Bearer {good_token('alice')}")
            assert (await alice.open()).status_code == 200
            assert (await alice.call(1)).status_code == 200
            # Mallory has credentials of her own (a JWT, or an API key) and alice's session id.
            for mallory in (Client(gw.port, f"Bearer {good_token('mallory')}"), Client(gw.port, f"Bearer {API_KEY}")):
                stolen = alice.session
                attempts = [
                    await mallory.call(2, session=stolen),
                    # (a stream opened on it would never end: a short read says so)
                    await exchange(
                        gw.port, "GET", "/mcp", {**mallory.headers(stolen), "accept": "text/event-stream"}, timeout=3
                    ),
                    await exchange(gw.port, "DELETE", "/mcp", mallory.headers(stolen)),
                ]
                unknown = await mallory.call(3, session="no-such-session")
                for response in attempts:
                    assert response.status_code == 404 and json.loads(response.text) == json.loads(unknown.text)
                    assert json.loads(response.text)["error"]["code"] == -32050
            # The same subject with a refreshed token (other claims) keeps the session; alice still works.
            refreshed = Client(gw.port, f"Bearer {good_token('alice', jti='refreshed')}")
            again = await refreshed.call(4, session=alice.session)
            last = await alice.call(5)
    assert again.status_code == 200 and last.status_code == 200
    assert json.loads(last.text)["result"]["n"] == 3  # mallory's attempts never reached the backend


async def test_a_known_jwt_takes_the_express_lane(tmp_path: pathlib.Path) -> None:
    recording = Recording()
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks, Scripted(lambda n, msg: ("ok", {"n": n})) as url:
        async with auth_gateway(url, auth_toml(jwks, tmp_path), admission=recording) as (gw, _):
            client = Client(gw.port, f"Bearer {good_token()}")
            assert (await client.open()).status_code == 200
            await client.call(0)  # the pool settles (see test_express)
            del gw.taken[:]
            answers = [await client.call(i) for i in range(1, 6)]
    assert [a.status_code for a in answers] == [200] * 5
    assert gw.taken == [True] * 5
    assert {p.subject for p in recording.principals} == {"alice"}


async def test_a_token_arriving_before_the_keys_waits_for_them(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks, Scripted(lambda n, msg: ("ok", {"n": n})) as url:
        jwks.hold = asyncio.Event()  # the first fetch (at start) is held
        async with auth_gateway(url, auth_toml(jwks, tmp_path)) as (gw, _):
            client = Client(gw.port, f"Bearer {good_token()}")
            opening = asyncio.ensure_future(client.open())
            await eventually(lambda: jwks.fetches == 1, message="no fetch at start")
            assert not opening.done()
            jwks.hold.set()
            opened = await opening
    assert opened.status_code == 200 and jwks.fetches == 1


async def test_an_unreachable_provider_with_no_keys_is_503_through_the_gateway(tmp_path: pathlib.Path) -> None:
    async with JwksServer(tmp_path, [RSA_KEY]) as jwks:
        pass  # nothing listens there any more
    async with Scripted(lambda n, msg: ("ok", {})) as url, auth_gateway(url, auth_toml(jwks, tmp_path)) as (gw, _):
        response = await Client(gw.port, f"Bearer {good_token()}").open()
        keyed = await Client(gw.port, f"Bearer {API_KEY}").open()  # API keys do not depend on the provider
    assert response.status_code == 503 and response.headers.get("retry-after") == "1"
    assert json.loads(response.text)["error"]["data"]["gateway"]["reason"] == "jwks_unavailable"
    assert keyed.status_code == 200


def test_under_workers_the_owner_is_inside_the_session_ids_signature() -> None:
    from gateway.front.sessions import SessionStore

    alice, mallory = Principal(ISSUER, "alice"), Principal(ISSUER, "mallory")
    made = SessionStore(60, secret=b"shared by the workers").create("2025-11-25", {}, None, alice)
    # Another worker, which never saw the session: it adopts it for its owner only.
    assert SessionStore(60, secret=b"shared by the workers").get(made.id, mallory) is None
    assert SessionStore(60, secret=b"shared by the workers").get(made.id, None) is None
    other = SessionStore(60, secret=b"shared by the workers")
    adopted = other.get(made.id, Principal(ISSUER, "alice", roles=frozenset({"new-role"})))
    assert adopted is not None and adopted.owner == (ISSUER, "alice")
    assert other.get(made.id, mallory) is None  # once adopted, still alice's only
