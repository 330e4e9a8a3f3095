"""Exposed names: unchanged when they fit, shortened deterministically when not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.catalog.names import NAME_RE, expose_name


def test_plain_names_unchanged() -> None:
    taken: set[str] = set()
    assert expose_name("docs", "search", "__", taken) == "docs__search"
    assert taken == {"docs__search"}


def test_long_and_odd_names_shortened() -> None:
    long = expose_name("ns", "x" * 100, "__", set())
    assert NAME_RE.match(long) and len(long) <= 64
    dotted = expose_name("ns", "files.read/all", "__", set())
    assert NAME_RE.match(dotted) and dotted.startswith("ns__files_read_all-")


def test_collisions_distinct_and_deterministic() -> None:
    taken: set[str] = set()
    first = expose_name("ns", "a.b", "__", taken)
    second = expose_name("ns", "a_b", "__", taken)
    third = expose_name("ns", "a_b", "__", taken)  # a backend listing a name twice
    assert len({first, second, third}) == 3
    again: set[str] = set()
    assert [expose_name("ns", n, "__", again) for n in ("a.b", "a_b", "a_b")] == [first, second, third]


@given(st.lists(st.text(max_size=90), max_size=30))
def test_always_valid_and_distinct(names: list[str]) -> None:
    taken: set[str] = set()
    out = [expose_name("ns", n, "__", taken) for n in names]
    assert all(NAME_RE.match(o) for o in out)
    assert len(set(out)) == len(out)
