"""The HTTP backend's one classifier of an exchange's end (``gateway.backends.http.outcome``).

Each exchange here is a real one: a ``Connection`` of an (unstarted) ``HttpBackend``
on a transport that only records, sent a request, then given the backend's bytes,
a closed connection or its deadline, exactly as the event loop would. The
classifier then sees what ``_post`` and ``express_done`` see.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.backends.base import RequestCancelled, Ticket
from gateway.backends.http import HttpBackend
from gateway.backends.http.connection import Connection, Exchange
from gateway.backends.http.outcome import Outcome, classify
from gateway.backends.http.session import UpSession
from gateway.config import BackendConfig
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.protocol.jsonrpc import Message, Raw


class Transport:
    """Takes what the connection writes; never delivers anything by itself."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def response(status: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


def result_body(upstream_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": upstream_id, "result": result}).encode()


@pytest.fixture
def backend() -> HttpBackend:
    return HttpBackend("web", BackendConfig(url="http://127.0.0.1:9/mcp"), default_timeout=5)


def sent(
    backend: HttpBackend, *, upstream_id: Any = 7, session_id: str | None = None, reused: bool = False, limit: float = 5.0
) -> Exchange:
    """A general-path exchange, written on a fresh connection of ``backend``."""
    session = UpSession()
    session.session_id = session_id
    conn = Connection(backend, backend.pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    conn.reused = reused
    exchange = Exchange(upstream_id, None)
    exchange.session = session
    exchange.limit = limit
    conn.send(exchange, b"POST /mcp HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
    return exchange


async def classified(exchange: Exchange, resend: bool = True, required: bool = True) -> Outcome:
    """Classify an exchange's end as ``_post`` does: the future's result or its exception."""
    assert exchange.future is not None and exchange.future.done()
    try:
        answer, _ = await exchange.future
    except Exception as exc:
        return classify(exchange, None, exc, "web", resend, required)
    return classify(exchange, answer, None, "web", resend, required)


async def test_a_response_is_the_answer(backend: HttpBackend) -> None:
    exchange = sent(backend)
    exchange.conn.data_received(response("200 OK", result_body(7, {"ok": True})))  # type: ignore[union-attr]
    outcome = await classified(exchange)
    assert outcome.error is None and outcome.retry is False and not outcome.expired and not outcome.timed_out
    assert isinstance(outcome.answer, Message) and json.loads(bytes(outcome.answer.result)) == {"ok": True}


async def test_a_json_rpc_error_is_an_answer_too(backend: HttpBackend) -> None:
    exchange = sent(backend)
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "error": {"code": -32602, "message": "bad"}}).encode()
    exchange.conn.data_received(response("200 OK", body))  # type: ignore[union-attr]
    outcome = await classified(exchange)
    assert outcome.error is None and not outcome.retry
    assert outcome.answer is not None and json.loads(bytes(outcome.answer.error))["code"] == -32602


async def test_a_timeout_is_backend_timeout_and_says_to_abandon(backend: HttpBackend) -> None:
    exchange = sent(backend, limit=0.25)
    exchange.time_out()  # the deadline tick
    outcome = await classified(exchange)
    assert isinstance(outcome.error, BackendTimeout) and "0.25 s" in str(outcome.error)
    assert outcome.timed_out is True and outcome.retry is False and outcome.answer is None


async def test_a_reused_connection_closed_before_any_byte_is_retried(backend: HttpBackend) -> None:
    exchange = sent(backend, reused=True)
    exchange.conn.connection_lost(None)  # type: ignore[union-attr]
    outcome = await classified(exchange)
    assert outcome == Outcome(None, None, True)


async def test_on_the_last_attempt_that_close_is_an_error(backend: HttpBackend) -> None:
    exchange = sent(backend, reused=True)
    exchange.conn.connection_lost(None)  # type: ignore[union-attr]
    outcome = await classified(exchange, resend=False)
    assert not outcome.retry and isinstance(outcome.error, BackendUnavailable)
    assert outcome.error.reason == "backend_connection" and "closed by the backend" in str(outcome.error)


async def test_a_new_connection_closed_is_an_error_not_a_retry(backend: HttpBackend) -> None:
    exchange = sent(backend, reused=False)
    exchange.conn.connection_lost(None)  # type: ignore[union-attr]
    outcome = await classified(exchange)
    assert not outcome.retry and isinstance(outcome.error, BackendUnavailable)
    assert outcome.error.reason == "backend_connection"


async def test_a_close_after_part_of_the_response_is_an_error_not_a_retry(backend: HttpBackend) -> None:
    exchange = sent(backend, reused=True)
    conn = exchange.conn
    assert conn is not None
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 90\r\n\r\n{")
    conn.connection_lost(None)
    assert exchange.got_bytes
    outcome = await classified(exchange)
    assert not outcome.retry and isinstance(outcome.error, BackendUnavailable)


async def test_another_failure_is_passed_on_as_it_is(backend: HttpBackend) -> None:
    cancelled = RequestCancelled("cancelled by the client")
    exchange = sent(backend)
    exchange.fail(cancelled)
    assert (await classified(exchange)) == Outcome(None, cancelled, False)
    malformed = sent(backend)
    malformed.conn.data_received(b"NOT HTTP AT ALL\r\n\r\n")  # type: ignore[union-attr]
    outcome = await classified(malformed)
    assert isinstance(outcome.error, BackendUnavailable) and "malformed HTTP" in str(outcome.error)


async def test_404_in_a_session_means_it_expired(backend: HttpBackend) -> None:
    exchange = sent(backend, session_id="s1")
    exchange.conn.data_received(response("404 Not Found"))  # type: ignore[union-attr]
    outcome = await classified(exchange)
    assert outcome == Outcome(None, None, True, expired=True)


async def test_404_in_a_session_with_a_json_body_still_means_it_expired(backend: HttpBackend) -> None:
    exchange = sent(backend, session_id="s1")
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "error": {"code": -32001, "message": "no session"}}).encode()
    exchange.conn.data_received(response("404 Not Found", body))  # type: ignore[union-attr]
    assert (await classified(exchange)) == Outcome(None, None, True, expired=True)


