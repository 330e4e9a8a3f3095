"""The result cache and coalescing (``[backends.NAME.cache]``, ``gateway.policy.cache``).

The gateway runs in this process on real sockets (so the test can read its
cache's counters and give it a simulated clock), in front of a real backend
that counts every call reaching it: the official SDK server in
``tests/servers/counting_server.py`` (each answer says which run it was, so an
answer served again from the cache is told apart from a new run), or a scripted
HTTP server (``tests.support.ScriptedHttp``) where an answer must be held in
flight, or carry the stateless era's ``ttlMs``/``cacheScope`` hints, or be one a
real server will not give. Two API keys make two principals.

Security properties are tested by attack: another principal sending the very
same call never gets the first one's cached or coalesced answer; a caller RBAC
refuses is refused, whatever the cache holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import load_config_text
from gateway.policy.admission import Admission, Verdict
from gateway.policy.cache import CacheAdmission
from gateway.policy.chain import Chain, build_admission
from gateway.protocol.jsonrpc import Message, Raw
from tests.support import Child, ManualClock, SERVERS, ScriptedHttp, eventually, handshake_answer, in_process_gateway, post_closing, split_response

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789ab"
STATELESS = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": STATELESS, "io.modelcontextprotocol/clientCapabilities": {}}
ACCEPT = "application/json, text/event-stream"
AUTH = f"""
[auth]
[[auth.api_keys]]
subject = "alice"
key = "{ALICE}"
[[auth.api_keys]]
subject = "bob"
key = "{BOB}"
"""


@pytest.fixture(scope="module")
def counting() -> Child:
    """The counting SDK server, as a real process (shared by this module's tests: each uses its own arguments)."""
    child = Child([sys.executable, str(SERVERS / "counting_server.py"), "--port", "0"], "listening on")
    yield child
    child.stop()


# -- the gateway in this process, and raw clients ----------------------------------------------


class Running:
    """One in-process gateway: its port, its cache, and each verdict of its express lane."""

    def __init__(self, port: int, gateway: Gateway, taken: list[bool]) -> None:
        self.port = port
        self.gateway = gateway
        self.taken = taken

    @property
    def cache(self) -> CacheAdmission:
        admission = self.gateway.front.admission
        if isinstance(admission, Chain):
            admission = admission.admissions[-1]
        assert isinstance(admission, CacheAdmission)
        return admission


def config_text(url: str, cache: str, *, express: bool = True, auth: bool = True, extra: str = "") -> str:
    """One backend ``web`` with ``[backends.web.cache]`` set to ``cache``; two API keys unless ``auth`` is off."""
    return f"""
[server]
port = 0

[gateway]
express = {str(express).lower()}
request_timeout = 20

[backends.web]
url = {url!r}

[backends.web.cache]
{cache}
{extra}
{AUTH if auth else ""}
"""


@contextlib.asynccontextmanager
async def serving(text: str, admission: Admission | None = None) -> AsyncIterator[Running]:
    config = load_config_text(text, fmt="toml")
    async with in_process_gateway(config, admission) as running:
        yield Running(running.port, running.gateway, running.taken)


class Response:
    """One HTTP response, read whole (each request asks the server to close after it)."""

    def __init__(self, raw: bytes) -> None:
        self.status, self.headers, body = split_response(raw)
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
            body = events[-1].encode() if events else b""
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The first text content of a result."""
        return self.json()["result"]["content"][0]["text"]


async def exchange(port: int, data: bytes, headers: dict[str, str]) -> Response:
    return Response(await post_closing(port, data, headers, timeout=20))


class Caller:
    """A handshake-era client on real sockets, with an API key (or none): initialize, then POSTs."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.port = port
        self.headers = {"mcp-protocol-version": "2025-11-25"}
        if key is not None:
            self.headers["authorization"] = f"Bearer {key}"

    async def open(self) -> Caller:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        response = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
        self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def post(self, body: dict[str, Any] | bytes) -> Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await exchange(self.port, data, self.headers)

    async def call(self, tool: str, arguments: Any, request_id: Any = 1, meta: Any = None) -> Response:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        return await self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})

    async def runs(self) -> dict[str, int]:
        """The counting server's counts (its ``calls`` tool is never cached)."""
        return (await self.call("web__calls", {}, "runs")).json()["result"]["structuredContent"]


