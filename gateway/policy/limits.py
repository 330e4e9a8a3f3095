"""Rate limits: ``[[limits]]`` at the admission point, one token bucket per limit and key.

What counts: routed calls only, ``tools/call``, ``resources/read`` and ``prompts/get``
(``initialize``, lists, pings and notifications never reach admission;
``resources/subscribe``, ``unsubscribe`` and ``completion/complete`` pass it but are
never counted). A limit applies to a call when one of its ``tools`` globs (``fnmatch``,
case-sensitive, over the exposed tool or prompt name or resource URI) matches the
exposed name.

Each limit has up to two dimensions, each a bucket per key:

- **calls**: ``rate`` calls per second, ``burst`` at once; a call takes one token.
- **bytes**: ``bytes_rate`` / ``bytes_burst``, request plus response. A call takes its
  request's bytes when admitted: the sum of the raw JSON of its params' values (the
  name or URI, the arguments, ``_meta``: about the request body less the JSON-RPC
  envelope). Its answer's bytes (the raw ``result`` or ``error`` the backend sent) are
  debited in ``outcome`` once it has passed, so the bucket may go below zero and later
  calls wait. A request larger than ``bytes_burst`` could never pass: it is refused 413
  (``RequestTooLarge``, no ``Retry-After``, since waiting would not help).

The key of a bucket is the limit's ``key`` parts, in order: ``principal`` (the caller's
``Principal.owner``, its ``(issuer, subject)``: a refreshed token with other scopes keeps
its bucket; None without ``[auth]``), ``tool`` (the exposed name), ``backend`` (the
backend the call is routed to), ``client_ip`` (the TCP peer's address; None on stdio;
a proxy in front of the gateway makes every client one address). ``[]`` is one bucket
for everyone.

A refused call takes no token of any limit: the limits a call matches are taken in
config order and, when one refuses, what the ones before it took is given back. The
refusal names the limit with the longest wait (so a client that waits as told is not
refused again by another limit), as ``RateLimited`` (-32053, HTTP 429) with:

- ``Retry-After``: the wait in seconds, rounded up (at least 1);
- ``RateLimit-Policy: "NAME";q=BURST;w=WINDOW`` and ``RateLimit: "NAME";r=REMAINING;t=SECONDS``
  (draft-ietf-httpapi-ratelimit-headers: ``q`` the bucket's size, ``w`` the seconds it
  takes to refill from empty, ``r`` the whole tokens left, ``t`` the same seconds as
  ``Retry-After``; ``qu="content-bytes"`` for the bytes dimension). They are sent on
  refusals only, so an admitted call pays nothing for them;
- ``data.retryAfterMs`` at the top of the error's data (where MCP's SEP-3304 puts it;
  its code -32023 is not settled, so the gateway keeps -32053) and the limit's name in
  ``data.gateway.limit``.

Decisions are compiled once per config snapshot: the limits a name matches are found
by glob once per name and remembered (a bounded dict), so a call matching no limit
costs one dict lookup and a call matching one limit one bucket ``take`` per dimension.
``observes_outcomes`` is true only when some limit has a bytes dimension.

**Across reloads.** A reload builds a new ``LimitsAdmission`` with the running one as
``previous``: each ``[[limits]]`` entry that is unchanged keeps its ``Limit`` (buckets and
refusal count), so reloading never refills anyone's bucket; a changed entry starts full.

**Per worker.** The buckets live in the worker process (``gateway._fast.TokenBuckets``,
bounded, idle buckets evicted): with ``--workers N`` each worker counts on its own, so a
client spread over N workers may get up to N times the rate. Exact limits across workers
and instances need a shared store: anything with ``BucketStore``'s three methods (a
bucket's whole state is ``(tokens, last)``) can sit behind a limit through ``stores``.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from collections.abc import Callable, Hashable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from gateway._fast import TokenBuckets
from gateway.errors import GatewayError, RateLimited, RequestTooLarge
from gateway.policy.admission import Admission, Route, Verdict
from gateway.protocol.jsonrpc import UNSET

if TYPE_CHECKING:
    from gateway.config import LimitConfig
    from gateway.protocol.jsonrpc import Message, Raw

__all__ = ["COUNTED", "BucketStore", "Dimension", "Limit", "LimitsAdmission", "Plan", "local_store"]

log = logging.getLogger("gateway.limits")

COUNTED = frozenset({"tools/call", "resources/read", "prompts/get"})
"""The routed methods a limit counts."""

# Where each key part sits in the per-request values tuple ``_values`` builds. The last slot
# holds (), the key of a limit with ``key = []`` (one bucket): every key is one itemgetter call.
_PARTS = {"principal": 0, "tool": 1, "backend": 2, "client_ip": 3}
_GLOBAL = 4
_BYTES = ';qu="content-bytes"'


class BucketStore(Protocol):
    """Where a limit's buckets live: ``gateway._fast.TokenBuckets`` (per worker) by default;
    a shared store (exact across workers and instances) implements the same three calls.
    They are synchronous: admission never awaits, so a remote store must answer from a local
    view it keeps in step off the request path."""

    def take(self, key: Hashable, cost: float, now: float, rate: float, burst: float) -> float:
        """Take ``cost`` tokens: 0.0 when taken, else the seconds to wait (inf: never); a refusal takes nothing."""
        ...

    def debit(self, key: Hashable, cost: float, now: float, rate: float, burst: float) -> None:
        """Subtract ``cost`` after the fact (may go below zero); a negative cost gives tokens back."""
        ...

    def peek(self, key: Hashable, now: float, rate: float, burst: float) -> float:
        """The tokens ``key`` has at ``now``, changing nothing."""
        ...


StoreFactory = Callable[[str, str, float], BucketStore]
"""``stores(limit name, "calls" | "bytes", idle seconds)``: the store of one limit's dimension.
A limit's keys are unique within its own store only: a store shared by several limits must
prefix each key with the limit's name and the dimension."""


