"""Replicas of one HTTP backend (``urls = [...]``): a ``ReplicaSet`` is itself a
``Backend``, holding one ``HttpBackend`` per URL.

Every part above it (the catalog, the front, the guards of ``guarded``) sees one
backend; the set decides which replica serves each call:

- **least outstanding**: a call goes to the ready replica with the fewest calls
  in flight through the set (ties go round in turn, so a quiet set spreads its
  calls too). The concurrency limit, the breaker and the retries apply to the set
  as a whole: ``create_backend`` puts the guard in front of the set, not of each
  replica.
- **ejection**: a replica that refuses a connection or fails (a transport error,
  an HTTP 5xx; not a timeout, which may be one slow call) is left out for
  ``eject_for`` seconds. When every ready replica is ejected, the least busy
  of them is used anyway (better than refusing everything); when none is
  ready, the call is refused as a down backend is (503, ``backend_down``).
  A replica that cannot be reached also goes DOWN by itself and reconnects in
  the background (``HttpBackend``); it takes calls again once it is ready and
  its ejection is over.
- **failover**: a call that never left the gateway (``faults.never_sent``: the
  connection was refused) or found its replica down is sent to another replica
  at once, each replica tried once; a call that may have reached a replica is
  not (that is the guard's to retry, if the call is safe to repeat).
- **sessions**: the shared upstream session is one per replica (each
  ``HttpBackend`` keeps its own). A per-client upstream session stays on the
  replica that opened it (``session_key`` -> replica); if that replica is no
  longer ready, the session moves to another one, where a new upstream session
  is initialized as after an expiry.
- **the catalog**: the gateway's own list calls go, like any call, to a ready
  replica; the eras and the server's info shown are a ready replica's.
- **server-to-client requests** (sampling, elicitation, ping) arriving on a
  call's stream get an id unique in the set, mapped back when the client's
  answer is sent to the replica that asked (``respond``): each replica numbers
  its own requests, so their ids may collide.

The express lane: ``express_ready`` picks the replica (as above) and asks it;
``express`` sends there. Notifications that belong to no call reach the gateway
from each replica's own stream, as the set's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.backends.base import Backend, BackendCall, BackendState, ExpressAnswer, MessageSink, Ticket
from gateway.backends.faults import failed, never_sent
from gateway.backends.http import HttpBackend
from gateway.errors import BackendUnavailable, GatewayError
from gateway.protocol.jsonrpc import UNSET, Message, Raw

if TYPE_CHECKING:
    from gateway.config import BackendConfig

__all__ = ["Replica", "ReplicaSet"]

_READY = BackendState.READY
_ASKED_MAX = 4096  # server-to-client requests awaiting a client's answer, at most (the oldest are forgotten)


class Replica:
    """One replica of the set: its backend and the set's bookkeeping for it."""

    __slots__ = ("backend", "index", "outstanding", "ejected_until")

    def __init__(self, backend: HttpBackend, index: int) -> None:
        self.backend = backend
        self.index = index
        self.outstanding = 0
        """Calls in flight to it through the set."""
        self.ejected_until = 0.0
        """Clock time its ejection ends; 0: not ejected."""

    def __repr__(self) -> str:
        return f"Replica({self.backend.name!r}, {self.backend.url!r}, outstanding={self.outstanding})"


def _went_down(exc: BaseException) -> bool:
    """A replica refused the call because it is down (found so between the pick and the send)."""
    return isinstance(exc, BackendUnavailable) and exc.reason == "backend_down"