async def stateless(port: int, method: str, params: dict[str, Any], name: str, request_id: Any, key: str = ALICE) -> Response:
    """One 2026-07-28 request: no session, the envelope in ``_meta``, the routing headers."""
    data = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": META}})
    headers = {"mcp-protocol-version": STATELESS, "mcp-method": method, "mcp-name": name, "authorization": f"Bearer {key}"}
    return await exchange(port, data.encode(), headers)


# -- coalescing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_identical_concurrent_calls_reach_the_backend_once_per_principal(counting: Child, express: bool) -> None:
    q = f"together-{express}"
    async with serving(config_text(counting.url, 'tools = ["held"]', express=express)) as gw:
        alice, bob = await Caller(gw.port, ALICE).open(), await Caller(gw.port, BOB).open()
        # Connections left idle in the pool, so the lane can take the waiting calls too.
        await asyncio.gather(*(alice.runs() for _ in range(14)))
        before = len(gw.taken)
        calls = {
            (who, n): asyncio.ensure_future(caller.call("web__held", {"q": q}, request_id=f"{who}-{n}"))
            for n in range(6)
            for who, caller in (("alice", alice), ("bob", bob))
        }
        try:
            await eventually(lambda: gw.cache.coalesced == 10, message="ten calls waiting for two leaders")
        finally:
            await alice.call("web__release", {"q": q})
        answers = {k: await call for k, call in calls.items()}
        runs = await alice.runs()
    assert runs[f"held:{q}"] == 2  # once per principal
    for (who, n), answer in answers.items():
        assert answer.status == 200 and answer.json()["id"] == f"{who}-{n}"  # each caller its own id
    texts = {who: {answers[(who, n)].text for n in range(6)} for who in ("alice", "bob")}
    assert len(texts["alice"]) == 1 and len(texts["bob"]) == 1  # one upstream answer each
    assert texts["alice"] != texts["bob"]  # and never the other principal's
    if express:
        assert gw.taken[before:].count(True) >= 10, gw.taken[before:]
    else:
        assert gw.taken == []


class Held(ScriptedHttp):
    """A handshake-era MCP server whose ``tools/call`` answers wait for ``gate``; ``answer(n, msg)``
    says what the n-th call gets: ``("result", {...})`` or ``("error", {...})``; ``calls`` counts them."""

    def __init__(self, answer: Callable[[int, dict], tuple[str, Any]]) -> None:
        super().__init__(self._answer_request)
        self.answer_for = answer
        self.calls: list[dict] = []
        self.sessions: list[str] = []
        self.gate = asyncio.Event()

    async def _answer_request(self, request: dict) -> tuple[int, dict, bytes] | None:
        answer = handshake_answer(request, self.sessions)
        if answer is not None:
            return answer
        msg = request["body"]
        if msg["method"] == "tools/list":
            result: Any = {"tools": [{"name": "work", "inputSchema": {"type": "object"}}]}
            return 200, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
        self.calls.append(msg)
        n = len(self.calls)
        await self.gate.wait()
        kind, value = self.answer_for(n, msg)
        return 200, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], kind: value}).encode()


