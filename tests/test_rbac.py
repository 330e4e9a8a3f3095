"""Authorization (``gateway.policy.rbac``): what each caller may see and call.

The rules' meaning is checked on the compiled ``Rbac`` (deny beats allow in either
order, the default, who as any of roles/scopes/subjects, globs per kind,
argument rules, the decision cache); a property test holds lists and calls
together on the real ``CatalogSnapshot`` (every name a principal's pages list,
following cursors, is a name ``admit`` lets through, and no other); and
in-process gateways on real sockets, in front of the official SDK server (or a
scripted one that counts what reaches it), check what a client gets: a hidden
name answered byte for byte as an unknown one, in both paths and both eras,
forbidden arguments refused with 403 naming the rule and never sent upstream,
filtered lists, shadow mode, the ``[rbac]`` table of the config file wired in,
and the stdio front.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from gateway._fast import Router
from gateway.catalog.aggregate import Catalog, CatalogSnapshot, encode_cursor
from gateway.config import Config, RbacConfig, RbacRule, load_config_text
from gateway.errors import Forbidden, GatewayError, InvalidParams, ResourceNotFound, error_body
from gateway.front.routing import Routing
from gateway.policy.admission import Admission, Verdict
from gateway.policy.chain import Chain, build_admission
from gateway.policy.identity import Principal
from gateway.policy.rbac import Rbac, RbacAdmission, unknown_name
from gateway.protocol.jsonrpc import Raw
from tests.support import ROOT, Child
from tests.test_admission import stateless_post
from tests.test_express import McpHttp, Response, Scripted, gateway_for

HANDSHAKE = SimpleNamespace(era="handshake")
STATELESS = SimpleNamespace(era="stateless")


def rbac(text: str) -> RbacConfig:
    """An ``[rbac]`` table through the real config loader."""
    config = load_config_text(text, fmt="toml").rbac
    assert config is not None
    return config


def who(*roles: str, scopes: tuple[str, ...] = (), subject: str = "user") -> Principal:
    return Principal("api-key", subject, frozenset(roles), frozenset(scopes))


def args(**values: Any) -> dict[str, Raw]:
    return {"name": Raw(b'"x"'), "arguments": Raw(json.dumps(values).encode())}


def refusal(admission: Admission, principal: Any, name: str, params: dict[str, Raw] | None = None,
            method: str = "tools/call", ctx: Any = HANDSHAKE) -> GatewayError | None:
    verdict = admission.admit(principal, ctx, method, name, (None, name), params if params is not None else {})  # type: ignore[arg-type]
    assert verdict is None or (verdict.error is not None and verdict.route is None and verdict.params is None)
    return None if verdict is None else verdict.error


# -- what the rules mean ----------------------------------------------------------------------------

ALLOW_OPS = '[[rbac.rules]]\nname = "ops"\nroles = ["ops"]\ntools = ["web__*"]\n'
DENY_RM = '[[rbac.rules]]\nname = "no-rm"\neffect = "deny"\ntools = ["web__rm*"]\n'


@pytest.mark.parametrize("rules", [ALLOW_OPS + DENY_RM, DENY_RM + ALLOW_OPS], ids=["allow-first", "deny-first"])
def test_deny_beats_allow_whatever_the_order(rules: str) -> None:
    decide = Rbac(rbac("[rbac]\n" + rules)).decide
    ops = who("ops")
    assert decide(ops, "tool", "web__echo").visible and decide(ops, "tool", "web__echo").rule == "ops"
    hidden = decide(ops, "tool", "web__rmdir")
    assert not hidden.visible and hidden.rule == "no-rm"


def test_the_default() -> None:
    assert Rbac(rbac("[rbac]\n")).decide(who(), "tool", "anything").visible  # no rules: allow
    unset = Rbac(rbac("[rbac]\n" + ALLOW_OPS))  # rules and no default: deny
    assert not unset.decide(who("ops"), "tool", "other__x").visible
    assert unset.decide(who("ops"), "tool", "other__x").rule is None  # decided by the default
    allow = Rbac(rbac('[rbac]\ndefault = "allow"\n' + DENY_RM))
    assert allow.decide(who(), "tool", "other__x").visible and not allow.decide(who(), "tool", "web__rm").visible
    deny = Rbac(rbac('[rbac]\ndefault = "deny"\n'))
    assert not deny.decide(who(), "tool", "anything").visible


def test_who_is_any_of_roles_scopes_and_subjects() -> None:
    decide = Rbac(rbac("""[rbac]