class ReplicaSet(Backend):
    """The replicas of one HTTP backend (see the module docstring)."""

    def __init__(
        self,
        name: str,
        config: BackendConfig,
        *,
        default_timeout: float = 60.0,
        client_info: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = [
            Replica(HttpBackend(f"{name}[{i}]", config, default_timeout=default_timeout, url=url), i)
            for i, url in enumerate(config.url_list)
        ]
        super().__init__(name, config)
        self.clock = clock
        self.log = logging.getLogger(f"gateway.backend.{name}")
        self._turn = 0  # where the next pick starts looking (ties go round)
        self._ejections = 0  # replicas with an ejection set (the clock is read only when some are)
        self._ready: Replica | None = None  # the pick express_ready made, for express
        self._sticky: dict[str, Replica] = {}  # per-client session key -> its replica
        self._placed: dict[Any, Replica] = {}  # ticket -> the replica its call is on (cancel)
        self._asked: dict[int, tuple[Replica, Any]] = {}  # set-wide id -> (replica, its own id)
        self._next_ask = 0
        self._shown = BackendState.STARTING  # the state last told to on_state_change
        self._tasks: set[asyncio.Task[None]] = set()
        for replica in self.replicas:
            replica.backend.on_notification = self._notified
            replica.backend.on_state_change = self._replica_changed

    # -- what the set shows ---------------------------------------------------------------------------

    @property  # type: ignore[override]
    def state(self) -> BackendState:  # type: ignore[override]
        """READY while any replica is; else STARTING while any starts; STOPPED once all are; else DOWN."""
        states = [r.backend.state for r in self.replicas]
        if _READY in states:
            return _READY
        if BackendState.STARTING in states:
            return BackendState.STARTING
        if all(s is BackendState.STOPPED for s in states):
            return BackendState.STOPPED
        return BackendState.DOWN

    @state.setter
    def state(self, value: BackendState) -> None:
        pass  # the replicas' own (Backend.__init__ sets it)

    @property  # type: ignore[override]
    def last_error(self) -> str | None:  # type: ignore[override]
        """Each replica that is not ready, and why."""
        errors = [f"{r.backend.url}: {r.backend.last_error}" for r in self.replicas if r.backend.state is not _READY]
        return "; ".join(errors) or None

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        pass

    def _shown_replica(self) -> HttpBackend:
        """The replica whose eras and server info the set shows: a ready one, else the first."""
        for replica in self.replicas:
            if replica.backend.state is _READY:
                return replica.backend
        return self.replicas[0].backend

    @property  # type: ignore[override]
    def server_info(self) -> dict[str, Any] | None:  # type: ignore[override]
        """A ready replica's ``initialize`` result."""
        return self._shown_replica().server_info

    @server_info.setter
    def server_info(self, value: dict[str, Any] | None) -> None:
        pass

    @property  # type: ignore[override]
    def eras(self) -> frozenset[str]:  # type: ignore[override]
        """The eras a ready replica speaks."""
        return self._shown_replica().eras

    @eras.setter
    def eras(self, value: frozenset[str]) -> None:
        pass

    @property  # type: ignore[override]
    def discover(self) -> dict[str, Any] | None:  # type: ignore[override]
        """A ready replica's ``server/discover`` result."""
        return self._shown_replica().discover

    @discover.setter
    def discover(self, value: dict[str, Any] | None) -> None:
        pass

    def _notified(self, backend: Backend, session_key: str | None, msg: Message) -> None:
        if self.on_notification is not None:
            self.on_notification(self, session_key, msg)

    def _replica_changed(self, backend: Backend) -> None:
        state = self.state
        if state is not self._shown:
            self._shown = state
            if self.on_state_change is not None:
                self.on_state_change(self)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every replica (one that is down is retried in the background, as any backend)."""
        await asyncio.gather(*(r.backend.start() for r in self.replicas))
        self._replica_changed(self)

    async def stop(self) -> None:
        """Stop every replica. Idempotent."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(r.backend.stop() for r in self.replicas), return_exceptions=True)
        self._sticky.clear()
        self._asked.clear()
        self._replica_changed(self)

    # -- picking a replica ------------------------------------------------------------------------------

    def _choose(self, skip: list[Replica] | None = None) -> Replica | None:
        """The ready replica with the fewest calls outstanding, not ejected if any is not, not
        in ``skip``; None when none is ready. Ends the ejections that are over."""
        replicas = self.replicas
        count = len(replicas)
        now = self.clock() if self._ejections else 0.0
        best: Replica | None = None
        ejected: Replica | None = None
        for k in range(count):
            replica = replicas[(self._turn + k) % count]
            if replica.backend.state is not _READY or (skip and replica in skip):
                continue
            if replica.ejected_until:
                if now < replica.ejected_until:
                    if ejected is None or replica.outstanding < ejected.outstanding:
                        ejected = replica
                    continue
                replica.ejected_until = 0.0  # its time is up: back in the balancing
                self._ejections -= 1
                self.log.info("%s: replica %s is back in the balancing", self.name, replica.backend.url)
            if best is None or replica.outstanding < best.outstanding:
                best = replica
        return best if best is not None else ejected

    def _for_session(self, session_key: str, skip: list[Replica]) -> Replica | None:
        """The replica of a per-client session: the one that opened it while it is ready; else a
        new pick, which the session keeps from now on."""
        replica = self._sticky.get(session_key)
        if replica is not None:
            if replica.backend.state is _READY and replica not in skip:
                return replica
            del self._sticky[session_key]  # its replica is gone: the session moves
            self._spawn(self._release_quietly(replica, session_key))
        replica = self._choose(skip)
        if replica is not None:
            self._sticky[session_key] = replica
        return replica

    def _eject(self, replica: Replica, exc: BaseException) -> None:
        """Leave ``replica`` out of the balancing for ``eject_for`` seconds."""
        if not replica.ejected_until:
            self._ejections += 1
            self.log.warning(
                "%s: replica %s ejected for %g s: %s", self.name, replica.backend.url, self.config.eject_for, exc
            )
        replica.ejected_until = self.clock() + self.config.eject_for

    def _ended(self, replica: Replica, ticket: Any, exc: BaseException | None) -> bool:
        """Bookkeeping of a call that ended on ``replica`` (with ``exc``, None: an answer); True
        when it may go to another replica (it never reached this one)."""
        replica.outstanding -= 1
        if ticket is not None and self._placed.get(ticket) is replica:
            del self._placed[ticket]
        if exc is None:
            return False
        if isinstance(exc, BackendUnavailable) and failed(exc):
            self._eject(replica, exc)
        return never_sent(exc) or _went_down(exc)

    def _all_down(self) -> BackendUnavailable:
        return BackendUnavailable(
            f"backend {self.name!r} is down: no replica is ready ({self.last_error})", reason="backend_down"
        )

    # -- calls ------------------------------------------------------------------------------------------

    async def request(self, call: BackendCall) -> Message:
        """Send ``call`` to a replica (its session's, or the least busy), and to another one when it
        never reached the first."""
        per_client = call.session_key is not None and self.config.session == "per-client"
        tried: list[Replica] = []
        ticket = call.ticket
        while True:
            replica = self._for_session(call.session_key, tried) if per_client else self._choose(tried)  # type: ignore[arg-type]
            if replica is None:
                raise self._all_down()
            replica.outstanding += 1
            self._turn = (replica.index + 1) % len(self.replicas)
            if ticket is not None:
                self._placed[ticket] = replica
            sent = call if call.sink is None else call.replace(sink=_Placed(self, replica, call.sink).send)
            try:
                answer = await replica.backend.request(sent)
            except Exception as exc:
                if not self._ended(replica, ticket, exc) or len(tried) + 1 >= len(self.replicas):
                    raise
                tried.append(replica)
                self.log.info("%s: %s never reached %s; sent to another replica", self.name, call, replica.backend.url)
                continue
            self._ended(replica, ticket, None)
            return answer

    def describe(self) -> dict[str, Any]:
        """The set's description, with each replica's URL, state, calls outstanding and whether it
        is ejected now."""
        info = super().describe()
        now = self.clock()
        info["replicas"] = [
            {
                "url": r.backend.url, "state": r.backend.state.value, "outstanding": r.outstanding,
                "ejected": r.ejected_until > now, "last_error": r.backend.last_error,
            }
            for r in self.replicas
        ]
        info["in_flight"] = sum(r.outstanding for r in self.replicas)
        return info

    def express_ready(self) -> bool:
        """Pick the replica (least outstanding, not ejected) and ask whether it can take the fast send."""
        replica = self._choose()
        if replica is None or not replica.backend.express_ready():
            return False
        self._ready = replica
        return True

    def express(self, method: str, params: Raw, ticket: Ticket, sink: MessageSink, on_answer: ExpressAnswer) -> None:
        """Send by the fast path of the replica ``express_ready`` picked."""
        replica = self._ready
        assert replica is not None
        replica.outstanding += 1
        self._turn = (replica.index + 1) % len(self.replicas)
        self._placed[ticket] = replica
        placed = _Placed(self, replica, sink, ticket, on_answer)
        replica.backend.express(method, params, ticket, placed.send, placed.answered)

    def cancel(self, ticket: Ticket, reason: str = "cancelled by the client") -> None:
        """Cancel on the replica the call is on."""
        replica = self._placed.get(ticket)
        if replica is not None:
            replica.backend.cancel(ticket, reason)

    async def notify(self, method: str, params: Raw | Any = UNSET, *, session_key: str | None = None) -> None:
        """To a per-client session's replica; a shared-session notification to every ready replica."""
        if session_key is not None and self.config.session == "per-client":
            replica = self._sticky.get(session_key) or self._for_session(session_key, [])
            if replica is None:
                raise self._all_down()
            await replica.backend.notify(method, params, session_key=session_key)
            return
        ready = [r for r in self.replicas if r.backend.state is _READY]
        if not ready:
            raise self._all_down()
        outcomes = await asyncio.gather(*(r.backend.notify(method, params) for r in ready), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if len(errors) == len(ready):
            raise errors[0]

    async def respond(
        self, upstream_id: Any, result: Raw | None = None, error: Raw | None = None, *, session_key: str | None = None
    ) -> None:
        """Answer a server-to-client request on the replica that asked, with its own id."""
        entry = self._asked.pop(upstream_id, None) if isinstance(upstream_id, int) else None
        if entry is None:
            replica = self._sticky.get(session_key) if session_key is not None else None
            if replica is None:
                self.log.warning("%s: an answer to request %r that no replica asked: dropped", self.name, upstream_id)
                return
            entry = (replica, upstream_id)
        replica, own_id = entry
        await replica.backend.respond(own_id, result, error, session_key=session_key)

    async def release(self, session_key: str) -> None:
        """End the per-client upstream session of ``session_key`` on its replica."""
        replica = self._sticky.pop(session_key, None)
        if replica is not None:
            await replica.backend.release(session_key)

    def asked(self, replica: Replica, msg: Message) -> Message:
        """A server-to-client request from ``replica``, with an id unique in the set (``respond``
        maps it back)."""
        self._next_ask += 1
        asked = self._asked
        asked[self._next_ask] = (replica, msg.id)
        if len(asked) > _ASKED_MAX:
            del asked[next(iter(asked))]
        return msgspec.structs.replace(msg, id=self._next_ask)

    async def _release_quietly(self, replica: Replica, session_key: str) -> None:
        with contextlib.suppress(GatewayError, OSError):
            await replica.backend.release(session_key)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Placed:
    """One call on one replica: its sink gives server-to-client requests set-wide ids; for an
    express call, its answer does the set's bookkeeping first (and a call that never reached
    the replica is handed to the general path, which picks another)."""

    __slots__ = ("owner", "replica", "sink", "ticket", "on_answer")

    def __init__(
        self,
        owner: ReplicaSet,
        replica: Replica,
        sink: MessageSink,
        ticket: Any = None,
        on_answer: ExpressAnswer | None = None,
    ) -> None:
        self.owner = owner
        self.replica = replica
        self.sink = sink
        self.ticket = ticket
        self.on_answer = on_answer

    def send(self, msg: Message) -> None:
        """The replica's sink."""
        if msg.id is not UNSET and msg.method is not UNSET:
            msg = self.owner.asked(self.replica, msg)
        self.sink(msg)

    def answered(self, answer: Message | None, error: BaseException | None, retry: bool) -> None:
        """The replica's ``ExpressAnswer``."""
        if error is None:  # ReplicaSet._ended, inline: every express call's answer
            replica = self.replica
            replica.outstanding -= 1
            placed = self.owner._placed
            if placed.get(self.ticket) is replica:
                del placed[self.ticket]
        elif self.owner._ended(self.replica, self.ticket, error):
            error, retry = None, True  # it never reached that replica: the general path sends it elsewhere
        self.on_answer(answer, error, retry)  # type: ignore[misc]
