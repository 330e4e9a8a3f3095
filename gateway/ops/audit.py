"""The tamper-evident audit log (``[audit]``): one JSON object per line, each chained to the one before.

Writing
-------
``AuditLog.submit(record)`` is what the request path calls: synchronous, never raises, never
awaits, and costs a dict insert and a deque append (``ts`` is added when the record has none).
A writer task takes everything queued at once and serialises, chains and appends it with one
``write`` (two when a rotation falls inside the batch). When the queue holds ``queue_size``
records, ``on_full = "drop"`` refuses the record (counted in ``dropped``; the log itself gets a
``{"event": "dropped", "count": N}`` record where they went missing) and ``"block"`` writes the
queue inline, synchronously, in the caller (counted in ``blocked``): nothing is lost, and the
caller, with the event loop, waits for the disk. ``close()`` writes what is queued and a close
record; a record submitted after it is written at once, followed by another close record.

One ``AuditLog`` writes one file: the file is locked (``flock``) while open, so a second
writer (another worker process given the same ``path``) is refused at ``start()``.

Records
-------
Each line is a JSON object (UTF-8, no spaces) with, besides the submitted fields:

- ``seq``: 1, 2, 3, ... in the order written, over every run and every rotated file (the writer
  numbers records, so its own ``start``/``rotate``/``dropped``/``close`` records take their
  place without gaps);
- ``prev``: the ``hash`` of the record before (64 zeros for the first record ever);
- ``ts``: Unix time in seconds (when submitted);
- ``hash``: lowercase hex of HMAC-SHA256(``key``, BODY) when ``[audit] key`` is set (its UTF-8
  bytes), SHA-256(BODY) without one.

BODY, the bytes hashed, is the record without ``hash`` serialised as compact JSON with the
keys of every object sorted: ``orjson.dumps(record_without_hash, option=OPT_SORT_KEYS)``. The
line is BODY with ``,"hash":"..."`` inserted before its final ``}``, so the writer serialises
each record once; a verifier parses the line, removes ``hash`` and serialises it again the same
way (``canonical``). ``seq``, ``prev`` and ``hash`` are the log's own: a submitted ``hash`` is
discarded, ``seq`` and ``prev`` are overwritten. A value JSON cannot hold is written as its
``str()``.

The writer's own records: ``{"event": "start", "pid": ..., "previous": P}`` first in each run,
where P is ``"none"`` (a new chain), ``"close"`` (the last run closed cleanly) or ``"unclean"``
(it did not: it crashed or was killed, or its last records were removed; ``discarded_bytes``
says a torn last line was cut off); ``{"event": "rotate"}`` last in a rotated file;
``{"event": "dropped", "count": N}`` and ``{"event": "lost", "count": N, "error": ...}`` (a
write failed: disk full, I/O error); ``{"event": "close", "dropped": ..., "blocked": ...,
"lost": ...}`` last in each run.

Arguments: a record's ``arguments`` (a dict, or the raw JSON bytes of one) is shaped by
``[audit] arguments``: ``"digest"`` replaces it by ``arguments_sha256``, the SHA-256 of its
canonical JSON (sorted keys, compact) after redaction, so a redacted secret never influences
the log; ``"full"`` keeps it with the values of ``redact`` fields, at any depth, replaced by
``"***"``. This happens in the writer, off the request path: a submitted record's values must
not be changed after ``submit``.

Files
-----
``path = "-"`` writes to stdout (no rotation, no fsync, a new chain each run). Otherwise the
file is opened for appending (mode 0600) and, when it has records, the chain continues from its
last record's ``seq`` and ``hash`` (from ``PATH.1``'s last record when ``PATH`` is empty); a torn
last line (a crash in the middle of a write) is cut off first. With ``max_bytes``, a file that
reaches it gets a rotate record and becomes ``PATH.1``; older ones shift to ``PATH.2``,
``PATH.3``... and every one is kept (an audit log does not delete itself: archiving old files
is the operator's). A file can pass ``max_bytes`` by one record and the rotate record.

``fsync``: ``"every"`` after each batch (in a thread; records submitted meanwhile make the next
batch: group commit), ``"interval"`` at most every ``fsync_interval`` seconds and no later than
that after a write, ``"never"`` (the OS decides). A rotation and ``close()`` fsync too, unless
``"never"``.

Verifying
---------
``verify([PATH])`` reads ``PATH.N ... PATH.1, PATH`` in chain order and reports the first
problem with its file, line and ``seq``: ``edited`` (a hash that does not match the line, or a
``prev`` that does not match the record before), ``deleted`` (a gap in ``seq``), ``reordered``
(``seq`` out of order), ``truncated`` (a partial last line, or no close record at the end: the
gateway may still be writing), ``wrong key`` (the first records all fail while linking up),
``malformed`` (a line that is not an audit record) or ``unreadable``. A chain cannot show that
records were cut off its end and the gateway then restarted: the ``start`` record's
``previous = "unclean"`` marks every run that began after a log that did not end with a close
record.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

if TYPE_CHECKING:
    from gateway.config import AuditConfig

__all__ = ["GENESIS", "AuditError", "AuditLog", "VerifyResult", "canonical", "chain_files", "chain_hash", "verify"]

log = logging.getLogger("gateway.audit")

GENESIS = "0" * 64
"""The ``prev`` of the first record of a chain."""

_SORT = orjson.OPT_SORT_KEYS
_WARN_EVERY = 1.0  # seconds between two warnings of the same kind (a full queue, a failing disk)
_LINGER = 0.05  # seconds the writer lets a batch gather after the first record comes
_BATCH = 256  # records that end the lingering at once


class AuditError(Exception):
    """The audit log cannot be opened or continued; the message (one line) says why."""


# -- the chain: what is hashed, and how -------------------------------------------------------------


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's ``hash`` covers: the record without ``hash``, as compact JSON with the
    keys of every object sorted (``orjson.dumps(..., option=OPT_SORT_KEYS)``)."""
    if "hash" in record:
        record = {k: v for k, v in record.items() if k != "hash"}
    return orjson.dumps(record, option=_SORT)


