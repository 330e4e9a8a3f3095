"""Rate limits (``[[limits]]``, ``gateway.policy.limits``) at the admission point.

First the compiled decisions, on a simulated clock: which names and methods a
limit counts, how keys partition buckets, that a refused call takes no token,
the refusal's headers and data, the bytes dimension. Then the real thing: an
in-process gateway on real sockets in front of the official SDK server (or a
scripted HTTP backend that counts what reaches it), in both eras, on the
express lane and the general path, with two API keys, and the stdio front as a
child process; and the limiter's accuracy over ten seconds of real time.
"""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from gateway.backends import create_backend
from gateway.config import ConfigError, load_config_text
from gateway.errors import RateLimited, RequestTooLarge
from gateway.front.sessions import RequestContext
from gateway.policy.chain import build_admission
from gateway.policy.identity import Principal
from gateway.policy.limits import LimitsAdmission
from gateway.protocol.jsonrpc import Message, Raw
from tests.support import Child, ManualClock, ROOT, in_process_gateway
from tests.test_admission import stateless_post
from tests.test_express import ACCEPT, McpHttp, Response, Scripted, gateway_for
from tests.test_stdio_front import RawGateway, call

BACKENDS = '[backends.web]\nurl = "http://127.0.0.1:1/mcp"\n[backends.db]\nurl = "http://127.0.0.1:2/mcp"\n'
ALICE = Principal("api-key", "alice")
BOB = Principal("api-key", "bob")


class Limited:
    """A ``LimitsAdmission`` compiled from ``[[limits]]`` TOML, with real backends (never started)
    to route to, a request context and a simulated clock."""

    def __init__(self, limits: str) -> None:
        config = load_config_text(BACKENDS + limits, fmt="toml")
        self.clock = ManualClock()
        self.admission = LimitsAdmission(config.limits, clock=self.clock)
        self.backends = {name: create_backend(name, bc, default_timeout=5) for name, bc in config.backends.items()}
        self.ctx = RequestContext("handshake", "2025-11-25", None)

    def admit(
        self, name: str = "web__echo", method: str = "tools/call", *, principal: Principal | None = None,
        backend: str = "web", ip: str | None = "127.0.0.1", arguments: bytes = b"{}",
    ) -> Any:
        """Admit one call: None (go) or the refusal (a ``GatewayError``)."""
        self.ctx.client_ip = ip
        params = {"name": Raw(json.dumps(name).encode()), "arguments": Raw(arguments)}
        verdict = self.admission.admit(principal, self.ctx, method, name, (self.backends[backend], name), params)
        return None if verdict is None else verdict.error

    def answered(self, name: str, result: bytes, *, backend: str = "web", principal: Principal | None = None) -> None:
        """The backend answered a call of ``name`` with ``result`` (the outcome hook)."""
        answer = Message(id=1, result=Raw(result))
        self.admission.outcome(principal, self.ctx, "tools/call", name, (self.backends[backend], name), answer, None)

    def passes(self, n: int, **call: Any) -> list[Any]:
        return [self.admit(**call) for _ in range(n)]


def headers_of(error: Any) -> dict[str, str]:
    return dict(error.headers)


# -- compiled decisions, on a simulated clock ----------------------------------------------------


def test_the_globs_are_matched_once_per_name_and_an_unlimited_name_costs_a_lookup() -> None:
    limited = Limited('[[limits]]\nname = "echo"\ntools = ["web__e*", "db__echo"]\nrate = 1000\nburst = 1000\n')
    limit = limited.admission.limits[0]
    matched: list[str] = []
    match = limit.match

    def counting(name: str) -> object:
        matched.append(name)
        return match(name)  # type: ignore[misc]

    limit.match = counting
    for _ in range(5):
        for name in ("web__echo", "web__multiply", "db__echo"):
            assert limited.admit(name) is None
    assert matched == ["web__echo", "web__multiply", "db__echo"]  # one glob match per name, ever
    plans = limited.admission.plans
    assert plans["web__echo"].limits == (limit,) and plans["db__echo"] is plans["web__echo"]  # one shared plan
    assert plans["web__multiply"] == () and len(plans) == 3  # (): no limit, one lookup to know it
    assert limited.admission.observes_outcomes is False  # no bytes dimension: the outcome hook is not called