[[rbac.rules]]
name = "r"
roles = ["ops", "sre"]
scopes = ["tools:write"]
subjects = ["ada"]
tools = ["*"]
""")).decide
    for principal in (who("sre"), who("dev", "ops"), who(scopes=("tools:write",)), who(subject="ada")):
        assert decide(principal, "tool", "t").visible, principal
    for principal in (who("dev"), who(scopes=("tools:read",)), who(subject="bob"), None):
        assert not decide(principal, "tool", "t").visible, principal


def test_a_rule_without_who_applies_to_every_caller_even_an_unauthenticated_one() -> None:
    decide = Rbac(rbac('[rbac]\n[[rbac.rules]]\nname = "all"\ntools = ["pub__*"]\n' + ALLOW_OPS)).decide
    for principal in (who(), who("ops"), None):
        assert decide(principal, "tool", "pub__x").visible
    assert decide(who("ops"), "tool", "web__x").visible
    assert not decide(None, "tool", "web__x").visible  # a rule with a who never matches no principal


def test_globs_are_per_kind_whole_name_and_case_sensitive() -> None:
    decide = Rbac(rbac("""[rbac]
[[rbac.rules]]
name = "g"
tools = ["docs__get_?", "fs__[ab]*"]
prompts = ["docs__*"]
resources = ["docs+file:///public/*"]
""")).decide
    assert decide(None, "tool", "docs__get_x").visible and not decide(None, "tool", "docs__get_xy").visible
    assert decide(None, "tool", "fs__alpha").visible and not decide(None, "tool", "fs__cat").visible
    assert not decide(None, "tool", "DOCS__get_x").visible  # case-sensitive
    assert not decide(None, "tool", "xdocs__get_x").visible  # the whole name
    assert decide(None, "prompt", "docs__intro").visible and not decide(None, "tool", "docs__intro").visible
    assert decide(None, "resource", "docs+file:///public/a/b.txt").visible
    assert not decide(None, "resource", "docs+file:///private/a").visible
    assert not decide(None, "prompt", "fs__alpha").visible  # a kind the rule names no glob for


ARGUMENT_RULES = """[rbac]
[[rbac.rules]]
name = "read-public"
tools = ["fs__read"]
arguments = { path = "/public/*" }

[[rbac.rules]]
name = "read-tmp"
tools = ["fs__read"]
arguments = { path = "/tmp/*", mode = "r*" }

[[rbac.rules]]
name = "all-writes"
roles = ["admin"]
tools = ["fs__write"]

[[rbac.rules]]
name = "no-etc"
effect = "deny"
tools = ["fs__write"]
arguments = { path = "/etc/*" }
"""


def test_argument_rules_allow_a_call_when_any_matching_allow_rule_holds() -> None:
    admission = RbacAdmission(rbac(ARGUMENT_RULES))
    assert admission.rbac.decide(None, "tool", "fs__read").visible  # listed: a call could be allowed
    assert refusal(admission, None, "fs__read", args(path="/public/a")) is None
    assert refusal(admission, None, "fs__read", args(path="/tmp/x", mode="ro")) is None  # the second rule
    for bad in (args(path="/etc/passwd"), args(path="/tmp/x"), args(path=["/public/a"]), args(), {"name": Raw(b'"x"')}):
        error = refusal(admission, None, "fs__read", bad)
        assert isinstance(error, Forbidden) and error.http_status == 403 and error.reason == "forbidden_arguments"
        assert error.extra == {"rule": "read-public"} and "'read-public'" in error.message


def test_a_deny_rule_with_arguments_refuses_the_calls_it_matches_and_fails_closed() -> None:
    admission = RbacAdmission(rbac(ARGUMENT_RULES))
    admin = who("admin")
    assert admission.rbac.decide(admin, "tool", "fs__write").visible  # a conditional deny does not hide
    assert refusal(admission, admin, "fs__write", args(path="/home/ada/x")) is None
    for bad in (args(path="/etc/passwd"), args(), args(path=7)):  # matching, absent, not a string
        error = refusal(admission, admin, "fs__write", bad)
        assert isinstance(error, Forbidden) and error.extra == {"rule": "no-etc"}
    assert isinstance(refusal(admission, who(), "fs__write", args(path="/home/x")), InvalidParams)  # not an admin: hidden


def test_resources_have_no_arguments_so_their_argument_rules_are_decided_once() -> None:
    decide = Rbac(rbac("""[rbac]
