"""Per-backend resilience (``gateway.backends.guarded`` and its parts): the circuit breaker,
the concurrency gate and its queue, retries within a budget, timeouts cancelled upstream.

The breaker and the budget are first driven by a simulated clock. Then a real gateway runs in
this process on real sockets, in front of a scripted HTTP backend (for answers a real server
will not give on demand: 5xx, held calls) or the official SDK server
(``tests/servers/resilience_server.py``), and what reached the backend is counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import gateway.backends.guarded as guarded_module
from gateway.app import Gateway
from gateway.backends.base import RequestCancelled
from gateway.backends.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from gateway.backends.concurrency import Gate
from gateway.backends.faults import failed, not_sent
from gateway.backends.guarded import Guarded
from gateway.backends.retry import RetryBudget, repeatable
from gateway.config import BreakerConfig, load_config_text
from gateway.errors import BackendTimeout, BackendUnavailable, CircuitOpen
from gateway.policy.admission import Admission
from gateway.protocol.jsonrpc import Raw
from tests.support import Child, ManualClock, SERVERS, ScriptedHttp, eventually, handshake_answer, in_process_gateway, post_closing, split_response

ACCEPT = "application/json, text/event-stream"


# -- the breaker, on a simulated clock -----------------------------------------------------------


def _breaker(clock: ManualClock, **options: Any) -> Breaker:
    settings = {"failure_ratio": 0.5, "min_calls": 4, "window": 10.0, "open_for": 5.0, "half_open_calls": 1, **options}
    return Breaker("web", BreakerConfig(**settings), clock)


def _retry_after(refusal: pytest.ExceptionInfo[CircuitOpen]) -> str:
    return dict(refusal.value.headers)["retry-after"]


def test_the_breaker_opens_at_its_ratio_once_min_calls_ended() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for outcome in (False, False, True):  # 1 failure of 3 calls: fewer than min_calls
        breaker.ended(breaker.admit(), outcome)
    assert breaker.state is CLOSED
    breaker.ended(breaker.admit(), True)  # 2 of 4: the ratio is met
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit()
    assert _retry_after(refused) == "5" and refused.value.http_status == 503 and refused.value.code == -32056
    clock.now += 2.5
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit()
    assert _retry_after(refused) == "3"  # the seconds left, rounded up


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.ended(breaker.admit(), True)
    clock.now += 11  # the three failures left the window
    for outcome in (False, False, False, True):
        breaker.ended(breaker.admit(), outcome)
    assert breaker.state is CLOSED


def test_half_open_lets_probes_through_and_a_success_closes() -> None:
    clock = ManualClock()
    breaker = _breaker(clock, min_calls=2, half_open_calls=2)
    breaker.ended(breaker.admit(), True)
    breaker.ended(breaker.admit(), True)
    assert breaker.state is OPEN
    clock.now += 5
    first, second = breaker.admit(), breaker.admit()
    assert (first, second) == (True, True) and breaker.state is HALF_OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit()  # both probe slots taken
    assert _retry_after(refused) == "1"
    breaker.ended(first, None)  # a probe that ended neither way (cancelled) frees its slot
    third = breaker.admit()
    assert third is True
    breaker.ended(second, False)
    assert breaker.state is CLOSED
    assert breaker.admit() is False  # closed: a plain call again
    breaker.ended(third, True)  # a late probe end changes nothing once closed
    assert breaker.state is CLOSED


def test_a_failed_probe_opens_the_circuit_again_for_open_for() -> None:
    clock = ManualClock()
    breaker = _breaker(clock, min_calls=1)
    breaker.ended(breaker.admit(), True)
    clock.now += 5
    breaker.ended(breaker.admit(), True)
    assert breaker.state is OPEN and breaker.opened == 2
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit()
    assert _retry_after(refused) == "5"


def test_calls_that_end_while_open_do_not_count() -> None:
    clock = ManualClock()
    breaker = _breaker(clock, min_calls=2)
    early = breaker.admit()  # started while closed
    breaker.ended(breaker.admit(), True)
    breaker.ended(breaker.admit(), True)
    assert breaker.state is OPEN
    breaker.ended(early, False)  # a success now does not close it: only a probe decides
    assert breaker.state is OPEN


# -- the retry budget and what is safe to repeat -------------------------------------------------


def test_the_budget_allows_the_ratio_of_recent_calls_plus_the_floor() -> None:
    clock = ManualClock()
    budget = RetryBudget(0.2, 3, clock)
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]  # the floor alone
    for _ in range(50):
        budget.note_call()
    # 0.2 x 50 + 3 = 13 retries in 10 s; 3 are spent already.
    assert sum(budget.spend() for _ in range(20)) == 10
    clock.now += 10.5  # calls and retries have left the window: the floor again
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]


def test_what_is_safe_to_repeat() -> None:
    safe = frozenset({"lookup"})
    assert repeatable("resources/read", Raw(b'{"uri":"x"}'), frozenset())
    assert repeatable("prompts/get", Raw(b'{"name":"p"}'), frozenset())
    assert repeatable("tools/list", Raw(b"{}"), frozenset())
    assert repeatable("tools/call", Raw(b'{"name":"lookup","arguments":{}}'), safe)
    assert not repeatable("tools/call", Raw(b'{"name":"delete","arguments":{}}'), safe)
    assert not repeatable("tools/call", Raw(b'{"name":"lookup"'), safe)  # not JSON: not repeated
    assert not repeatable("completion/complete", Raw(b"{}"), safe)


def test_which_ends_count_as_failures() -> None:
    assert failed(BackendTimeout("slow"))
    assert failed(BackendUnavailable("reset", reason="backend_connection"))
    assert failed(BackendUnavailable("HTTP 503", reason="backend_http_error"))
    assert failed(not_sent(BackendUnavailable("refused", reason="backend_connection")))
    assert not failed(None)  # an answer (a JSON-RPC error the backend sent is one)
    assert not failed(BackendTimeout("waited in line", reason="queue_timeout"))
    assert not failed(BackendUnavailable("full", reason="overloaded"))
    assert not failed(BackendUnavailable("down", reason="backend_down"))
    assert not failed(not_sent(BackendUnavailable("all connections busy")))
    assert not failed(RequestCancelled("cancelled"))


# -- the gate and its queue ----------------------------------------------------------------------


async def test_the_gate_queues_refuses_beyond_both_and_hands_slots_over() -> None:
    gate = Gate("web", 2, 1)
    await gate.enter(5)
    await gate.enter(5)
    third = asyncio.ensure_future(gate.enter(5, "t3"))
    await eventually(lambda: len(gate.waiters) == 1)
    with pytest.raises(BackendUnavailable) as refused:
        await gate.enter(5)
    assert refused.value.reason == "overloaded" and dict(refused.value.headers)["retry-after"] == "1"
    gate.leave()
    await third  # the freed slot went to the waiter
    assert gate.inflight == 2 and not gate.waiters
    gate.leave()
    gate.leave()
    assert gate.inflight == 0


async def test_a_queued_call_leaves_the_queue_when_cancelled_or_at_its_deadline() -> None:
    gate = Gate("web", 1, 1)
    await gate.enter(5)
    waiting = asyncio.ensure_future(gate.enter(5, "ticket"))
    await eventually(lambda: gate.waiters)
    assert gate.cancel("ticket", "client cancelled")
    with pytest.raises(RequestCancelled):
        await waiting
    assert not gate.waiters and not gate.queued
    with pytest.raises(BackendTimeout) as late:
        await gate.enter(0.01)
    assert late.value.reason == "queue_timeout" and not gate.waiters
    gate.leave()
    assert gate.inflight == 0


# -- a gateway in this process, in front of real backends ------------------------------------------


class Running:
    """An in-process gateway: its port, the Gateway, and each verdict of its express lane."""

    def __init__(self, gateway: Gateway, port: int, taken: list[bool]) -> None:
        self.gateway = gateway
        self.port = port
        self.taken = taken

    @property
    def web(self) -> Guarded:
        return self.gateway.backends["web"]  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def running(backend: str, gateway: str = "", admission: Admission | None = None) -> AsyncIterator[Running]:
    """A gateway with one backend ``web`` (``backend``: its TOML lines)."""
    text = f"[server]\nport = 0\n\n[gateway]\n{gateway}\n\n[backends.web]\n{backend}\n"
    config = load_config_text(text, fmt="toml")
    async with in_process_gateway(config, admission) as running:
        yield Running(running.gateway, running.port, running.taken)


class Answer:
    """One HTTP response: status, headers, and the JSON-RPC message (from JSON or the last SSE event)."""

    def __init__(self, raw: bytes) -> None:
        self.status, self.headers, body = split_response(raw)
        text = body.decode()
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            text = [line[6:] for line in text.splitlines() if line.startswith("data: ")][-1]
        self.message = json.loads(text) if text else None

    @property
    def code(self) -> int | None:
        return (self.message or {}).get("error", {}).get("code")

    @property
    def reason(self) -> str | None:
        return (self.message or {}).get("error", {}).get("data", {}).get("gateway", {}).get("reason")

    @property
    def text(self) -> str:
        return self.message["result"]["content"][0]["text"]  # type: ignore[index]


class McpClient:
    """A raw handshake-era client on real sockets (one connection per POST)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.session = ""

    async def open(self) -> McpClient:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        answer = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
        self.session = answer.headers["mcp-session-id"]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def post(self, body: dict) -> Answer:
        headers = {"mcp-protocol-version": "2025-11-25"}
        if self.session:
            headers["mcp-session-id"] = self.session
        return Answer(await post_closing(self.port, json.dumps(body).encode(), headers, timeout=30))

    async def call(self, tool: str, arguments: dict | None = None, request_id: Any = 1) -> Answer:
        params = {"name": tool, "arguments": arguments or {}}
        return await self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})

    async def cancel(self, request_id: Any) -> Answer:
        params = {"requestId": request_id, "reason": "changed my mind"}
        return await self.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})