def test_only_tools_call_resources_read_and_prompts_get_count() -> None:
    for method in ("tools/call", "resources/read", "prompts/get"):
        limited = Limited('[[limits]]\nname = "one"\nrate = 0.001\nburst = 1\n')
        for other in ("resources/subscribe", "resources/unsubscribe", "completion/complete"):
            assert limited.passes(3, method=other) == [None] * 3  # routed, admitted, never counted
        assert limited.admit(method=method) is None
        assert isinstance(limited.admit(method=method), RateLimited), method


@pytest.mark.parametrize(
    ("key", "same", "other"),
    [
        ('["principal"]', {"principal": ALICE}, {"principal": BOB}),
        ('["tool"]', {"name": "web__echo"}, {"name": "web__multiply"}),
        ('["backend"]', {"name": "web__echo", "backend": "web"}, {"name": "db__echo", "backend": "db"}),
        ('["client_ip"]', {"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}),
        ('["principal", "tool"]', {"principal": ALICE, "name": "a"}, {"principal": ALICE, "name": "b"}),
    ],
)
def test_each_key_part_gives_its_own_bucket(key: str, same: dict[str, Any], other: dict[str, Any]) -> None:
    limited = Limited(f'[[limits]]\nname = "k"\nkey = {key}\nrate = 0.001\nburst = 2\n')
    assert limited.passes(2, **same) == [None, None]
    assert isinstance(limited.admit(**same), RateLimited)
    assert limited.passes(2, **other) == [None, None]  # untouched by the exhausted bucket
    assert isinstance(limited.admit(**other), RateLimited)


def test_an_empty_key_is_one_bucket_for_everyone() -> None:
    limited = Limited('[[limits]]\nname = "all"\nkey = []\nrate = 0.001\nburst = 2\n')
    assert limited.admit(principal=ALICE, name="web__echo", ip="10.0.0.1") is None
    assert limited.admit(principal=BOB, name="db__x", backend="db", ip="10.0.0.2") is None
    assert isinstance(limited.admit(principal=None, name="web__other", ip=None), RateLimited)


def test_the_principal_part_is_the_identity_not_the_token_scopes() -> None:
    # A refreshed token with other scopes is the same caller: it must not get a fresh bucket.
    limited = Limited('[[limits]]\nname = "who"\nkey = ["principal"]\nrate = 0.001\nburst = 1\n')
    assert limited.admit(principal=Principal("https://idp", "carol", scopes=frozenset({"read"}))) is None
    again = Principal("https://idp", "carol", scopes=frozenset({"read", "write"}))
    assert isinstance(limited.admit(principal=again), RateLimited)
    assert limited.admit(principal=Principal("https://other-idp", "carol")) is None  # another issuer's carol


def test_buckets_refill_at_the_rate_and_the_wait_is_rounded_up() -> None:
    limited = Limited('[[limits]]\nname = "r"\nrate = 2\nburst = 3\n')
    assert limited.passes(3) == [None] * 3
    refused = limited.admit()
    assert isinstance(refused, RateLimited) and refused.http_status == 429 and refused.code == -32053
    assert refused.spec_data == {"retryAfterMs": 500}
    assert headers_of(refused)["retry-after"] == "1"  # 0.5 s, rounded up
    limited.clock.now += 0.5
    assert limited.admit() is None
    assert isinstance(limited.admit(), RateLimited)
    limited.clock.now += 1.5  # three tokens again (and no more: the bucket holds at most burst)
    assert limited.passes(3) == [None] * 3
    assert isinstance(limited.admit(), RateLimited)


def test_a_refused_call_takes_no_token_of_any_limit() -> None:
    limited = Limited(
        '[[limits]]\nname = "wide"\nrate = 0.001\nburst = 5\n'
        '[[limits]]\nname = "narrow"\ntools = ["web__echo"]\nrate = 0.001\nburst = 2\n'
    )
    wide, narrow = limited.admission.limits
    assert limited.passes(2) == [None, None]
    for _ in range(10):
        error = limited.admit()
        assert isinstance(error, RateLimited) and error.extra["limit"] == "narrow"
    assert wide.calls.store.peek((), limited.clock.now, 0.001, 5) == pytest.approx(3.0)  # 5 - the two admitted
    assert limited.passes(3, name="web__other") == [None] * 3  # "wide" still had its three
    assert isinstance(limited.admit(name="web__other"), RateLimited)


def test_a_reload_carries_unchanged_limits_over_and_starts_changed_ones_full() -> None:
    text = '[[limits]]\nname = "a"\nrate = 0.001\nburst = 1\n[[limits]]\nname = "b"\nrate = 0.001\nburst = 1\n'
    limited = Limited(text)
    assert limited.admit() is None
    assert isinstance(limited.admit(), RateLimited)  # both buckets empty now
    # The attack this stops: any reload (a --watch on an edited comment) refilling every bucket.
    same = load_config_text(BACKENDS + text, fmt="toml")
    again = LimitsAdmission(same.limits, clock=limited.clock, previous=limited.admission)
    assert again.limits == limited.admission.limits  # the same objects, buckets and counts
    limited.admission = again
    assert isinstance(limited.admit(), RateLimited)
    # The legitimate case: a limit whose entry changed (b's burst) starts with a full bucket;
    # an unchanged one (a) still refuses, as it did.
    changed_text = '[[limits]]\nname = "a"\nrate = 0.001\nburst = 1\n[[limits]]\nname = "b"\nrate = 0.001\nburst = 3\n'
    changed = load_config_text(BACKENDS + changed_text, fmt="toml")
    assert [c.burst for c in changed.limits] == [1, 3]
    third = LimitsAdmission(changed.limits, clock=limited.clock, previous=again)
    assert third.limits[0] is again.limits[0] and third.limits[1] is not again.limits[1]
    limited.admission = third
    refused = limited.admit()
    assert isinstance(refused, RateLimited) and refused.extra["limit"] == "a"
    assert third.limits[0].refused == 3  # the carried limit's count goes on


def test_a_refusal_by_bytes_gives_back_the_same_limits_call_token() -> None:
    limited = Limited('[[limits]]\nname = "both"\nrate = 0.001\nburst = 3\nbytes_rate = 1\nbytes_burst = 100\n')
    limit = limited.admission.limits[0]
    assert limited.admit(arguments=b'{"text":"' + b"x" * 60 + b'"}') is None  # ~84 bytes of 100
    error = limited.admit(arguments=b'{"text":"' + b"x" * 60 + b'"}')
    assert isinstance(error, RateLimited) and error.extra["dimension"] == "bytes"
    assert limit.calls.store.peek((), limited.clock.now, 0.001, 3) == pytest.approx(2.0)  # one counted, not two


def test_the_refusal_names_the_longest_wait_with_the_ietf_headers() -> None:
    limited = Limited(
        '[[limits]]\nname = "fast"\nrate = 10\nburst = 1\n'
        '[[limits]]\nname = "slow \\"one\\""\nkey = ["tool"]\nrate = 0.1\nburst = 1\n'
    )
    assert limited.admit() is None
    error = limited.admit()  # both refuse: "fast" for 0.1 s, the other for 10 s
    assert isinstance(error, RateLimited)
    assert error.extra == {"limit": 'slow "one"', "dimension": "calls"}
    assert error.spec_data == {"retryAfterMs": 10_000}
    assert headers_of(error) == {
        "retry-after": "10",
        "ratelimit-policy": '"slow \\"one\\"";q=1;w=10',  # a structured-field string: quotes escaped
        "ratelimit": '"slow \\"one\\"";r=0;t=10',
    }
    body = error.to_error()
    assert body["data"]["retryAfterMs"] == 10_000 and body["data"]["gateway"]["reason"] == "rate_limited"


def test_the_bytes_dimension_counts_request_and_response() -> None:
    limited = Limited('[[limits]]\nname = "bytes"\nbytes_rate = 10\nbytes_burst = 1000\n')
    assert limited.admission.observes_outcomes is True
    big = b"[" + b"1," * 200 + b"1]"  # 403 bytes of arguments
    assert limited.admit(arguments=big) is None
    assert limited.admit(arguments=big) is None  # 1000 - 2 x 414 (arguments and the name's raw JSON) = 172 left
    limited.answered("web__echo", b'{"content":[]}')
    assert limited.admit(arguments=b"{}") is None  # 172 - 14 - 13 = 145 left
    limited.answered("web__echo", b"x" * 400)  # the response is debited after it passed: -255
    error = limited.admit(arguments=b"{}")
    assert isinstance(error, RateLimited) and error.extra == {"limit": "bytes", "dimension": "bytes"}
    wait = (13 + 255) / 10  # the 13-byte request, after the 255-byte debt
    assert error.spec_data["retryAfterMs"] == math.ceil(wait * 1000)
    assert headers_of(error) == {
        "retry-after": "27",
        "ratelimit-policy": '"bytes";q=1000;w=100;qu="content-bytes"',
        "ratelimit": '"bytes";r=0;t=27',
    }
    limited.clock.now += wait - 0.01
    assert isinstance(limited.admit(arguments=b"{}"), RateLimited)
    limited.clock.now += 0.01 + 1e-9  # waited as told (and a nanosecond more: float sums are not exact)
    assert limited.admit(arguments=b"{}") is None


def test_a_request_larger_than_the_byte_burst_is_413_without_a_retry() -> None:
    limited = Limited('[[limits]]\nname = "small"\nbytes_rate = 10\nbytes_burst = 50\n')
    error = limited.admit(arguments=b'"' + b"y" * 100 + b'"')
    assert isinstance(error, RequestTooLarge) and error.http_status == 413
    assert error.headers == () and error.extra["limit"] == "small"  # waiting would not help: no Retry-After
    assert limited.admit() is None  # nothing was taken


def test_the_chain_puts_limits_after_rbac() -> None:
    config = load_config_text(
        BACKENDS + '[rbac]\ndefault = "allow"\n[[rbac.rules]]\nname = "no-db"\neffect = "deny"\ntools = ["db__*"]\n'
        '[[limits]]\nname = "l"\nrate = 1\n',
        fmt="toml",
    )
    chain = build_admission(config)
    assert [type(a).__name__ for a in chain.admissions] == ["RbacAdmission", "LimitsAdmission"]  # type: ignore[attr-defined]
    assert build_admission(load_config_text(BACKENDS, fmt="toml")) is None  # no limits: nothing to call


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[limits]]\nname = "x"\n', "'limits[0]': give 'rate' (calls per second) or 'bytes_rate'"),
        ('[[limits]]\nname = "x"\nrate = 0\n', "'limits[0].rate': must be > 0, got 0"),
        ('[[limits]]\nname = "x"\nrate = 1\nburts = 3\n', "unknown key 'limits[0].burts' (did you mean 'burst'?)"),
        ('[[limits]]\nname = "x"\nrate = 1\nkey = ["ip"]\n', "'limits[0].key[0]'"),
        ('[[limits]]\nname = "x"\nrate = 1\n[[limits]]\nname = "x"\nrate = 2\n', "'x' is also the name of limit 0"),
    ],
)
def test_config_errors_are_clear_one_liners(text: str, says: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, fmt="toml")
    assert says in str(caught.value) and "\n" not in str(caught.value)
    # And the command line says just that, with no traceback.
    path = tmp_path / "bad.toml"
    path.write_text(BACKENDS + text)
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


