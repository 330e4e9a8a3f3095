"""Credentials toward backends (``gateway.backends.credentials``, ``[backends.NAME.credential]``,
``identity_headers``): the client's token never goes to a backend.

Real parts: a token endpoint written for these tests (``tests.servers.token_server``, HTTPS
with the trustme CA of ``tests.support.Pki``, checking the client's authentication and each
grant's parameters, counting requests), a scripted MCP backend that records every request
with its headers (``tests.test_express.Scripted``), real JWTs (RSA, ``tests.servers.jwks_server``)
and an in-process gateway with ``[auth]`` on real sockets. Nothing sleeps to synchronise: a
refresh is awaited on the endpoint's request count, a cached token's expiry is an injected
clock, state changes are awaited with ``eventually``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.backends.base import BackendState
from gateway.backends.credentials import CredentialError, identity_lines, request_token
from gateway.backends.http import HttpBackend
from gateway.config import BackendConfig, ConfigError, CredentialConfig, describe, load_config_text
from gateway.policy.admission import Admission
from gateway.policy.auth import Authenticator
from gateway.policy.identity import Principal
from gateway.server.listener import Server
from tests.servers.jwks_server import SigningKey, claims_for
from tests.servers.token_server import TOKEN_EXCHANGE, TokenServer
from tests.support import ManualClock, Pki, eventually
from tests.test_auth import Client, exchange
from tests.test_express import Running, Scripted

ISSUER = "https://idp.example"
RESOURCE = "https://gw.example/mcp"
API_KEY = "ci-key-0123456789abcdef"
SECRET = "s3cret:with spaces&symbols"
KEY = SigningKey("k1")
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def jwt_for(subject: str, **extra: Any) -> str:
    return KEY.token(claims_for(ISSUER, RESOURCE, subject, realm={"roles": ["dev"]}, **extra))


def ok(n: int, msg: dict) -> tuple[Any, ...]:
    return ("ok", {"n": n})


def credential_toml(idp: TokenServer, pki: Pki, grant: str, **extra: str) -> str:
    lines = [
        "[backends.web.credential]",
        f'grant = "{grant}"',
        f'token_url = "{idp.url}"',
        'client_id = "gateway"',
        'client_secret = "${IDP_SECRET}"',
        f'ca_file = "{pki.ca_file}"',
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def config_text(url: str, folder: pathlib.Path, backend: str = "", credential: str = "", auth: bool = True) -> str:
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [KEY.jwk]}))
    text = f"""
[server]
port = 0

[backends.web]
url = {url!r}
{backend}
{credential}
"""
    if auth:
        text += f"""
[auth]
resource = "{RESOURCE}"

[[auth.api_keys]]
subject = "ci-bot"
key = "{API_KEY}"

[[auth.jwt]]
issuer = "{ISSUER}"
audiences = ["{RESOURCE}"]
jwks_file = "{jwks}"
roles_claim = "realm.roles"
"""
    return text


@contextlib.asynccontextmanager
async def gateway_with(
    url: str, folder: pathlib.Path, backend: str = "", credential: str = "", *, secret: str = SECRET
) -> AsyncIterator[tuple[Running, Gateway]]:
    """An in-process gateway in front of ``url`` with ``[auth]`` (JWTs of ``KEY``, one API key);
    ``backend``: more keys of ``[backends.web]``; ``credential``: its credential table. Its
    express lane's verdicts are counted."""
    config = load_config_text(config_text(url, folder, backend, credential), fmt="toml", env={"IDP_SECRET": secret})
    gateway = Gateway(config, Admission())
    await gateway.start()
    front = gateway.front
    taken: list[bool] = []
    lane = front.express
    assert lane is not None

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


class Spoofing(Client):
    """A client that also sends headers of its own choosing (an identity it would like to have)."""

    def __init__(self, port: int, authorization: str | None, extra: dict[str, str]) -> None:
        super().__init__(port, authorization)
        self.extra = extra

    def headers(self, session: str | None = None) -> dict[str, str]:
        return {**super().headers(session), **self.extra}