def local_store(name: str, dimension: str, idle: float) -> BucketStore:
    """The default store: this worker's own bounded bucket table (100,000 keys per limit and dimension)."""
    return TokenBuckets(100_000, idle)


def _idle(rate: float, burst: float) -> float:
    """How long an unused bucket that is not yet full is kept: long enough that a calls bucket
    (never below zero) is only dropped once it is full again, and at least five minutes."""
    return max(300.0, 2.0 * burst / rate)


def _window(rate: float, burst: float) -> int:
    """``w`` of ``RateLimit-Policy``: whole seconds to refill the bucket from empty (at least 1)."""
    return max(1, math.ceil(burst / rate))


def _sf_string(text: str) -> str:
    """``text`` as a structured-field string (RFC 8941): quoted, ``\\`` and ``"`` escaped; a
    character it cannot hold (a tab, non-ASCII) becomes ``?`` (``data.gateway.limit`` has the exact name)."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{out}"'


class Dimension:
    """One dimension of a limit, ``calls`` or ``bytes``: its store, its rate and its bucket size."""

    __slots__ = ("limit", "kind", "store", "rate", "burst")

    def __init__(self, limit: Limit, kind: str, rate: float, burst: float, stores: StoreFactory) -> None:
        self.limit = limit
        self.kind = kind
        self.rate = rate
        self.burst = burst
        self.store = stores(limit.name, kind, _idle(rate, burst))

    def wait(self, key: Hashable, cost: float, now: float) -> float:
        """Seconds until ``cost`` could be taken from ``key``'s bucket (0: now; inf: never)."""
        tokens = self.store.peek(key, now, self.rate, self.burst)
        if tokens >= cost:
            return 0.0
        return math.inf if cost > self.burst else (cost - tokens) / self.rate


class Limit:
    """One compiled ``[[limits]]`` entry: its globs, its key and its dimensions."""

    __slots__ = ("name", "label", "match", "key_of", "calls", "bytes", "refused")

    def __init__(self, config: LimitConfig, stores: StoreFactory = local_store) -> None:
        self.name = config.name
        self.refused = 0
        """Calls this limit refused (a refusal is counted once, by the limit it names)."""
        self.label = _sf_string(self.name)
        """The name as it appears in the ``RateLimit`` headers."""
        parts = [fnmatch.translate(glob) for glob in config.tools]
        self.match: Callable[[str], object] | None = re.compile("|".join(parts)).match if parts else None
        """The ``tools`` globs as one matcher (None: ``tools = []``, matches nothing)."""
        self.key_of = itemgetter(*([_PARTS[part] for part in config.key] or [_GLOBAL]))
        """The per-request values (see ``LimitsAdmission._values``) -> this limit's bucket key."""
        self.calls: Dimension | None = None
        if config.rate is not None:
            self.calls = Dimension(self, "calls", config.rate, config.calls_burst, stores)
        self.bytes: Dimension | None = None
        if config.bytes_rate is not None:
            self.bytes = Dimension(self, "bytes", config.bytes_rate, config.bytes_capacity, stores)

    def covers(self, name: str) -> bool:
        """Whether this limit applies to calls of the exposed ``name``."""
        return self.match is not None and self.match(name) is not None

    def __repr__(self) -> str:
        return f"Limit({self.name!r})"


Take = tuple[Callable[[Any], Hashable], BucketStore, float, float, "Dimension"]
"""One bucket a call takes from, flattened for the hot path: ``(key_of, store, rate, burst, dimension)``."""