default = "allow"
[[rbac.rules]]
name = "conditional-allow"
resources = ["a+*"]
arguments = { x = "*" }
[[rbac.rules]]
name = "conditional-deny"
effect = "deny"
resources = ["b+*"]
arguments = { x = "1" }
""")).decide
    for uri, rule in (("a+file:///x", "conditional-allow"), ("b+file:///x", "conditional-deny")):
        decision = decide(None, "resource", uri)
        assert not decision.visible and decision.rule == rule  # no read could ever be allowed
    assert decide(None, "resource", "c+file:///x").visible  # no rule: the default
    assert decide(None, "tool", "a+file:///x").visible  # the same rules say nothing about tools


def test_every_routed_method_is_decided_by_its_kind() -> None:
    admission = RbacAdmission(rbac('[rbac]\n[[rbac.rules]]\nname = "p"\nprompts = ["web__greet"]\nresources = ["web+clock://*"]\n'))
    assert refusal(admission, None, "web__greet", {}, "prompts/get") is None
    assert isinstance(refusal(admission, None, "web__greet", {}, "tools/call"), InvalidParams)
    for method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        assert refusal(admission, None, "web+clock://epoch", {}, method) is None
        assert isinstance(refusal(admission, None, "web+file:///x", {}, method), ResourceNotFound)
    prompt_ref = {"ref": Raw(b'{"type":"ref/prompt","name":"web__greet"}')}
    assert refusal(admission, None, "web__greet", prompt_ref, "completion/complete") is None
    hidden_ref = {"ref": Raw(b'{"type":"ref/resource","uri":"web+file:///{x}"}')}
    error = refusal(admission, None, "web+file:///{x}", hidden_ref, "completion/complete")
    assert isinstance(error, InvalidParams) and error.reason == "unknown_ref"
    assert refusal(admission, None, "whatever", {}, "tools/list") is None  # not a routed method: nothing to decide


def _routing_error(kind: str, value: str, ctx: Any) -> GatewayError:
    routing = Routing(Catalog({}), Admission(), passthrough=False)
    with pytest.raises(GatewayError) as caught:
        routing.fallback(kind, value, ctx)
    return caught.value


@pytest.mark.parametrize("ctx", [HANDSHAKE, STATELESS, None], ids=["handshake", "stateless", "stdio"])
@pytest.mark.parametrize(("kind", "value"), [("tool", "web__x"), ("prompt", "web__p"), ("resource", "web+file:///x")])
def test_a_hidden_name_gets_exactly_routings_unknown_name_error(kind: str, value: str, ctx: Any) -> None:
    ours, routings = unknown_name(kind, value, ctx), _routing_error(kind, value, ctx)
    assert type(ours) is type(routings) and ours.http_status == routings.http_status
    assert error_body(7, ours) == error_body(7, routings)


def test_a_hidden_completion_target_gets_routings_unknown_ref_error() -> None:
    routing = Routing(Catalog({}), Admission(), passthrough=False)
    params = {"ref": Raw(b'{"type":"ref/prompt","name":"web__greet"}')}
    with pytest.raises(InvalidParams) as caught:
        routing.route_ref(HANDSHAKE, dict(params))  # type: ignore[arg-type]
    admission = RbacAdmission(rbac('[rbac]\ndefault = "deny"\n'))
    error = refusal(admission, None, "web__greet", params, "completion/complete")
    assert error is not None and error_body(1, error) == error_body(1, caught.value)


def test_shadow_mode_never_refuses_and_logs_each_would_be_refusal(caplog: pytest.LogCaptureFixture) -> None:
    admission = RbacAdmission(rbac('[rbac]\nmode = "shadow"\n' + ARGUMENT_RULES.removeprefix("[rbac]\n")))
    snapshot = CatalogSnapshot(Router(), {"tools/list": [{"name": "fs__read"}, {"name": "other"}]}, 10, 1)
    with caplog.at_level(logging.INFO, logger="gateway.rbac"):
        assert refusal(admission, who(subject="ada"), "other") is None  # hidden: would be unknown
        assert refusal(admission, who(subject="ada"), "fs__read", args(path="/etc/x")) is None  # forbidden arguments
        assert refusal(admission, who(subject="ada"), "fs__read", args(path="/public/x")) is None  # allowed: not logged
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.rbac"]
    assert lines == [
        "rbac shadow: would refuse tool 'other' for api-key:ada (the default)",
        "rbac shadow: would refuse tool 'fs__read' for api-key:ada (rule 'read-public')",
    ]
    assert admission.page(None, HANDSHAKE, snapshot, "tools/list", None) is snapshot.page("tools/list", None)


def test_decisions_are_cached_so_globs_are_matched_once_per_group_and_name() -> None:
    compiled = Rbac(rbac("[rbac]\n" + ALLOW_OPS + DENY_RM))
    calls: list[str] = []
    for rule in compiled.rules:
        match = rule.match["tool"]
        assert match is not None

        def counting(name: str, match: Callable[[str], object] = match) -> object:
            calls.append(name)
            return match(name)

        rule.match["tool"] = counting
    admission = RbacAdmission(compiled)
    for _ in range(3):
        assert refusal(admission, who("ops", subject="ada"), "web__echo") is None
        assert isinstance(refusal(admission, who("ops", subject="ada"), "web__rm"), InvalidParams)
    assert calls == ["web__echo", "web__echo", "web__rm", "web__rm"]  # two rules, once each, on the first round
    # Another principal with the same roles is in the same group: decided already.
    assert refusal(admission, who("ops", subject="bob"), "web__echo") is None
    assert len(calls) == 4 and len(compiled.decisions) == 2


def test_the_caches_are_bounded() -> None:
    rules = "".join(f'[[rbac.rules]]\nname = "{r}"\nroles = ["{r}"]\ntools = ["{r}__*"]\n' for r in "abcd")
    compiled = Rbac(rbac("[rbac]\n" + rules), max_entries=8, max_groups=3)
    admission = RbacAdmission(compiled, max_pages=3)
    snapshot = CatalogSnapshot(Router(), {"tools/list": [{"name": f"{r}__t"} for r in "abcd"]}, 10, 1)
    combos = ["a", "b", "c", "d", "ab", "cd", "abc", ""]
    for i in range(40):
        roles = combos[i % len(combos)]
        principal = who(*roles, subject=f"u{i}")
        assert compiled.decide(principal, "tool", f"a__{i}").visible == ("a" in roles)
        assert (refusal(admission, principal, f"a__{i}") is None) == ("a" in roles)
        assert listed(admission, principal, snapshot)[0] == [f"{r}__t" for r in roles]
        assert len(compiled.decisions) <= 8 and len(compiled._groups) <= 8 and len(compiled._group_ids) <= 3
        assert len(admission._pages) <= 3 and len(admission._plain) <= 8
    assert compiled.epoch > 0  # the groups were given out afresh, and the pages followed


# -- lists: what a principal sees ----------------------------------------------------------------------


class CountingSnapshot(CatalogSnapshot):
    """A snapshot that counts how often its pages are filtered."""

    __slots__ = ("filtered",)

    def filtered_pages(self, *a: Any, **kw: Any) -> list[bytes] | None:
        self.filtered += 1
        return super().filtered_pages(*a, **kw)


def snapshot_of(tools: list[str], page_size: int = 10, **items: list[dict[str, Any]]) -> CountingSnapshot:
    lists = {"tools/list": [{"name": n, "description": f"the {n} tool"} for n in tools]}
    lists.update({k.replace("_", "/"): v for k, v in items.items()})
    snapshot = CountingSnapshot(Router(), lists, page_size, 1, {"tools/list": (60000, "public")})
    snapshot.filtered = 0
    return snapshot


def listed(admission: Admission, principal: Any, snapshot: CatalogSnapshot, method: str = "tools/list",
           ctx: Any = HANDSHAKE) -> tuple[list[str], list[dict[str, Any]]]:
    """Every name on every page, following cursors; and each page's result."""
    key, field = {"tools/list": ("tools", "name"), "prompts/list": ("prompts", "name"),
                  "resources/list": ("resources", "uri"), "resources/templates/list": ("resourceTemplates", "uriTemplate")}[method]
    names: list[str] = []
    pages: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page = json.loads(admission.page(principal, ctx, snapshot, method, cursor))
        pages.append(page)
        names += [item[field] for item in page[key]]
        cursor = page.get("nextCursor")
        if cursor is None:
            return names, pages
    raise AssertionError("the cursors never end")


