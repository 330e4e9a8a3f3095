"""The admission chain of one config snapshot: the policies, in their fixed order.

``build_admission(config)`` makes it from the config: today RBAC only (``[rbac]``);
later the kill switch (before it), transforms, limits, cache and coalescing
(after it), in the order ``docs/architecture.md`` gives. A chain of one policy is
that policy itself (one call less per request); no policy at all is None (the
front then admits everything at no cost).

``Chain`` runs its policies in order: each ``admit`` sees the params and route the
ones before it rewrote; the first refusal or local answer ends the chain; a
rewrite goes on to the next policy and is returned at the end. ``outcome`` goes
to every policy that observes outcomes. ``page`` is the list filter of the one
policy that filters lists (``filters_lists``); composing two list filters
(kill switch and RBAC) will need a shared visibility predicate, so a chain
refuses to be built with two.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.policy.admission import Admission, Route, Verdict

if TYPE_CHECKING:
    from gateway.catalog.aggregate import CatalogSnapshot
    from gateway.config import Config
    from gateway.protocol.jsonrpc import Message, Raw

__all__ = ["Chain", "build_admission"]

log = logging.getLogger("gateway.policy")


def _filters_lists(admission: Admission) -> bool:
    return type(admission).page is not Admission.page


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
            if verdict.error is not None or verdict.result is not None:
                return verdict
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
    ) -> None:
        for admission in self.observers:
            admission.outcome(principal, ctx, method, name, route, answer, error)

    def page(self, principal: Any, ctx: Any, snapshot: CatalogSnapshot, method: str, cursor: str | None) -> bytes:
        if self.filter is not None:
            return self.filter.page(principal, ctx, snapshot, method, cursor)
        return super().page(principal, ctx, snapshot, method, cursor)


def build_admission(config: Config) -> Admission | None:
    """The admission chain ``config`` asks for: None when it asks for no policy."""
    admissions: list[Admission] = []
    if config.rbac is not None:
        from gateway.policy.rbac import RbacAdmission  # only when asked for: nothing more is loaded without it

        if config.auth is None and any(rule.roles or rule.scopes or rule.subjects for rule in config.rbac.rules):
            log.warning(
                "[rbac] rules name roles, scopes or subjects but [auth] is not configured: "
                "callers are unauthenticated, and only rules without roles/scopes/subjects apply to them"
            )
        admissions.append(RbacAdmission(config.rbac))
    if not admissions:
        return None
    return admissions[0] if len(admissions) == 1 else Chain(admissions)