Script = Callable[[dict], Awaitable[tuple[int, dict, bytes]]]
TOOLS = [
    {"name": "read", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
    {"name": "idem", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": True}},
    {"name": "write", "inputSchema": {"type": "object"}},
]


class Backend(ScriptedHttp):
    """A scripted MCP server: tools ``read`` (readOnlyHint), ``idem`` (idempotentHint) and ``write``;
    each ``tools/call`` is answered by ``script(msg)``. ``calls`` counts the calls per tool."""

    def __init__(self, script: Script) -> None:
        super().__init__(self._answer)
        self.script = script
        self.sessions: list[str] = []
        self.calls: dict[str, int] = {}

    @property
    def received(self) -> list[dict]:
        return [r["body"] for r in self.requests if r["line"].startswith("POST") and r["body"]]

    def total(self) -> int:
        return sum(self.calls.values())

    async def _answer(self, request: dict) -> tuple[int, dict, bytes] | None:
        answer = handshake_answer(request, self.sessions)
        if answer is not None:
            return answer
        msg = request["body"]
        if msg["method"] == "tools/list":
            return 200, {}, result(msg, {"tools": TOOLS})
        name = msg["params"]["name"]
        self.calls[name] = self.calls.get(name, 0) + 1
        return await self.script(msg)


def result(msg: dict, value: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": value}).encode()


def ok(msg: dict, text: str = "done") -> tuple[int, dict, bytes]:
    return 200, {}, result(msg, {"content": [{"type": "text", "text": text}]})


FIVE_OH_THREE = (503, {}, b"<html>service unavailable</html>")


async def test_the_breaker_opens_answers_at_once_with_nothing_sent_and_recovers() -> None:
    healthy = False

    async def script(msg: dict) -> tuple[int, dict, bytes]:
        return ok(msg) if healthy else FIVE_OH_THREE

    breaker = "[backends.web.breaker]\nmin_calls = 4\nfailure_ratio = 0.5\nopen_for = 1\n"
    scripted = Backend(script)
    async with scripted as url, running(f"url = {url!r}\n{breaker}") as gw:
        client = await McpClient(gw.port).open()
        for _ in range(4):
            answer = await client.call("web__write")
            assert (answer.status, answer.code, answer.reason) == (503, -32054, "backend_http_error")
        assert gw.web.breaker.state is OPEN  # type: ignore[union-attr]
        seen = len(gw.taken)
        for _ in range(3):
            answer = await client.call("web__write")
            assert (answer.status, answer.code, answer.reason) == (503, -32056, "circuit_open")
            assert answer.headers["retry-after"] == "1"  # under 1 s left, rounded up
            assert answer.message["error"]["data"]["gateway"]["retryAfterMs"] == 1000
        assert scripted.calls == {"write": 4}  # nothing reached the backend while open
        assert gw.taken[seen:] == [False] * 3  # the lane declines while the circuit is not closed
        healthy = True

        async def recovered() -> bool:
            return (await client.call("web__write")).status == 200

        await eventually(recovered, message="the breaker never let a probe through after open_for")
        assert gw.web.breaker.state is CLOSED  # type: ignore[union-attr]
        assert scripted.calls == {"write": 5}  # the one probe, which closed it
        assert (await client.call("web__write")).text == "done"


async def test_nothing_reaches_the_backend_while_the_circuit_is_open() -> None:
    async def script(msg: dict) -> tuple[int, dict, bytes]:
        return FIVE_OH_THREE

    breaker = "[backends.web.breaker]\nmin_calls = 2\nfailure_ratio = 1.0\nopen_for = 60\n"
    scripted = Backend(script)
    async with scripted as url, running(f"url = {url!r}\n{breaker}") as gw:
        client = await McpClient(gw.port).open()
        await client.call("web__write")
        await client.call("web__write")
        assert scripted.calls == {"write": 2}
        answers = await asyncio.gather(*(client.call("web__read", request_id=i) for i in range(20)))
        assert {(a.status, a.code, a.headers.get("retry-after")) for a in answers} == {(503, -32056, "60")}
        assert scripted.calls == {"write": 2}  # counted at the backend: not one call while open


async def test_json_rpc_errors_the_backend_answers_do_not_open_the_breaker() -> None:
    async def script(msg: dict) -> tuple[int, dict, bytes]:
        error = {"code": -32602, "message": "bad arguments"}
        return 200, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": error}).encode()

    breaker = "[backends.web.breaker]\nmin_calls = 2\nfailure_ratio = 0.5\n"
    scripted = Backend(script)
    async with scripted as url, running(f"url = {url!r}\n{breaker}") as gw:
        client = await McpClient(gw.port).open()
        for _ in range(10):
            answer = await client.call("web__write")
            assert (answer.status, answer.code) == (200, -32602)  # the backend's own error, unchanged
        assert gw.web.breaker.state is CLOSED and scripted.calls == {"write": 10}  # type: ignore[union-attr]


# -- concurrency and the queue ------------------------------------------------------------------------


class Held:
    """A script that holds every call until ``release`` (or the test ends)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def __call__(self, msg: dict) -> tuple[int, dict, bytes]:
        await self.go.wait()
        return ok(msg, f"answer {msg['params']['arguments'].get('n')}")

    def release(self) -> None:
        self.go.set()


async def test_calls_beyond_the_limit_queue_and_beyond_the_queue_are_refused_at_once() -> None:
    held = Held()
    scripted = Backend(held)
    async with scripted as url, running(f"url = {url!r}\nmax_concurrency = 2\nmax_queue = 1\n") as gw:
        client = await McpClient(gw.port).open()
        first = [asyncio.ensure_future(client.call("web__write", {"n": n}, request_id=n)) for n in (1, 2)]
        await eventually(lambda: scripted.total() == 2, message="two calls did not reach the backend")
        queued = asyncio.ensure_future(client.call("web__write", {"n": 3}, request_id=3))
        await eventually(lambda: len(gw.web.gate.waiters) == 1, message="the third call did not queue")  # type: ignore[union-attr]
        refused = await client.call("web__write", {"n": 4}, request_id=4)  # answered while the others are held
        assert (refused.status, refused.code, refused.reason) == (503, -32054, "overloaded")
        assert refused.headers["retry-after"] == "1"
        assert scripted.total() == 2  # neither the queued nor the refused call reached the backend
        held.release()
        answers = await asyncio.gather(*first, queued)
        assert [a.text for a in answers] == ["answer 1", "answer 2", "answer 3"]
        assert scripted.calls == {"write": 3}
        assert gw.web.gate.inflight == 0  # type: ignore[union-attr]


async def test_a_queued_call_waits_no_longer_than_its_deadline_and_the_held_one_is_cancelled_upstream() -> None:
    held = Held()
    scripted = Backend(held)
    async with scripted as url, running(f"url = {url!r}\nmax_concurrency = 1\nmax_queue = 1\nrequest_timeout = 1\n") as gw:
        client = await McpClient(gw.port).open()
        sent = asyncio.ensure_future(client.call("web__write", {"n": 1}, request_id=1))
        await eventually(lambda: scripted.total() == 1)
        queued = await client.call("web__write", {"n": 2}, request_id=2)
        # Its deadline passed in the queue, or a little after the held call's (which started first)
        # handed it the slot: then it was sent with what was left of its deadline. Never later.
        assert (queued.status, queued.code) == (200, -32001)
        assert queued.reason == ("queue_timeout" if scripted.total() == 1 else "backend_timeout")
        late = await sent
        assert (late.code, late.reason) == (-32001, "backend_timeout")
        upstream_id = next(m["id"] for m in scripted.received if m.get("method") == "tools/call")

        def told() -> bool:
            return any(
                m.get("method") == "notifications/cancelled" and m["params"]["requestId"] == upstream_id
                for m in scripted.received
            )

        await eventually(told, message="the timed-out call was not cancelled at the backend")
        held.release()


async def test_a_queued_call_its_client_cancels_leaves_the_queue() -> None:
    held = Held()
    scripted = Backend(held)
    async with scripted as url, running(f"url = {url!r}\nmax_concurrency = 1\nmax_queue = 1\n") as gw:
        client = await McpClient(gw.port).open()
        sent = asyncio.ensure_future(client.call("web__write", {"n": 1}, request_id=1))
        await eventually(lambda: scripted.total() == 1)
        queued = asyncio.ensure_future(client.call("web__write", {"n": 2}, request_id=2))
        await eventually(lambda: gw.web.gate.waiters)  # type: ignore[union-attr]
        await client.cancel(2)
        assert (await queued).status == 202  # cancelled: no JSON-RPC answer
        assert not gw.web.gate.waiters  # type: ignore[union-attr]
        again = asyncio.ensure_future(client.call("web__write", {"n": 3}, request_id=3))  # the queue has room again
        await eventually(lambda: gw.web.gate.waiters)  # type: ignore[union-attr]
        held.release()
        assert [a.text for a in await asyncio.gather(sent, again)] == ["answer 1", "answer 3"]
        assert scripted.calls == {"write": 2}  # the cancelled call never reached the backend


async def test_calls_under_the_limit_take_the_express_lane_and_free_their_slots() -> None:
    async def script(msg: dict) -> tuple[int, dict, bytes]:
        return ok(msg)

    async with Backend(script) as url, running(f"url = {url!r}\nmax_concurrency = 4\n") as gw:
        client = await McpClient(gw.port).open()
        await client.call("web__read")  # the pool settles (its first call opens a connection)
        seen = len(gw.taken)
        for _ in range(5):
            assert (await client.call("web__read")).text == "done"
        assert gw.taken[seen:] == [True] * 5
        assert gw.web.gate.inflight == 0  # type: ignore[union-attr]


# -- retries ------------------------------------------------------------------------------------------


async def test_only_calls_safe_to_repeat_are_retried() -> None:
    async def script(msg: dict) -> tuple[int, dict, bytes]:
        name = msg["params"]["name"]
        return FIVE_OH_THREE if scripted.calls[name] == 1 else ok(msg, name)  # each tool's first call fails

    scripted = Backend(script)
    async with scripted as url, running(f"url = {url!r}\nretries = 2\n") as gw:
        client = await McpClient(gw.port).open()
        assert gw.web.safe_tools == {"read", "idem"}  # learnt from its tools/list
        assert (await client.call("web__read")).text == "read"
        assert (await client.call("web__idem")).text == "idem"
        write = await client.call("web__write")
        assert (write.status, write.code) == (503, -32054)
        assert scripted.calls == {"read": 2, "idem": 2, "write": 1}  # counted at the backend: write never repeated


async def test_retries_stay_within_the_budget() -> None:
    async def script(msg: dict) -> tuple[int, dict, bytes]:
        return FIVE_OH_THREE

    scripted = Backend(script)
    async with scripted as url, running(f"url = {url!r}\nretries = 3\nretry_ratio = 0.0\nretry_floor = 2\n") as gw:
        client = await McpClient(gw.port).open()
        for _ in range(3):
            assert (await client.call("web__read")).status == 503
        # The first call: 1 + 2 retries (the floor), not 1 + 3; the others: no budget left.
        assert scripted.calls == {"read": 5}


async def test_a_cancel_between_attempts_sends_no_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long pause before the retry (the knob, not the behaviour, is changed), so the cancel surely lands in it.
    monkeypatch.setattr(guarded_module, "_BACKOFF", 30.0)

    async def script(msg: dict) -> tuple[int, dict, bytes]:
        return FIVE_OH_THREE

    scripted = Backend(script)
    async with scripted as url, running(f"url = {url!r}\nretries = 2\nrequest_timeout = 300\n") as gw:
        client = await McpClient(gw.port).open()
        pending = asyncio.ensure_future(client.call("web__read", request_id=7))
        await eventually(lambda: bool(gw.web._resting), message="the call never paused before its retry")  # type: ignore[union-attr]
        await client.cancel(7)
        answer = await asyncio.wait_for(pending, 10)
        assert answer.status == 202  # cancelled: no JSON-RPC answer, as the spec says
        # The express attempt, then its first retry (handed to the general path at once), then the pause:
        # the second retry never went out.
        assert scripted.calls == {"read": 2}
        assert not gw.web._resting  # type: ignore[union-attr]


class CountingAdmission(Admission):
    """Admits everything, counting each ``admit``."""

    def __init__(self) -> None:
        self.admitted = 0

    def admit(self, principal: Any, ctx: Any, method: str, name: str, route: Any, params: Any) -> None:
        self.admitted += 1
        return None


async def test_a_retried_call_is_admitted_once() -> None:
    async def script(msg: dict) -> tuple[int, dict, bytes]:
        return FIVE_OH_THREE if scripted.calls["read"] < 3 else ok(msg)

    scripted = Backend(script)
    admission = CountingAdmission()
    async with scripted as url, running(f"url = {url!r}\nretries = 3\n", admission=admission) as gw:
        client = await McpClient(gw.port).open()
        assert (await client.call("web__read")).text == "done"
        assert scripted.calls == {"read": 3} and admission.admitted == 1
        assert gw.taken[-1] is True  # it went by the lane, its retries by the general path


# -- timeouts, against the official SDK server ----------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_server() -> Child:
    child = Child([sys.executable, str(SERVERS / "resilience_server.py"), "--port", "0", "--label", "solo"], "listening on")
    yield child
    child.stop()


async def _stats(client: McpClient) -> dict:
    return json.loads((await client.call("web__stats", request_id=99)).text)


@pytest.mark.parametrize("express", [True, False])
async def test_a_timed_out_call_is_cancelled_at_the_backend(sdk_server: Child, express: bool) -> None:
    options = f"url = {sdk_server.url!r}\nrequest_timeout = 0.5\nmax_concurrency = 4\n"
    async with running(options, gateway=f"express = {str(express).lower()}") as gw:
        client = await McpClient(gw.port).open()
        before = len((await _stats(client))["cancelled"])
        answer = await client.call("web__slow", {"seconds": 30}, request_id=7)
        assert (answer.code, answer.reason) == (-32001, "backend_timeout")

        async def cancelled() -> bool:
            return len((await _stats(client))["cancelled"]) == before + 1

        await eventually(cancelled, message="the SDK server never saw notifications/cancelled")
        assert gw.web.gate.inflight == 0  # type: ignore[union-attr]


async def test_a_stdio_backend_has_the_gate_and_the_breaker_too() -> None:
    options = (
        f"command = {sys.executable!r}\nargs = [{str(SERVERS / 'sdk_stdio_server.py')!r}]\n"
        "restart_initial_delay = 0.1\nmax_concurrency = 1\n"
        "[backends.web.breaker]\nmin_calls = 2\nfailure_ratio = 1.0\nopen_for = 60\n"
    )
    async with running(options) as gw:
        client = await McpClient(gw.port).open()
        holding = asyncio.ensure_future(client.call("web__slow", {"seconds": 30}, request_id=1))
        await eventually(lambda: gw.web.gate.inflight == 1)  # type: ignore[union-attr]
        refused = await client.call("web__echo", {"text": "x"}, request_id=2)
        assert (refused.status, refused.reason) == (503, "overloaded")
        await client.cancel(1)
        assert (await holding).status == 202
        await eventually(lambda: gw.web.gate.inflight == 0)  # type: ignore[union-attr]
        for i in range(2):  # the process dies with the call in flight: a failure, twice
            await eventually(lambda: gw.web.state.value == "ready", message="the process did not come back")
            crashed = await client.call("web__crash", request_id=10 + i)
            assert (crashed.status, crashed.reason) == (503, "backend_exited")
        # Back up (a backend that is down is not routed to, whatever its breaker says): the
        # breaker, open for 60 s, now refuses at once.
        await eventually(lambda: gw.web.state.value == "ready", message="the process did not come back")
        opened = await client.call("web__echo", {"text": "x"}, request_id=3)
        assert (opened.status, opened.code) == (503, -32056)


async def test_a_timed_out_call_is_cancelled_at_a_stdio_backend(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gateway.backend.web")
    options = f"command = {sys.executable!r}\nargs = [{str(SERVERS / 'sdk_stdio_server.py')!r}]\nrequest_timeout = 0.5\n"
    async with running(options) as gw:
        client = await McpClient(gw.port).open()
        answer = await client.call("web__slow", {"seconds": 30})
        assert (answer.code, answer.reason) == (-32001, "backend_timeout")
        # The server writes this to its stderr when its handler is cancelled; the gateway logs it.
        await eventually(
            lambda: any("slow(30.0) cancelled" in r.getMessage() for r in caplog.records),
            message="the stdio server never saw notifications/cancelled",
        )
        assert gw.web.state.value == "ready"