def test_a_filtered_list_keeps_the_catalogs_order_page_size_cursors_and_items() -> None:
    tools = [f"t{i}" for i in range(25)]
    snapshot = snapshot_of(tools, page_size=4)
    admission = RbacAdmission(rbac('[rbac]\n[[rbac.rules]]\nname = "odd"\ntools = ["t*[13579]"]\n'))
    names, pages = listed(admission, None, snapshot)
    assert names == [t for t in tools if int(t[1:]) % 2] and len(pages) == 3 and len(pages[0]["tools"]) == 4
    assert pages[0]["tools"][0] == {"name": "t1", "description": "the t1 tool"}
    assert snapshot.filtered == 1  # the pages were made once, then served from the cache
    with pytest.raises(InvalidParams):
        admission.page(None, HANDSHAKE, snapshot, "tools/list", encode_cursor(12))  # past the filtered list


def test_a_principal_that_sees_everything_gets_the_catalogs_own_pages() -> None:
    snapshot = snapshot_of(["a", "b"])
    admission = RbacAdmission(rbac('[rbac]\n[[rbac.rules]]\nname = "all"\ntools = ["*"]\n'))
    assert admission.page(None, HANDSHAKE, snapshot, "tools/list", None) is snapshot.page("tools/list", None)
    # The stateless era's page says private: another caller could see another list.
    stateless = json.loads(admission.page(None, STATELESS, snapshot, "tools/list", None))
    assert stateless["cacheScope"] == "private" and stateless["ttlMs"] == 60000
    assert json.loads(snapshot.page("tools/list", None, True))["cacheScope"] == "public"