def posts(backend: Scripted, method: str | None = None) -> list[dict]:
    """The backend's recorded POSTs (of ``method``)."""
    return [
        r for r in backend.requests
        if r["line"].startswith("POST") and (method is None or (r["body"] or {}).get("method") == method)
    ]


def authorizations(requests: list[dict]) -> list[str | None]:
    return [r["headers"].get("authorization") for r in requests]


def assert_never_sent(backend: Scripted, *secrets: str) -> None:
    """None of ``secrets`` is anywhere in any request the backend received (line, headers, body)."""
    assert backend.requests
    for request in backend.requests:
        text = request["line"] + json.dumps(request["headers"]) + json.dumps(request["body"])
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... reached the backend in {request['line']}"


def said(response: Any) -> tuple[int, Any, Any]:
    """Status, the result (or the error code) and the error's reason."""
    body = json.loads(response.text)
    error = body.get("error")
    if error is None:
        return response.status_code, body["result"], None
    return response.status_code, error["code"], error["data"]["gateway"]["reason"]


def http_backend(gateway: Gateway) -> HttpBackend:
    backend = gateway.backends["web"]
    assert isinstance(backend, HttpBackend)
    return backend


async def end_sessions(gw: Running, gateway: Gateway, *clients: Client) -> None:
    """DELETE each client's session and wait until the gateway has released the upstream ones
    (each DELETE sent with its own caller's credential)."""
    for client in clients:
        assert (await exchange(gw.port, "DELETE", "/mcp", client.headers())).status_code in (200, 204)
    await eventually(lambda: not gateway._tasks, message="the upstream sessions were not released")


# -- client credentials -----------------------------------------------------------------------------


async def test_client_credentials_the_backend_sees_the_gateways_token_never_the_clients(tmp_path: pathlib.Path) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        credential = credential_toml(idp, pki, "client_credentials", scope="mcp:call", audience="https://web.example")
        async with gateway_with(url, tmp_path, credential=credential) as (gw, gateway):
            token = jwt_for("alice")
            alice = Spoofing(gw.port, f"Bearer {token}", {"x-user": "admin"})
            assert (await alice.open()).status_code == 200
            await alice.call(0)  # the pool settles (see test_express)
            del gw.taken[:]
            answers = [said(await alice.call(i)) for i in range(1, 4)]
            keyed = Client(gw.port, f"Bearer {API_KEY}")
            assert (await keyed.open()).status_code == 200
            by_key = said(await keyed.call(9))
    assert [a[0] for a in answers] == [200] * 3 and by_key[0] == 200
    assert gw.taken[:3] == [True] * 3  # the gateway's token rides in the constant head: the express lane
    assert idp.count("client_credentials") == 1
    (asked,) = idp.requests
    assert asked["client"] == "basic" and asked["form"]["grant_type"] == "client_credentials"
    assert asked["form"]["scope"] == "mcp:call" and asked["form"]["audience"] == "https://web.example"
    assert "client_secret" not in asked["form"]
    assert set(authorizations(backend.requests)) == {"Bearer cc-1"}  # every request: POST, GET, DELETE
    assert {r["line"].split()[0] for r in backend.requests} >= {"POST", "GET", "DELETE"}
    assert not any("x-user" in r["headers"] for r in backend.requests)  # nothing of the client's is forwarded
    assert_never_sent(backend, token, API_KEY, SECRET)