class Plan:
    """The limits one exposed name is subject to, in config order, compiled for ``admit``:
    ``calls`` and ``bytes`` are the buckets each call takes from (``bytes`` None: none);
    ``single`` is the one bucket of a plan that has only one (the common case, taken without a loop)."""

    __slots__ = ("limits", "calls", "bytes", "single")

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        self.limits = limits
        self.calls: tuple[Take, ...] = tuple(_take(limit, limit.calls) for limit in limits if limit.calls is not None)
        taken = tuple(_take(limit, limit.bytes) for limit in limits if limit.bytes is not None)
        self.bytes: tuple[Take, ...] | None = taken or None
        self.single: Take | None = self.calls[0] if len(self.calls) == 1 and self.bytes is None else None

    def takes(self) -> tuple[Take, ...]:
        """Every bucket a call takes from, in the order ``admit`` takes them."""
        return self.calls + (self.bytes or ())

    def __repr__(self) -> str:
        return f"Plan({[limit.name for limit in self.limits]})"


def _take(limit: Limit, dimension: Dimension) -> Take:
    return (limit.key_of, dimension.store, dimension.rate, dimension.burst, dimension)


_NO_LIMIT: tuple[()] = ()
"""The plan of a name no limit applies to (falsy: ``admit`` tests it with one ``not``)."""


