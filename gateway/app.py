"""The gateway as one object: backends, catalog, sessions and the MCP front,
wired together and started and stopped in the right order.

``Gateway`` is the ``App`` the HTTP server calls (``await gateway(request, reply)``).
Backend events flow upward through it: a backend's ``list_changed`` or a change
of its state refreshes that backend's part of the catalog, and a changed
aggregate is announced to clients on their GET streams.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
import logging
import os

from gateway.backends import Backend, BackendState, create_backend
from gateway._fast import prefix_uri
from gateway.config import BackendConfig, Config
from gateway.catalog.aggregate import CHANGE_NOTIFICATIONS, Catalog
from gateway.front.endpoint import McpFront
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, encode
from gateway.front.sessions import RequestContext, Session, SessionStore
from gateway.policy.admission import Admission
from gateway.policy.chain import Chain, build_admission, policy_named
from gateway.server.api import Reply, Request
from gateway.ops.killswitch import KillSwitch
from gateway.ops.reload import BackendPlan, ReloadRefused, plan_reload
from gateway.ops.tracing import tracer_for
from gateway.ops.observe import write_access
from gateway.ops.telemetry import Telemetry

if TYPE_CHECKING:
    from gateway.policy.auth import Authenticator

__all__ = ["Gateway"]

log = logging.getLogger("gateway")

# Aggregate list method -> the notification clients get when it changes.
_CHANGED_NOTIFICATION = {
    "tools/list": "notifications/tools/list_changed",
    "prompts/list": "notifications/prompts/list_changed",
    "resources/list": "notifications/resources/list_changed",
    "resources/templates/list": "notifications/resources/list_changed",
}


def _authenticator_for(config: Config) -> Authenticator | None:
    """The authenticator ``config`` asks for (``[auth]``, or mutual TLS alone), or None; a
    ``ConfigError`` when a file it names cannot be used."""
    mtls = config.server.tls_client_ca_file is not None
    if config.auth is None and not mtls:
        return None
    from gateway.policy.auth import Authenticator  # the JWT stack, only when it is used (memory)

    return Authenticator(config.auth, mtls=mtls, path=config.server.path)


def _give_config(backend: Backend, config: BackendConfig) -> None:
    """A kept backend's new config (it changed in ``SOFT_FIELDS`` only): on the backend and on
    what it wraps (guards, replicas), which read it for names and shaping."""
    backend.config = config
    inner = getattr(backend, "inner", None)
    if inner is not None:
        _give_config(inner, config)
    for replica in getattr(backend, "replicas", ()):
        replica.backend.config = config


def _observed(admission: Admission | None, observer: Admission | None) -> Admission | None:
    """``admission`` with ``observer`` first (it must see every request, refused ones too)."""
    if observer is None:
        return admission
    if admission is None:
        return observer
    inner = admission.admissions if isinstance(admission, Chain) else [admission]
    return Chain([observer, *inner])


def _worker_secret() -> bytes | None:
    """The session-signing key shared by ``--workers`` processes (set by the parent), if any."""
    value = os.environ.get("MCP_GATEWAY_SESSION_SECRET")
    return value.encode() if value else None


def _trace_id(ctx: RequestContext) -> str | None:
    """The trace id of a request's context (tracing, ``[tracing]``), or None."""
    trace = ctx.trace
    return trace.trace_id if trace is not None else None