async def test_the_token_is_refreshed_before_it_expires_and_the_express_lane_sends_the_new_one(
    tmp_path: pathlib.Path,
) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        idp.cc_expires_in = 1  # refreshed at 0.8 s
        credential = credential_toml(idp, pki, "client_credentials", client_auth="client_secret_post")
        async with gateway_with(url, tmp_path, credential=credential) as (gw, gateway):
            web = http_backend(gateway)
            idp.cc_expires_in = 3600  # the next token lasts
            client = Client(gw.port, f"Bearer {jwt_for('alice')}")
            assert (await client.open()).status_code == 200
            await client.call(0)
            await eventually(lambda: idp.count("client_credentials") == 2, message="no refresh before the expiry")
            await eventually(lambda: web.auth.own.token == "cc-2", message="the new token was not taken")  # type: ignore[union-attr]
            assert web.state is BackendState.READY
            del gw.taken[:]
            before = len(posts(backend, "tools/call"))
            answered = said(await client.call(1))
    assert answered[0] == 200 and gw.taken == [True]
    (call,) = posts(backend, "tools/call")[before:]
    assert call["headers"]["authorization"] == "Bearer cc-2"
    assert [r["client"] for r in idp.requests] == ["post", "post"]
    assert all(r["form"]["client_secret"] == SECRET for r in idp.requests)
    assert idp.count("client_credentials") == 2  # the 3600 s token is not refreshed again meanwhile


async def test_a_failing_refresh_keeps_the_token_until_it_expires_then_down_then_recovers(
    tmp_path: pathlib.Path,
) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        idp.cc_expires_in = 3  # refreshed at 2.4 s, retried at the expiry
        credential = credential_toml(idp, pki, "client_credentials")
        async with gateway_with(url, tmp_path, credential=credential) as (gw, gateway):
            web = http_backend(gateway)
            client = Client(gw.port, f"Bearer {jwt_for('alice')}")
            assert (await client.open()).status_code == 200
            assert said(await client.call(0))[0] == 200
            idp.status, idp.error = 503, "temporarily_unavailable"
            await eventually(lambda: idp.count("client_credentials") == 2, message="no refresh")
            # The refresh failed: the token still valid stays in use.
            assert web.state is BackendState.READY and web.auth.own.token == "cc-1"  # type: ignore[union-attr]
            kept = said(await client.call(1))
            await eventually(lambda: web.state is BackendState.DOWN, message="not DOWN at the expiry")
            reason = web.last_error or ""
            calls_when_down = len(posts(backend, "tools/call"))
            refused = await client.call(2)
            idp.status = 200
            await eventually(lambda: web.state is BackendState.READY, message="no recovery")
            await eventually(
                lambda: gateway.catalog.snapshot.router.resolve_tool("web__work") is not None, message="no tools again"
            )
            again = said(await client.call(3))
    assert kept[0] == 200
    assert posts(backend, "tools/call")[1]["headers"]["authorization"] == "Bearer cc-1"
    assert "expired" in reason and "503" in reason and "temporarily_unavailable" in reason
    assert SECRET not in reason
    assert refused.status_code != 200 or "error" in json.loads(refused.text)
    assert len(posts(backend, "tools/call")) == calls_when_down + 1  # only the call after the recovery
    assert again[0] == 200
    last = posts(backend, "tools/call")[-1]["headers"]["authorization"]
    assert last.startswith("Bearer cc-") and last != "Bearer cc-1"
    assert None not in authorizations(backend.requests)


async def test_a_token_endpoint_that_refuses_the_gateway_leaves_the_backend_down_and_untouched(
    tmp_path: pathlib.Path,
) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        credential = credential_toml(idp, pki, "client_credentials")
        async with gateway_with(url, tmp_path, credential=credential, secret="not-the-secret") as (gw, gateway):
            web = http_backend(gateway)
            client = Client(gw.port, f"Bearer {jwt_for('alice')}")
            assert (await client.open()).status_code == 200
            answered = said(await client.call(1))
            status = gateway.status()
    assert web.state is BackendState.STOPPED
    ((name, state, reason),) = status
    assert (name, state) == ("web", "down")
    assert reason is not None and "no token from the token endpoint" in reason and "invalid_client" in reason
    assert "not-the-secret" not in reason
    assert answered[1] == -32602  # no tools: the backend never got as far as listing them
    assert backend.requests == []  # nothing reached the backend, not even initialize
    assert idp.requests and all(r["client"] is None for r in idp.requests)