# -- the real gateway ---------------------------------------------------------------------------


def limited_gateway(url: str, tables: str, **options: Any) -> Any:
    """``gateway_for`` with top-level tables (``[[limits]]``, ``[auth]``) after its backend's table."""
    return gateway_for(url, backend="\n" + tables, **options)


class Caller(McpHttp):
    """``McpHttp`` with extra request headers (an API key)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(url)
        self.extra = headers or {}

    async def post(self, body: dict) -> Response:
        data = json.dumps(body).encode()
        head = (
            f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\naccept: {ACCEPT}\r\ncontent-type: application/json\r\n"
            f"mcp-protocol-version: 2025-11-25\r\nconnection: close\r\ncontent-length: {len(data)}\r\n"
        )
        if self.session:
            head += f"mcp-session-id: {self.session}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.extra.items())
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head.encode() + b"\r\n" + data)
            return Response(await asyncio.wait_for(reader.read(), 10))
        finally:
            writer.close()

    async def echo(self, request_id: int = 1, text: str = "hi") -> Response:
        params = {"name": "web__echo", "arguments": {"text": text}}
        return await self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def refusal(response: Response) -> dict[str, Any]:
    """A 429's JSON-RPC error, checked for what every refusal carries."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    seconds = int(response.headers["retry-after"])
    assert seconds >= 1
    assert response.headers["ratelimit"].endswith(f";t={seconds}")
    error = json.loads(response.text)["error"]
    assert error["code"] == -32053 and error["data"]["gateway"]["reason"] == "rate_limited"
    assert (seconds - 1) * 1000 < error["data"]["retryAfterMs"] <= seconds * 1000
    return error