async def test_404_to_a_notification_in_a_session_is_a_wrong_url(backend: HttpBackend) -> None:
    exchange = sent(backend, upstream_id=None, session_id="s1")
    exchange.conn.data_received(response("404 Not Found"))  # type: ignore[union-attr]
    outcome = await classified(exchange, required=False)
    assert not outcome.retry and not outcome.expired
    assert isinstance(outcome.error, BackendUnavailable) and "wrong URL" in str(outcome.error)


async def test_404_without_a_session_is_a_wrong_url(backend: HttpBackend) -> None:
    exchange = sent(backend)
    exchange.conn.data_received(response("404 Not Found", b"no such page", "text/plain"))  # type: ignore[union-attr]
    outcome = await classified(exchange)
    assert not outcome.retry and not outcome.expired and outcome.answer is None
    assert isinstance(outcome.error, BackendUnavailable) and outcome.error.reason == "backend_http_error"
    assert "404 (wrong URL?)" in str(outcome.error)


async def test_404_with_a_json_rpc_answer_and_no_session_is_that_answer(backend: HttpBackend) -> None:
    exchange = sent(backend)
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "no such method"}}).encode()
    exchange.conn.data_received(response("404 Not Found", body))  # type: ignore[union-attr]
    outcome = await classified(exchange)
    assert outcome.error is None and not outcome.retry and outcome.answer is not None
    assert json.loads(bytes(outcome.answer.error))["code"] == -32601


async def test_no_answer_to_a_request_is_an_error_but_fine_for_a_notification(backend: HttpBackend) -> None:
    request = sent(backend)
    request.conn.data_received(response("202 Accepted"))  # type: ignore[union-attr]
    outcome = await classified(request)
    assert not outcome.retry and isinstance(outcome.error, BackendUnavailable)
    assert "no response" in str(outcome.error)
    notification = sent(backend, upstream_id=None)
    notification.conn.data_received(response("202 Accepted"))  # type: ignore[union-attr]
    assert (await classified(notification, required=False)) == Outcome(None, None, False)


# -- the express path reads the same outcomes -------------------------------------------------------


def express_sent(backend: HttpBackend, answers: list[tuple[Any, Any, bool]], *, reused: bool = False) -> Exchange:
    """An express call written on a fresh connection of ``backend``, in its shared session."""
    conn = Connection(backend, backend.pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    conn.reused = reused
    ticket = Ticket()
    params = Raw(b'{"name":"work"}')
    backend.express_send(conn, "tools/call", params, ticket, lambda m: None, lambda *a: answers.append(a))
    exchange = ticket.handle[2]
    assert isinstance(exchange, Exchange) and exchange.future is None
    return exchange


async def test_express_expired_session_is_marked_and_retried(backend: HttpBackend) -> None:
    backend.shared.session_id, backend.shared.ready = "s1", True
    answers: list[tuple[Any, Any, bool]] = []
    exchange = express_sent(backend, answers)
    exchange.conn.data_received(response("404 Not Found"))  # type: ignore[union-attr]
    assert answers == [(None, None, True)]
    assert backend.shared.ready is False  # the retry initializes it again


async def test_express_timeout_closes_the_connection_and_tells_the_timeout(backend: HttpBackend) -> None:
    answers: list[tuple[Any, Any, bool]] = []
    exchange = express_sent(backend, answers)
    conn = exchange.conn
    assert conn is not None
    exchange.time_out()
    [(answer, error, retry)] = answers
    assert answer is None and retry is False and isinstance(error, BackendTimeout)
    assert conn.closed and conn.transport.closed  # type: ignore[union-attr]
    for task in list(backend._tasks):  # the notifications/cancelled it tried to send (nowhere to go)
        await asyncio.wait_for(task, 5)


async def test_express_reused_connection_closed_is_retried(backend: HttpBackend) -> None:
    answers: list[tuple[Any, Any, bool]] = []
    exchange = express_sent(backend, answers, reused=True)
    exchange.conn.connection_lost(None)  # type: ignore[union-attr]
    assert answers == [(None, None, True)]


async def test_express_plain_answer_skips_the_classifier(backend: HttpBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.backends.http.backend as module

    def refuse(*args: Any) -> Outcome:
        raise AssertionError("a plain answer must not be classified")

    monkeypatch.setattr(module, "classify", refuse)
    answers: list[tuple[Any, Any, bool]] = []
    exchange = express_sent(backend, answers)
    conn = exchange.conn
    assert conn is not None
    conn.data_received(response("200 OK", result_body(exchange.upstream_id, {"n": 1})))
    [(answer, error, retry)] = answers
    assert error is None and retry is False and json.loads(bytes(answer.result)) == {"n": 1}