# -- token exchange -----------------------------------------------------------------------------------


def exchange_setup(idp: TokenServer, pki: Pki, **extra: str) -> tuple[str, str]:
    idp.subject_key, idp.subject_audience = KEY.public, RESOURCE
    return 'session = "per-client"\n', credential_toml(idp, pki, "token_exchange", **extra)


def session_tokens(backend: Scripted) -> dict[str, str | None]:
    """Each upstream session id, and the Authorization its initialize carried."""
    return {sid: init["headers"].get("authorization") for init, sid in zip(posts(backend, "initialize"), backend.sessions)}


async def test_token_exchange_each_caller_gets_its_own_token_cached_and_the_backend_never_sees_the_client_token(
    tmp_path: pathlib.Path,
) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        session, credential = exchange_setup(idp, pki)
        async with gateway_with(url, tmp_path, session, credential) as (gw, gateway):
            alice_token, bob_token = jwt_for("alice"), jwt_for("bob")
            alice, bob = Client(gw.port, f"Bearer {alice_token}"), Client(gw.port, f"Bearer {bob_token}")
            assert (await alice.open()).status_code == 200 and (await bob.open()).status_code == 200
            answers = [said(await alice.call(1)), said(await alice.call(2)), said(await bob.call(3)), said(await alice.call(4))]
            exchanges = idp.count("token_exchange")
            await end_sessions(gw, gateway, alice, bob)
    assert [a[0] for a in answers] == [200] * 4
    assert exchanges == 2  # alice's second and third calls reused her exchanged token
    asked = [r for r in idp.requests if r["grant"] == "token_exchange"]
    assert [r["form"]["subject_token"] for r in asked] == [alice_token, bob_token]
    for request in asked:
        form = request["form"]
        assert request["client"] == "basic"
        assert form["grant_type"] == TOKEN_EXCHANGE
        assert form["subject_token_type"] == ACCESS_TOKEN_TYPE
        assert form["requested_token_type"] == ACCESS_TOKEN_TYPE
        assert form["audience"] == url  # default: the backend's URL
    # The gateway's own session (initialize, tools/list) carries the gateway's own token; each
    # caller's upstream session, and every request in it, that caller's exchanged token.
    tokens = session_tokens(backend)
    assert sorted(tokens.values()) == ["Bearer cc-1", "Bearer xt-alice-2", "Bearer xt-bob-3"]
    for request in backend.requests:
        sid = request["headers"].get("mcp-session-id")
        if sid is not None:
            assert request["headers"]["authorization"] == tokens[sid], request["line"]
    calls = collections.Counter(authorizations(posts(backend, "tools/call")))
    assert calls == {"Bearer xt-alice-2": 3, "Bearer xt-bob-3": 1}
    deletes = [r for r in backend.requests if r["line"].startswith("DELETE")]
    # Each caller's session is ended with its own token; the gateway's own (at the stop) with the gateway's.
    assert sorted(authorizations(deletes)) == ["Bearer cc-1", "Bearer xt-alice-2", "Bearer xt-bob-3"]
    assert set(authorizations(posts(backend, "tools/list"))) == {"Bearer cc-1"}
    assert True not in gw.taken  # its heads depend on the caller: the general path
    assert_never_sent(backend, alice_token, bob_token, SECRET)