class CountingCache(CacheAdmission):
    """The cache, counting its admissions: each routed call is admitted exactly once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admitted = 0

    def admit(self, *args: Any) -> Verdict | None:
        self.admitted += 1
        return super().admit(*args)


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_a_backend_error_is_shared_by_the_waiting_calls_and_not_cached(express: bool) -> None:
    backend = Held(lambda n, msg: ("error", {"code": -32000, "message": f"failed {n}"}))
    async with backend as url, serving(config_text(url, 'tools = ["work"]', express=express)) as gw:
        alice = await Caller(gw.port, ALICE).open()
        calls = [asyncio.ensure_future(alice.call("web__work", {}, request_id=n)) for n in range(3)]
        try:
            await eventually(lambda: gw.cache.coalesced == 2 and len(backend.calls) == 1, message="one leader, two waiting")
        finally:
            backend.gate.set()
        answers = [await call for call in calls]
        again = await alice.call("web__work", {}, request_id=9)
    assert [a.json() for a in answers] == [
        {"jsonrpc": "2.0", "id": n, "error": {"code": -32000, "message": "failed 1"}} for n in range(3)
    ]
    assert again.json()["error"]["message"] == "failed 2"  # an error is never cached
    assert len(backend.calls) == 2


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_when_the_leader_is_cancelled_the_waiting_calls_go_upstream_themselves(express: bool) -> None:
    backend = Held(lambda n, msg: ("result", {"content": [{"type": "text", "text": f"run {n}"}]}))
    async with backend as url:
        text = config_text(url, 'tools = ["work"]', express=express)
        cache = CountingCache(load_config_text(text, fmt="toml"))
        async with serving(text, cache) as gw:
            alice = await Caller(gw.port, ALICE).open()
            leader = asyncio.ensure_future(alice.call("web__work", {}, request_id="leader"))
            try:
                await eventually(lambda: len(backend.calls) == 1, message="the leader reached the backend")
                followers = [asyncio.ensure_future(alice.call("web__work", {}, request_id=n)) for n in range(2)]
                await eventually(lambda: cache.coalesced == 2, message="two calls waiting for the leader")
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "leader"}}
                assert (await alice.post(cancel)).status == 202
                cancelled = await leader
                await eventually(lambda: len(backend.calls) == 3, message="each waiting call went upstream itself")
            finally:
                backend.gate.set()
            answers = [await f for f in followers]
    assert cancelled.status == 202 and cancelled.body == b""  # the cancelled call gets no answer
    assert sorted(a.text for a in answers) == ["run 2", "run 3"]
    assert [a.json()["id"] for a in answers] == [0, 1]
    assert cache.admitted == 3  # one admission each: a follower that goes upstream is not admitted again


async def test_a_backend_timeout_is_shared_by_the_waiting_calls() -> None:
    backend = Held(lambda n, msg: ("result", {"content": []}))  # never answers: the gate stays shut
    text = config_text("URL", 'tools = ["work"]', express=False).replace("request_timeout = 20", "request_timeout = 0.5")
    async with backend as url, serving(text.replace("URL", url)) as gw:
        alice = await Caller(gw.port, ALICE).open()
        calls = [asyncio.ensure_future(alice.call("web__work", {}, request_id=n)) for n in range(3)]
        await eventually(lambda: gw.cache.coalesced == 2, message="two calls waiting for the leader")
        answers = [await call for call in calls]
        backend.gate.set()
    assert [a.json()["error"]["code"] for a in answers] == [-32001] * 3
    assert [a.json()["id"] for a in answers] == [0, 1, 2]
    assert len(backend.calls) == 1


# -- who an entry belongs to ----------------------------------------------------------------------


async def test_a_cached_answer_is_never_served_to_another_principal(counting: Child) -> None:
    async with serving(config_text(counting.url, 'tools = ["lookup"]')) as gw:
        alice, bob = await Caller(gw.port, ALICE).open(), await Caller(gw.port, BOB).open()
        first = await alice.call("web__lookup", {"q": "secret", "n": 1})
        reordered = await alice.call("web__lookup", {"n": 1, "q": "secret"})  # the same call: the entry meets it
        stolen = await bob.call("web__lookup", {"q": "secret", "n": 1})  # byte for byte alice's request
        bob_again = await bob.call("web__lookup", {"q": "secret", "n": 1})
        runs = await alice.runs()
    assert first.text == reordered.text == "secret#1"
    assert stolen.text == bob_again.text == "secret#2"  # bob's own run, then bob's own entry
    assert runs["lookup:secret"] == 2


async def test_shared_scope_shares_an_entry_between_principals(counting: Child) -> None:
    async with serving(config_text(counting.url, 'tools = ["lookup"]\nscope = "shared"')) as gw:
        alice, bob = await Caller(gw.port, ALICE).open(), await Caller(gw.port, BOB).open()
        first = await alice.call("web__lookup", {"q": "public"})
        second = await bob.call("web__lookup", {"q": "public"})
        runs = await alice.runs()
    assert first.text == second.text == "public#1"
    assert runs["lookup:public"] == 1


async def test_rbac_refuses_before_the_cache_answers(counting: Child) -> None:
    rules = """
