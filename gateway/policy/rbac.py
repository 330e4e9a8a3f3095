"""Authorization: ``[rbac]`` compiled once per config snapshot, decided once per role set and name.

``Rbac`` compiles the rules (each rule's globs become one regular expression per
kind, made once); ``RbacAdmission`` is the ``Admission`` that applies it to
routed requests (``admit``) and to list pages (``page``), so lists and calls
never disagree: an item is listed exactly when a call to it could be allowed.

What a rule means:

- **who**: ``roles``, ``scopes``, ``subjects``, any of them (a principal with one of
  the roles, or one of the scopes, or one of the subjects). A rule with none of
  the three applies to every caller.
- **what**: ``tools``, ``prompts``, ``resources``: globs (``fnmatch``, case-sensitive:
  ``*``, ``?``, ``[seq]``) over exposed tool and prompt names and resource URIs.
  Resource globs also decide ``resources/templates/list``, matched against each
  template's ``uriTemplate`` text, and ``completion/complete`` of a template. A
  kind a rule lists no glob for is one the rule says nothing about: a rule
  with only ``roles`` matches nothing (``tools = ["*"]`` says "every tool").
- **effect**: deny beats allow, whatever the order of the rules. What no rule
  decides gets ``default`` (``RbacConfig.default_effect``: deny when rules exist
  and it is unset). When an allow rule matches, the rules decide, not the
  default: under ``default = "allow"`` an allow rule with ``arguments`` still
  restricts that name's calls.
- **arguments** (``{ path = "/public/*" }``): top-level arguments of ``tools/call`` and
  ``prompts/get``, each a glob its string value must match.

  * An allow rule's conditions hold when every named argument is a string that
    matches its glob (absent or not a string: they do not hold). A call is
    allowed when no matching deny rule holds and some matching allow rule's
    conditions hold (one without conditions always holds).
  * A deny rule with conditions denies only the calls it matches, failing
    closed: it holds unless some named argument is a string *outside* its glob
    (absent, or not a string, counts as matching). A deny rule without
    conditions hides the name.
  * Resource reads and subscriptions have no arguments, so there the
    conditions are decided once, on no arguments: a deny rule with conditions
    hides the resource, an allow rule with conditions never allows it (and,
    being a matching allow rule, keeps the default from allowing it either).
    Completions (``completion/complete``) are decided by visibility only.

"Could be allowed" (visible, listed): some allow rule matching the principal and
the name (with or without conditions), or the default allow, and no
unconditional deny rule matching them. A name the principal may not see is
answered exactly as an unknown name (the same error ``Routing`` gives: -32602,
or -32002 for a resource in the handshake era; with ``passthrough`` on, where a
really unknown name would reach the backend, the gateway's own unknown-name
error). A visible name called with arguments no rule allows, or that a
conditional deny rule matches, gets ``Forbidden`` (-32052, 403) naming that rule.

**No principal** (no ``[auth]``): only rules without a who apply. A rule naming
roles, scopes or subjects never matches an unauthenticated caller, so with
``[rbac]`` but no ``[auth]`` those rules refuse nothing and allow nothing
(``build_admission`` warns about it).

**Caching** (no glob matching per request in the common case): a principal's
``key`` maps, once, to its *group*: the set of rules whose who matches it (two
principals with the same roles, scopes and subject-rules share a group, so
thousands of users with three role sets make three groups). A decision is cached
per ``(group, kind, name)``, a filtered list per ``(group, method, era)`` and
snapshot; and ``RbacAdmission`` remembers each ``(principal key, method, name)``
admitted with nothing to check, so the common call costs one dict lookup.
Every cache is a bounded dict, cleared when full.

``mode = "shadow"`` decides and logs each would-be refusal (logger
``gateway.rbac``, INFO, with the subject, the name and the rule) but refuses
nothing and filters no list. In ``enforce`` mode every refusal is logged at
DEBUG with its rule, and each decision at DEBUG when it is first made.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.catalog.aggregate import LIST_METHODS
from gateway.errors import Forbidden, GatewayError, InvalidParams, ResourceNotFound
from gateway.policy.admission import Admission, Route, Verdict

if TYPE_CHECKING:
    from gateway.catalog.aggregate import CatalogSnapshot
    from gateway.config import RbacConfig, RbacRule
    from gateway.policy.identity import Principal
    from gateway.protocol.jsonrpc import Raw

__all__ = ["Decision", "Rbac", "RbacAdmission", "Rule", "compile_globs", "unknown_name"]

log = logging.getLogger("gateway.rbac")

KINDS = ("tool", "prompt", "resource")

METHOD_KINDS: dict[str, str] = {
    "tools/call": "tool",
    "prompts/get": "prompt",
    "resources/read": "resource",
    "resources/subscribe": "resource",
    "resources/unsubscribe": "resource",
}
"""Routed method -> the kind of item it names (``completion/complete``: its ``ref``'s kind)."""

LIST_KINDS: dict[str, str] = {
    "tools/list": "tool",
    "prompts/list": "prompt",
    "resources/list": "resource",
    "resources/templates/list": "resource",
}
"""List method -> the kind of its items."""

Matcher = Callable[[str], object]
"""A compiled glob set: ``re.Pattern.match`` (truthy when the whole string matches one glob)."""

_decode = msgspec.json.decode
_UNSET: Any = object()


def compile_globs(globs: Iterable[str]) -> Matcher | None:
    """One compiled matcher for a list of ``fnmatch`` globs (case-sensitive); None for no globs."""
    parts = [fnmatch.translate(glob) for glob in globs]
    return re.compile("|".join(parts)).match if parts else None


def unknown_name(kind: str, value: str, ctx: Any) -> GatewayError:
    """The error ``gateway.front.routing.Routing.fallback`` gives a name it does not know, built
    the same way (policy must not import front; ``tests/test_rbac.py`` holds the two equal)."""
    key = "name" if kind != "resource" else "uri"
    if kind == "resource" and (ctx is None or ctx.era == "handshake"):
        return ResourceNotFound(f"resource not found: {value}", data={key: value}, spec_data={"uri": value})
    return InvalidParams(f"unknown {kind}: {value}", reason=f"unknown_{kind}", data={key: value})


class Rule:
    """One compiled ``[[rbac.rules]]`` entry."""

    __slots__ = ("name", "index", "deny", "anyone", "roles", "scopes", "subjects", "match", "conditions")

    def __init__(self, index: int, rule: RbacRule) -> None:
        self.name = rule.name
        self.index = index
        self.deny = rule.effect == "deny"
        self.roles = frozenset(rule.roles)
        self.scopes = frozenset(rule.scopes)
        self.subjects = frozenset(rule.subjects)
        self.anyone = not (self.roles or self.scopes or self.subjects)
        self.match: dict[str, Matcher | None] = {
            "tool": compile_globs(rule.tools),
            "prompt": compile_globs(rule.prompts),
            "resource": compile_globs(rule.resources),
        }
        """Kind -> the compiled globs of that kind (None: the rule says nothing about it)."""
        self.conditions: tuple[tuple[str, Matcher], ...] = tuple(
            (key, compile_globs([glob])) for key, glob in sorted(rule.arguments.items())  # type: ignore[misc]
        )

    def applies_to(self, principal: Principal | None) -> bool:
        """Whether this rule's who matches ``principal`` (None: only a rule without a who)."""
        if self.anyone:
            return True
        if principal is None:
            return False
        return bool(self.roles & principal.roles or self.scopes & principal.scopes or principal.subject in self.subjects)

    def covers(self, kind: str, name: str) -> bool:
        """Whether this rule's globs of ``kind`` match ``name``."""
        match = self.match[kind]
        return match is not None and match(name) is not None

    def allows(self, arguments: dict[str, Any]) -> bool:
        """An allow rule's conditions: every named argument a string inside its glob."""
        for key, match in self.conditions:
            value = arguments.get(key)
            if not isinstance(value, str) or match(value) is None:
                return False
        return True

    def denies(self, arguments: dict[str, Any]) -> bool:
        """A deny rule's conditions, failing closed: escaped only by a string outside a glob."""
        for key, match in self.conditions:
            value = arguments.get(key)
            if isinstance(value, str) and match(value) is None:
                return False
        return True


class Decision:
    """What RBAC decided for one group of principals and one name.

    ``visible``: listed, and a call to it could be allowed. ``rule``: the name of the rule that
    decided (None: the default). ``allow``: the allow rules whose conditions a call must meet
    (any one of them), or None when the call needs none. ``deny``: the deny rules with
    conditions that refuse a call they match. ``plain``: visible with nothing to check per call.
    """

    __slots__ = ("visible", "rule", "allow", "deny", "plain")

    def __init__(
        self, visible: bool, rule: str | None, allow: tuple[Rule, ...] | None = None, deny: tuple[Rule, ...] = ()
    ) -> None:
        self.visible = visible
        self.rule = rule
        self.allow = allow
        self.deny = deny
        self.plain = visible and allow is None and not deny

    def refusing_rule(self, arguments: Any) -> str | None:
        """The rule that refuses a call with these (decoded) arguments, or None: allowed."""
        args = arguments if isinstance(arguments, dict) else {}
        for rule in self.deny:
            if rule.denies(args):
                return rule.name
        if self.allow is None:
            return None
        for rule in self.allow:
            if rule.allows(args):
                return None
        return self.allow[0].name

    def __repr__(self) -> str:
        rule = "default" if self.rule is None else repr(self.rule)
        extra = "" if self.plain or not self.visible else " with argument rules"
        return f"Decision({'visible' if self.visible else 'hidden'} by {rule}{extra})"


class Rbac:
    """``[rbac]`` compiled: ``decide(principal, kind, name)``, cached (see the module docstring)."""

    def __init__(self, config: RbacConfig, *, max_entries: int = 65536, max_groups: int = 4096) -> None:
        self.rules = [Rule(i, rule) for i, rule in enumerate(config.rules)]
        self.default_allow = config.default_effect == "allow"
        self.shadow = config.mode == "shadow"
        self.max_entries = max_entries
        self.max_groups = max_groups
        self.epoch = 0
        """Bumped when group ids are given out afresh (caches keyed by group must drop)."""
        self._groups: dict[Any, int] = {}
        """principal.key (None: no principal) -> group id."""
        self._group_ids: dict[tuple[int, ...], int] = {}
        """Indices of the rules whose who matches -> group id."""
        self._group_rules: list[list[Rule]] = []
        """Group id -> the rules that apply to it, in config order."""
        self.decisions: dict[tuple[int, str, str], Decision] = {}
        """(group id, kind, name) -> decision."""
        self._interned: dict[tuple[Any, ...], Decision] = {}

    def group(self, principal: Principal | None) -> int:
        """The group of ``principal``: which rules apply to it, as a small int (cached by its key)."""
        key = principal.key if principal is not None else None
        group = self._groups.get(key)
        if group is None:
            group = self._new_group(principal, key)
        return group

    def _new_group(self, principal: Principal | None, key: Any) -> int:
        if len(self._groups) >= self.max_entries:
            self._groups.clear()
        applies = tuple(rule.index for rule in self.rules if rule.applies_to(principal))
        group = self._group_ids.get(applies)
        if group is None:
            if len(self._group_ids) >= self.max_groups:
                self._reset()
            group = len(self._group_rules)
            self._group_ids[applies] = group
            self._group_rules.append([self.rules[i] for i in applies])
        self._groups[key] = group
        return group

    def _reset(self) -> None:
        self._groups.clear()
        self._group_ids.clear()
        self._group_rules.clear()
        self.decisions.clear()
        self.epoch += 1

    def decide(self, principal: Principal | None, kind: str, name: str) -> Decision:
        """The decision for ``principal`` and one exposed name (``kind``: tool, prompt, resource)."""
        group = self.group(principal)
        decision = self.decisions.get((group, kind, name))
        if decision is None:
            decision = self.decide_group(group, kind, name, principal)
        return decision

    def decide_group(self, group: int, kind: str, name: str, principal: Principal | None = None) -> Decision:
        """``decide`` for a group id from ``group``; glob matching happens here, on a cache miss only."""
        key = (group, kind, name)
        decision = self.decisions.get(key)
        if decision is not None:
            return decision
        decision = self._compute(self._group_rules[group], kind, name)
        if len(self.decisions) >= self.max_entries:
            self.decisions.clear()
        self.decisions[key] = decision
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rbac: %s %r for %s: %r", kind, name, _who(principal), decision)
        return decision

    def _compute(self, rules: list[Rule], kind: str, name: str) -> Decision:
        allow: list[Rule] = []
        deny: list[Rule] = []
        unconditional: Rule | None = None
        never: Rule | None = None
        # Resources have no arguments: there a rule's conditions are decided now, on none.
        arguments = kind != "resource"
        for rule in rules:
            if not rule.covers(kind, name):
                continue
            if rule.deny:
                if not rule.conditions or not arguments:  # (on no arguments a deny rule's conditions hold)
                    return self._intern(False, rule.name)  # deny beats allow: hidden
                deny.append(rule)
            elif not rule.conditions:
                unconditional = unconditional or rule
            elif arguments:
                allow.append(rule)
            else:
                never = never or rule  # an allow rule whose conditions no resource read meets
        denies = tuple(deny)
        if unconditional is not None:
            return self._intern(True, unconditional.name, None, denies)
        if allow:
            return self._intern(True, allow[0].name, tuple(allow), denies)
        if never is not None:
            return self._intern(False, never.name)  # a matching allow rule decides, not the default
        if self.default_allow:
            return self._intern(True, None, None, denies)
        return self._intern(False, None)

    def _intern(
        self, visible: bool, rule: str | None, allow: tuple[Rule, ...] | None = None, deny: tuple[Rule, ...] = ()
    ) -> Decision:
        """One shared ``Decision`` per distinct outcome (the cache holds many keys, few decisions)."""
        key = (visible, rule, allow, deny)
        decision = self._interned.get(key)
        if decision is None:
            decision = self._interned[key] = Decision(visible, rule, allow, deny)
        return decision

    def visible(self, principal: Principal | None, kind: str, name: str) -> bool:
        """Whether ``principal`` may see (and so could call) this name."""
        return self.decide(principal, kind, name).visible


def _who(principal: Principal | None) -> str:
    return "an unauthenticated caller" if principal is None else f"{principal.issuer}:{principal.subject}"


class RbacAdmission(Admission):
    """RBAC at the admission point: ``admit`` refuses what the principal may not call,
    ``page`` gives it the list of what it may see (see the module docstring)."""

    def __init__(self, config: RbacConfig | Rbac, *, max_pages: int = 256) -> None:
        self.rbac = config if isinstance(config, Rbac) else Rbac(config)
        self.shadow = self.rbac.shadow
        self.max_pages = max_pages
        self._pages: dict[tuple[int, str, bool], list[bytes] | None] = {}
        """(group, list method, stateless) -> the filtered pages (None: the snapshot's own)."""
        self._snapshot: CatalogSnapshot | None = None
        self._epoch = self.rbac.epoch
        self._plain: dict[tuple[Any, str, str], bool] = {}
        """(principal key, routed method, name) -> True: admitted with nothing to check."""
        self._plain_get = self._plain.get

    def admit(
        self, principal: Any, ctx: Any, method: str, name: str, route: Route, params: dict[str, Raw]
    ) -> Verdict | None:
        # The common call: one dict lookup, no Python call (the memo of plain "go" decisions).
        if self._plain_get((principal.key if principal is not None else None, method, name)):
            return None
        return self._admit(principal, ctx, method, name, params)

    def _admit(self, principal: Any, ctx: Any, method: str, name: str, params: dict[str, Raw]) -> Verdict | None:
        kind = METHOD_KINDS.get(method)
        if kind is None:
            if method != "completion/complete":
                return None
            return self._admit_ref(principal, ctx, name, params)
        decision = self.rbac.decide(principal, kind, name)
        if decision.plain:
            # Remembered per principal key, method and name. A decision never changes for one
            # compiled Rbac, so this memo is only ever emptied to bound it.
            plain = self._plain
            if len(plain) >= self.rbac.max_entries:
                plain.clear()
            plain[(principal.key if principal is not None else None, method, name)] = True
            return None
        if not decision.visible:
            error: GatewayError = unknown_name(kind, name, ctx)
            rule = decision.rule
        else:
            raw = params.get("arguments")
            try:
                arguments = _decode(raw) if raw is not None else {}
            except msgspec.DecodeError:
                arguments = {}
            rule = decision.refusing_rule(arguments)
            if rule is None:
                return None
            error = Forbidden(
                f"arguments of {kind} {name!r} are forbidden by rule {rule!r}",
                reason="forbidden_arguments",
                data={"rule": rule},
            )
        return self._refuse(principal, kind, name, rule, error)

    def _admit_ref(self, principal: Any, ctx: Any, value: str, params: dict[str, Raw]) -> Verdict | None:
        """``completion/complete``: decided by its ``ref`` (a prompt, or a resource template) being visible."""
        try:
            ref = _decode(params["ref"])
        except (KeyError, msgspec.DecodeError):
            return None  # routing decoded it already; nothing to decide on
        prompt = isinstance(ref, dict) and ref.get("type") == "ref/prompt"
        kind, key = ("prompt", "name") if prompt else ("resource", "uri")
        decision = self.rbac.decide(principal, kind, value)
        if decision.visible:
            return None
        error = InvalidParams(f"unknown completion target: {value}", reason="unknown_ref", data={key: value})
        return self._refuse(principal, kind, value, decision.rule, error)

    def _refuse(self, principal: Any, kind: str, name: str, rule: str | None, error: GatewayError) -> Verdict | None:
        decided = "the default" if rule is None else f"rule {rule!r}"
        if self.shadow:
            log.info("rbac shadow: would refuse %s %r for %s (%s)", kind, name, _who(principal), decided)
            return None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rbac: refused %s %r for %s (%s)", kind, name, _who(principal), decided)
        return Verdict(error=error)

    def page(self, principal: Any, ctx: Any, snapshot: CatalogSnapshot, method: str, cursor: str | None) -> bytes:
        stateless = ctx.era == "stateless"
        kind = LIST_KINDS.get(method)
        if self.shadow or kind is None:
            return snapshot.page(method, cursor, stateless)
        rbac = self.rbac
        group = rbac.group(principal)
        if snapshot is not self._snapshot or rbac.epoch != self._epoch:
            self._pages.clear()
            self._snapshot, self._epoch = snapshot, rbac.epoch
        key = (group, method, stateless)
        pages = self._pages.get(key, _UNSET)
        if pages is _UNSET:
            field = LIST_METHODS[method][1]

            def keep(item: dict[str, Any]) -> bool:
                return rbac.decide_group(group, kind, str(item.get(field, "")), principal).visible

            pages = snapshot.filtered_pages(method, keep, stateless, private=True)
            if len(self._pages) >= self.max_pages:
                self._pages.clear()
            self._pages[key] = pages
        return snapshot.page(method, cursor, stateless) if pages is None else snapshot.page_in(pages, cursor)
