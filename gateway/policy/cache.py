"""The result cache at the admission point (``[backends.NAME.cache]``), and coalescing.

A hit is answered in ``admit`` (``Verdict(result=...)``), in the express lane and
the general path alike, and nothing reaches the backend. One ``LRU``
(``gateway._fast.lru``) holds every backend's entries, within ``[gateway]
cache_max_entries`` and ``cache_max_bytes``; one per worker under ``--workers``.

**What is cacheable** is decided once per ``(backend, own name)`` and method and
remembered (no glob matching per call): ``tools/call``, ``prompts/get`` and
``resources/read`` of a backend with a ``[backends.NAME.cache]`` whose ``tools``
globs match the backend's *own* name of the tool or prompt, or the resource's own
URI (not the exposed, namespaced one); with ``read_only = true`` also every tool
the catalog lists with ``annotations.readOnlyHint: true``. Nothing else is ever
cached, and a call that is not cacheable costs two dict lookups ("go", no
allocation).

**A cacheable call must also be plain**, decided in ``admit``: its params hold
only the name (or URI), ``arguments`` and a ``_meta`` with nothing but the
stateless envelope's ``io.modelcontextprotocol/`` keys. So a call with a progress
token is never cached (nor coalesced: its progress belongs to its own client), and
neither is a multi-round-trip continuation (``inputResponses``, ``requestState``),
a task, or a ``_meta`` the backend might read. Arguments that do not canonicalise
(invalid JSON, a duplicate key: ``cache_key``) are not cached either.

**The key** is ``cache_key((era, who), method, exposed name, arguments)``:

- ``era``: the client's (``handshake`` or ``stateless``): the bytes a client gets
  differ between eras (``resultType``, and a stateless backend's own answer).
- ``who`` is whose entry it is. ``scope = "principal"``: the principal's ``key``
  (issuer, subject, roles, scopes), so a result is never served to another caller.
  ``scope = "shared"``: the string ``"shared"``, which no principal's key encodes
  as, so shared entries and a principal's never meet. **No principal**: without
  ``[auth]`` (and mutual TLS), and on the stdio front, a caller has no principal
  and ``who`` is None: every such caller is the same anonymous caller, so
  ``"principal"`` scope then shares its entries among all of them (the gateway
  cannot tell them apart).
- ``arguments`` canonicalised (key order, spacing), so equal calls meet.

**A miss** is the leader of a ``gateway.policy.coalesce.Flight`` (its note); an
identical call admitted while it is in flight is a follower (``Verdict(wait=...)``)
and shares its answer. The leader's ``outcome`` stores the result's bytes, as the
client of that era gets them, for ``ttl`` seconds, unless the call ended with
anything but a result (a JSON-RPC error, a gateway error, a cancel), or the result
is ``isError: true``, is not a complete result (``resultType`` other than
``"complete"``: an ``input_required`` round), took input from the client (the
gateway ran input rounds for it), or is not a JSON object. A stateless-era
backend's hints on the result are honoured: ``ttlMs`` shortens the ttl (``0``:
not stored), and ``cacheScope: "private"`` under ``scope = "shared"`` stores the
result under the leader's principal and from then on keys that name per principal
(until the backend's entries are dropped). A hit is sent with the bytes that were
stored: the backend's ``ttlMs`` is not reduced by the time the entry has waited.

**Dropped**: a backend's entries go as soon as it announces ``list_changed``,
again when its lists have been fetched again (that, or a change of its state),
and on its ``resources/updated`` (``Catalog.on_backend_change``); a call in
flight then stores nothing.

**Not detected**: a handshake-era backend that asks the client something in the
middle of a call (sampling, elicitation, roots) makes a result that depends on
the client's answers; such a tool should not be listed for caching, least of all
with ``scope = "shared"``. Results are assumed not to depend on the upstream
session (``session = "per-client"`` backends included).

Counters (``stats()``, read at scrape time): the cache's hits, misses, evictions,
expired entries, entries and bytes, and the calls coalesced onto another.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway._fast import LRU, cache_key
from gateway.errors import BackendTimeout, BackendUnavailable, CircuitOpen
from gateway.policy.admission import Admission, Route, Verdict
from gateway.policy.coalesce import Flight
from gateway.protocol.jsonrpc import UNSET
from gateway.protocol.stateless import as_stateless_result

if TYPE_CHECKING:
    from gateway.catalog.aggregate import Catalog, CatalogSnapshot
    from gateway.config import CacheConfig, Config
    from gateway.protocol.jsonrpc import Message, Raw

__all__ = ["CacheAdmission", "SHARED"]

log = logging.getLogger("gateway.cache")

SHARED = "shared"
"""The ``who`` of ``scope = "shared"`` entries (a JSON string: no principal's key encodes as one)."""

_PLAIN_PARAMS: dict[str, frozenset[str]] = {
    "tools/call": frozenset({"name", "arguments", "_meta"}),
    "prompts/get": frozenset({"name", "arguments", "_meta"}),
    "resources/read": frozenset({"uri", "_meta"}),
}
"""Cacheable method -> the params keys a cacheable call of it may have."""

_ENVELOPE = "io.modelcontextprotocol/"
_SHARED_ERRORS = (BackendTimeout, BackendUnavailable, CircuitOpen)
"""Gateway errors that say the backend could not answer: coalesced calls share them."""
_UNDECIDED: Any = object()
_MAX_DECISIONS = 65536
_MAX_HIT_VERDICTS = 1024
_MAX_KEYS = 4096
_MEMO_ARGUMENTS = 512
_HIT_VERDICT_BYTES = 2048


class _ResultInfo(msgspec.Struct):
    """The fields of a result that decide whether it is stored (the rest is skipped unread)."""

    isError: bool = False
    resultType: str | None = None
    ttlMs: int | None = None
    cacheScope: str | None = None


_decode_info = msgspec.json.Decoder(_ResultInfo).decode
_decode = msgspec.json.decode


class _Rule:
    """One backend's ``[backends.NAME.cache]``, compiled."""

    __slots__ = ("match", "read_only", "ttl", "shared")

    def __init__(self, config: CacheConfig) -> None:
        globs = [fnmatch.translate(glob) for glob in config.tools]
        self.match = re.compile("|".join(globs)).match if globs else None
        self.read_only = config.read_only
        self.ttl = config.ttl
        self.shared = config.scope == "shared"


class _Decision:
    """A cacheable ``(backend, own name)`` of one method: how its results are kept."""

    __slots__ = ("tag", "ttl", "shared", "allowed")

    def __init__(self, tag: str, ttl: float, shared: bool, allowed: frozenset[str]) -> None:
        self.tag = tag
        """The backend's name: what its ``list_changed`` drops."""
        self.ttl = ttl
        self.shared = shared
        """One entry for every caller; turned off when the backend says a result is private."""
        self.allowed = allowed
        """The params keys a cacheable call may have."""


class _Miss(Flight):
    """A leader's call (the note its ``admit`` leaves): what its outcome needs to store the result."""

    __slots__ = ("decision", "method", "name", "era", "arguments", "params", "epoch", "started")

    def __init__(
        self, key: bytes, owner: Any, decision: _Decision, method: str, name: str, era: str,
        arguments: bytes | None, params: dict[str, Raw], epoch: int, started: float,
    ) -> None:
        super().__init__(key, owner)
        self.decision = decision
        self.method = method
        self.name = name
        self.era = era
        self.arguments = arguments
        self.params = params
        """The request's params (the dict itself): input rounds add ``inputResponses`` to it."""
        self.epoch = epoch
        """The backend's drop count at admission: a result from before a drop is not stored."""
        self.started = started
        """When the leader was admitted (the cache's clock)."""


class CacheAdmission(Admission):
    """The cache and coalescing of one config snapshot (see the module docstring).

    ``clock`` is the monotonic clock entries expire by (a test passes a simulated one).
    """

    observes_outcomes = True

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = {name: _Rule(b.cache) for name, b in config.backends.items() if b.enabled and b.cache is not None}
        self.lru = LRU(config.gateway.cache_max_entries, config.gateway.cache_max_bytes)
        self.clock = clock
        self.catalog: Catalog | None = None
        self._memos: dict[str, dict[Route, _Decision | None]] = {method: {} for method in _PLAIN_PARAMS}
        """Method -> route -> its decision (None: not cacheable). Emptied when a backend changes."""
        self._flights: dict[bytes, _Miss] = {}
        """Key -> the leader's call in flight."""
        self._epochs: dict[str, int] = {}
        """Backend name -> how many times its entries were dropped."""
        self._read_only: tuple[CatalogSnapshot | None, frozenset[str]] = (None, frozenset())
        self._hits: dict[bytes, Verdict] = {}
        """Cached result -> the ``Verdict`` that answers with it (keyed by the stored bytes object,
        whose hash is computed once): a hit of a small result allocates no ``Verdict``."""
        self._keys: dict[tuple[str, Any, str, str, bytes | None], bytes | None] = {}
        """``(era, who, method, name, raw arguments)`` -> its cache key (None: not cacheable), for
        arguments of at most ``_MEMO_ARGUMENTS`` bytes: a repeated call is not canonicalised again."""
        self.coalesced = 0
        """Calls answered by (or waiting for) an identical call in flight."""
        timeouts = [config.gateway.request_timeout, *(b.request_timeout or 0.0 for b in config.backends.values())]
        self.flight_limit = 2.0 * max(timeouts) + 10.0
        """Seconds after which a leader whose outcome never came is given up: no identical call
        joins it any more (its followers go upstream themselves). Every call ends by its timeout
        (plus input rounds), so this only guards against a lost outcome."""
        anonymous = config.auth is None and config.server.tls_client_ca_file is None
        if anonymous and any(not rule.shared for rule in self.rules.values()):
            log.info(
                "[backends.*.cache] scope = \"principal\" without [auth]: callers have no principal, "
                "so every caller shares the same entries"
            )

    def attach(self, catalog: Catalog) -> None:
        """Read tool annotations from ``catalog``, and drop a backend's entries when it changes."""
        self.catalog = catalog
        catalog.on_backend_change.append(self.invalidate)

    def detach(self, catalog: Catalog) -> None:
        """A reload replaced this cache: it no longer hears of backend changes."""
        if self.invalidate in catalog.on_backend_change:
            catalog.on_backend_change.remove(self.invalidate)

    # -- admit ------------------------------------------------------------------------------

    def admit(
        self, principal: Any, ctx: Any, method: str, name: str, route: Route, params: dict[str, Raw]
    ) -> Verdict | None:
        # Written for the interpreter: a hit is the common cacheable call, and every line here is paid by it.
        memo = self._memos.get(method)
        if memo is None:
            return None
        decision = memo.get(route, _UNDECIDED)
        if decision is _UNDECIDED:
            decision = self._decide(memo, method, name, route)
        if decision is None:
            return None
        if len(params) != 2 or "arguments" not in params:
            return self._admit_other(principal, ctx, method, name, params, decision)
        raw = bytes(params["arguments"])  # the routing key and the arguments: the plain call
        if len(raw) > _MEMO_ARGUMENTS:
            who = SHARED if decision.shared else principal.key if principal is not None else None
            return self._lookup(principal, ctx, method, name, params, decision, raw, cache_key((ctx.era, who), method, name, raw))
        # The key, canonicalised once per distinct small call (cache_key decodes and encodes the arguments).
        memo_key = (ctx.era, SHARED if decision.shared else principal.key if principal is not None else None, method, name, raw)
        key = self._keys.get(memo_key, _UNDECIDED)
        if key is _UNDECIDED:
            key = self._key(memo_key)
        if key is None:
            return None  # arguments that do not canonicalise (a duplicate key, invalid JSON)
        now = self.clock()
        value = self.lru.get(key, now)
        if value is not None:
            verdict = self._hits.get(value)  # one Verdict per cached result (the front never changes one)
            return verdict if verdict is not None else self._hit(value)
        return self._missed(principal, ctx, method, name, params, decision, raw, key, now)

    def _admit_other(
        self, principal: Any, ctx: Any, method: str, name: str, params: dict[str, Raw], decision: _Decision
    ) -> Verdict | None:
        """A cacheable call whose params are not just the routing key and the arguments: plain
        only with no arguments, or with keys the decision allows and a ``_meta`` of the envelope's."""
        if len(params) != 1 and not params.keys() <= decision.allowed:
            return None
        if "_meta" in params and not self._plain_meta(ctx, params):
            return None  # a progress token, or _meta the backend may read: this call is its caller's own
        arguments = params.get("arguments")
        raw = bytes(arguments) if arguments is not None else None
        who = SHARED if decision.shared else principal.key if principal is not None else None
        key = cache_key((ctx.era, who), method, name, raw)
        if key is None:
            return None
        return self._lookup(principal, ctx, method, name, params, decision, raw, key)

    def _lookup(
        self, principal: Any, ctx: Any, method: str, name: str, params: dict[str, Raw], decision: _Decision,
        raw: bytes | None, key: bytes | None,
    ) -> Verdict | None:
        """``key`` in the cache (a hit), or in flight (a follower), or the leader of a new flight (a miss)."""
        if key is None:
            return None
        now = self.clock()
        value = self.lru.get(key, now)
        if value is not None:
            verdict = self._hits.get(value)
            return verdict if verdict is not None else self._hit(value)
        return self._missed(principal, ctx, method, name, params, decision, raw, key, now)

    def _missed(
        self, principal: Any, ctx: Any, method: str, name: str, params: dict[str, Raw], decision: _Decision,
        raw: bytes | None, key: bytes, now: float,
    ) -> Verdict:
        """Not in the cache: a follower of the identical call in flight, or the leader of a new flight."""
        owner = principal.key if principal is not None else None
        flight = self._flights.get(key)
        if flight is not None:
            if now - flight.started < self.flight_limit:
                self.coalesced += 1
                return Verdict(wait=flight.follow(owner))
            log.warning("cache: a call of %r never ended; identical calls no longer wait for it", name)
            flight.settle(None, None)
        miss = _Miss(key, owner, decision, method, name, ctx.era, raw, params, self._epochs.get(decision.tag, 0), now)
        self._flights[key] = miss
        return Verdict(note=miss)

    def _key(self, memo_key: tuple[str, Any, str, str, bytes | None]) -> bytes | None:
        """``cache_key`` of a call given as ``(era, who, method, name, raw arguments)``, remembered."""
        era, who, method, name, raw = memo_key
        key = cache_key((era, who), method, name, raw)
        keys = self._keys
        if len(keys) >= _MAX_KEYS:
            keys.clear()
        keys[memo_key] = key
        return key

    def _hit(self, value: bytes) -> Verdict:
        """The ``Verdict`` answering with ``value``, kept for the next hit when ``value`` is small
        (the kept ones hold at most ``_MAX_HIT_VERDICTS`` x ``_HIT_VERDICT_BYTES`` beyond the budget)."""
        verdict = Verdict(result=value)
        if len(value) <= _HIT_VERDICT_BYTES:
            hits = self._hits
            if len(hits) >= _MAX_HIT_VERDICTS:
                hits.clear()
            hits[value] = verdict
        return verdict

    def _decide(self, memo: dict[Route, _Decision | None], method: str, name: str, route: Route) -> _Decision | None:
        """Whether ``route`` (backend, own name) is cacheable for ``method``; glob matching happens here, once."""
        backend, own = route
        rule = self.rules.get(backend.name)
        decision = None
        if rule is not None:
            matched = rule.match is not None and rule.match(own) is not None
            if not matched and rule.read_only and method == "tools/call":
                matched = name in self._read_only_tools()
            if matched:
                decision = _Decision(backend.name, rule.ttl, rule.shared, _PLAIN_PARAMS[method])
        if len(memo) >= _MAX_DECISIONS:  # resource URIs are the client's to choose: bounded
            memo.clear()
        memo[route] = decision
        return decision

    def _read_only_tools(self) -> frozenset[str]:
        """The exposed names the current catalog lists with ``readOnlyHint: true`` (once per snapshot)."""
        snapshot = self.catalog.snapshot if self.catalog is not None else None
        if snapshot is None:
            return frozenset()
        seen, names = self._read_only
        if seen is not snapshot:
            names = frozenset(
                str(tool.get("name"))
                for tool in snapshot.items.get("tools/list", ())
                if isinstance(tool.get("annotations"), dict) and tool["annotations"].get("readOnlyHint") is True
            )
            self._read_only = (snapshot, names)
        return names

    @staticmethod
    def _plain_meta(ctx: Any, params: dict[str, Raw]) -> bool:
        """Whether ``_meta`` holds only the stateless envelope's keys (no progress token, nothing else)."""
        meta = ctx.meta if ctx.era == "stateless" and ctx.meta is not None else None
        if meta is None:
            try:
                meta = _decode(params["_meta"])
            except msgspec.DecodeError:
                return False
        return isinstance(meta, dict) and all(key.startswith(_ENVELOPE) for key in meta)

    # -- outcome ----------------------------------------------------------------------------

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
        """The leader's call ended: store its result if it may be, and settle its followers."""
        if type(note) is not _Miss:
            return  # not a cacheable miss (a hit, a follower, a call never cacheable)
        miss: _Miss = note
        if self._flights.get(miss.key) is miss:
            del self._flights[miss.key]
        shared: Message | None = None
        private = False
        if error is not None:
            miss.settle(None, error if isinstance(error, _SHARED_ERRORS) else None)
            return
        if answer is None or "inputResponses" in miss.params or "requestState" in miss.params:
            miss.settle(None, None)  # the backend asked the client something: the answer is this caller's
            return
        if answer.result is UNSET:
            shared = answer if answer.error is not UNSET else None  # the backend's JSON-RPC error, shared, not stored
        elif route is not None:
            shared, private = self._store(miss, route, bytes(answer.result), answer)
        miss.settle(shared, None, private)

    def _store(self, miss: _Miss, route: Route, raw: bytes, answer: Message) -> tuple[Message | None, bool]:
        """Store a result if it may be; what the followers get, and whether it is private."""
        try:
            info = _decode_info(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return answer, False  # not a result object we can read: shared as it is, never stored
        if info.resultType is not None and info.resultType != "complete":
            return None, False  # an input_required round (or another interim result): its caller's alone
        private = info.cacheScope == "private"
        if info.isError:
            return answer, private
        decision = miss.decision
        ttl = decision.ttl
        if info.ttlMs is not None:
            ttl = min(ttl, max(info.ttlMs, 0) / 1000.0)  # a negative ttlMs: stale at once
        if ttl <= 0.0 or self._epochs.get(decision.tag, 0) != miss.epoch:
            return answer, private  # stale before it is stored (ttlMs 0, or the backend changed meanwhile)
        key = miss.key
        if private and decision.shared:
            decision.shared = False  # the backend keeps this name's results per caller: so does the cache
            key = cache_key((miss.era, miss.owner), miss.method, miss.name, miss.arguments)  # type: ignore[assignment]
        now = self.clock()
        self.lru.put(key, _as_sent(raw, miss.method, miss.era, route[0].era_for(miss.era)), now + ttl, now, decision.tag)
        return answer, private

    # -- invalidation and counters ------------------------------------------------------------

    def invalidate(self, backend: str) -> int:
        """Drop backend ``backend``'s entries (its lists changed, its state changed, a resource of it
        was updated); calls of it in flight store nothing. Returns how many entries went."""
        self._epochs[backend] = self._epochs.get(backend, 0) + 1
        for memo in self._memos.values():
            memo.clear()  # annotations (read_only) may have changed with the lists
        for key in [key for key, miss in self._flights.items() if miss.decision.tag == backend]:
            del self._flights[key]  # new calls start a new flight; the followers waiting still get theirs
        self._hits.clear()
        dropped = self.lru.drop_tag(backend)
        if dropped and log.isEnabledFor(logging.DEBUG):
            log.debug("cache: dropped %d entries of backend %r", dropped, backend)
        return dropped

    def stats(self) -> dict[str, int]:
        """The counters: ``hits``, ``misses``, ``evictions``, ``expired``, ``entries``, ``bytes``, ``coalesced``."""
        lru = self.lru
        return {
            "hits": lru.hits,
            "misses": lru.misses,
            "evictions": lru.evictions,
            "expired": lru.expired,
            "entries": len(lru),
            "bytes": lru.bytes,
            "coalesced": self.coalesced,
        }


def _as_sent(result: bytes, method: str, client_era: str, backend_era: str) -> bytes:
    """The result as the client of ``client_era`` gets it from a backend spoken to in ``backend_era``
    (only a stateless client of a handshake backend gets other bytes, as the front sends them)."""
    if client_era != "stateless" or backend_era != "handshake":
        return result
    return as_stateless_result(result, method)
