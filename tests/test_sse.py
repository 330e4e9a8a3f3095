"""The incremental SSE parser: framing rules, and chunk boundaries anywhere."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.sse import SseParser

STREAM = (
    b": comment\r\n"
    b"event: message\r\ndata: {\"a\":1}\r\nid: 7\r\n\r\n"
    b"data: line1\ndata: line2\n\n"
    b"retry: 500\rdata:no-space\r\r"
    b"event: ping\n\n"  # no data: not dispatched
    b"data: last\n\n"
)


def parse(chunks: list[bytes]) -> list[tuple[str, bytes, str | None]]:
    parser = SseParser()
    out = []
    for chunk in chunks:
        out.extend((e.event, e.data, e.id) for e in parser.feed(chunk))
    return out


EXPECTED = [
    ("message", b'{"a":1}', "7"),
    ("message", b"line1\nline2", "7"),
    ("message", b"no-space", "7"),
    ("message", b"last", "7"),
]


def test_whole_stream() -> None:
    assert parse([STREAM]) == EXPECTED


def test_every_split_point() -> None:
    for i in range(len(STREAM) + 1):
        assert parse([STREAM[:i], STREAM[i:]]) == EXPECTED, i


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=8))
def test_any_chunking(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)])]
    assert parse(chunks) == EXPECTED


def test_incomplete_event_waits() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\n") == []
    assert [e.data for e in parser.feed(b"\n")] == [b"x"]