[rbac]
default = "deny"
[[rbac.rules]]
name = "alice-looks-up"
subjects = ["alice"]
tools = ["web__*"]
[[rbac.rules]]
name = "bob-counts"
subjects = ["bob"]
tools = ["web__calls"]
"""
    async with serving(config_text(counting.url, 'tools = ["lookup"]\nscope = "shared"') + rules) as gw:
        alice, bob = await Caller(gw.port, ALICE).open(), await Caller(gw.port, BOB).open()
        first = await alice.call("web__lookup", {"q": "rbac"})
        hit = await alice.call("web__lookup", {"q": "rbac"})
        refused = await bob.call("web__lookup", {"q": "rbac"})  # a shared entry exists: RBAC still decides
        runs = await alice.runs()
    assert first.text == hit.text == "rbac#1"  # notes pass through the chain: the leader's result was stored
    assert refused.json()["error"]["code"] == -32602  # answered as an unknown tool, not from the cache
    assert runs["lookup:rbac"] == 1


# -- what is stored, and for how long ---------------------------------------------------------------


async def test_an_entry_expires_after_its_ttl(counting: Child) -> None:
    clock = ManualClock()
    text = config_text(counting.url, 'tools = ["lookup"]\nttl = 30')
    async with serving(text, CacheAdmission(load_config_text(text, fmt="toml"), clock=clock)) as gw:
        alice = await Caller(gw.port, ALICE).open()
        first = await alice.call("web__lookup", {"q": "ttl"})
        clock.now += 29.9
        fresh = await alice.call("web__lookup", {"q": "ttl"})
        clock.now += 0.2
        expired = await alice.call("web__lookup", {"q": "ttl"})
        runs = await alice.runs()
    assert first.text == fresh.text == "ttl#1"
    assert expired.text == "ttl#2"
    assert runs["lookup:ttl"] == 2 and gw.cache.lru.expired == 1


async def test_errors_progress_calls_and_ambiguous_arguments_are_not_cached(counting: Child) -> None:
    cache = 'tools = ["broken", "slow", "lookup", "data://*"]'
    async with serving(config_text(counting.url, cache, express=False)) as gw:
        alice = await Caller(gw.port, ALICE).open()
        broken = [await alice.call("web__broken", {"q": "e"}) for _ in range(2)]
        read = {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "web+data://missing"}}
        missing = [await alice.post(read) for _ in range(2)]
        progress = [await alice.call("web__slow", {"q": "p"}, meta={"progressToken": n}) for n in range(2)]
        plain = [await alice.call("web__slow", {"q": "plain"}) for _ in range(2)]  # the legitimate case: cached
        call = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"web__lookup","arguments":{"q":"d","q":"d"}}}'
        duplicated = [await alice.post(call) for _ in range(2)]
        runs = await alice.runs()
        entries = len(gw.cache.lru)
    assert all(r.json()["result"]["isError"] is True for r in broken)
    assert all("error" in r.json() for r in missing)
    assert [r.text for r in progress] == ["p#1", "p#2"]
    assert [r.text for r in plain] == ["plain#1", "plain#1"]
    assert [r.text for r in duplicated] == ["d#1", "d#2"]  # which "q" a backend reads is its own choice
    expected = {"broken:e": 2, "data:missing": 2, "slow:p": 2, "slow:plain": 1, "lookup:d": 2}
    assert {key: runs[key] for key in expected} == expected
    assert entries == 1  # only the plain call's result


async def test_read_only_caches_the_tools_annotated_read_only(counting: Child) -> None:
    async with serving(config_text(counting.url, "read_only = true")) as gw:
        alice = await Caller(gw.port, ALICE).open()
        annotated = [await alice.call("web__ro_lookup", {"q": "ro"}) for _ in range(2)]
        plain = [await alice.call("web__lookup", {"q": "ro"}) for _ in range(2)]
        runs = await alice.runs()
    assert [r.text for r in annotated] == ["ro#1", "ro#1"]
    assert [r.text for r in plain] == ["ro#1", "ro#2"]  # not annotated, not listed: not cached
    assert runs["ro_lookup:ro"] == 1 and runs["lookup:ro"] == 2


async def test_the_entry_budget_evicts_the_oldest(counting: Child) -> None:
    text = config_text(counting.url, 'tools = ["lookup"]').replace("request_timeout = 20", "request_timeout = 20\ncache_max_entries = 2")
    async with serving(text) as gw:
        alice = await Caller(gw.port, ALICE).open()
        for q in ("b1", "b2", "b3", "b1"):
            await alice.call("web__lookup", {"q": q})
        runs = await alice.runs()
        stats = gw.cache.stats()
    assert runs["lookup:b1"] == 2  # evicted by b3, so asked again
    assert stats["entries"] == 2 and stats["evictions"] == 2 and stats["hits"] == 0


async def test_a_backends_list_changed_and_resources_updated_drop_its_entries(counting: Child) -> None:
    async with serving(config_text(counting.url, 'tools = ["lookup"]', express=False)) as gw:
        alice = await Caller(gw.port, ALICE).open()
        cache = gw.cache
        first = [await alice.call("web__lookup", {"q": "changed"}) for _ in range(2)]
        assert len(cache.lru) == 1
        await alice.call("web__add_tool", {})  # the backend announces tools/list_changed
        await eventually(lambda: len(cache.lru) == 0, message="list_changed dropped the backend's entries")
        # The entries are dropped again when the lists have been fetched again: wait for that
        # too (the new tool is routed), or it could drop what the next calls store.
        await eventually(lambda: gw.gateway.catalog.snapshot.router.resolve_tool("web__extra_1") is not None,
                         message="the backend's lists were not fetched again")
        second = [await alice.call("web__lookup", {"q": "changed"}) for _ in range(2)]
        assert len(cache.lru) == 1
        await alice.call("web__touch", {"uri": "data://x"})  # notifications/resources/updated
        await eventually(lambda: len(cache.lru) == 0, message="resources/updated dropped the backend's entries")
        third = await alice.call("web__lookup", {"q": "changed"})
    assert [r.text for r in first] == ["changed#1"] * 2
    assert [r.text for r in second] == ["changed#2"] * 2
    assert third.text == "changed#3"


# -- where a hit is answered, and what it looks like -----------------------------------------------


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_a_hit_is_the_same_bytes_as_the_miss_apart_from_the_id(counting: Child, express: bool) -> None:
    q = f"bytes-{express}"
    async with serving(config_text(counting.url, 'tools = ["lookup", "greet", "data://*"]', express=express)) as gw:
        alice = await Caller(gw.port, ALICE).open()
        for _ in range(2):  # the pool settles (see test_express): then the lane takes every call
            await alice.runs()
        miss = await alice.call("web__lookup", {"q": q}, request_id=1)
        hit = await alice.call("web__lookup", {"q": q}, request_id="two")
        lane = gw.taken[-2:]
        prompt = {"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": "web__greet", "arguments": {"name": q}}}
        prompts = [await alice.post(prompt), await alice.post({**prompt, "id": 4})]
        read = {"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": f"web+data://{q}"}}
        reads = [await alice.post(read), await alice.post({**read, "id": 6})]
        runs = await alice.runs()
        hits = gw.cache.lru.hits
    assert miss.text == f"{q}#1"
    assert hit.body == miss.body.replace(b'"id":1,', b'"id":"two",')
    assert prompts[1].body == prompts[0].body.replace(b'"id":3,', b'"id":4,') and "run 1" in prompts[0].body.decode()
    assert reads[1].body == reads[0].body.replace(b'"id":5,', b'"id":6,') and f"{q}#1".encode() in reads[0].body
    assert (runs[f"lookup:{q}"], runs[f"greet:{q}"], runs[f"data:{q}"]) == (1, 1, 1)
    assert hits == 3
    assert lane == ([True, True] if express else [])


async def test_a_hit_in_the_stateless_era(counting: Child) -> None:
    async with serving(config_text(counting.url, 'tools = ["lookup", "data://*"]')) as gw:
        params = {"name": "web__lookup", "arguments": {"q": "era"}}
        miss = await stateless(gw.port, "tools/call", params, "web__lookup", 1)
        hit = await stateless(gw.port, "tools/call", params, "web__lookup", 2)
        read = {"uri": "web+data://era"}  # the SDK server hints ttlMs 0 on a stateless read: honoured
        reads = [await stateless(gw.port, "resources/read", read, "web+data://era", n) for n in (3, 4)]
        alice = await Caller(gw.port, ALICE).open()
        handshake = await alice.call("web__lookup", {"q": "era"})  # another era: other bytes, another entry
        runs = await alice.runs()
    assert miss.status == 200 and miss.json()["result"]["resultType"] == "complete"
    assert hit.body == miss.body.replace(b'"id":1,', b'"id":2,')
    assert [r.json()["result"]["ttlMs"] for r in reads] == [0, 0]
    assert [r.json()["result"]["contents"][0]["text"] for r in reads] == ["era#1", "era#2"]
    assert "resultType" not in handshake.json()["result"]  # never a stateless client's bytes
    assert (miss.text, handshake.text) == ("era#1", "era#2")
    assert runs["lookup:era"] == 2 and runs["data:era"] == 2


async def test_a_stateless_client_of_a_handshake_backend_gets_the_same_bytes_from_a_hit() -> None:
    # The gateway adds resultType (and, for resources/read, the hints) between the eras: the cache
    # stores the result as the client gets it, so its bytes must be those of the forwarded answer.
    backend = Held(lambda n, msg: ("result", {"content": [{"type": "text", "text": f"run {n}"}]} if msg["method"] == "tools/call" else {"contents": [{"uri": "res://x", "text": f"run {n}"}]}))
    backend.gate.set()
    async with backend as url, serving(config_text(url, 'tools = ["work", "res://*"]')) as gw:
        called = [await stateless(gw.port, "tools/call", {"name": "web__work", "arguments": {}}, "web__work", n) for n in (1, 2)]
        read = {"uri": "web+res://x"}
        reads = [await stateless(gw.port, "resources/read", read, "web+res://x", n) for n in (3, 4)]
    assert called[0].json()["result"]["resultType"] == "complete" and called[0].text == "run 1"
    assert called[1].body == called[0].body.replace(b'"id":1,', b'"id":2,')
    assert reads[0].json()["result"]["ttlMs"] == 0
    assert reads[1].body == reads[0].body.replace(b'"id":3,', b'"id":4,')
    assert len(backend.calls) == 2


# -- the stateless era's hints ---------------------------------------------------------------------


class Stateless(ScriptedHttp):
    """A backend that speaks only the 2026-07-28 era, answering ``tools/call`` with ``result(n, msg)``."""

    def __init__(self, result: Callable[[int, dict], dict[str, Any]]) -> None:
        super().__init__(self._answer_request)
        self.result = result
        self.calls: list[dict] = []

    async def _answer_request(self, request: dict) -> tuple[int, dict, bytes] | None:
        if not request["line"].startswith("POST"):
            return 405, {}, b""
        msg = request["body"]
        if "id" not in msg:
            return 202, {}, b""
        method = msg["method"]
        hints = {"resultType": "complete", "ttlMs": 0, "cacheScope": "private"}
        if method == "server/discover":
            result = {"supportedVersions": [STATELESS], "capabilities": {"tools": {}}, "serverInfo": {"name": "s", "version": "1"}, **hints}
        elif method == "tools/list":
            result = {"tools": [{"name": "hinted", "inputSchema": {"type": "object"}}], **hints}
        elif method == "tools/call":
            self.calls.append(msg)
            result = self.result(len(self.calls), msg)
        else:  # initialize (no handshake era), subscriptions/listen: not here
            error = {"code": -32601, "message": "not here"}
            return 404, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": error}).encode()
        return 200, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()


def hinted(n: int, msg: dict) -> dict[str, Any]:
    """``tools/call`` answers with the hints the call's argument ``hint`` asks for."""
    arguments = msg["params"].get("arguments", {})
    result: dict[str, Any] = {"content": [{"type": "text", "text": f"run {n}"}], "resultType": "complete"}
    if arguments.get("hint") == "input":
        if "requestState" in msg["params"]:
            return result
        return {"resultType": "input_required", "inputRequests": {"q": {"method": "roots/list"}}, "requestState": "s1"}
    ttl, scope = {"zero": (0, "public"), "short": (5000, "public"), "private": (60000, "private")}.get(arguments.get("hint"), (60000, "public"))
    return {**result, "ttlMs": ttl, "cacheScope": scope}