def test_filtered_pages_are_cached_per_group_and_snapshot() -> None:
    admission = RbacAdmission(rbac("[rbac]\n" + ALLOW_OPS))
    first = snapshot_of(["web__a", "x"])
    for subject in ("ada", "bob", "eve"):  # one group: filtered once
        assert listed(admission, who("ops", subject=subject), first)[0] == ["web__a"]
    assert listed(admission, who("dev"), first)[0] == []
    assert first.filtered == 2
    second = snapshot_of(["web__a", "web__b", "x"])  # a rebuilt catalog: filtered again
    assert listed(admission, who("ops"), second)[0] == ["web__a", "web__b"] and second.filtered == 1


def test_prompts_resources_and_templates_are_filtered_too() -> None:
    snapshot = snapshot_of(
        [],
        prompts_list=[{"name": "web__greet"}, {"name": "web__secret"}],
        resources_list=[{"uri": "web+clock://epoch"}, {"uri": "web+file:///x"}],
        resources_templates_list=[{"uriTemplate": "web+clock://tz/{zone}"}, {"uriTemplate": "web+file:///{p}"}],
    )
    admission = RbacAdmission(rbac('[rbac]\n[[rbac.rules]]\nname = "r"\nprompts = ["*greet"]\nresources = ["web+clock://*"]\n'))
    assert listed(admission, None, snapshot, "prompts/list")[0] == ["web__greet"]
    assert listed(admission, None, snapshot, "resources/list")[0] == ["web+clock://epoch"]
    assert listed(admission, None, snapshot, "resources/templates/list")[0] == ["web+clock://tz/{zone}"]


# Names and globs over a small alphabet, so that globs often match and often collide.
_names = st.text("ab_", min_size=1, max_size=4)
_globs = st.text("ab_*?", min_size=1, max_size=4)
_rules = st.builds(
    lambda i, effect, roles, tools, arguments: RbacRule(
        name=f"r{i}", effect=effect, roles=roles, tools=tools, arguments={"x": "1*"} if arguments else {}
    ),
    st.integers(0, 99),
    st.sampled_from(["allow", "deny"]),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=2),
    st.lists(_globs, max_size=3),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(_rules, max_size=6),
    default=st.sampled_from([None, "allow", "deny"]),
    tools=st.lists(_names, max_size=12, unique=True),
    roles=st.none() | st.frozensets(st.sampled_from(["a", "b", "c", "d"]), max_size=3),
    page_size=st.integers(1, 4),
    stateless=st.booleans(),
)
def test_lists_and_calls_never_disagree(
    rules: list[RbacRule], default: Any, tools: list[str], roles: frozenset[str] | None, page_size: int, stateless: bool
) -> None:
    admission = RbacAdmission(RbacConfig(default=default, rules=rules))
    principal = None if roles is None else Principal("api-key", "p", roles)
    snapshot = snapshot_of(tools, page_size)
    ctx = STATELESS if stateless else HANDSHAKE
    names, _ = listed(admission, principal, snapshot, ctx=ctx)
    callable_names = []
    for name in tools:
        error = refusal(admission, principal, name, args(x="no"), ctx=ctx)  # argument rules refuse "no"...
        assert error is None or error.reason in ("unknown_tool", "forbidden_arguments")
        if error is None or error.reason == "forbidden_arguments":  # ...but the name could be called
            callable_names.append(name)
    assert names == callable_names  # the same names, in the catalog's order


# -- the admission chain and its wiring ------------------------------------------------------------------


class Fixed(RbacAdmission):
    """RBAC with a fixed principal where authentication gives none (it lands separately)."""

    def __init__(self, config: RbacConfig, principal: Principal) -> None:
        super().__init__(config)
        self.principal = principal

    def admit(self, principal: Any, *rest: Any) -> Verdict | None:
        return super().admit(principal or self.principal, *rest)

    def page(self, principal: Any, *rest: Any) -> bytes:
        return super().page(principal or self.principal, *rest)