async def test_an_exchanged_token_is_used_until_it_expires_and_never_past_the_callers_own(tmp_path: pathlib.Path) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        session, credential = exchange_setup(idp, pki, audience="https://web.example/api")
        idp.xt_expires_in = 100  # used for 90 s (a 10% margin)
        async with gateway_with(url, tmp_path, session, credential) as (gw, gateway):
            exchange = http_backend(gateway).auth.exchange  # type: ignore[union-attr]
            assert exchange is not None
            clock = exchange.clock = ManualClock()
            alice = Client(gw.port, f"Bearer {jwt_for('alice')}")
            assert (await alice.open()).status_code == 200
            assert said(await alice.call(1))[0] == 200
            clock.now += 89
            assert said(await alice.call(2))[0] == 200
            cached = idp.count("token_exchange")
            clock.now += 2
            assert said(await alice.call(3))[0] == 200
            expired = idp.count("token_exchange")
            # The same subject with a token of fewer scopes: never the token exchanged for more.
            narrow = Client(gw.port, f"Bearer {jwt_for('alice', scope='read')}")
            assert (await narrow.open()).status_code == 200
            before = idp.count("token_exchange")
            assert said(await narrow.call(31))[0] == 200
            narrowed = idp.count("token_exchange") - before
            # A caller whose own token ends within a minute (exp + 30 s leeway): an exchanged token is
            # never kept past that, however long the endpoint says it lasts.
            brief = Client(gw.port, f"Bearer {KEY.token(claims_for(ISSUER, RESOURCE, 'carol', ttl=20))}")
            assert (await brief.open()).status_code == 200
            exchange.wall = lambda: time.time() + 51
            assert said(await brief.call(4))[0] == 200
            assert said(await brief.call(5))[0] == 200
            capped = idp.count("token_exchange")
            exchange.wall = time.time
            await end_sessions(gw, gateway, alice, narrow, brief)
    # carol's tokens are never kept: each of her requests asks anew (initialize, initialized, the
    # call; the next call).
    assert (cached, expired, narrowed) == (1, 2, 1)  # narrow's initialize, initialized and call: one exchange
    assert capped == 2 + 1 + 4
    assert {r["form"]["audience"] for r in idp.requests if r["grant"] == "token_exchange"} == {"https://web.example/api"}
    calls = authorizations(posts(backend, "tools/call"))
    assert calls[:3] == ["Bearer xt-alice-2", "Bearer xt-alice-2", "Bearer xt-alice-3"]


async def test_a_refused_exchange_is_403_a_broken_endpoint_503_and_nothing_reaches_the_backend(
    tmp_path: pathlib.Path,
) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        session, credential = exchange_setup(idp, pki)
        idp.refuse_subjects = {"mallory"}
        async with gateway_with(url, tmp_path, session, credential) as (gw, gateway):
            mallory_token, alice_token = jwt_for("mallory"), jwt_for("alice")
            mallory, alice = Client(gw.port, f"Bearer {mallory_token}"), Client(gw.port, f"Bearer {alice_token}")
            keyed = Client(gw.port, f"Bearer {API_KEY}")
            for client in (mallory, alice, keyed):
                assert (await client.open()).status_code == 200
            seen = len(backend.requests)
            refused = await mallory.call(1)
            refused_again = await mallory.call(2)  # refusals are not cached: asked again, refused again
            exchanges = idp.count("token_exchange")
            no_token = await keyed.call(3)  # an API key has no token to exchange: the endpoint is not asked
            asked_for_key = idp.count("token_exchange") - exchanges
            idp.status = 500
            broken = await alice.call(4)
            after = backend.requests[seen:]
            await end_sessions(gw, gateway, mallory, alice, keyed)
    for response in (refused, refused_again, no_token):
        assert said(response) == (403, -32052, "token_exchange_refused")
    assert "invalid_grant" in json.loads(refused.text)["error"]["message"]
    assert exchanges == 2 and asked_for_key == 0
    assert said(broken) == (503, -32054, "token_exchange_failed") and broken.headers.get("retry-after") == "1"
    assert after == []  # no initialize, no call, nothing for any of them reached the backend
    assert_never_sent(backend, mallory_token, alice_token, API_KEY)


