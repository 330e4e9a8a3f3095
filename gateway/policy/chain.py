"""The admission chain of one config snapshot: the policies, in their fixed order.

``build_admission(config)`` makes it from the config: RBAC (``[rbac]``), then the
argument transforms (``inject``/``defaults``, ``gateway.policy.transforms``), then the
rate limits (``[[limits]]``, ``gateway.policy.limits``), then the result cache and
coalescing (``[backends.NAME.cache]``, ``gateway.policy.cache``); later the kill
switch (before them), in the order ``docs/architecture.md`` gives. A chain of one
policy is that policy itself (one call less per request); no policy at all is None
(the front then admits everything at no cost).

``Chain`` runs its policies in order: each ``admit`` sees the params and route the
ones before it rewrote; the first refusal or local answer ends the chain; a
rewrite goes on to the next policy and is returned at the end (a coalesced call,
``Verdict.wait``, ends the chain too, and keeps the rewrites made before it: it may
have to go upstream itself). ``outcome`` goes to every policy that observes
outcomes, each with the note it left (``Verdict.note``; the chain keeps them per
policy, in a ``_Notes``, only for requests that have one). ``attach`` goes to every
policy. ``page`` is the list filter of the one policy that filters lists
(``filters_lists``); composing two list filters (kill switch and RBAC) will need a
shared visibility predicate, so a chain refuses to be built with two.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.policy.admission import Admission, Route, Verdict

if TYPE_CHECKING:
    from gateway.catalog.aggregate import Catalog, CatalogSnapshot
    from gateway.config import Config
    from gateway.protocol.jsonrpc import Message, Raw

__all__ = ["Chain", "build_admission", "policy_named"]

log = logging.getLogger("gateway.policy")


def _filters_lists(admission: Admission) -> bool:
    return type(admission).page is not Admission.page


class _Notes(dict):  # type: ignore[type-arg]
    """The notes the policies of a chain left for one request: policy -> its note."""

    __slots__ = ()


def _noted(rewritten: Verdict | None, admission: Admission, note: Any) -> Verdict:
    """``rewritten`` (made if None) with ``admission``'s note added to the chain's notes."""
    if rewritten is None:
        rewritten = Verdict()
    notes = rewritten.note
    if notes is None:
        notes = rewritten.note = _Notes()
    notes[admission] = note
    return rewritten


def _local(verdict: Verdict, rewritten: Verdict | None, admission: Admission) -> Verdict:
    """A local answer (refusal, result, coalesced wait), with the rewrites and notes the policies
    before it made (the wait may go upstream with them; the outcome hook sees the notes)."""
    if verdict.note is not None:
        rewritten = _noted(rewritten, admission, verdict.note)
    if rewritten is None:
        return verdict
    return Verdict(
        route=rewritten.route, params=rewritten.params, error=verdict.error, result=verdict.result,
        wait=verdict.wait, note=rewritten.note,
    )


class Chain(Admission):
    """Several admissions, each ``admit`` in order (see the module docstring)."""

    def __init__(self, admissions: list[Admission]) -> None:
        self.admissions = list(admissions)
        self.observers = [a for a in self.admissions if a.observes_outcomes]
        self.observes_outcomes = bool(self.observers)
        filters = [a for a in self.admissions if _filters_lists(a)]
        if len(filters) > 1:
            raise ValueError("a chain takes one list filter (two need a shared visibility predicate)")
        self.filter = filters[0] if filters else None

    def admit(
        self, principal: Any, ctx: Any, method: str, name: str, route: Route, params: dict[str, Raw]
    ) -> Verdict | None:
        rewritten: Verdict | None = None
        for admission in self.admissions:
            verdict = admission.admit(principal, ctx, method, name, route, params)
            if verdict is None:
                continue
            if verdict.error is not None or verdict.result is not None or verdict.wait is not None:
                return _local(verdict, rewritten, admission)
            if verdict.note is not None:
                rewritten = _noted(rewritten, admission, verdict.note)
            if verdict.route is None and verdict.params is None:
                continue
            if rewritten is None:
                rewritten = Verdict()
            if verdict.route is not None:
                route = rewritten.route = verdict.route
            if verdict.params is not None:
                params = rewritten.params = verdict.params
        return rewritten

    def outcome(
        self,
        principal: Any,
        ctx: Any,
        method: str,
        name: str,
        route: Route | None,
        answer: Message | None,
        error: BaseException | None,
        note: Any = None,
    ) -> None:
        if note is None:
            for admission in self.observers:
                admission.outcome(principal, ctx, method, name, route, answer, error, None)
            return
        for admission in self.observers:
            admission.outcome(principal, ctx, method, name, route, answer, error, note.get(admission))

    def attach(self, catalog: Catalog) -> None:
        for admission in self.admissions:
            admission.attach(catalog)

    def detach(self, catalog: Catalog) -> None:
        for admission in self.admissions:
            admission.detach(catalog)

    def page(self, principal: Any, ctx: Any, snapshot: CatalogSnapshot, method: str, cursor: str | None) -> bytes:
        if self.filter is not None:
            return self.filter.page(principal, ctx, snapshot, method, cursor)
        return super().page(principal, ctx, snapshot, method, cursor)


def build_admission(config: Config, first: Admission | None = None, previous: Admission | None = None) -> Admission | None:
    """The admission chain ``config`` asks for: None when it asks for no policy. ``first``: a
    policy put before all the others (the observer, ``gateway.ops.observe``: it sees every
    request, the ones the others refuse or answer included). ``previous``: the running chain,
    on a reload: what state survives it (unchanged rate limits keep their buckets)."""
    admissions: list[Admission] = [first] if first is not None else []
    if config.rbac is not None:
        from gateway.policy.rbac import RbacAdmission  # only when asked for: nothing more is loaded without it

        if config.auth is None and any(rule.roles or rule.scopes or rule.subjects for rule in config.rbac.rules):
            log.warning(
                "[rbac] rules name roles, scopes or subjects but [auth] is not configured: "
                "callers are unauthenticated, and only rules without roles/scopes/subjects apply to them"
            )
        admissions.append(RbacAdmission(config.rbac))
    if any(s.inject or s.defaults for b in config.backends.values() if b.enabled for s in b.tools.values()):
        from gateway.policy.transforms import build_transforms  # after RBAC, before limits and cache: they see the call as sent

        transforms = build_transforms(config)
        if transforms is not None:
            admissions.append(transforms)
    if config.limits:
        from gateway.policy.limits import LimitsAdmission  # after RBAC: a hidden name never counts

        admissions.append(LimitsAdmission(config.limits, previous=policy_named(previous, "LimitsAdmission")))
    if any(b.cache is not None for b in config.backends.values() if b.enabled):
        from gateway.policy.cache import CacheAdmission  # last: a refused or limited call is never answered from it

        admissions.append(CacheAdmission(config))
    if not admissions:
        return None
    return admissions[0] if len(admissions) == 1 else Chain(admissions)


def policy_named(admission: Admission | None, name: str) -> Any:
    """The policy of class ``name`` in ``admission`` (a chain, or one policy), or None: how the
    admin API and the metrics find the running cache and limits."""
    for policy in getattr(admission, "admissions", [admission]):
        if type(policy).__name__ == name:
            return policy
    return None
