"""A backend behind its guards: the concurrency gate and queue, the circuit breaker
and the retries (``max_concurrency``, ``max_queue``, ``[backends.NAME.breaker]``,
``retries``).

``Guarded`` is itself a ``Backend`` in front of the real one (an HTTP backend, a
stdio backend, or a replica set), made by ``create_backend`` only when one of
those options is set: a backend with none of them is used bare, so it costs
exactly what it did. Everything it does happens below admission: a call it
refuses was admitted and is answered at once, never sent.

The general path (``request``), for each call:

1. the breaker (``breaker.Breaker.admit``): open, ``CircuitOpen`` at once;
2. the gate (``concurrency.Gate.enter``): a slot, or a place in the queue, or
   the ``overloaded`` refusal at once;
3. the attempts: the inner backend's ``request``, each attempt given what is
   left of the call's deadline (the queue wait included: no client waits past
   ``request_timeout``); each end told to the breaker; a failure retried when
   the call is safe to repeat (``retry.repeatable``) or never left the gateway
   (``faults.never_sent``), while ``retries`` and the budget
   (``retry.RetryBudget``) allow, the deadline has time left, and the breaker
   lets it through.

The catalog's own list calls skip the gate and the breaker (they are not client
traffic, and a refused one would drop the backend's items from the catalog
until its next change); they are retried as any safe call.

The express lane: ``express_ready`` is False while the breaker is not closed or
the gate is full (the call then takes the general path, where it waits or is
refused), else the inner backend's answer. An express call holds a slot and is
counted in the budget and the breaker like any other; when it fails in a way
that may be retried, it is handed to the general path (``retry`` in its answer)
still holding its slot, with its retry already taken from the budget, so it is
neither counted twice nor sent more than ``retries`` extra times.

Which tools are safe to repeat is learnt from the backend's own ``tools/list``
answers, which pass through here when the catalog asks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.backends.base import Backend, BackendCall, BackendState, ExpressAnswer, MessageSink, RequestCancelled, Ticket
from gateway.backends.breaker import CLOSED, Breaker
from gateway.backends.concurrency import Gate
from gateway.backends.faults import failed, never_sent
from gateway.backends.retry import RetryBudget, repeatable, safe_tools_of
from gateway.errors import CircuitOpen
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any

if TYPE_CHECKING:
    from gateway.config import BackendConfig

__all__ = ["CATALOG_METHODS", "Guarded", "needs_guard"]

CATALOG_METHODS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})
"""The list calls only the catalog makes (clients' lists are served from the catalog)."""

def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_BACKOFF = 0.05  # seconds before the first retry, doubled for each next one (at most a quarter of the time left)


def needs_guard(config: BackendConfig) -> bool:
    """Whether ``config`` asks for any guard (a gate, a breaker, retries)."""
    return config.max_concurrency is not None or config.breaker is not None or config.retries > 0


class _Carried:
    """An express call handed to the general path (``retry``): it holds its slot already, has
    made ``retried`` retries (taken from the budget) and must end by ``deadline``."""

    __slots__ = ("retried", "deadline")

    def __init__(self, retried: int, deadline: float) -> None:
        self.retried = retried
        self.deadline = deadline


class Guarded(Backend):
    """``inner`` behind a gate, a breaker and retries (see the module docstring). The state,
    the eras and the server's info are the inner backend's."""

    def __init__(
        self, inner: Backend, config: BackendConfig, *, default_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner  # first: Backend.__init__'s defaults go through the properties below to it
        super().__init__(inner.name, config)
        self.default_timeout = default_timeout
        self.clock = clock
        self.log = logging.getLogger(f"gateway.backend.{inner.name}")
        name = inner.name
        self.gate = Gate(name, config.max_concurrency, config.max_queue) if config.max_concurrency is not None else None
        self.breaker = Breaker(name, config.breaker, clock) if config.breaker is not None else None
        self.budget = RetryBudget(config.retry_ratio, config.retry_floor, clock) if config.retries else None
        self.safe_tools: frozenset[str] = frozenset()
        """The backend's own names of its tools annotated ``readOnlyHint`` or ``idempotentHint``."""
        self._paging: set[str] = set()  # safe tools of the tools/list pages read so far
        self._carried: dict[Any, _Carried] = {}  # ticket -> an express call handed to request()
        self._resting: dict[Any, asyncio.Future[None]] = {}  # ticket -> the pause before its retry
        inner.on_notification = self._notified
        inner.on_state_change = self._changed

    # -- what is the inner backend's --------------------------------------------------------------

    @property  # type: ignore[override]
    def state(self) -> BackendState:  # type: ignore[override]
        """The inner backend's state."""
        return self.inner.state

    @state.setter
    def state(self, value: BackendState) -> None:
        self.inner.state = value

    @property  # type: ignore[override]
    def last_error(self) -> str | None:  # type: ignore[override]
        """The inner backend's last error."""
        return self.inner.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.inner.last_error = value

    @property  # type: ignore[override]
    def server_info(self) -> dict[str, Any] | None:  # type: ignore[override]
        """The inner backend's ``initialize`` result."""
        return self.inner.server_info

    @server_info.setter
    def server_info(self, value: dict[str, Any] | None) -> None:
        self.inner.server_info = value

    @property  # type: ignore[override]
    def eras(self) -> frozenset[str]:  # type: ignore[override]
        """The eras the inner backend speaks."""
        return self.inner.eras

    @eras.setter
    def eras(self, value: frozenset[str]) -> None:
        self.inner.eras = value

    @property  # type: ignore[override]
    def discover(self) -> dict[str, Any] | None:  # type: ignore[override]
        """The inner backend's ``server/discover`` result."""
        return self.inner.discover

    @discover.setter
    def discover(self, value: dict[str, Any] | None) -> None:
        self.inner.discover = value

    def _notified(self, backend: Backend, session_key: str | None, msg: Message) -> None:
        if self.on_notification is not None:
            self.on_notification(self, session_key, msg)

    def _changed(self, backend: Backend) -> None:
        if self.on_state_change is not None:
            self.on_state_change(self)

    async def start(self) -> None:
        """Start the inner backend."""
        await self.inner.start()

    async def stop(self) -> None:
        """Fail every queued call, then stop the inner backend."""
        if self.gate is not None:
            self.gate.close()
        await self.inner.stop()

    async def notify(self, method: str, params: Raw | Any = UNSET, *, session_key: str | None = None) -> None:
        """The inner backend's ``notify``."""
        await self.inner.notify(method, params, session_key=session_key)

    async def respond(
        self, upstream_id: Any, result: Raw | None = None, error: Raw | None = None, *, session_key: str | None = None
    ) -> None:
        """The inner backend's ``respond``."""
        await self.inner.respond(upstream_id, result, error, session_key=session_key)

    async def release(self, session_key: str) -> None:
        """The inner backend's ``release``."""
        await self.inner.release(session_key)

    def describe(self) -> dict[str, Any]:
        """The inner backend's description, with the guards' state: calls in flight and queued
        at the gate, the breaker's state and how often it opened."""
        info = self.inner.describe()
        gate = self.gate
        if gate is not None:
            info["in_flight"] = gate.inflight
            info["queued"] = len(gate.waiters)
            info["max_concurrency"] = gate.limit
        breaker = self.breaker
        if breaker is not None:
            info["breaker"] = {"state": breaker.state, "opened": breaker.opened}
        return info

    def local_answer(self, msg: Message) -> Raw | None:
        """The inner backend's ``local_answer``."""
        return self.inner.local_answer(msg)

    def cancel(self, ticket: Ticket, reason: str = "cancelled by the client") -> None:
        """A queued call leaves the queue (``RequestCancelled``); one sent is the inner backend's to cancel."""
        gate = self.gate
        if gate is not None and gate.queued and gate.cancel(ticket, reason):
            return
        resting = self._resting.get(ticket) if self._resting else None
        if resting is not None:  # between two attempts: nothing is in flight, and no retry may go out
            if not resting.done():
                resting.set_exception(RequestCancelled(reason))
            return
        self.inner.cancel(ticket, reason)

    # -- the general path ---------------------------------------------------------------------------

    async def request(self, call: BackendCall) -> Message:
        """Breaker, gate, then the attempts (see the module docstring)."""
        carried = self._carried.pop(call.ticket, None) if self._carried and call.ticket is not None else None
        own = call.method in CATALOG_METHODS  # the catalog's: no gate, no breaker
        gate = None if own else self.gate
        breaker = None if own else self.breaker
        if carried is not None:  # an express call: its slot is held, its first end told to the breaker
            probe, retried, deadline = False, carried.retried, carried.deadline
            changed = True
        else:
            limit = call.timeout if call.timeout is not None else (self.config.request_timeout or self.default_timeout)
            deadline = self.clock() + limit
            retried = 0
            probe = breaker.admit() if breaker is not None else False
            changed = False
            if gate is not None:
                try:
                    if not gate.free():
                        changed = True  # it waits: what is left of its deadline goes to the backend
                    await gate.enter(limit, call.ticket)
                except BaseException:
                    if probe:
                        breaker.ended(True, None)  # type: ignore[union-attr]
                    raise
            if self.budget is not None:
                self.budget.note_call()
        try:
            if carried is not None and retried and breaker is not None:
                probe = breaker.admit()  # a retry asks the breaker as any attempt does
            while True:
                attempt = call.replace(timeout=max(deadline - self.clock(), 0.001)) if changed else call
                try:
                    answer = await self.inner.request(attempt)
                except Exception as exc:
                    bad = failed(exc)
                    if breaker is not None:
                        breaker.ended(probe, True if bad else None)
                        probe = False
                    if not self._may_retry(call.method, call.params, exc, bad, retried, deadline):
                        raise
                    retried += 1
                    changed = True
                    if breaker is not None:
                        try:
                            probe = breaker.admit()
                        except CircuitOpen:
                            raise exc from None  # the circuit opened meanwhile: no more attempts
                    await self._rest(call.ticket, min(_BACKOFF * 2 ** (retried - 1), (deadline - self.clock()) / 4))
                    continue
                if breaker is not None:
                    breaker.ended(probe, False)
                    probe = False
                if own and call.method == "tools/list" and self.budget is not None:
                    self._learn(call, answer)
                return answer
        finally:
            if probe:  # a probe whose task was cancelled (shutdown): its slot is free again
                breaker.ended(True, None)  # type: ignore[union-attr]
            if gate is not None:
                gate.leave()

    async def _rest(self, ticket: Any, delay: float) -> None:
        """The pause before a retry; the client's cancel ends it with ``RequestCancelled``."""
        if ticket is None:
            await asyncio.sleep(delay)
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay, _wake, waiter)
        self._resting[ticket] = waiter
        try:
            await waiter
        finally:
            timer.cancel()
            self._resting.pop(ticket, None)

    def _may_retry(self, method: str, params: Any, exc: BaseException, bad: bool, retried: int, deadline: float) -> bool:
        """Whether a call that failed with ``exc`` is sent again (see ``retry``), taking one
        retry from the budget when it is."""
        budget = self.budget
        if budget is None or retried >= self.config.retries:
            return False
        if not never_sent(exc) and not (bad and repeatable(method, params, self.safe_tools)):
            return False
        if deadline - self.clock() <= _BACKOFF:
            return False  # no time left for another attempt (a call that timed out is never retried)
        return budget.spend()

    def _learn(self, call: BackendCall, answer: Message) -> None:
        """Note the safe tools of one ``tools/list`` page (the first page starts over)."""
        if answer.result is UNSET:
            return
        try:
            result = decode_any(answer.result)
        except ValueError:
            return
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return
        first = call.params is UNSET or b'"cursor"' not in bytes(call.params)
        if first:
            self._paging = set()
        self._paging |= safe_tools_of(tools)
        self.safe_tools = frozenset(self._paging)

    # -- the express lane -----------------------------------------------------------------------------

    def express_ready(self) -> bool:
        """False while the breaker is not closed or every slot is taken; else the inner
        backend's answer (a pure check)."""
        gate = self.gate
        if gate is not None and gate.inflight >= gate.limit:
            return False
        breaker = self.breaker
        if breaker is not None and breaker.state is not CLOSED:
            return False
        return self.inner.express_ready()

    def express(self, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer) -> None:
        """Take a slot, count the call, and send it by the inner backend's express path; its end
        is seen by a ``_Tracked``."""
        gate = self.gate
        if gate is not None:
            gate.inflight += 1  # Gate.take, inline: every express call of a gated backend
        now = 0.0
        if self.budget is not None or self.breaker is not None:
            now = self.clock()  # once: the budget's count, the deadline and the breaker's bucket
            if self.budget is not None:
                self.budget.note_call(now)
        self.inner.express(method, params, ticket, sink, _Tracked(self, method, params, ticket, on_answer, now).answered)


class _Tracked:
    """One express call of a ``Guarded`` backend, between its send and its answer."""

    __slots__ = ("guard", "method", "params", "ticket", "on_answer", "start")

    def __init__(
        self, guard: Guarded, method: str, params: Raw, ticket: Ticket, on_answer: ExpressAnswer, start: float
    ) -> None:
        self.guard = guard
        self.method = method
        self.params = params
        self.ticket = ticket
        self.on_answer = on_answer
        self.start = start
        """When it was sent (read only with a budget or a breaker): its deadline, its breaker bucket."""

    def answered(self, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """The inner backend's ``ExpressAnswer``: tell the breaker, free the slot, or hand the call
        to the general path still holding it (``retry``)."""
        guard = self.guard
        if retry or error is not None:
            if self._failed(error, retry):
                return
        elif guard.breaker is not None:
            guard.breaker.ended(False, False, self.start)  # its bucket: when it was sent, near enough
        gate = guard.gate
        if gate is not None:
            if gate.waiters:
                gate.leave()
            else:
                gate.inflight -= 1  # Gate.leave, inline: nobody waits for the slot
        self.on_answer(answer, error, False)

    def _failed(self, error: BaseException | None, retry: bool) -> bool:
        """An express call ended with nothing answered (``retry``) or with ``error``: True when it
        is handed to the general path, holding its slot (``Guarded.request`` finds it carried)."""
        guard = self.guard
        limit = guard.config.request_timeout or guard.default_timeout
        if retry:  # nothing was answered (a closed kept-alive connection...): sent again, as it is
            guard._carried[self.ticket] = _Carried(0, guard.clock() + limit)
            self.on_answer(None, None, True)
            return True
        bad = failed(error)
        if guard.breaker is not None:
            guard.breaker.ended(False, True if bad else None)
        deadline = self.start + limit
        if guard._may_retry(self.method, self.params, error, bad, 0, deadline):  # type: ignore[arg-type]
            guard._carried[self.ticket] = _Carried(1, deadline)
            self.on_answer(None, None, True)
            return True
        return False
