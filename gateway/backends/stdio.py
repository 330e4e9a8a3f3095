"""A backend that is a child process speaking newline-delimited JSON-RPC on stdio.

Many clients share one process (``shared``), so JSON-RPC ids are remapped to
ids unique within the process and mapped back by the front. The process's
stderr goes to the log under the backend's name. When the process dies,
requests in flight fail with ``BackendUnavailable`` at once, and it is
restarted with exponential backoff; until it is up again, requests fail fast
rather than queue. ``per-client`` backends run one process per front session.

Shutdown is polite, then firm: close stdin, wait, SIGTERM, wait, SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import msgspec

from gateway.backends.base import Backend, BackendCall, BackendState, MessageSink, RequestCancelled, Ticket
from gateway.config import BackendConfig, stdio_problem
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.protocol.initialize import initialize_params
from gateway.protocol.jsonrpc import UNSET, Message, Raw, decode_any, encode
from gateway.timers import Deadlines

__all__ = ["StdioBackend"]

_LINE_LIMIT = 16 * 1024 * 1024
_STDERR_LINE_MAX = 4096
_STABLE_AFTER = 30.0  # a process up this long resets the restart backoff
_decode = msgspec.json.Decoder(Message).decode
_INITIALIZED = encode(Message(method="notifications/initialized")) + b"\n"


def _time_out(future: asyncio.Future[Message]) -> None:
    """Deadline callback: the process did not answer in time."""
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


class _Pending:
    __slots__ = ("future", "sink", "token")

    def __init__(self, future: asyncio.Future[Message], sink: MessageSink | None, token: Any) -> None:
        self.future = future
        self.sink = sink
        self.token = token


class _Process:
    """One running child and its JSON-RPC traffic."""

    def __init__(self, backend: StdioBackend, key: str | None) -> None:
        self.backend = backend
        self.key = key
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, _Pending] = {}
        self.next_id = 0
        self.ready = False
        self.tasks: list[asyncio.Task[None]] = []
        self.started_at = 0.0
        self.log = backend.log
        self.deadlines = Deadlines()  # request timeouts on one tick, not a timer and a task per request

    async def spawn(self) -> None:
        """Start the process; BackendUnavailable naming the command or cwd when it cannot start."""
        cfg = self.backend.config
        env = {**os.environ, **cfg.env}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                cfg.command,  # type: ignore[arg-type]
                *cfg.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cfg.cwd,
                limit=_LINE_LIMIT,
                start_new_session=True,  # a Ctrl-C on the gateway's terminal is the gateway's to handle
            )
        except (OSError, ValueError) as exc:
            problem = stdio_problem(cfg)
            why = problem[1] if problem is not None else f"cannot start {cfg.command!r}: {exc}"
            raise BackendUnavailable(why, reason="backend_down") from None
        self.started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._read_stdout()), loop.create_task(self._read_stderr())]

    async def initialize(self, timeout: float, capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
        """``capabilities``: the client's, for a per-client process (None: the gateway's)."""
        answer = await self.request("initialize", initialize_params(capabilities), None, timeout, ready_required=False)
        if answer.result is UNSET:
            raise BackendUnavailable(f"backend {self.backend.name!r} refused initialize", reason="initialize_failed")
        await self.write(_INITIALIZED)
        self.ready = True
        result = decode_any(answer.result)
        return result if isinstance(result, dict) else {}

    async def write(self, line: bytes) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            raise BackendUnavailable(f"backend {self.backend.name!r} is not running", reason="backend_down")
        proc.stdin.write(line)
        try:
            await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            raise BackendUnavailable(f"backend {self.backend.name!r} closed its stdin", reason="backend_down") from None

    async def request(
        self,
        method: str,
        params: Any,
        sink: MessageSink | None,
        timeout: float,
        *,
        ready_required: bool = True,
        ticket: Ticket | None = None,
    ) -> Message:
        if ready_required and not self.ready:
            raise BackendUnavailable(
                f"backend {self.backend.name!r} is {self.backend.state.value}; retry shortly", reason="backend_down"
            )
        self.next_id += 1
        upstream_id = self.next_id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[upstream_id] = _Pending(future, sink, _progress_token(params))
        if ticket is not None:
            ticket.upstream_id = upstream_id
            ticket.handle = self
        try:
            await self.write(encode(Message(id=upstream_id, method=method, params=params)) + b"\n")
            self.deadlines.add(future, timeout, _time_out, future)
            return await future
        except asyncio.TimeoutError:
            self._cancel_upstream(upstream_id, "timeout")
            raise BackendTimeout(
                f"backend {self.backend.name!r} did not answer {method} within {timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            self._cancel_upstream(upstream_id, "client cancelled")
            raise
        finally:
            self.deadlines.discard(future)
            self.pending.pop(upstream_id, None)

    def _cancel_upstream(self, upstream_id: int, reason: str) -> None:
        if upstream_id in self.pending and self.proc is not None and self.proc.returncode is None:
            note = encode(Message(method="notifications/cancelled", params=Raw(encode({"requestId": upstream_id, "reason": reason}))))
            asyncio.get_running_loop().create_task(self._write_quietly(note + b"\n"))

    async def _write_quietly(self, line: bytes) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self.write(line)

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # a line over the limit: the stream is no longer usable
                    self.log.warning("%s: stdout line over %d bytes; dropping the process", self.backend.name, _LINE_LIMIT)
                    break
                if not line:
                    break
                if line.strip():
                    self._on_line(line)
        finally:
            await self._died()

    def _on_line(self, line: bytes) -> None:
        try:
            msg = _decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.log.warning("%s: not JSON-RPC on stdout: %.200r", self.backend.name, line)
            return
        if msg.method is UNSET:  # a response
            pending = self.pending.get(msg.id) if isinstance(msg.id, int) else None
            if pending is None:
                self.log.warning("%s: response with unknown id %r dropped", self.backend.name, msg.id)
            elif not pending.future.done():
                pending.future.set_result(msg)
            return
        if msg.id is not UNSET:
            self._server_request(msg)
            return
        if msg.method == "notifications/progress":
            sink = self._sink_for_progress(msg)
            if sink is not None:
                sink(msg)
                return
        on_note = self.backend.on_notification
        if on_note is not None:
            on_note(self.backend, self.key, msg)

    def _sink_for_progress(self, msg: Message) -> MessageSink | None:
        if msg.params is UNSET:
            return None
        try:
            token = decode_any(msg.params).get("progressToken")
        except (msgspec.DecodeError, AttributeError):
            return None
        for pending in self.pending.values():
            if pending.token is not None and pending.token == token:
                return pending.sink
        return None

    def _server_request(self, msg: Message) -> None:
        """A request from the server: what the gateway answers itself (``Backend.local_answer``:
        ping, configured roots) is answered here; others go to the sole caller, if any, or are refused."""
        result = self.backend.local_answer(msg)
        if result is not None:
            line = encode(Message(id=msg.id, result=result)) + b"\n"
        else:
            sinks = [p.sink for p in self.pending.values() if p.sink is not None]
            if len(sinks) == 1:
                sinks[0](msg)
                return
            if msg.method == "roots/list":
                self.log.info(
                    "%s: roots/list refused (no client request to relay it to); set 'roots' on the backend to answer it",
                    self.backend.name,
                )
            error = {"code": -32601, "message": f"{msg.method} is not available through the gateway here"}
            line = encode(Message(id=msg.id, error=Raw(encode(error)))) + b"\n"
        asyncio.get_running_loop().create_task(self._write_quietly(line))

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        stderr = self.proc.stderr
        while True:
            try:
                line = await stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self.log.info("%s: %s", self.backend.name, text[:_STDERR_LINE_MAX])

    async def _died(self) -> None:
        self.ready = False
        proc = self.proc
        rc = None
        if proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                rc = await asyncio.wait_for(proc.wait(), 2.0)
        error = BackendUnavailable(
            f"backend {self.backend.name!r} exited with code {rc}; restarting", reason="backend_exited"
        )
        for pending in list(self.pending.values()):
            if not pending.future.done():
                pending.future.set_exception(error)
        self.pending.clear()
        self.backend._process_died(self, rc)

    async def stop(self) -> None:
        self.ready = False
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
            for action in (None, proc.terminate, proc.kill):
                if action is not None:
                    with contextlib.suppress(ProcessLookupError):
                        action()
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                    break
                except asyncio.TimeoutError:
                    continue
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        if proc is not None:
            # Let the subprocess transport see the exit before the loop moves on.
            with contextlib.suppress(Exception):
                await proc.wait()


def _progress_token(params: Any) -> Any:
    """The request's ``_meta.progressToken``, if the params carry one (cheap check first)."""
    if params is UNSET or b"progressToken" not in bytes(params):
        return None
    try:
        meta = decode_any(params).get("_meta") or {}
        return meta.get("progressToken")
    except (msgspec.DecodeError, AttributeError):
        return None