class LimitsAdmission(Admission):
    """``[[limits]]`` at the admission point (see the module docstring).

    ``clock``: monotonic seconds (``time.monotonic``; tests pass a simulated one).
    ``stores``: where each limit's buckets live (``local_store``: this worker's).
    ``max_names``: how many names' plans are remembered (the memo is emptied when full).
    ``previous``: the running snapshot's limits, on a reload: a limit whose ``[[limits]]`` entry
    is unchanged is carried over whole (its buckets and refusal count), so a reload never hands
    every caller a fresh burst; a changed, new or renamed entry starts with full buckets.
    """

    def __init__(
        self,
        limits: Sequence[LimitConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
        stores: StoreFactory = local_store,
        max_names: int = 65536,
        previous: LimitsAdmission | None = None,
    ) -> None:
        self.configs = list(limits)
        """The ``[[limits]]`` entries, in order (what a reload compares)."""
        kept = previous.carried(self.configs) if previous is not None else {}
        self.limits = [kept.get(index) or Limit(limit, stores) for index, limit in enumerate(self.configs)]
        self.clock = clock
        self.max_names = max_names
        self.observes_outcomes = any(limit.bytes is not None for limit in self.limits)
        self.plans: dict[str, Plan | tuple[()]] = {}
        """Exposed name -> its plan (``()``: no limit applies): the glob matching of each name, done once."""
        self._plans_get = self.plans.get
        self._interned: dict[tuple[Limit, ...], Plan] = {}

    def carried(self, configs: Sequence[LimitConfig]) -> dict[int, Limit]:
        """This snapshot's ``Limit`` for each of ``configs`` (by index) whose entry it has
        unchanged (``[[limits]]`` names are unique, so the name finds the entry to compare)."""
        mine = {config.name: (config, limit) for config, limit in zip(self.configs, self.limits)}
        out: dict[int, Limit] = {}
        for index, config in enumerate(configs):
            found = mine.get(config.name)
            if found is not None and found[0] == config:
                out[index] = found[1]
        return out

    def state(self) -> list[dict[str, Any]]:
        """Each limit's refusals and buckets in use (``GET /admin/limits``), in config order."""
        out = []
        for limit in self.limits:
            entry: dict[str, Any] = {"name": limit.name, "refused": limit.refused}
            for dimension in (limit.calls, limit.bytes):
                if dimension is not None:
                    store = dimension.store
                    entry[dimension.kind] = {
                        "rate": dimension.rate, "burst": dimension.burst,
                        "buckets": len(store) if hasattr(store, "__len__") else None,
                    }
            out.append(entry)
        return out

    def plan(self, name: str) -> Plan | None:
        """The limits calls of ``name`` are subject to (None: none); matched by glob once per name."""
        plan = self._plans_get(name)
        if plan is None:
            limits = tuple(limit for limit in self.limits if limit.covers(name))
            plan = self._interned.get(limits) if limits else _NO_LIMIT
            if plan is None:
                plan = self._interned[limits] = Plan(limits)  # one shared Plan per distinct set of limits
            if len(self.plans) >= self.max_names:
                self.plans.clear()
            self.plans[name] = plan
        return plan or None

    @staticmethod
    def _values(principal: Any, ctx: Any, name: str, route: Route) -> tuple[Any, ...]:
        """What the key parts are made of, for one call (indexed by ``_PARTS``)."""
        return (principal.owner if principal is not None else None, name, route[0].name, ctx.client_ip, ())

    def admit(
        self, principal: Any, ctx: Any, method: str, name: str, route: Route, params: dict[str, Raw]
    ) -> Verdict | None:
        # Written for the interpreter: every bytecode here is paid by every limited call.
        plan = self._plans_get(name)
        if plan is None:
            plan = self.plan(name)
        if not plan or method not in COUNTED:
            return None  # the common unlimited call: one dict lookup
        now = self.clock()
        values = (principal.owner if principal is not None else None, name, route[0].name, ctx.client_ip, ())
        single = plan.single  # type: ignore[union-attr]
        if single is not None:  # one limit, calls only: no loop
            key_of, store, rate, burst, dimension = single
            if store.take(key_of(values), 1.0, now, rate, burst):
                return self._refuse(plan, dimension, values, now, params)  # type: ignore[arg-type]
            return None
        return self._admit_all(plan, values, now, params)  # type: ignore[arg-type]

    def _admit_all(self, plan: Plan, values: tuple[Any, ...], now: float, params: dict[str, Raw]) -> Verdict | None:
        """Several buckets: the calls of each limit, then the request's bytes; the first refusal stops."""
        for key_of, store, rate, burst, dimension in plan.calls:
            if store.take(key_of(values), 1.0, now, rate, burst):
                return self._refuse(plan, dimension, values, now, params)
        if plan.bytes is not None:
            size = float(sum(map(len, params.values())))
            for key_of, store, rate, burst, dimension in plan.bytes:
                if store.take(key_of(values), size, now, rate, burst):
                    return self._refuse(plan, dimension, values, now, params)
            # The answer's bytes go to the buckets this call took from: its key parts travel with it
            # (the session's context is shared, and may hold another request's client_ip by then).
            return Verdict(note=values)
        return None

    def _refuse(
        self, plan: Plan, stopped: Dimension, values: tuple[Any, ...], now: float, params: dict[str, Raw]
    ) -> Verdict:
        """``stopped`` refused: give back what the call took before it, then answer with the longest
        wait of any bucket the call needs (so that waiting as told is enough for every limit)."""
        size = float(sum(map(len, params.values())))
        for key_of, _, rate, burst, dimension in plan.takes():
            if dimension is stopped:
                break
            dimension.store.debit(key_of(values), -(1.0 if dimension.kind == "calls" else size), now, rate, burst)
        worst, wait = stopped, 0.0
        for key_of, _, _, _, dimension in plan.takes():
            this = dimension.wait(key_of(values), 1.0 if dimension.kind == "calls" else size, now)
            if this > wait:
                worst, wait = dimension, this
        if wait <= 0.0:  # only a store that disagrees with itself gets here: refuse as it said
            wait = 1.0
        key = worst.limit.key_of(values)
        worst.limit.refused += 1
        tokens = worst.store.peek(key, now, worst.rate, worst.burst)
        error = _refusal(worst, wait, tokens, size)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("limit %r (%s) refused a call of %r: %s", worst.limit.name, worst.kind, values[1], error.message)
        return Verdict(error=error)

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
        """The answer's bytes, debited from each bytes dimension the call was taken from."""
        if route is None or answer is None or method not in COUNTED:
            return  # refused or answered locally (nothing came back from a backend), or not counted
        plan = self.plan(name)
        if plan is None or plan.bytes is None:
            return
        raw = answer.result if answer.result is not UNSET else answer.error
        size = float(len(raw)) if raw is not UNSET else 0.0  # type: ignore[arg-type]
        if not size:
            return
        now = self.clock()
        values = note if note is not None else self._values(principal, ctx, name, route)
        for key_of, _, rate, burst, dimension in plan.bytes:
            dimension.store.debit(key_of(values), size, now, rate, burst)


def _refusal(dimension: Dimension, wait: float, tokens: float, size: float) -> GatewayError:
    """The error a refused call gets (``RateLimited`` with its headers; 413 when it can never pass)."""
    limit, burst = dimension.limit, dimension.burst
    if math.isinf(wait):
        return RequestTooLarge(
            f"the request's {int(size)} bytes exceed limit {limit.name!r}'s bytes_burst ({int(burst)}): it can never pass",
            reason="above_limit_burst",
            data={"limit": limit.name, "bytes": int(size), "bytes_burst": int(burst)},
        )
    seconds = max(1, math.ceil(wait))
    unit = _BYTES if dimension.kind == "bytes" else ""
    headers = (
        ("retry-after", str(seconds)),
        ("ratelimit-policy", f"{limit.label};q={int(burst)};w={_window(dimension.rate, burst)}{unit}"),
        ("ratelimit", f"{limit.label};r={max(0, math.floor(tokens))};t={seconds}"),
    )
    return RateLimited(
        f"rate limit {limit.name!r} reached ({dimension.kind}): retry in {seconds} s",
        data={"limit": limit.name, "dimension": dimension.kind},
        headers=headers,
        spec_data={"retryAfterMs": max(1, math.ceil(wait * 1000.0))},
    )