class Gateway:
    """Everything behind the listener, built from one ``Config``."""

    def __init__(self, config: Config, admission: Admission | None = None) -> None:
        """``admission``: the admission chain every routed request passes (default: the one
        ``config`` asks for, ``gateway.policy.chain.build_admission``; none: admit all)."""
        self.config = config
        # Metrics, audit and access log: they outlive config snapshots, like the kill switch.
        self.telemetry = Telemetry(config, cache_stats=self._cache_stats, trace_of=_trace_id)
        if admission is None:
            admission = _observed(build_admission(config), self.telemetry.observer())
        timeout = config.gateway.request_timeout
        self.backends: dict[str, Backend] = {
            name: create_backend(name, bc, default_timeout=timeout)
            for name, bc in config.backends.items()
            if bc.enabled
        }
        self.sessions = SessionStore(
            config.server.session_idle_timeout, on_end=self._session_ended, secret=_worker_secret()
        )
        self.catalog = Catalog(
            self.backends,
            separator=config.gateway.separator,
            passthrough=config.gateway.passthrough,
            page_size=config.gateway.page_size,
            list_timeout=config.gateway.list_timeout,
            on_change=self._catalog_changed,
        )
        # Authentication ([auth], or mutual TLS alone): None when neither is configured.
        self.authenticator = _authenticator_for(config)
        # The kill switch outlives config snapshots: a reload applies the same one again.
        self.kill_switch = KillSwitch()
        self.kill_switch.on_change.append(
            lambda action, kind, value: self.telemetry.admin_event("kill_switch", change=action, kind=kind, name=value)
        )
        self.draining = False
        """True from SIGTERM on: readiness answers 503 while calls in flight finish."""
        self.front = McpFront(config, self.catalog, self.sessions, admission, self.authenticator)
        self.front.on_backend_notification = self._backend_notification
        # [tracing]: trace context and a span per traced request (None: off, one check per request).
        self.tracer = tracer_for(config.tracing)
        self.front.use_tracer(self.tracer)
        self.front.on_auth_failure = self.telemetry.auth_failed
        self.front.on_access = write_access if self.telemetry.access else None
        self.telemetry.watch(lambda: len(self.sessions), self._backend_rows)
        # The HTTP protocol offers each request here first (see gateway.front.express).
        self.express = self.front.express
        self._tasks: set[asyncio.Task[None]] = set()
        self._retired: set[Backend] = set()  # backends a reload removed, still draining
        self._started = False
        for backend in self.backends.values():
            self._adopt(backend)

    @property
    def metrics(self) -> Any:
        """The ``Metrics`` that ``/metrics`` renders (``[metrics]``), or None."""
        return self.telemetry.metrics

    def _cache_stats(self) -> dict[str, int] | None:
        """The running cache's counters (the metrics read them at scrape time), or None."""
        cache = policy_named(self.front.admission, "CacheAdmission")
        return cache.stats() if cache is not None else None

    def _backend_rows(self) -> list[tuple[str, bool, Any, Any, Any]]:
        """One row per backend for the metrics: up, breaker state and trips, stdio restarts."""
        rows = []
        for name, backend in self.backends.items():
            info = backend.describe()
            breaker = info.get("breaker") or {}
            rows.append((name, backend.state is BackendState.READY, breaker.get("state"), breaker.get("opened"),
                         info.get("restarts")))
        return rows

    def _adopt(self, backend: Backend) -> None:
        backend.on_notification = self._backend_notification
        backend.on_state_change = self._backend_state_changed

    async def __call__(self, request: Request, reply: Reply) -> None:
        """The ``App`` contract: hand the request to the MCP front."""
        await self.front(request, reply)

    async def start(self) -> None:
        """Start every backend (a failing one does not stop the others), then build the catalog."""
        self.telemetry.start()  # first: an audit log that cannot be opened stops the start
        if self.tracer is not None:
            self.tracer.start()  # the span export task
        if self.authenticator is not None:
            self.authenticator.start()  # the first JWKS fetches, in the background
        await asyncio.gather(*(b.start() for b in self.backends.values()))
        self._started = True
        await self.catalog.refresh()
        self.apply_kill_switch()
        self.sessions.start_sweeper()
        for backend in self.backends.values():
            if backend.state is not BackendState.READY:
                log.warning("backend %r is %s: %s", backend.name, backend.state.value, backend.last_error)

    async def stop(self) -> None:
        """End sessions, stop background work and every backend."""
        self._started = False
        await self.sessions.close()
        if self._tasks:
            # Ending the sessions released their per-client upstream sessions: let that finish
            # (briefly) before the rest of the background work is cancelled.
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(b.stop() for b in self.backends.values()), return_exceptions=True)
        if self.authenticator is not None:
            await self.authenticator.stop()
        await self.telemetry.close()  # last: the records of everything above are written
        if self.tracer is not None:
            await self.tracer.close()  # the spans still queued are exported

    def apply_kill_switch(self) -> None:
        """Make the kill switch's state effective now (lists, routing, the header gate)."""
        self.kill_switch.apply(self.catalog, self.front.gate)

    async def reload(self, config: Config) -> BackendPlan:
        """Serve ``config`` from now on (``gateway.ops.reload``): ``ReloadRefused`` or
        ``ConfigError`` (nothing changed then, the running config keeps serving), else what was
        done to the backends. Kept backends keep their connections and sessions; new and
        restarted ones are started *before* the swap, so no call meets one that is starting;
        retired ones are drained (calls in flight get ``[server] shutdown_timeout``) and stopped."""
        plan = plan_reload(self.config, config)
        try:
            admission = build_admission(config, previous=self.front.admission)
        except ValueError as exc:
            raise ReloadRefused(str(exc)) from None
        await self.telemetry.reconfigure(config)
        admission = _observed(admission, self.telemetry.observer())
        authenticator = _authenticator_for(config) if config.auth != self.config.auth else self.authenticator
        tracer = tracer_for(config.tracing) if config.tracing != self.config.tracing else self.tracer
        timeout = config.gateway.request_timeout
        fresh = {name: create_backend(name, config.backends[name], default_timeout=timeout) for name in plan.restart + plan.start}
        for backend in fresh.values():
            self._adopt(backend)
        await asyncio.gather(*(b.start() for b in fresh.values()))
        retired = [self.backends[name] for name in plan.restart + plan.stop]
        for name in plan.keep:
            _give_config(self.backends[name], config.backends[name])
        for name in plan.stop:
            del self.backends[name]
        self.backends.update(fresh)  # the same dict: every holder of it sees the new set
        old_authenticator = self.authenticator
        self.config = config
        self.authenticator = authenticator
        self.catalog.replace_backends(self.backends)
        self.telemetry.cache_replaced()  # with the swap (no await between): no hit counted twice or lost
        self.front.reconfigure(config, admission, authenticator)
        self.front.on_access = write_access if self.telemetry.access else None
        if tracer is not self.tracer:  # [tracing] changed: the new tracer from the next request on
            old_tracer, self.tracer = self.tracer, tracer
            self.front.use_tracer(tracer)
            if tracer is not None:
                tracer.start()
            if old_tracer is not None:
                self._spawn(old_tracer.close())
        self.apply_kill_switch()
        if authenticator is not old_authenticator:
            if authenticator is not None:
                authenticator.start()
            if old_authenticator is not None:
                self._spawn(old_authenticator.stop())
        if fresh or plan.keep:
            self._spawn(self.catalog.refresh(list(fresh) + list(plan.keep)))
        for backend in retired:
            self._spawn(self._retire(backend, config.server.shutdown_timeout))
        log.info("config reloaded: %d backends kept, %d restarted, %d started, %d stopped",
                 len(plan.keep), len(plan.restart), len(plan.start), len(plan.stop))
        self.telemetry.admin_event("reload", keep=plan.keep, restart=plan.restart, start=plan.start, stop=plan.stop)
        return plan

    async def _retire(self, backend: Backend, grace: float) -> None:
        """A backend a reload removed or replaced: no new call reaches it (it left the routing
        table); the calls in flight on it get ``grace`` seconds, then it is stopped."""
        self._retired.add(backend)
        try:
            await asyncio.sleep(grace)
        finally:  # also when the gateway stops first: it stops what it retired
            self._retired.discard(backend)
            await backend.stop()

    def status(self) -> list[tuple[str, str, str | None]]:
        """``(name, state, last_error)`` per backend, for the CLI and logs."""
        return [(b.name, b.state.value, b.last_error) for b in self.backends.values()]

    # -- events from backends ----------------------------------------------------------------

    def _backend_notification(self, backend: Backend, session_key: str | None, msg: Message) -> None:
        if self.backends.get(backend.name) is not backend:
            return  # retired by a reload: what it says no longer concerns the catalog
        methods = CHANGE_NOTIFICATIONS.get(msg.method)  # type: ignore[arg-type]
        if methods is not None:
            # What was learnt from it (cached results) is dropped now, not when the new lists are in.
            self.catalog.backend_changed(backend.name)
            self._spawn(self.catalog.refresh([backend.name], methods))
        elif msg.method == "notifications/resources/updated" and msg.params is not UNSET:
            self._resource_updated(backend, msg.params)

    def _resource_updated(self, backend: Backend, params: Raw) -> None:
        """Map the backend's URI to the one clients see, then tell the subscribers."""
        decoded = decode_any(params)
        uri = decoded.get("uri") if isinstance(decoded, dict) else None
        if not isinstance(uri, str):
            return
        if not self.config.gateway.passthrough:
            uri = prefix_uri(backend.config.namespace or backend.name, uri)
            decoded["uri"] = uri
        self.front.resource_updated(uri, Raw(encode(decoded)))

    def _backend_state_changed(self, backend: Backend) -> None:
        if self.backends.get(backend.name) is not backend:
            return  # retired by a reload (it is being stopped)
        log.info("backend %r is now %s%s", backend.name, backend.state.value,
                 f" ({backend.last_error})" if backend.last_error else "")
        if self._started:
            self._spawn(self.catalog.refresh([backend.name]))

    def _catalog_changed(self, methods: set[str]) -> None:
        for method in sorted({_CHANGED_NOTIFICATION[m] for m in methods}):
            self.front.broadcast(encode(Message(method=method)), method)

    def _session_ended(self, session: Session) -> None:
        for backend in self.backends.values():
            if backend.config.session == "per-client":
                self._spawn(backend.release(session.id))

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        """Run slow-path work in the background, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coro) -> None:  # type: ignore[no-untyped-def]
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed")