SLOW = '[[limits]]\nname = "slow-down"\nrate = 0.01\nburst = 2\n'


@pytest.mark.parametrize("path", ["lane", "general", "stateless"])
async def test_a_refusal_is_429_with_its_headers_and_never_reaches_the_backend(path: str) -> None:
    backend = Scripted(lambda n, msg: ("ok", {"content": [{"type": "text", "text": str(n)}]}))
    async with backend as url, limited_gateway(url, SLOW, express=path == "lane") as gw:
        if path == "stateless":
            port = int(gw.url.split(":")[2].split("/")[0])
            params = {"name": "web__work", "arguments": {}}
            responses = [await stateless_post(port, "tools/call", params, name="web__work") for _ in range(3)]
            request_id = 1
        else:
            client = McpHttp(gw.url)
            await client.open()
            responses = [await client.call(i) for i in (1, 2, 3)]
            request_id = 3
        more = [await stateless_post(int(gw.url.split(":")[2].split("/")[0]), "tools/call",
                                     {"name": "web__work", "arguments": {}}, name="web__work")]
    assert [r.status_code for r in responses] == [200, 200, 429], [r.text for r in responses]
    refused = responses[-1]
    error = refusal(refused)
    assert json.loads(refused.text)["id"] == request_id
    assert refused.headers["retry-after"] == "100"  # one call per 100 s
    assert refused.headers["ratelimit-policy"] == '"slow-down";q=2;w=200'
    assert refused.headers["ratelimit"] == '"slow-down";r=0;t=100'
    assert error["data"]["gateway"]["limit"] == "slow-down"
    refusal(more[0])  # the other era shares the bucket: still refused
    assert backend.calls == 2  # the refused calls never reached the backend
    if path == "lane":
        assert gw.taken[-2] is True  # the session's refused call was answered by the express lane