async def test_an_endpoint_that_hands_the_subject_token_back_gets_nothing_through(tmp_path: pathlib.Path) -> None:
    pki = Pki(tmp_path)
    backend = Scripted(ok)
    async with TokenServer(pki.server_context()) as idp, backend as url:
        session, credential = exchange_setup(idp, pki)
        async with gateway_with(url, tmp_path, session, credential) as (gw, gateway):
            token = jwt_for("alice")
            alice = Client(gw.port, f"Bearer {token}")
            assert (await alice.open()).status_code == 200
            seen = len(backend.requests)
            idp.answer = {"access_token": token, "token_type": "Bearer", "expires_in": 300}
            answered = await alice.call(1)
            after = backend.requests[seen:]
            await end_sessions(gw, gateway, alice)
    assert said(answered) == (503, -32054, "token_exchange_failed")
    assert after == []
    assert_never_sent(backend, token)


# -- identity headers ---------------------------------------------------------------------------------


async def test_identity_headers_carry_chosen_claims_and_a_client_cannot_impersonate(tmp_path: pathlib.Path) -> None:
    backend = Scripted(ok)
    mapping = 'identity_headers = { sub = "x-user", "realm.roles" = "x-roles", email = "x-email", nope = "x-nope" }'
    async with backend as url, gateway_with(url, tmp_path, mapping) as (gw, gateway):
        token = jwt_for("alice", email="alice@example.com")
        spoof = {"x-user": "admin", "x-roles": '["admin"]', "x-nope": "yes", "x-email": "root@example.com"}
        alice = Spoofing(gw.port, f"Bearer {token}", spoof)
        assert (await alice.open()).status_code == 200
        answers = [said(await alice.call(i)) for i in range(3)]
        seen = len(posts(backend, "tools/call"))
        evil = {
            "crlf": jwt_for("eve\r\nx-admin: true"),
            "lf": jwt_for("eve\nx-admin: true"),
            "space": jwt_for(" alice"),
            "nul": jwt_for("eve\x00"),
        }
        for i, bad in enumerate(evil.values()):
            client = Client(gw.port, f"Bearer {bad}")
            assert (await client.open()).status_code == 200
            assert said(await client.call(10 + i))[0] == 200
        keyed = Spoofing(gw.port, f"Bearer {API_KEY}", {"x-user": "alice"})
        assert (await keyed.open()).status_code == 200
        assert said(await keyed.call(20))[0] == 200
    assert [a[0] for a in answers] == [200] * 3
    assert True not in gw.taken  # the headers depend on the caller: the general path
    calls = posts(backend, "tools/call")
    for call in calls[:seen]:
        headers = call["headers"]
        assert (headers["x-user"], headers["x-roles"], headers["x-email"]) == ("alice", '["dev"]', "alice@example.com")
        assert "x-nope" not in headers and "authorization" not in headers
    for call in calls[seen:]:  # the unclean subjects and the API key: no x-user at all, nothing injected
        assert "x-user" not in call["headers"] and "x-admin" not in call["headers"]
    for request in backend.requests:
        if (request["body"] or {}).get("method") in ("initialize", "tools/list"):
            assert "x-user" not in request["headers"]  # the gateway's own requests carry nobody's identity
    assert_never_sent(backend, token, API_KEY, *evil.values())


def test_identity_lines_send_clean_values_only() -> None:
    p = Principal(ISSUER, "alice", claims={
        "sub": "alice", "n": 3, "ok": True, "groups": ["a,admin", "b"], "deep": {"x": "y"}, "https://ex.com/r": "r1",
        "long": "x" * 5000, "tab": "a\tb", "del": "a\x7fb", "u": "José 日本", "none": None, "empty": "",
    })
    mapping = {k: f"x-{i}" for i, k in enumerate(
        ["sub", "n", "ok", "groups", "deep.x", "https://ex.com/r", "long", "tab", "del", "u", "none", "empty", "missing"]
    )}
    lines = identity_lines(p, mapping).split(b"\r\n")
    assert lines == [
        b"x-0: alice", b"x-1: 3", b"x-2: true", b'x-3: ["a,admin","b"]', b"x-4: y", b"x-5: r1",
        "x-9: José 日本".encode(), b"",
    ]
    assert identity_lines(None, mapping) == b""
    assert identity_lines(Principal("api-key", "ci-bot"), mapping) == b""