async def test_a_stateless_backends_ttl_and_scope_hints_are_honoured() -> None:
    clock = ManualClock()
    backend = Stateless(hinted)
    async with backend as url:
        text = config_text(url, 'tools = ["hinted"]\nscope = "shared"\nttl = 60')
        async with serving(text, CacheAdmission(load_config_text(text, fmt="toml"), clock=clock)) as gw:
            alice, bob = await Caller(gw.port, ALICE).open(), await Caller(gw.port, BOB).open()

            async def texts(caller: Caller, hint: str, times: int = 2) -> list[str]:
                return [(await caller.call("web__hinted", {"hint": hint})).text for _ in range(times)]

            zero = await texts(alice, "zero")  # ttlMs 0: immediately stale, never stored
            short = await texts(alice, "short")  # ttlMs 5000 under ttl 60: kept 5 s
            clock.now += 5.1
            short_later = await texts(alice, "short", 1)
            private = await texts(alice, "private") + await texts(bob, "private")  # private under "shared": per caller
    assert zero == ["run 1", "run 2"]
    assert short == ["run 3", "run 3"] and short_later == ["run 4"]
    assert private == ["run 5", "run 5", "run 6", "run 6"]  # bob never gets alice's private result
    assert len(backend.calls) == 6


async def test_input_required_rounds_and_their_continuations_are_not_cached() -> None:
    backend = Stateless(hinted)
    async with backend as url, serving(config_text(url, 'tools = ["hinted"]')) as gw:
        ask = {"name": "web__hinted", "arguments": {"hint": "input"}}
        rounds = [await stateless(gw.port, "tools/call", ask, "web__hinted", n) for n in (1, 2)]
        answer = {**ask, "inputResponses": {"q": {"roots": []}}, "requestState": "s1"}
        finals = [await stateless(gw.port, "tools/call", answer, "web__hinted", n) for n in (3, 4)]
    assert [r.json()["result"]["resultType"] for r in rounds] == ["input_required"] * 2
    assert [r.text for r in finals] == ["run 3", "run 4"]  # a continuation depends on its inputs: never cached
    assert len(backend.calls) == 4 and len(gw.cache.lru) == 0