def test_build_admission_follows_the_config(caplog: pytest.LogCaptureFixture) -> None:
    assert build_admission(Config()) is None
    config = load_config_text("[rbac]\n" + ALLOW_OPS, fmt="toml")
    with caplog.at_level(logging.WARNING, logger="gateway.policy"):
        admission = build_admission(config)
    assert isinstance(admission, RbacAdmission)  # a chain of one is that policy
    assert "[auth] is not configured" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.policy"):
        build_admission(load_config_text('[rbac]\n[[rbac.rules]]\nname = "a"\ntools = ["*"]\n', fmt="toml"))
    assert caplog.text == ""  # rules without a who: nothing to warn about


def test_a_chain_admits_in_order_and_the_first_refusal_ends_it() -> None:
    seen: list[tuple[str, bytes]] = []

    class Step(Admission):
        def __init__(self, tag: str, verdict: Verdict | None) -> None:
            self.tag, self.verdict = tag, verdict

        def admit(self, principal: Any, ctx: Any, method: str, name: str, route: Any, params: Any) -> Verdict | None:
            seen.append((self.tag, bytes(params.get("arguments", b""))))
            return self.verdict

    rewrite = Verdict(params={"arguments": Raw(b"{}")})
    chain = Chain([Step("a", None), Step("b", rewrite), RbacAdmission(rbac("[rbac]\n" + ALLOW_OPS)), Step("c", None)])
    verdict = chain.admit(who("ops"), HANDSHAKE, "tools/call", "web__x", (None, "x"), {})  # type: ignore[arg-type]
    assert verdict is not None and verdict.params == rewrite.params and verdict.error is None
    assert seen == [("a", b""), ("b", b""), ("c", b"{}")]  # c saw b's rewrite
    seen.clear()
    verdict = chain.admit(who("dev"), HANDSHAKE, "tools/call", "web__x", (None, "x"), {})  # type: ignore[arg-type]
    assert verdict is not None and isinstance(verdict.error, InvalidParams)
    assert seen == [("a", b""), ("b", b"")]  # refused by RBAC: c never saw it
    snapshot = snapshot_of(["web__x", "y"])
    assert listed(chain, who("ops"), snapshot)[0] == ["web__x"]  # the pages pass RBAC's filter
    with pytest.raises(ValueError):
        Chain([RbacAdmission(rbac("[rbac]\n")), RbacAdmission(rbac("[rbac]\n"))])


# -- through a real gateway ------------------------------------------------------------------------------

WEB_RULES = """[rbac]
[[rbac.rules]]
name = "dev-tools"
roles = ["dev"]
tools = ["web__echo", "web__progress"]
prompts = ["web__*"]
resources = ["web+clock://tz/*"]

[[rbac.rules]]
name = "echo-only-hello"
roles = ["dev"]
tools = ["web__echo"]
arguments = { text = "hello*" }

[[rbac.rules]]
name = "no-greet"
effect = "deny"
roles = ["intern"]
prompts = ["web__greet"]
"""
# The two allow rules of web__echo: the unconditional one wins for dev, so no argument rule applies there.
WORK_RULES = '[rbac]\n[[rbac.rules]]\nname = "read-only"\ntools = ["web__work"]\narguments = { mode = "read*" }\n'
DEV = who("dev", subject="ada")


def comparable(response: Response, name: str) -> tuple[int, str, str]:
    """Status, content type and body, with the name asked for taken out."""
    return response.status_code, response.headers["content-type"], response.text.replace(json.dumps(name)[1:-1], "NAME")


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_a_hidden_tool_is_unlisted_and_answered_exactly_as_an_unknown_one(http_backend: Child, express: bool) -> None:
    admission = Fixed(rbac(WEB_RULES), DEV)
    async with gateway_for(http_backend.url, express=express, admission=admission) as gw:
        client = McpHttp(gw.url)
        await client.open()
        listed_tools = await client.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        answers = {}
        for _ in range(2):  # the second round finds the pool settled and the lane free
            for name in ("web__multiply", "web__nope"):
                call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": name, "arguments": {"a": 1, "b": 2}}}
                answers[name] = comparable(await client.post(call), name)
        allowed = await client.post({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "web__echo", "arguments": {"text": "hi"}}})
    assert sorted(t["name"] for t in json.loads(listed_tools.text)["result"]["tools"]) == ["web__echo", "web__progress"]
    assert answers["web__multiply"] == answers["web__nope"]
    status, _, text = answers["web__multiply"]
    assert status == 200 and json.loads(text)["error"] == {
        "code": -32602, "message": "unknown tool: NAME", "data": {"gateway": {"reason": "unknown_tool", "name": "NAME"}}
    }
    assert json.loads(allowed.text)["result"]["content"][0]["text"] == "hi"
    if express:
        assert True in gw.taken  # the lane admitted (and so refused) the hidden name itself


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_forbidden_arguments_get_403_naming_the_rule_and_never_reach_the_backend(express: bool) -> None:
    backend = Scripted(lambda n, msg: ("ok", {"content": [{"type": "text", "text": str(n)}]}))
    async with backend as url, gateway_for(url, express=express, admission=Fixed(rbac(WORK_RULES), DEV)) as gw:
        client = McpHttp(gw.url)
        await client.open()

        def call(request_id: int, mode: str) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "web__work", "arguments": {"mode": mode}}}

        refused = [await client.post(call(i, "write")) for i in (1, 2)]
        allowed = await client.post(call(3, "read-only"))
    for response in refused:
        assert response.status_code == 403
        error = json.loads(response.text)["error"]
        assert error["code"] == -32052 and error["data"]["gateway"] == {"reason": "forbidden_arguments", "rule": "read-only"}
        assert "'read-only'" in error["message"]
    assert allowed.status_code == 200 and json.loads(allowed.text)["result"]["content"][0]["text"] == "1"
    assert backend.calls == 1  # only the allowed call reached it


