"""Server-to-client requests across the two eras.

The handshake era lets a server ask its client something in the middle of a
request (``sampling/createMessage``, ``elicitation/create``, ``roots/list``) on
the request's SSE stream. The stateless era has no such back channel: the
server answers ``resultType: "input_required"`` with ``inputRequests`` and an
opaque ``requestState``, and the client calls again with ``inputResponses``
(multi-round-trip requests, MRTR). When the client and the backend speak
different eras, the gateway turns one form into the other:

- ``InputRounds`` (handshake client, stateless backend): each ``inputRequests``
  entry becomes a request to the client on its stream; the answers go back to
  the backend as ``inputResponses`` with its ``requestState``, until the
  backend completes.
- ``PendingCall`` (stateless client, handshake backend): the backend's request
  ends the client's HTTP response with an ``input_required`` result whose
  ``requestState`` names the backend call, which stays open in the gateway
  (bounded in number and time); the client's retry carries the answers, which
  go to the backend as responses to its requests, and the call continues.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

from gateway.errors import InvalidParams
from gateway.protocol.jsonrpc import Message

__all__ = ["MAX_PENDING", "MAX_ROUNDS", "PendingCall", "PendingCalls"]

MAX_ROUNDS = 10
"""Most input rounds one request may take before the gateway gives up."""

MAX_PENDING = 1000
"""Most backend calls held open for stateless clients' retries at once."""


class PendingCall:
    """A handshake backend's call held open while a stateless client answers its questions.

    Made only when the backend asks something (calls that ask nothing cost
    nothing here). ``asked`` maps each ``inputRequests`` key given to the client
    to the backend's request; ``arrived`` collects backend requests not yet
    handed to the client; ``done`` gets the backend's final answer.
    """

    __slots__ = (
        "token", "done", "asked", "arrived", "wake", "method", "name", "expires", "stream", "ticket", "backend",
        "flushed", "timer",
    )

    def __init__(self, method: str, name: str | None, ttl: float) -> None:
        self.token = secrets.token_urlsafe(18)
        self.done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.asked: dict[str, Any] = {}
        self.arrived: list[Message] = []
        self.wake: asyncio.Future[None] | None = None
        self.method = method
        self.name = name
        self.expires = time.monotonic() + ttl
        self.stream: Any = None
        self.ticket: Any = None  # the backend request's Ticket, to cancel it
        self.backend: Any = None
        self.flushed = False  # the first input_required went to the client
        self.timer: asyncio.TimerHandle | None = None

    def server_request(self, msg: Message) -> None:
        """Called by the client stream when the backend asks something."""
        self.arrived.append(msg)
        self._wake()

    def complete(self, answer: Any = None, exc: BaseException | None = None) -> None:
        """The backend's call ended (``answer``) or failed (``exc``)."""
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self.done.set_result(answer)
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def next_event(self) -> bool:
        """Wait until the call finishes (True) or the backend asks something (False)."""
        while not self.done.done() and not self.arrived:
            self.wake = asyncio.get_running_loop().create_future()
            await self.wake
        if self.done.done():
            return True
        await asyncio.sleep(0.01)  # let requests sent together arrive together
        return self.done.done()

    def input_required(self) -> dict[str, Any]:
        """The result that hands the backend's questions to the client."""
        requests: dict[str, Any] = {}
        for msg in self.arrived:
            key = f"r{len(self.asked) + 1}"
            while key in self.asked:
                key += "x"
            self.asked[key] = msg
            requests[key] = {"method": msg.method, "params": _decoded(msg.params)}
        self.arrived.clear()
        return {"resultType": "input_required", "inputRequests": requests, "requestState": self.token}


def _decoded(params: Any) -> Any:
    from gateway.protocol.jsonrpc import UNSET, decode_any

    return {} if params is UNSET else decode_any(params)


class PendingCalls:
    """The calls held open for stateless clients, by ``requestState`` token."""

    def __init__(self, on_drop: Callable[[PendingCall], None]) -> None:
        self._calls: dict[str, PendingCall] = {}
        self._on_drop = on_drop

    def add(self, call: PendingCall) -> None:
        self.sweep()
        if len(self._calls) >= MAX_PENDING:
            self._on_drop(call)
            raise InvalidParams("too many requests are waiting for input; try again later", reason="input_pending_limit")
        self._calls[call.token] = call

    def take(self, token: Any, method: str, name: str | None) -> PendingCall | None:
        """The call a retry continues, removed from the table (it is re-added if it asks again)."""
        self.sweep()
        call = self._calls.get(token) if isinstance(token, str) else None
        if call is None:
            return None
        if call.method != method or call.name != name:
            raise InvalidParams("requestState belongs to another request", reason="request_state_mismatch")
        del self._calls[token]
        return call

    def sweep(self) -> None:
        """Drop calls whose client never came back."""
        now = time.monotonic()
        for token in [t for t, c in self._calls.items() if c.expires < now]:
            self._on_drop(self._calls.pop(token))