# -- the parts ------------------------------------------------------------------------------------------


def test_the_principal_keeps_its_token_out_of_sight(tmp_path: pathlib.Path) -> None:
    config = load_config_text(config_text("http://127.0.0.1:9/mcp", tmp_path), fmt="toml")
    authenticator = Authenticator(config.auth)
    token = jwt_for("alice")
    principal = authenticator.authenticate(f"Bearer {token}", None)
    assert isinstance(principal, Principal) and principal.token == token
    assert token not in repr(principal)
    assert principal == Principal(ISSUER, "alice", frozenset({"dev"}))  # the token is not part of who it is
    keyed = authenticator.authenticate(f"Bearer {API_KEY}", None)
    assert keyed.subject == "ci-bot" and keyed.token is None


@pytest.mark.parametrize(
    "answer, problem",
    [
        ({"token_type": "Bearer", "expires_in": 60}, "without a usable access_token"),
        ({"access_token": "a b", "token_type": "Bearer"}, "without a usable access_token"),
        ({"access_token": "a\r\nx-evil: 1"}, "without a usable access_token"),
        ({"access_token": "t", "token_type": "DPoP"}, "not Bearer"),
        ({"access_token": "t", "expires_in": -5}, "not a positive number"),
        ({"access_token": "t", "expires_in": "soon"}, "not a positive number"),
    ],
)
async def test_a_token_answer_that_could_not_be_sent_safely_is_refused(
    tmp_path: pathlib.Path, answer: dict[str, Any], problem: str
) -> None:
    pki = Pki(tmp_path)
    async with TokenServer(pki.server_context()) as idp:
        idp.answer = answer
        config = CredentialConfig(
            grant="client_credentials", token_url=idp.url, client_id="gateway", client_secret=SECRET, ca_file=pki.ca_file
        )
        with pytest.raises(CredentialError) as caught:
            await request_token(config, {"grant_type": "client_credentials"}, pki.client_context())
    assert problem in str(caught.value)


async def test_a_token_endpoint_whose_certificate_is_not_trusted_gets_no_secret(tmp_path: pathlib.Path) -> None:
    pki = Pki(tmp_path)
    untrusted = pki.issue("untrusted", "127.0.0.1", other_ca=True)
    async with TokenServer(pki.server_context(untrusted)) as idp:
        config = CredentialConfig(
            grant="client_credentials", token_url=idp.url, client_id="gateway", client_secret=SECRET, ca_file=pki.ca_file
        )
        with pytest.raises(CredentialError) as caught:
            await request_token(config, {"grant_type": "client_credentials"}, pki.client_context())
    assert "certificate verify failed" in str(caught.value)
    assert idp.requests == []


# -- config -----------------------------------------------------------------------------------------------

_CREDENTIAL = """
[backends.web.credential]
grant = "{grant}"
token_url = "{token_url}"
client_id = "gateway"
client_secret = "${{IDP_SECRET}}"
"""


@pytest.mark.parametrize(
    "backend, grant, token_url, auth, message",
    [
        ('bearer_token = "static"', "client_credentials", "https://idp.example/token", True,
         "'backends.web.credential': conflicts with 'bearer_token'"),
        ('headers = { Authorization = "Bearer x" }', "client_credentials", "https://idp.example/token", True,
         "'backends.web.headers.Authorization': conflicts with 'credential'"),
        ("", "client_credentials", "http://idp.example/token", True, "must be an https:// URL"),
        ("", "client_credentials", "ftp://idp.example/token", True, "unknown URL scheme"),
        ("", "token_exchange", "https://idp.example/token", True, "needs session = \"per-client\""),
        ('session = "per-client"', "token_exchange", "https://idp.example/token", False, "needs [auth] with a JWT issuer"),
        ('identity_headers = { sub = "Authorization" }', None, "", True, "is set by the gateway itself"),
        ('identity_headers = { sub = "mcp-session-id" }', None, "", True, "is set by the gateway itself"),
        ('identity_headers = { sub = "mcp-name" }', None, "", True, "is set by the gateway itself"),
        ('identity_headers = { sub = "x-user", email = "X-User" }', None, "", True, "is also given to claim 'sub'"),
        ('headers = { x-user = "a" }\nidentity_headers = { sub = "x-user" }', None, "", True, "also a static header"),
        ('identity_headers = { sub = "x user" }', None, "", True, "must be an HTTP header name"),
    ],
)
def test_credential_config_mistakes_are_one_line_errors(
    tmp_path: pathlib.Path, backend: str, grant: str | None, token_url: str, auth: bool, message: str
) -> None:
    credential = _CREDENTIAL.format(grant=grant, token_url=token_url) if grant else ""
    text = config_text("http://127.0.0.1:9/mcp", tmp_path, backend, credential, auth)
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, fmt="toml", env={"IDP_SECRET": "hunter2-secret"})
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)


