"""The routing table: both implementations, their agreement, and that the compiled one loaded."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast import _router_py
from tests.support import compiled_loaded, selected_without_extensions

try:
    from gateway._fast import router as _router_c
except ImportError:  # reported by test_compiled_router_loaded
    _router_c = None

IMPLS = [pytest.param(_router_py, id="py")]
if _router_c is not None:
    IMPLS.insert(0, pytest.param(_router_c, id="c"))


@pytest.fixture(params=IMPLS)
def impl(request):  # type: ignore[no-untyped-def]
    return request.param


def test_compiled_router_loaded() -> None:
    compiled_loaded("router", "Router")


def test_selector_honours_no_extensions() -> None:
    assert selected_without_extensions("Router") == ["False", "gateway._fast._router_py"]


def test_tools_and_prompts(impl) -> None:  # type: ignore[no-untyped-def]
    a, b = object(), object()
    router = impl.Router()
    router.add_tool("docs__search", a, "search")
    router.add_tool("web__search", b, "search")
    router.add_prompt("docs__search", b, "p")
    assert router.resolve_tool("docs__search") == (a, "search")
    assert router.resolve_tool("web__search")[0] is b
    assert router.resolve_tool("nope") is None
    assert router.resolve_prompt("docs__search") == (b, "p")
    assert router.resolve_prompt("web__search") is None
    assert (router.tool_count, router.prompt_count) == (2, 1)
    with pytest.raises(ValueError):
        router.add_tool("docs__search", b, "x")
    with pytest.raises(ValueError):
        router.add_prompt("docs__search", b, "x")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("docs+file:///a.txt", ("docs", "file:///a.txt")),
        ("docs+git+ssh://host/repo", ("docs", "git+ssh://host/repo")),
        ("web+test://static", ("web", "test://static")),
        ("file:///a+b", None),
        ("nope+file:///a", None),
        ("docsfile:///a", None),
        ("", None),
        ("+x:y", None),
    ],
)
def test_resolve_uri(impl, uri: str, expected) -> None:  # type: ignore[no-untyped-def]
    router = impl.Router()
    router.add_namespace("docs", "D")
    router.add_namespace("web", "W")
    got = router.resolve_uri(uri)
    if expected is None:
        assert got is None
    else:
        assert got == ({"docs": "D", "web": "W"}[expected[0]], expected[1])
    with pytest.raises(ValueError):
        router.add_namespace("docs", "X")


def test_passthrough(impl) -> None:  # type: ignore[no-untyped-def]
    router = impl.Router(passthrough="B")
    assert router.resolve_uri("file:///x") == ("B", "file:///x")
    router.add_tool("echo", "B", "echo")
    assert router.resolve_tool("echo") == ("B", "echo")


def test_prefix_uri(impl) -> None:  # type: ignore[no-untyped-def]
    assert impl.prefix_uri("ns", "a://b") == "ns+a://b"
    router = impl.Router()
    router.add_namespace("ns", 1)
    assert router.resolve_uri(impl.prefix_uri("ns", "git+ssh://x")) == (1, "git+ssh://x")


_text = st.text(alphabet=st.sampled_from("ab_-+:/é"), max_size=8)
_ops = st.lists(st.tuples(st.sampled_from(["tool", "prompt", "ns", "rt", "rp", "ru"]), _text, _text), max_size=40)


def _run(module, ops):  # type: ignore[no-untyped-def]
    router = module.Router()
    out = []
    for op, x, y in ops:
        try:
            if op == "tool":
                out.append(router.add_tool(x, y, y + "!"))
            elif op == "prompt":
                out.append(router.add_prompt(x, y, y))
            elif op == "ns":
                out.append(router.add_namespace(x, y))
            elif op == "rt":
                out.append(router.resolve_tool(x))
            elif op == "rp":
                out.append(router.resolve_prompt(x))
            else:
                out.append(router.resolve_uri(x + y))
        except ValueError:
            out.append("ValueError")
    return out, router.tool_count, router.prompt_count


@pytest.mark.skipif(_router_c is None, reason="compiled router not built")
@settings(max_examples=300, deadline=None)
@given(_ops)
def test_implementations_agree(ops) -> None:  # type: ignore[no-untyped-def]
    assert _run(_router_c, ops) == _run(_router_py, ops)