class StdioBackend(Backend):
    """A stdio MCP server run as a child process (restarted when it dies)."""

    def __init__(
        self, name: str, config: BackendConfig, *, default_timeout: float = 60.0, client_info: dict[str, Any] | None = None
    ) -> None:
        super().__init__(name, config)
        self.default_timeout = default_timeout
        self.log = logging.getLogger(f"gateway.backend.{name}")
        self._shared: _Process | None = None
        self._per_client: dict[str, _Process] = {}
        self._stopping = False
        self._delay = config.restart_initial_delay
        self._restart_task: asyncio.Task[None] | None = None
        self.restarts = 0
        """Times the shared process was started again after it died or failed to start."""
        self._spawn_locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        """Spawn and initialize the shared process; on failure, DOWN and retried later."""
        self._stopping = False
        await self._start_shared()

    async def _start_shared(self) -> None:
        process = _Process(self, None)
        self._shared = process
        try:
            await process.spawn()
            self.server_info = await process.initialize(self.config.connect_timeout)
        except (OSError, BackendUnavailable, BackendTimeout) as exc:
            self.log.warning("%s: start failed: %s", self.name, exc)
            self._set_state(BackendState.DOWN, f"start failed: {exc}")
            await process.stop()
            self._schedule_restart()
            return
        self._set_state(BackendState.READY)

    def _process_died(self, process: _Process, rc: int | None) -> None:
        if self._stopping:
            return
        if process.key is not None:
            if self._per_client.get(process.key) is process:
                del self._per_client[process.key]
            return
        if process is not self._shared or not process.started_at:
            return
        if time.monotonic() - process.started_at > _STABLE_AFTER:
            self._delay = self.config.restart_initial_delay
        self.log.warning("%s: process exited with code %s", self.name, rc)
        self._set_state(BackendState.DOWN, f"exited with code {rc}")
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self._stopping or (self._restart_task is not None and not self._restart_task.done()):
            return
        self._restart_task = asyncio.get_running_loop().create_task(self._restart_later())

    async def _restart_later(self) -> None:
        delay = self._delay
        self._delay = min(self._delay * 2, self.config.restart_max_delay)
        await asyncio.sleep(delay)
        if self._stopping:
            return
        old = self._shared
        if old is not None:
            await old.stop()
        self._restart_task = None
        self.restarts += 1
        self.log.info("%s: restarting (after %.1f s)", self.name, delay)
        await self._start_shared()

    def describe(self) -> dict[str, Any]:
        """The base description, with how often the process was restarted (``restarts``)."""
        return {**super().describe(), "restarts": self.restarts}

    async def stop(self) -> None:
        """Stop every process (stdin closed, then SIGTERM, then SIGKILL). Idempotent."""
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
            self._restart_task = None
        processes = [p for p in [self._shared, *self._per_client.values()] if p is not None]
        self._per_client.clear()
        await asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)
        self._set_state(BackendState.STOPPED)

    async def _process_for(self, session_key: str | None, capabilities: dict[str, Any] | None = None) -> _Process:
        if session_key is None or self.config.session != "per-client":
            if self._shared is None:
                raise BackendUnavailable(f"backend {self.name!r} is not started", reason="backend_down")
            return self._shared
        process = self._per_client.get(session_key)
        if process is not None:
            return process
        lock = self._spawn_locks.setdefault(session_key, asyncio.Lock())
        async with lock:
            process = self._per_client.get(session_key)
            if process is None:
                process = _Process(self, session_key)
                if capabilities is not None and self.config.roots is not None:
                    # The gateway answers roots/list itself: tell the server it may ask.
                    capabilities = {**capabilities, "roots": {}}
                try:
                    await process.spawn()
                except BackendUnavailable as exc:
                    raise BackendUnavailable(f"backend {self.name!r} could not start: {exc}", reason="backend_down") from None
                try:
                    await process.initialize(self.config.connect_timeout, capabilities)
                except (OSError, BackendTimeout) as exc:
                    await process.stop()
                    raise BackendUnavailable(f"backend {self.name!r} could not start: {exc}", reason="backend_down") from None
                self._per_client[session_key] = process
        return process

    async def request(self, call: BackendCall) -> Message:
        """Send a request to the process and wait for its response (handshake era over stdio:
        ``call.era`` and ``call.headers`` do not apply)."""
        process = await self._process_for(call.session_key, call.capabilities)
        timeout = call.timeout
        limit = timeout if timeout is not None else (self.config.request_timeout or self.default_timeout)
        return await process.request(call.method, call.params, call.sink, limit, ticket=call.ticket)

    def cancel(self, ticket: Ticket, reason: str = "cancelled by the client") -> None:
        """Send ``notifications/cancelled`` and stop waiting for the answer."""
        process = ticket.handle
        if process is None:
            return
        process._cancel_upstream(ticket.upstream_id, reason)
        pending = process.pending.get(ticket.upstream_id)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(RequestCancelled(reason))

    async def notify(self, method: str, params: Raw | Any = UNSET, *, session_key: str | None = None) -> None:
        """Send a notification line."""
        process = await self._process_for(session_key)
        await process.write(encode(Message(method=method, params=params)) + b"\n")

    async def respond(
        self, upstream_id: Any, result: Raw | None = None, error: Raw | None = None, *, session_key: str | None = None
    ) -> None:
        """Answer a request the server sent (sampling, elicitation, roots)."""
        process = await self._process_for(session_key)
        msg = Message(id=upstream_id, result=result) if result is not None else Message(id=upstream_id, error=error)  # type: ignore[arg-type]
        await process.write(encode(msg) + b"\n")

    async def release(self, session_key: str) -> None:
        """Stop the per-client process of ``session_key``."""
        self._spawn_locks.pop(session_key, None)
        process = self._per_client.pop(session_key, None)
        if process is not None:
            await process.stop()
