"""The catalog's own pagination and the front's DNS-rebinding allow-lists (in process)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from gateway._fast import Router
from gateway.config import Config, ServerConfig
from gateway.errors import Forbidden, InvalidParams
from gateway.catalog.aggregate import Catalog, CatalogSnapshot, decode_cursor, encode_cursor
from gateway.front.endpoint import McpFront
from gateway.front.gate import KEY_HEADERS
from gateway.front.sessions import SessionStore


def test_pages_follow_cursors_in_order() -> None:
    tools = [{"name": f"t{i}"} for i in range(23)]
    snapshot = CatalogSnapshot(Router(), {"tools/list": tools}, page_size=10, generation=1)
    seen, cursor, pages = [], None, 0
    while True:
        page = json.loads(snapshot.page("tools/list", cursor))
        seen += [t["name"] for t in page["tools"]]
        pages += 1
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert seen == [t["name"] for t in tools] and pages == 3
    assert json.loads(snapshot.page("prompts/list", None)) == {"prompts": []}


@pytest.mark.parametrize("cursor", ["garbage", encode_cursor(5), encode_cursor(1000), "Z3cxOi0x"])
def test_bad_cursors_are_invalid_params(cursor: str) -> None:
    snapshot = CatalogSnapshot(Router(), {"tools/list": [{"name": f"t{i}"} for i in range(23)]}, page_size=10, generation=1)
    with pytest.raises(InvalidParams):
        snapshot.page("tools/list", cursor)


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(40)) == 40


def front(**server: object) -> McpFront:
    config = Config(server=ServerConfig(**server))
    return McpFront(config, Catalog({}), SessionStore(60))


@pytest.mark.parametrize(
    ("server", "headers", "ok"),
    [
        ({}, {"host": "127.0.0.1:8080"}, True),
        ({}, {"host": "localhost"}, True),
        ({}, {"host": "[::1]:80"}, True),
        ({}, {"host": "evil.example"}, False),
        ({}, {}, False),
        ({"allowed_hosts": ["gw.internal:8080"]}, {"host": "gw.internal:9999"}, True),
        ({"allowed_hosts": ["*"]}, {"host": "anything"}, True),
        ({"host": "0.0.0.0"}, {"host": "anything"}, True),
        ({}, {"host": "localhost", "origin": "http://localhost:3000"}, True),
        ({}, {"host": "localhost", "origin": "https://evil.example"}, False),
        ({"allowed_origins": ["https://app.example"]}, {"host": "localhost", "origin": "https://app.example/"}, True),
        ({}, {"host": "localhost", "origin": "null"}, False),
    ],
)
def test_dns_rebinding_allow_lists(server: dict, headers: dict, ok: bool) -> None:
    gate = front(**server).gate
    for _ in range(2):  # the second time from the verdict cache
        error, principal = gate.check(SimpleNamespace(method="GET", headers=headers))  # type: ignore[arg-type]
        assert principal is None
        if ok:
            assert error is None
        else:
            assert isinstance(error, Forbidden)


def test_the_gate_never_lets_a_refused_header_set_through_after_a_passing_one() -> None:
    gate = front().gate
    good = SimpleNamespace(method="POST", headers={"host": "localhost", "content-type": "application/json", "accept": "*/*"})
    evil = SimpleNamespace(method="POST", headers={**good.headers, "host": "evil.example"})
    bad_type = SimpleNamespace(method="POST", headers={**good.headers, "content-type": "text/plain"})
    for request, status in [(good, None), (evil, 421), (good, None), (bad_type, 415), (evil, 421), (good, None)]:
        error, _ = gate.check(request)  # type: ignore[arg-type]
        assert (error.http_status if error is not None else None) == status
    # Every header in KEY_HEADERS is part of the key: a bad value in any one is never answered from
    # the cache of the good set (this holds HeaderGate.check's spelt-out key and KEY_HEADERS together).
    bad = {"host": "evil.example", "origin": "https://evil.example", "content-type": "text/plain", "accept": "text/html"}
    assert set(bad) == set(KEY_HEADERS)
    for header in KEY_HEADERS:
        assert gate.check(good)[0] is None  # type: ignore[arg-type]
        poisoned = SimpleNamespace(method="POST", headers={**good.headers, header: bad[header]})
        assert gate.check(poisoned)[0] is not None, header  # type: ignore[arg-type]
    # The same header values under another method are another verdict: GET has no media-type checks.
    assert gate.check(SimpleNamespace(method="GET", headers=bad_type.headers))[0] is None  # type: ignore[arg-type]
