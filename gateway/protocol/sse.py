"""An incremental Server-Sent Events parser (the WHATWG event-stream format).

``feed(bytes)`` takes whatever arrived and returns the events completed by it;
an event split across chunks, at any byte, comes out whole on a later feed.
Lines end in CRLF, LF or CR; ``:`` starts a comment; ``data`` lines are joined
with ``\\n``; an event with no data is not dispatched.
"""

from __future__ import annotations

__all__ = ["Event", "SseParser"]


class Event:
    """One dispatched event."""

    __slots__ = ("event", "data", "id", "retry")

    def __init__(self, event: str, data: bytes, id: str | None, retry: int | None) -> None:
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry

    def __repr__(self) -> str:
        return f"Event(event={self.event!r}, data={self.data!r}, id={self.id!r}, retry={self.retry!r})"


class SseParser:
    """Feed bytes in, get complete ``Event`` objects out."""

    __slots__ = ("_buffer", "_data", "_event", "_retry", "last_id", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = ""
        self._retry: int | None = None
        self.last_id: str | None = None
        self._pending_cr = False  # the previous chunk ended in CR: a LF now belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse ``chunk``; return the events it completed."""
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        buffer = self._buffer + chunk
        events: list[Event] = []
        start = 0
        size = len(buffer)
        while start < size:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, nxt = lf, lf + 1
            elif cr == size - 1:  # CR at the very end: maybe CRLF split across chunks
                end, nxt = cr, cr + 1
                self._pending_cr = True
            else:
                end = cr
                nxt = cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
            self._line(buffer[start:end], events)
            start = nxt
        self._buffer = buffer[start:]
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[:1] == b":":
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self.last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)

    def _dispatch(self, events: list[Event]) -> None:
        if self._data:
            events.append(Event(self._event or "message", b"\n".join(self._data), self.last_id, self._retry))
        self._data = []
        self._event = ""
        self._retry = None