async def test_one_principals_exhausted_bucket_leaves_anothers_untouched() -> None:
    tables = (
        '[auth]\n[[auth.api_keys]]\nsubject = "alice"\nkey = "alice-key-0123456789"\n'
        '[[auth.api_keys]]\nsubject = "bob"\nkey = "bob-key-0123456789ab"\n'
        '[[limits]]\nname = "per-caller"\nkey = ["principal"]\nrate = 0.001\nburst = 2\n'
    )
    backend = Scripted(lambda n, msg: ("ok", {"content": []}))
    async with backend as url, limited_gateway(url, tables) as gw:
        alice = Caller(gw.url, {"authorization": "Bearer alice-key-0123456789"})
        await alice.open()
        assert [(await alice.call(i)).status_code for i in (1, 2)] == [200, 200]
        refusal(await alice.call(3))
        # The attack: a new session, or the other era, is still alice; her bucket follows her.
        again = Caller(gw.url, {"authorization": "Bearer alice-key-0123456789"})
        await again.open()
        refusal(await again.call(4))
        port = int(gw.url.split(":")[2].split("/")[0])
        stateless = await stateless_post(
            port, "tools/call", {"name": "web__work", "arguments": {}}, name="web__work",
            headers={"authorization": "Bearer alice-key-0123456789"},
        )
        refusal(stateless)
        # The legitimate case: bob has a full bucket of his own.
        bob = Caller(gw.url, {"authorization": "Bearer bob-key-0123456789ab"})
        await bob.open()
        assert [(await bob.call(i)).status_code for i in (1, 2)] == [200, 200]
        refusal(await bob.call(3))
    assert backend.calls == 4  # two each; none of the five refusals reached it


async def test_initialize_lists_pings_and_notifications_never_count(http_backend: Child) -> None:
    one = '[[limits]]\nname = "one-call"\nrate = 0.001\nburst = 1\n'
    async with limited_gateway(http_backend.url, one) as gw:
        port = int(gw.url.split(":")[2].split("/")[0])
        for _ in range(3):
            client = Caller(gw.url)
            await client.open()  # initialize and notifications/initialized
        for i, method in enumerate(["tools/list", "prompts/list", "resources/list", "resources/templates/list", "ping"]):
            response = await client.post({"jsonrpc": "2.0", "id": 10 + i, "method": method})
            assert response.status_code == 200 and "result" in json.loads(response.text), response.text
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}
        assert (await client.post(cancel)).status_code == 202
        listed = await stateless_post(port, "tools/list", {})
        assert listed.status_code == 200, listed.text
        answered = await client.echo(20, "counted")
        assert json.loads(answered.text)["result"]["content"][0]["text"] == "counted"
        refusal(await client.echo(21))


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_the_byte_budget_refuses_after_a_large_answer(express: bool) -> None:
    large = {"content": [{"type": "text", "text": "z" * 2000}]}
    backend = Scripted(lambda n, msg: ("ok", large))
    budget = '[[limits]]\nname = "bytes"\nkey = ["tool"]\nbytes_rate = 1\nbytes_burst = 1000\n'
    async with backend as url, limited_gateway(url, budget, express=express) as gw:
        client = McpHttp(gw.url)
        await client.open()
        first = await client.call(1)  # 13 request bytes of 1000: admitted; its 2000-byte answer is debited
        assert first.status_code == 200 and len(first.text) > 2000
        error = refusal(await client.call(2))
        second = await client.call(3)
    assert error["data"]["gateway"] == {"reason": "rate_limited", "limit": "bytes", "dimension": "bytes"}
    assert error["data"]["retryAfterMs"] > 1_000_000  # over 1000 bytes in debt, refilled at 1 byte/s
    assert second.headers["ratelimit-policy"].startswith('"bytes";q=1000;w=1000;qu="content-bytes"')
    assert backend.calls == 1