# -- the chain carries notes -----------------------------------------------------------------------


class Noting(Admission):
    """A policy that leaves a note (and maybe rewrites params, or waits), and records its outcomes."""

    observes_outcomes = True

    def __init__(self, verdict: Verdict | None) -> None:
        self.verdict = verdict
        self.notes: list[Any] = []

    def admit(self, *args: Any) -> Verdict | None:
        return self.verdict

    def outcome(self, *args: Any) -> None:
        self.notes.append(args[7] if len(args) > 7 and args[7] is not None else "no note")


class Waiting:
    def then(self, callback: Any) -> None:
        callback(None, None)


def test_a_chain_gives_each_policy_its_own_note_and_keeps_rewrites_for_a_waiting_call() -> None:
    first = Noting(Verdict(note="first's"))
    second = Noting(Verdict(params={"name": b'"x"'}))
    third = Noting(Verdict(wait=Waiting(), note="third's"))  # type: ignore[arg-type]
    chain = Chain([first, second, third])
    verdict = chain.admit(None, None, "tools/call", "x", (None, "x"), {})  # type: ignore[arg-type]
    assert verdict is not None and verdict.wait is third.verdict.wait and verdict.params == {"name": b'"x"'}
    chain.outcome(None, None, "tools/call", "x", None, None, None, verdict.note)
    assert (first.notes, second.notes, third.notes) == (["first's"], ["no note"], ["third's"])
    chain.outcome(None, None, "tools/call", "x", None, None, None)
    assert (first.notes[-1], third.notes[-1]) == ("no note", "no note")