async def test_an_sdk_client_sees_and_gets_only_what_its_roles_allow(http_backend: Child) -> None:
    async with gateway_for(http_backend.url, admission=Fixed(rbac(WEB_RULES), DEV)) as gw:
        async with Client(gw.url, mode="legacy") as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"web__echo", "web__progress"}
            assert [p.name for p in (await client.list_prompts()).prompts] == ["web__greet"]
            assert (await client.list_resources()).resources == []  # web+clock://epoch is not under tz/
            templates = (await client.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["web+clock://tz/{zone}"]
            read = await client.read_resource("web+clock://tz/utc")
            assert read.contents[0].text == "time zone utc"  # type: ignore[union-attr]
            prompt = await client.get_prompt("web__greet", {"name": "Ada"})
            assert "Ada" in prompt.messages[0].content.text  # type: ignore[union-attr]
            errors = []
            for uri in ("web+clock://epoch", "nowhere+clock://epoch"):  # hidden, and a namespace nobody serves
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(uri)
                errors.append((caught.value.error.code, caught.value.error.message.replace(uri, "URI")))
            assert errors[0] == errors[1] == (-32002, "resource not found: URI")
    async with gateway_for(http_backend.url, admission=Fixed(rbac(WEB_RULES), who("dev", "intern"))) as gw:
        async with Client(gw.url, mode="legacy") as client:
            assert (await client.list_prompts()).prompts == []  # denied to interns, whatever else they are
            with pytest.raises(MCPError) as caught:
                await client.get_prompt("web__greet", {"name": "Ada"})
            assert caught.value.error.code == -32602 and caught.value.error.message == "unknown prompt: web__greet"


async def test_the_stateless_era_is_filtered_and_refused_alike(http_backend: Child) -> None:
    async with gateway_for(http_backend.url, admission=Fixed(rbac(WEB_RULES), DEV)) as gw:
        tools = await stateless_post(gw.port, "tools/list", {})
        hidden = await stateless_post(gw.port, "tools/call", {"name": "web__multiply", "arguments": {"a": 1, "b": 2}}, "web__multiply")
        unknown = await stateless_post(gw.port, "tools/call", {"name": "web__nope", "arguments": {"a": 1, "b": 2}}, "web__nope")
        allowed = await stateless_post(gw.port, "tools/call", {"name": "web__echo", "arguments": {"text": "s"}}, "web__echo")
        hidden_read = await stateless_post(gw.port, "resources/read", {"uri": "web+clock://epoch"}, "web+clock://epoch")
        unknown_read = await stateless_post(gw.port, "resources/read", {"uri": "no+clock://epoch"}, "no+clock://epoch")
    page = json.loads(tools.text)["result"]
    assert [t["name"] for t in page["tools"]] == ["web__echo", "web__progress"] and page["cacheScope"] == "private"
    assert comparable(hidden, "web__multiply") == comparable(unknown, "web__nope")
    assert hidden.status_code == 400 and json.loads(hidden.text)["error"]["code"] == -32602
    assert comparable(hidden_read, "web+clock://epoch") == comparable(unknown_read, "no+clock://epoch")
    assert json.loads(hidden_read.text)["error"]["data"]["gateway"]["reason"] == "unknown_resource"
    assert json.loads(allowed.text)["result"]["content"][0]["text"] == "s"


async def test_forbidden_arguments_in_the_stateless_era() -> None:
    backend = Scripted(lambda n, msg: ("ok", {"content": []}))
    async with backend as url, gateway_for(url, admission=Fixed(rbac(WORK_RULES), DEV)) as gw:
        refused = await stateless_post(gw.port, "tools/call", {"name": "web__work", "arguments": {"mode": "w"}}, "web__work")
    assert refused.status_code == 403 and json.loads(refused.text)["error"]["data"]["gateway"]["rule"] == "read-only"
    assert backend.calls == 0


RBAC_TABLE = """
[rbac]
{mode}
[[rbac.rules]]
name = "everyone-echo"
tools = ["web__echo"]

[[rbac.rules]]
name = "ops-only"
roles = ["ops"]
tools = ["web__*"]
"""


async def test_the_config_files_rbac_table_is_wired_in(http_backend: Child) -> None:
    # No [auth]: callers are unauthenticated, so only the rule without a who applies.
    async with gateway_for(http_backend.url, backend=RBAC_TABLE.format(mode="")) as gw:
        async with Client(gw.url, mode="legacy") as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["web__echo"]
            assert (await client.call_tool("web__echo", {"text": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as caught:
                await client.call_tool("web__multiply", {"a": 1, "b": 2})
            assert caught.value.error.message == "unknown tool: web__multiply"


async def test_shadow_mode_through_a_gateway_refuses_nothing_and_logs(http_backend: Child, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.rbac"):
        async with gateway_for(http_backend.url, backend=RBAC_TABLE.format(mode='mode = "shadow"')) as gw:
            async with Client(gw.url, mode="legacy") as client:
                assert "web__multiply" in {t.name for t in (await client.list_tools()).tools}
                multiplied = await client.call_tool("web__multiply", {"a": 6, "b": 7})
    assert multiplied.structured_content == {"result": 42.0}
    assert "rbac shadow: would refuse tool 'web__multiply' for an unauthenticated caller (the default)" in caplog.text


async def test_the_stdio_front_applies_the_rules(http_backend: Child, tmp_path: Any) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[server]\nport = 1\n\n[backends.web]\nurl = {http_backend.url!r}\n" + RBAC_TABLE.format(mode=""))
    params = StdioServerParameters(command=sys.executable, args=["-m", "gateway", "stdio", "--config", str(config)], cwd=str(ROOT))
    with tempfile.TemporaryFile("w+") as errlog, anyio.fail_after(45):
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["web__echo"]
            assert (await client.call_tool("web__echo", {"text": "stdio"})).content[0].text == "stdio"  # type: ignore[union-attr]
            errors = []
            for name in ("web__multiply", "web__nope"):
                with pytest.raises(MCPError) as caught:
                    await client.call_tool(name, {})
                errors.append((caught.value.error.code, re.sub(name, "NAME", caught.value.error.message)))
    assert errors[0] == errors[1] == (-32602, "unknown tool: NAME")


# -- a hidden tool that declares routing headers ------------------------------------------------------


async def _stateless_call(port: int, name: str, region_header: str) -> Response:
    """A 2026-07-28 tools/call whose Mcp-Param-Region header disagrees with its arguments."""
    params = {"name": name, "arguments": {"region": "eu"}}
    return await stateless_post(port, "tools/call", params, name, {"mcp-param-region": region_header})


async def test_a_hidden_tool_with_routing_headers_is_answered_as_unknown_not_as_a_header_mismatch() -> None:
    backend = Child([sys.executable, str(ROOT / "tests" / "servers" / "conformance_server.py"), "--port", "0"], "listening on")
    rules = '[rbac]\ndefault = "allow"\n[[rbac.rules]]\nname = "hide"\neffect = "deny"\ntools = ["web__test_x_mcp_header"]\n'
    try:
        async with gateway_for(backend.url, admission=RbacAdmission(rbac(rules))) as hidden, \
                gateway_for(backend.url) as shown:
            mismatch = await _stateless_call(shown.port, "web__test_x_mcp_header", "us")
            refused = await _stateless_call(hidden.port, "web__test_x_mcp_header", "us")
            unknown = await _stateless_call(hidden.port, "web__no_such_tool", "us")
    finally:
        backend.stop()
    # Visible, the mismatch is found (the attack's signal); hidden, the answer is the unknown-tool one.
    assert json.loads(mismatch.text)["error"]["code"] == -32020
    assert refused.status_code == unknown.status_code == 400
    got, want = json.loads(refused.text)["error"], json.loads(unknown.text)["error"]
    assert got["code"] == want["code"] == -32602
    assert got["data"]["gateway"]["reason"] == want["data"]["gateway"]["reason"] == "unknown_tool"