async def test_the_stdio_front_gets_the_json_rpc_error(http_backend: Child, tmp_path: pathlib.Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[server]\nport = 1\n[backends.web]\nurl = {http_backend.url!r}\n[[limits]]\nname = "stdio"\nrate = 0.001\nburst = 1\n')
    raw = await RawGateway.start(config)
    try:
        await raw.initialize()
        await raw.send(call(2, "web__echo", {"text": "once"}))
        first, _ = await raw.answer(2)
        await raw.send(call(3, "web__echo", {"text": "twice"}))
        second, _ = await raw.answer(3)
    finally:
        await raw.kill()
    assert first["result"]["content"][0]["text"] == "once"
    error = second["error"]
    assert error["code"] == -32053 and error["data"]["gateway"]["limit"] == "stdio"
    assert 999_000 < error["data"]["retryAfterMs"] <= 1_000_000


class KeepAlive:
    """One kept-alive connection sending the same ``tools/call`` again and again, in a session."""

    def __init__(self, port: int, session: str) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": "web__echo", "arguments": {"text": "hi"}}}).encode()
        head = (
            f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: {ACCEPT}\r\ncontent-type: application/json\r\n"
            f"mcp-protocol-version: 2025-11-25\r\nmcp-session-id: {session}\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body
        self.port = port

    async def run(self, until: float, statuses: dict[int, int]) -> None:
        """Call as fast as answers come back until the loop's clock reaches ``until``."""
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while loop.time() < until:
                writer.write(self.request)
                head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
                length = next(int(line.split(":")[1]) for line in head.lower().split("\r\n") if line.startswith("content-length:"))
                await reader.readexactly(length)
                status = int(head.split()[1])
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()


async def test_the_limiter_admits_rate_times_time_plus_burst(http_backend: Child) -> None:
    rate, burst, seconds = 20, 10, 10.0
    async with limited_gateway(http_backend.url, f'[[limits]]\nname = "r"\nrate = {rate}\nburst = {burst}\n') as gw:
        client = Caller(gw.url)
        await client.open()
        statuses: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Four callers on kept-alive connections, as fast as the gateway answers.
        await asyncio.gather(*(KeepAlive(client.port, client.session).run(start + seconds, statuses) for _ in range(4)))
        elapsed = loop.time() - start
        expected = rate * elapsed + burst
    assert set(statuses) == {200, 429}
    assert abs(statuses[200] - expected) <= 0.05 * expected, (statuses, expected)
    assert statuses[429] > statuses[200]  # the callers really asked for more than the rate


async def test_a_reload_keeps_an_exhausted_bucket_exhausted(http_backend: Child) -> None:
    limit = '[[limits]]\nname = "per-caller"\nrate = 0.001\nburst = 2\n'

    def config_with(extra: str) -> Any:
        text = f"[server]\nport = 0\n[gateway]\nexpress = false\n[backends.web]\nurl = {http_backend.url!r}\n{extra}"
        return load_config_text(text, fmt="toml")

    async with in_process_gateway(config_with(limit)) as running:
        caller = Caller(running.url)
        await caller.open()
        assert [(await caller.echo(i)).status_code for i in (1, 2)] == [200, 200]
        refusal(await caller.echo(3))
        # A reload that leaves the limit alone (a new backend here) must not refill it.
        await running.gateway.reload(config_with(limit + '[backends.more]\nurl = "http://127.0.0.1:9/mcp"\n'))
        refusal(await caller.echo(4))
        # A reload that changes the limit starts it anew: the new burst is there to use.
        await running.gateway.reload(config_with(limit.replace("burst = 2", "burst = 5")))
        assert (await caller.echo(5)).status_code == 200