def chain_hash(body: bytes, key: bytes | None) -> str:
    """HMAC-SHA256 of ``body`` under ``key`` (plain SHA-256 without one), in lowercase hex."""
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.digest(key, body, "sha256").hex()


def _hasher(key: bytes | None) -> Any:
    """``chain_hash`` for one key, faster: HMAC-SHA256 (RFC 2104) from two SHA-256 states keyed
    once (the key's inner and outer pads already hashed), each record's a copy of them. This is
    the same MAC as ``hmac.digest`` (a test holds them equal), without OpenSSL's HMAC context,
    whose copy and finalisation cost more than the two hashes' own copies."""
    sha256 = hashlib.sha256
    if key is None:

        def plain(body: bytes) -> str:
            return sha256(body).hexdigest()

        return plain
    block = sha256().block_size
    padded = (sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    inner = sha256(bytes(b ^ 0x36 for b in padded))
    outer = sha256(bytes(b ^ 0x5C for b in padded))

    def mac(body: bytes) -> str:
        h = inner.copy()
        h.update(body)
        o = outer.copy()
        o.update(h.digest())
        return o.hexdigest()

    return mac


def _encode(record: dict[str, Any]) -> bytes:
    """``canonical(record)`` for a record about to be written: whatever it holds, some JSON."""
    try:
        return orjson.dumps(record, default=str, option=_SORT)
    except Exception:  # an int past 64 bits, a non-string key, a lone surrogate...
        pass
    try:
        return orjson.dumps(_plain(record, 0), option=_SORT)
    except Exception as exc:  # what even str() refuses: keep the record's place in the chain
        replacement = {k: record[k] for k in ("seq", "prev", "ts") if k in record}
        replacement.update(event="unserialisable", error=_text(str(exc))[:200], repr=_safe_repr(record)[:4096])
        return orjson.dumps(replacement, default=str, option=_SORT)


def _plain(value: Any, depth: int) -> Any:
    """``value`` as what JSON holds (the slow path, for a record orjson refused): string keys,
    lists for tuples and sets, ``str()`` for what JSON cannot hold."""
    if depth > 64:
        return "..."
    if isinstance(value, dict):
        return {_text(str(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    return _text(value if isinstance(value, str) else str(value))


def _text(text: str) -> str:
    """``text`` with lone surrogates escaped (UTF-8 cannot hold them)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_repr(value: Any) -> str:
    try:
        return ascii(value)
    except Exception:
        return "<unrepresentable>"


def _redact(value: Any, names: frozenset[str]) -> Any:
    """A copy of ``value`` with the values of keys in ``names`` replaced by ``"***"``, at any depth."""
    if isinstance(value, dict):
        return {k: "***" if k in names else _redact(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, names) for v in value]
    return value


# -- the file ---------------------------------------------------------------------------------------


def chain_files(path: str) -> list[str]:
    """``path``'s rotated files, oldest first (``PATH.N`` ... ``PATH.1``), then ``path``: the
    order of the chain. Every ``PATH.<number>`` present counts, gaps in the numbering or not."""
    folder, name = os.path.split(path)
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        entries = []
    indices = sorted((_rotation_index(e, name) for e in entries), reverse=True)
    return [f"{path}.{i}" for i in indices if i] + [path]


def _rotation_index(entry: str, name: str) -> int:
    """N when ``entry`` is ``name.N``, else 0."""
    suffix = entry[len(name) + 1 :]
    if entry.startswith(name + ".") and suffix.isascii() and suffix.isdigit() and not suffix.startswith("0"):
        return int(suffix)
    return 0


@dataclass(frozen=True)
class _Tail:
    """The last record of an existing chain: where a new run continues from."""

    seq: int
    hash: str
    event: Any


def _last_line(path: str) -> tuple[bytes | None, int]:
    """The last complete line of ``path`` (None when it has none) and the length of what
    follows it (a torn line, when a write was cut short)."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        chunk = 8192
        while True:
            start = max(0, end - chunk)
            fh.seek(start)
            data = fh.read(end - start)
            last = data.rfind(b"\n")
            before = data.rfind(b"\n", 0, last) if last >= 0 else -1
            if before < 0 and start > 0:  # the line may begin further back
                chunk *= 2
                continue
            if last < 0:
                return None, len(data)
            return data[before + 1 : last + 1], len(data) - last - 1


def _tail_of(line: bytes, path: str) -> _Tail:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if isinstance(record, dict):
        seq, digest = record.get("seq"), record.get("hash")
        if type(seq) is int and seq >= 1 and isinstance(digest, str) and len(digest) == 64:
            return _Tail(seq, digest, record.get("event"))
    raise AuditError(
        f"{path}: the last line is not an audit record (no seq and hash), so its chain cannot be "
        "continued; move the file away to start a new log"
    )


class _LogFile:
    """The file records are appended to (or stdout): its size, rotation and fsync. Used from the
    event loop's thread only, so a write and a rotation never interleave."""

    def __init__(self, path: str, max_bytes: int | None) -> None:
        self.path = path
        self.stdout = path == "-"
        self.max_bytes = None if self.stdout else max_bytes
        self.limit = self.max_bytes
        """The size at which to rotate: ``max_bytes``, or further after a rotation failed."""
        self.fd = -1
        self.size = 0
        self.dirty = False
        """Written since the last fsync began."""

    def open(self) -> None:
        """Open for appending (creating it), locked against a second writer."""
        if self.stdout:
            self.fd = os.dup(1)  # closing the log must not close the process's stdout
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open the audit log: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AuditError(
                f"{self.path}: another process is writing this audit log (give each writer, "
                "each worker, a path of its own)"
            ) from None
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def recover(self) -> tuple[_Tail | None, int]:
        """The chain's last record (None: a new chain) and how many bytes of a torn last line
        were cut off to find it."""
        if self.stdout:
            return None, 0
        line, torn = _last_line(self.path)
        if torn:
            # A crash in the middle of a write: the line is no record, and appending after it
            # would glue the next record to it.
            os.ftruncate(self.fd, self.size - torn)
            self.size -= torn
            log.warning("audit log %s: cut off a torn last line (%d bytes)", self.path, torn)
        if line is not None:
            return _tail_of(line, self.path), torn
        rotated = chain_files(self.path)[:-1]
        if rotated:  # rotated, then stopped before the new file got a record
            line, _ = _last_line(rotated[-1])
            if line is not None:
                return _tail_of(line, rotated[-1]), torn
        return None, torn

    def write(self, data: bytes) -> None:
        """Append ``data`` whole; on an error, no part of it stays in the file."""
        start, view = self.size, memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            if not self.stdout:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, start)  # a partial line would read as tampering
            raise
        self.size += len(data)
        self.dirty = True

    def rotate(self, sync: bool) -> None:
        """``PATH`` becomes ``PATH.1`` (older ones shift up by one) and a new ``PATH`` is opened."""
        if sync:
            os.fsync(self.fd)
        # The highest number first, so that no rename lands on a file not yet moved.
        for older in chain_files(self.path)[:-1]:
            stem, _, number = older.rpartition(".")
            os.rename(older, f"{stem}.{int(number) + 1}")
        os.replace(self.path, f"{self.path}.1")
        old = self.fd
        try:
            self.open()
        except AuditError:
            os.replace(f"{self.path}.1", self.path)  # keep appending to the old file
            raise
        os.close(old)
        self.limit = self.max_bytes
        if sync:
            self.dirty = False  # the old file was synced, the new one is empty
            _sync_dir(self.path)

    def sync(self) -> None:
        if not self.stdout and self.fd >= 0:
            self.dirty = False
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _sync_dir(path: str) -> None:
    """Make a rename in ``path``'s directory durable."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the writer -------------------------------------------------------------------------------------


class AuditLog:
    """The writer of one audit log (see the module docstring for the format)."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.dropped = 0
        """Records refused because the queue was full (``on_full = "drop"``)."""
        self.blocked = 0
        """Submits that found the queue full and wrote it themselves (``on_full = "block"``)."""
        self.lost = 0
        """Records a failed write (disk full, I/O error) did not write."""
        self._key = config.key.encode("utf-8") if config.key is not None else None
        self._hash = _hasher(self._key)
        self._limit = config.queue_size
        self._drop = config.on_full == "drop"
        self._fsync = "never" if config.path == "-" else config.fsync
        self._redact = frozenset(config.redact)
        self._file = _LogFile(config.path, config.max_bytes)
        self._queue: deque[dict[str, Any]] = deque()
        self._seq = 0
        self._prev = GENESIS
        self._opened = False
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle = False  # the writer waits with nothing queued: the next submit wakes it
        self.successor: AuditLog | None = None
        """After ``close()``: the log that takes records submitted later (a reload's new log);
        None: they are written to this file at once (with a close record)."""
        self._drop_notice: dict[str, Any] | None = None
        self._notices: list[dict[str, Any]] = []  # to write first in the next batch
        self._synced_at = 0.0
        self._warned: dict[str, float] = {}

    @property
    def depth(self) -> int:
        """Records queued, not yet written."""
        return len(self._queue)

    def start(self) -> None:
        """Open the file (continuing its chain) and start the writer task; needs a running loop.
        Raises ``AuditError`` when the file cannot be opened or its last line is not a record."""
        loop = asyncio.get_running_loop()
        if self._task is not None or self._closed:
            return
        if not self._opened:
            self._open()
        self._synced_at = loop.time()
        self._task = loop.create_task(self._run(), name="audit-writer")

    def submit(self, record: dict[str, Any]) -> None:
        """Queue ``record`` (the log owns the dict from now on); synchronous, never raises."""
        if self._closed and self.successor is not None:
            self.successor.submit(record)  # a call admitted before a reload, ended after it
            return
        try:
            if "ts" not in record:
                record["ts"] = time.time()
            queue = self._queue
            if len(queue) >= self._limit:
                if self._drop:
                    self._count_drop()
                    return
                if self._opened and not self._closed:
                    # submit cannot await: the caller pays for the backpressure by writing
                    self.blocked += 1
                    queue.append(record)
                    self._write_queued()
                    return
            queue.append(record)
            if self._closed:
                self._write_late()
                return
            waiter = self._waiter
            if waiter is not None and (self._idle or len(queue) >= _BATCH) and not waiter.done():
                waiter.set_result(None)
        except Exception:
            self._complain("submit", "audit: a record could not be queued")

    async def close(self) -> None:
        """Write everything queued and a close record, fsync (unless ``fsync = "never"``) and
        close the file. A record submitted later is written at once (with a close record)."""
        if self._closing:
            return
        self._closing = True
        self._wake()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("audit: the writer failed")
        try:
            if not self._opened:  # closed before start(): what was queued still gets written
                self._open()
            self._closed = True
            self._write_queued(self._close_record())
            if self._fsync != "never":
                self._file.sync()
        except Exception as exc:
            self._closed = True
            log.error("audit log %s: could not be closed cleanly: %s", self.config.path, exc)
        finally:
            self._file.close()

    def flush_sync(self) -> None:
        """Write everything queued now, in the caller, and fsync it (unless ``fsync = "never"``):
        for emergencies (a crash path, a signal handler) when ``close()`` cannot be awaited.
        Writes no close record; never raises."""
        try:
            if self._closed:
                return  # nothing waits: records after close() are written at once
            if not self._opened:
                self._open()
            self._write_queued()
            if self._fsync != "never":
                self._file.sync()
        except Exception as exc:
            log.error("audit log %s: emergency flush failed: %s", self.config.path, exc)

    # -- inside -----------------------------------------------------------------------------------

    def _open(self) -> None:
        file = self._file
        file.open()
        try:
            tail, torn = file.recover()
        except Exception:
            file.close()
            raise
        start: dict[str, Any] = {"event": "start", "ts": time.time(), "pid": os.getpid(), "previous": "none"}
        if tail is not None:
            self._seq, self._prev = tail.seq, tail.hash
            start["previous"] = "close" if tail.event == "close" else "unclean"
        if torn:
            start["discarded_bytes"] = torn
        self._queue.appendleft(start)  # before anything submitted ahead of start()
        self._opened = True

    async def _run(self) -> None:
        """The writer: write what is queued, fsync as ``fsync`` says, sleep until more comes."""
        loop = asyncio.get_running_loop()
        interval = self.config.fsync_interval
        lingered = False
        try:
            while True:
                queue = self._queue
                if queue:
                    if not lingered and len(queue) < _BATCH and not self._closing:
                        # Let a batch gather: one wake-up and one write for many records,
                        # instead of a task switch and a syscall per request.
                        lingered = True
                        await self._wait(_LINGER)
                        continue
                    lingered = False
                    self._write_queued()
                elif self._file.dirty and self._fsync == "every":
                    await self._sync()
                elif self._closing:
                    return
                elif self._file.dirty and self._fsync == "interval":
                    due = self._synced_at + interval - loop.time()
                    if due <= 0:
                        await self._sync()
                    else:
                        await self._wait(due, idle=True)
                else:
                    await self._wait(None, idle=True)
        except asyncio.CancelledError:
            self.flush_sync()  # the loop is going away without close(): keep what was submitted
            raise

    async def _wait(self, timeout: float | None, *, idle: bool = False) -> None:
        """Until ``close()`` is called, ``timeout`` seconds pass, or records are submitted: the
        first one when ``idle`` (nothing queued), else ``_BATCH`` of them."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._idle = idle
        timer = loop.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await waiter
        finally:
            self._idle = False
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sync(self) -> None:
        """fsync in a thread, on a duplicate descriptor: a rotation or ``close()`` may close the
        file's own one meanwhile, and the duplicate keeps the file open until the sync is done."""
        loop = asyncio.get_running_loop()
        self._file.dirty = False
        self._synced_at = loop.time()
        try:
            fd = os.dup(self._file.fd)
            await loop.run_in_executor(None, _fsync_close, fd)
        except OSError as exc:
            self._complain("fsync", f"audit log {self.config.path}: fsync failed: {exc}")

    def _count_drop(self) -> None:
        self.dropped += 1
        notice = self._drop_notice
        if notice is None:
            # Past the bound by one: the log itself says where records went missing.
            notice = self._drop_notice = {"event": "dropped", "count": 0, "ts": time.time()}
            self._queue.append(notice)
        notice["count"] += 1
        self._complain(
            "drop", f"audit queue full ({self._limit} records): {self.dropped} records dropped so far", exc_info=False
        )

    def _write_queued(self, *extra: dict[str, Any]) -> None:
        queue = self._queue
        records = [*queue, *extra]
        queue.clear()
        self._drop_notice = None  # taken: later drops need a notice of their own
        if records:
            self._write(records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Chain, serialise and append ``records``: one write, or one per file when the batch
        reaches ``max_bytes``. When a write fails, what it did not write is counted lost, and the
        next batch begins with a record saying so."""
        if self._notices:
            records = [*self._notices, *records]
            self._notices = []
        file = self._file
        seq, prev = self._seq, self._prev
        lines: list[bytes] = []
        size = file.size
        done = 0
        try:
            for record in records:
                # Rotate before a record, never after one: a file full after the last record of
                # a run (its close record) rotates when the next run writes, so the newest file
                # is never left empty behind a rotate record.
                if file.limit is not None and size >= file.limit:
                    seq += 1
                    line, prev = self._line({"event": "rotate", "ts": time.time()}, seq, prev)
                    lines.append(line)
                    file.write(b"".join(lines))
                    done += len(lines) - 1
                    self._seq, self._prev, lines = seq, prev, []
                    self._rotate()
                    size = file.size
                seq += 1
                line, prev = self._line(record, seq, prev)
                lines.append(line)
                size += len(line)
            if lines:
                file.write(b"".join(lines))
                self._seq, self._prev = seq, prev
        except Exception as exc:
            lost = len(records) - done
            self.lost += lost
            self._notices.append({"event": "lost", "count": lost, "error": str(exc)[:200], "ts": time.time()})
            self._complain("write", f"audit log {self.config.path}: {lost} records not written: {exc}", exc_info=False)

    def _rotate(self) -> None:
        file = self._file
        try:
            file.rotate(self._fsync != "never")
        except (OSError, AuditError) as exc:
            # Keep writing to the current file, and try again a max_bytes later: not after every
            # record, each of which would get a rotate record of its own.
            if file.limit is not None:
                file.limit = file.size + (file.max_bytes or 0)
            self._complain("rotate", f"audit log {self.config.path}: rotation failed: {exc}", exc_info=False)

    def _line(self, record: dict[str, Any], seq: int, prev: str) -> tuple[bytes, str]:
        """``record`` as its line in the chain after ``prev``, and its hash."""
        record.pop("hash", None)
        record["seq"] = seq
        record["prev"] = prev
        if "arguments" in record:
            self._shape_arguments(record)
        body = _encode(record)
        digest = self._hash(body)
        return b"".join((body[:-1], b',"hash":"', digest.encode(), b'"}\n')), digest

    def _shape_arguments(self, record: dict[str, Any]) -> None:
        """``arguments`` as ``[audit] arguments`` says: a digest, or redacted."""
        value = record.pop("arguments")
        try:
            if isinstance(value, (bytes, bytearray, memoryview, msgspec.Raw)):
                value = orjson.loads(bytes(value))  # the request's raw JSON
            if self._redact:
                value = _redact(value, self._redact)
            if self.config.arguments == "full":
                record["arguments"] = value
            else:
                record["arguments_sha256"] = hashlib.sha256(orjson.dumps(value, default=str, option=_SORT)).hexdigest()
        except Exception as exc:
            record["arguments_error"] = f"not recorded: {exc}"[:200]

    def _close_record(self) -> dict[str, Any]:
        return {"event": "close", "ts": time.time(), "dropped": self.dropped, "blocked": self.blocked, "lost": self.lost}

    def _write_late(self) -> None:
        """After ``close()``: reopen, write what was just submitted and a close record, close."""
        file = self._file
        try:
            file.open()
        except AuditError as exc:
            self.lost += len(self._queue)
            self._queue.clear()
            self._complain("late", f"audit: a record submitted after close() was lost: {exc}", exc_info=False)
            return
        try:
            self._write_queued(self._close_record())
            if self._fsync != "never":
                file.sync()
        except OSError as exc:
            self._complain("late", f"audit log {self.config.path}: {exc}", exc_info=False)
        finally:
            file.close()

    def _complain(self, what: str, message: str, *, exc_info: bool = True) -> None:
        """Log ``message``, at most once a second for each ``what`` (a full queue or a failing
        disk would otherwise log once per request)."""
        now = time.monotonic()
        if now - self._warned.get(what, -math.inf) >= _WARN_EVERY:
            self._warned[what] = now
            log.warning(message, exc_info=exc_info)


# -- verifying --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found: ok, or the first problem, its kind and where it is."""

    ok: bool
    records: int
    """Records found intact (before the problem, if any)."""
    message: str
    """One line: ``ok: N records, chain intact``, or ``FILE:LINE: seq N: KIND: what is wrong``."""
    kind: str | None = None
    """``edited``, ``deleted``, ``reordered``, ``truncated``, ``wrong key``, ``malformed`` or
    ``unreadable``; None when ok."""
    file: str | None = None
    line: int | None = None
    seq: int | None = None

    @property
    def exit_code(self) -> int:
        """0 ok, 1 the chain is broken, 2 the log could not be checked (unreadable, not a log)."""
        if self.ok:
            return 0
        return 2 if self.kind in ("malformed", "unreadable") else 1

    def __str__(self) -> str:
        return self.message


_Line = tuple[int, str, int, bytes]  # file index, file, line number, the line


def verify(paths: Sequence[str], key: bytes | None = None) -> VerifyResult:
    """Check the chain of the audit log at ``paths`` (each with its rotated files, oldest first)
    under ``key`` (None: the log was written without one); the first problem found, or ok."""
    files: list[str] = []
    seen: set[str] = set()
    for path in paths:
        for file in chain_files(path):
            if os.path.abspath(file) not in seen:
                seen.add(os.path.abspath(file))
                files.append(file)
    return _Verifier(files, key).run()


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The record on a line, when it is one: a JSON object with an integer ``seq`` and string
    ``prev`` and ``hash``."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        return None
    if not isinstance(record.get("prev"), str) or not isinstance(record.get("hash"), str):
        return None
    return record


class _Verifier:
    """One pass over the lines of a chain, in order."""

    def __init__(self, files: list[str], key: bytes | None) -> None:
        self.files = files
        self.key = key
        self.count = 0
        self.next_seq = 1
        self.prev = GENESIS
        self.last: tuple[str, int, int, Any] | None = None  # file, line, seq, event
        self.matched = False  # a hash matched: the key is right

    def run(self) -> VerifyResult:
        for item in self._lines(0, 0):
            if isinstance(item, VerifyResult):
                return item
            problem = self._check(item)
            if problem is not None:
                return problem
        return self._end()

    def _lines(self, first: int, after: int) -> Iterator[_Line | VerifyResult]:
        """The lines from file ``first``, past its line ``after``; an unreadable file ends them."""
        for index in range(first, len(self.files)):
            file = self.files[index]
            try:
                fh = open(file, "rb")
            except OSError as exc:
                yield VerifyResult(False, self.count, f"{file}: cannot read: {exc.strerror or exc}", "unreadable", file)
                return
            with fh:
                for number, raw in enumerate(fh, 1):
                    if index > first or number > after:
                        yield index, file, number, raw

    def _check(self, item: _Line) -> VerifyResult | None:
        index, file, number, raw = item
        expected = self.next_seq
        if not raw.endswith(b"\n"):
            return self._problem(
                "truncated", item, expected,
                "the last line is incomplete: the gateway may still be writing it, or the file was cut",
            )
        record = _parse(raw)
        if record is None:
            return self._problem("malformed", item, None, "not an audit record (a JSON object with seq, prev and hash)")
        seq, stored = record["seq"], record.pop("hash")
        body = canonical(record)
        if not hmac.compare_digest(chain_hash(body, self.key), stored):
            return self._mismatch(item, seq, body, stored)
        self.matched = True
        prev = record["prev"]
        first = self.count == 0
        if seq == expected and prev != self.prev:
            what = "prev is not 64 zeros" if first else f"prev is not the hash of seq {expected - 1}"
            return self._problem("edited", item, seq, f"{what} (a record was replaced, or this one's prev changed)")
        if seq > expected:
            if self._appears_later(index, number, expected):
                return self._problem("reordered", item, seq, f"seq {seq} comes before seq {expected} (records out of order)")
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected} to {seq - 1}"
            if first:
                return self._problem(
                    "deleted", item, seq, f"the log starts at seq {seq}: {missing} (or an older file) missing"
                )
            return self._problem("deleted", item, seq, f"seq {seq} follows seq {expected - 1}: {missing} missing")
        if seq < expected:
            return self._problem(
                "reordered", item, seq, f"seq {seq} comes after seq {expected - 1} (records out of order, or one repeated)"
            )
        self.count += 1
        self.next_seq, self.prev = seq + 1, stored
        self.last = (file, number, seq, record.get("event"))
        return None

    def _mismatch(self, item: _Line, seq: int, body: bytes, stored: str) -> VerifyResult:
        """A hash that does not match: an edit, or (when no record matched yet) the wrong key."""
        if not self.matched:
            if self.key is not None and hmac.compare_digest(chain_hash(body, None), stored):
                return self._problem("wrong key", item, seq, "hash mismatch: the log was written without a key")
            if self._next_also_fails(item, stored):
                hint = "no key was given, and the log was likely written with one" if self.key is None else "the wrong key"
                return self._problem(
                    "wrong key", item, seq,
                    f"hash mismatch from the first record on, though the records link up: {hint} (or the records were edited)",
                )
        return self._problem("edited", item, seq, "hash mismatch (edited, or the wrong key)")

    def _next_also_fails(self, item: _Line, stored: str) -> bool:
        """The next line is a record linked to this one whose hash does not match either."""
        following = next(self._lines(item[0], item[2]), None)
        if not isinstance(following, tuple):
            return False
        record = _parse(following[3])
        if record is None or record["prev"] != stored:
            return False
        their = record.pop("hash")
        return not hmac.compare_digest(chain_hash(canonical(record), self.key), their)

    def _appears_later(self, index: int, number: int, seq: int) -> bool:
        """``seq`` is on some line after this one (then the records are out of order, not missing)."""
        for item in self._lines(index, number):
            if isinstance(item, VerifyResult):
                return False
            record = _parse(item[3])
            if record is not None and record["seq"] == seq:
                return True
        return False

    def _problem(self, kind: str, item: _Line, seq: int | None, detail: str) -> VerifyResult:
        _, file, number, _ = item
        at = f"{file}:{number}: " + (f"seq {seq}: " if seq is not None else "")
        return VerifyResult(False, self.count, f"{at}{kind}: {detail}", kind, file, number, seq)

    def _end(self) -> VerifyResult:
        if self.last is None:
            file = self.files[-1]
            return VerifyResult(
                False, 0, f"{file}: truncated: no records (the gateway may not have written any yet)", "truncated", file
            )
        file, number, seq, event = self.last
        if event != "close":
            return VerifyResult(
                False, self.count,
                f"{file}:{number}: seq {seq}: truncated: the log ends without a close record: the gateway may "
                "still be writing it (or stopped without closing), or records after it were removed",
                "truncated", file, number, seq,
            )
        return VerifyResult(True, self.count, f"ok: {self.count} records, chain intact")