def test_a_stdio_backend_takes_no_credential_and_a_loopback_token_url_may_be_plain_http(tmp_path: pathlib.Path) -> None:
    stdio = '[backends.tool]\ncommand = "true"\n[backends.tool.credential]\ngrant = "client_credentials"\n'
    stdio += 'token_url = "https://idp.example/t"\nclient_id = "a"\nclient_secret = "b"\n'
    with pytest.raises(ConfigError, match="'backends.tool.credential': is for HTTP backends"):
        load_config_text(stdio, fmt="toml")
    with pytest.raises(ConfigError, match="'backends.tool.identity_headers': is for HTTP backends"):
        load_config_text('[backends.tool]\ncommand = "true"\nidentity_headers = { sub = "x-user" }\n', fmt="toml")
    for host in ("127.0.0.1:8080", "localhost", "[::1]:9"):
        credential = _CREDENTIAL.format(grant="client_credentials", token_url=f"http://{host}/token")
        load_config_text(config_text("http://127.0.0.1:9/mcp", tmp_path, "", credential), fmt="toml", env={"IDP_SECRET": "x"})
    with pytest.raises(ConfigError, match="is for an https:// token_url"):
        credential = _CREDENTIAL.format(grant="client_credentials", token_url="http://127.0.0.1/token")
        load_config_text(
            config_text("http://127.0.0.1:9/mcp", tmp_path, "", credential + 'ca_file = "ca.pem"\n'),
            fmt="toml", env={"IDP_SECRET": "x"},
        )


def test_describe_names_the_credential_and_redacts_its_secret(tmp_path: pathlib.Path) -> None:
    credential = _CREDENTIAL.format(grant="token_exchange", token_url="https://idp.example/token")
    backend = 'session = "per-client"\nidentity_headers = { sub = "x-user" }'
    config = load_config_text(
        config_text("http://127.0.0.1:9/mcp", tmp_path, backend, credential), fmt="toml", env={"IDP_SECRET": "hunter2-secret"}
    )
    text = describe(config)
    assert "credential token_exchange from https://idp.example/token (client 'gateway', secret ***)" in text
    assert "identity headers sub -> x-user" in text
    assert "hunter2-secret" not in text
    web = config.backends["web"]
    assert web.credential is not None and web.credential.client_secret == "hunter2-secret"
    assert HttpBackend("web", web).express_ready() is False  # per caller: never the express lane
    assert HttpBackend("web", BackendConfig(url="http://127.0.0.1:9/mcp")).auth is None


def test_a_client_secret_that_is_refused_is_not_repeated_in_the_error(tmp_path: pathlib.Path) -> None:
    credential = _CREDENTIAL.format(grant="client_credentials", token_url="https://idp.example/token")
    text = config_text("http://127.0.0.1:9/mcp", tmp_path, "", credential)
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, fmt="toml", env={"IDP_SECRET": "hunter2\nsecret"})
    assert "'backends.web.credential.client_secret': must be one line" in str(caught.value)
    assert "hunter2" not in str(caught.value)