def test_build_admission_puts_the_cache_last_and_only_when_asked() -> None:
    base = config_text("http://127.0.0.1:1/mcp", 'tools = ["x"]', auth=False)
    assert isinstance(build_admission(load_config_text(base, fmt="toml")), CacheAdmission)
    with_rbac = base + '\n[rbac]\ndefault = "allow"\n'
    chain = build_admission(load_config_text(with_rbac, fmt="toml"))
    assert isinstance(chain, Chain) and isinstance(chain.admissions[-1], CacheAdmission)
    without = base.replace("[backends.web.cache]\ntools = [\"x\"]", "")
    assert build_admission(load_config_text(without, fmt="toml")) is None
    budget = load_config_text(base.replace("request_timeout = 20", "request_timeout = 20\ncache_max_bytes = 4096"), fmt="toml")
    assert CacheAdmission(budget).lru.max_bytes == 4096


# -- a lost outcome, and a follower that waits late -------------------------------------------------


class _Backend:
    name = "web"

    @staticmethod
    def era_for(era: str) -> str:
        return era


class _Ctx:
    era = "handshake"
    meta = None


def test_a_leader_whose_outcome_never_comes_is_given_up_after_the_flight_limit() -> None:
    clock = ManualClock()
    cache = CacheAdmission(load_config_text(config_text("http://127.0.0.1:1/mcp", 'tools = ["work"]'), fmt="toml"), clock=clock)
    route = (_Backend(), "work")
    params = {"name": b'"web__work"', "arguments": b"{}"}
    leader = cache.admit(None, _Ctx(), "tools/call", "web__work", route, params)  # type: ignore[arg-type]
    follower = cache.admit(None, _Ctx(), "tools/call", "web__work", route, params)  # type: ignore[arg-type]
    assert leader is not None and leader.note is not None and follower is not None and follower.wait is not None
    clock.now += cache.flight_limit  # the leader's outcome was lost
    again = cache.admit(None, _Ctx(), "tools/call", "web__work", route, params)  # type: ignore[arg-type]
    assert again is not None and again.note is not None and again.wait is None  # a new leader, not a follower
    shares: list[Any] = []
    follower.wait.then(lambda answer, error: shares.append((answer, error)))  # waits late: told at once
    assert shares == [(None, None)]  # nothing to share: it goes upstream itself
    cache.outcome(None, _Ctx(), "tools/call", "web__work", route, Message(result=Raw(b'{"content":[]}')), None, again.note)
    hit = cache.admit(None, _Ctx(), "tools/call", "web__work", route, params)  # type: ignore[arg-type]
    assert hit is not None and hit.result == b'{"content":[]}'
    cache.outcome(None, _Ctx(), "tools/call", "web__work", route, Message(result=Raw(b'{"content":[1]}')), None, leader.note)
    assert cache.admit(None, _Ctx(), "tools/call", "web__work", route, params).result == b'{"content":[1]}'  # type: ignore[union-attr]


async def test_a_hit_is_answered_while_the_backend_is_down() -> None:
    # A hit is answered at the admission point: a backend killed since does not matter; a miss gets the 503.
    child = Child([sys.executable, str(SERVERS / "counting_server.py"), "--port", "0"], "listening on")
    try:
        async with serving(config_text(child.url, 'tools = ["lookup"]')) as gw:
            alice = await Caller(gw.port, ALICE).open()
            first = await alice.call("web__lookup", {"q": "a"}, request_id=1)
            child.proc.kill()
            child.proc.wait()
            hit = await alice.call("web__lookup", {"q": "a"}, request_id=2)
            miss = await alice.call("web__lookup", {"q": "b"}, request_id=3)
    finally:
        child.stop()
    assert first.json()["result"]["content"][0]["text"] == "a#1"
    assert hit.json() == {**first.json(), "id": 2}
    assert miss.status == 503 and miss.json()["error"]["code"] == -32054
