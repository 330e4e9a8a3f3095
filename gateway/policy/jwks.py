"""One issuer's signing keys (its JWKS), kept fresh off the request path.

``KeySet.lookup(kid, alg)`` is synchronous and does no I/O: it answers the key
object, or one of four sentinels:

- ``PENDING``: the key is not known, and a fetch is in flight (or was just
  started for it); ``await wait(timeout)`` and look again;
- ``UNKNOWN``: no such key, and no fetch is due (one was started for an unknown
  kid less than ``debounce`` seconds ago, or this kid was asked for and was not
  in the fetch made then: the negative cache);
- ``MISMATCH``: the kid names a key that does not fit the token's ``alg``
  (an RSA key for ES256, a P-384 key for ES256...);
- ``UNAVAILABLE``: no keys were ever fetched (the provider is down) and no
  fetch is due.

Where the keys come from: ``jwks_file`` (read at construction, so a bad file
stops the start, and re-read like a URL is refetched), or ``jwks_url`` over
HTTPS (``gateway.httpclient.get``, with ``gateway.tls.client_context(ca_file)``).

When they are fetched:

- at ``start()``, then again after the response's ``Cache-Control: max-age``,
  held within ``min_refresh`` .. ``max_refresh`` (60 s .. 24 h; ``no-cache`` or
  ``no-store`` mean the minimum; no header means ``default_refresh``, 10 min);
- at once when a token names a kid not in the set (rotation), at most one fetch
  in flight per issuer and at most one started for unknown kids per
  ``debounce`` seconds (10 s), however many unknown kids arrive (a token
  arriving while any fetch is in flight waits for that one); the kids asked
  for and still not in the set after that fetch are remembered for
  ``negative_ttl`` (5 min) and trigger nothing more;
- after a failure, again after ``debounce`` seconds, doubling up to 5 min. The
  keys fetched last are served meanwhile (stale while the provider is down), for
  at most ``max_stale`` (7 days) past their refresh time; then the set is empty
  and tokens of this issuer get ``UNAVAILABLE`` (503) until the provider answers.

What is taken from a JWKS: keys of type RSA (2048 bits or more), EC (P-256,
P-384, P-521) and OKP (Ed25519, Ed448), with ``use`` absent or ``sig`` and
``key_ops`` absent or including ``verify``; never ``oct`` (no shared secrets),
never a key carrying private parts. A key's ``alg``, when it has one, must be
the token's ``alg``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config import ConfigError
from gateway.httpclient import HttpClientError as FetchError
from gateway.httpclient import get as fetch
from gateway.tls import client_context

if TYPE_CHECKING:
    from gateway.config import JwtIssuerConfig

__all__ = ["KeySet", "MISMATCH", "PENDING", "UNAVAILABLE", "UNKNOWN", "max_age", "parse_jwks"]

from gateway.policy.identity import PENDING  # noqa: E402 - shared with the request path

log = logging.getLogger("gateway.auth")


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


UNKNOWN = _Sentinel("UNKNOWN")
MISMATCH = _Sentinel("MISMATCH")
UNAVAILABLE = _Sentinel("UNAVAILABLE")

# alg -> (kty, the curves it takes; None: any of the type's)
_FITS: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_LOADERS: dict[str, Any] = {"RSA": RSAAlgorithm.from_jwk, "EC": ECAlgorithm.from_jwk, "OKP": OKPAlgorithm.from_jwk}
_PRIVATE_PARTS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_MAX_KEYS = 100
_MAX_KID = 256
_MAX_UNKNOWN = 1024
_MAX_RETRY = 300.0


class JwksKey:
    """One usable public key of a JWKS."""

    __slots__ = ("kid", "kty", "crv", "alg", "key", "fingerprint")

    def __init__(self, kid: str | None, kty: str, crv: str | None, alg: str | None, key: Any) -> None:
        self.kid = kid
        self.kty = kty
        self.crv = crv
        self.alg = alg
        self.key = key
        self.fingerprint = (kid, key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))

    def fits(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` may be verified with this key."""
        fit = _FITS.get(alg)
        if fit is None or fit[0] != self.kty or (self.alg is not None and self.alg != alg):
            return False
        return fit[1] is None or self.crv in fit[1]


def parse_jwks(data: bytes) -> dict[str | None, list[JwksKey]]:
    """The usable keys of a JWKS document, by kid (None: keys without one); ``ValueError`` if the
    document is not a JWKS or has no usable key."""
    try:
        doc = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS (no "keys" list)')
    keys: dict[str | None, list[JwksKey]] = {}
    count = 0
    for jwk in doc["keys"][:_MAX_KEYS]:
        key = _usable(jwk)
        if key is not None:
            keys.setdefault(key.kid, []).append(key)
            count += 1
    if not count:
        raise ValueError("no usable signing key in the JWKS")
    return keys


def _usable(jwk: Any) -> JwksKey | None:
    if not isinstance(jwk, dict):
        return None
    kty, kid, alg, crv = jwk.get("kty"), jwk.get("kid"), jwk.get("alg"), jwk.get("crv")
    loader = _LOADERS.get(kty)  # type: ignore[arg-type]
    if loader is None:  # "oct" (a shared secret) and unknown types: never
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if any(part in jwk for part in _PRIVATE_PARTS):
        log.warning("JWKS key %r carries private parts: skipped", kid)
        return None
    if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_KID):
        return None
    if alg is not None and (not isinstance(alg, str) or alg not in _FITS):
        return None
    try:
        key = loader(jwk)
    except Exception as exc:  # a malformed key: skipped, the others still count
        log.warning("JWKS key %r unusable: %s", kid, exc)
        return None
    if kty == "RSA" and key.key_size < 2048:
        log.warning("JWKS key %r: RSA below 2048 bits, skipped", kid)
        return None
    return JwksKey(kid, kty, crv if isinstance(crv, str) else None, alg, key)


def max_age(cache_control: str | None, default: float, low: float, high: float) -> float:
    """Seconds until the next refresh: ``Cache-Control``'s ``max-age`` (``no-cache``/``no-store``:
    ``low``; none: ``default``), held within ``low`` .. ``high``."""
    seconds = default
    for directive in (cache_control or "").split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-cache", "no-store"):
            seconds = low
            break
        if name == "max-age":
            try:
                seconds = float(int(value.strip().strip('"')))
            except ValueError:
                continue
    return min(max(seconds, low), high)


class KeySet:
    """One issuer's keys (see the module docstring)."""

    def __init__(
        self,
        issuer: JwtIssuerConfig,
        *,
        timeout: float = 5.0,
        min_refresh: float = 60.0,
        max_refresh: float = 86400.0,
        default_refresh: float = 600.0,
        debounce: float = 10.0,
        negative_ttl: float = 300.0,
        max_stale: float = 7 * 86400.0,
        on_change: Callable[[KeySet, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer.issuer
        self.url = issuer.jwks_url
        self.file = issuer.jwks_file
        self.timeout = timeout
        self.min_refresh, self.max_refresh, self.default_refresh = min_refresh, max_refresh, default_refresh
        self.debounce = debounce
        self.negative_ttl = negative_ttl
        self.max_stale = max_stale
        self.on_change = on_change
        """Called after the keys changed, with True when some key was removed or replaced."""
        self.clock = clock
        self.context = client_context(issuer.ca_file) if self.url and self.url.startswith("https://") else None
        self.keys: dict[str | None, list[JwksKey]] | None = None
        """The usable keys by kid; None until a fetch succeeded."""
        self.fetches = 0
        """Fetches started (for tests and metrics)."""
        self.failures = 0
        """Failures since the last success."""
        self.last_error: str | None = None
        self.max_age = default_refresh
        """The refresh interval the last successful fetch set."""
        self.fetched_at = -math.inf
        self.next_refresh = -math.inf
        self.last_attempt = -math.inf
        self.last_kid_fetch = -math.inf
        """When a fetch was last started for an unknown kid (the debounce's clock)."""
        self._inflight: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unknown: dict[str, float] = {}
        self._asked: set[str] = set()
        self._started = False
        self._closed = False
        if self.file is not None:  # at startup: a bad file is a configuration error
            try:
                with open(self.file, "rb") as f:
                    self._install(parse_jwks(f.read()), default_refresh)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"auth.jwt issuer {self.issuer!r}: jwks_file {self.file!r}: {exc}") from None

    # -- the request path --------------------------------------------------------------------

    def lookup(self, kid: str | None, alg: str) -> Any:
        """The key to verify a token of ``alg`` signed with ``kid``, or a sentinel (module docstring)."""
        keys = self.keys
        if keys is not None:
            if kid is not None:
                candidates = keys.get(kid)
                if candidates is not None:
                    for key in candidates:
                        if key.fits(alg):
                            return key.key
                    return MISMATCH
            else:  # no kid: only a set with exactly one key that fits says which key is meant
                fitting = [k for group in keys.values() for k in group if k.fits(alg)]
                if len(fitting) == 1:
                    return fitting[0].key
                return MISMATCH if fitting else UNKNOWN
        now = self.clock()
        if kid is not None:
            until = self._unknown.get(kid)
            if until is not None:
                if now < until:
                    return UNKNOWN
                del self._unknown[kid]
        if self._inflight is None:
            if self._closed or now - self.last_kid_fetch < self.debounce:
                return UNKNOWN if keys is not None else UNAVAILABLE
            self.last_kid_fetch = now
            self._fetch_now()
        if kid is not None and len(self._asked) < _MAX_UNKNOWN:
            self._asked.add(kid)
        return PENDING

    async def wait(self, timeout: float) -> None:
        """Until the fetch in flight (if any) ends, or ``timeout`` seconds."""
        task = self._inflight
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except asyncio.TimeoutError:
                pass

    # -- refreshing ----------------------------------------------------------------------------

    def start(self) -> None:
        """Fetch now (a URL) or schedule the next re-read (a file)."""
        self._started = True
        if self.keys is None or self.file is None:
            self._fetch_now()
        else:
            self._schedule(self.next_refresh - self.clock())

    async def stop(self) -> None:
        """Cancel the timer and the fetch in flight; no fetch is started after this."""
        self._started = False
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _fetch_now(self) -> asyncio.Task[None]:
        task = self._inflight
        if task is None:
            self.last_attempt = self.clock()
            self.fetches += 1
            task = self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return task

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._started:
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._fetch_now)

    async def _fetch(self) -> None:
        try:
            if self.file is not None:
                with open(self.file, "rb") as f:
                    body, interval = f.read(), self.default_refresh
            else:
                assert self.url is not None
                status, headers, body = await fetch(self.url, context=self.context, timeout=self.timeout)
                if status != 200:
                    raise FetchError(f"{self.url} answered {status}")
                interval = max_age(
                    headers.get("cache-control"), self.default_refresh, self.min_refresh, self.max_refresh
                )
            keys = parse_jwks(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # FetchError, OSError, ValueError (not a JWKS): keep what we have
            self._failed(exc)
        else:
            self._install(keys, interval)
        finally:
            self._inflight = None
            self._settle_asked()

    def _install(self, keys: dict[str | None, list[JwksKey]], interval: float) -> None:
        now = self.clock()
        old = self.keys
        self.keys = keys
        self.failures, self.last_error = 0, None
        self.fetched_at, self.max_age = now, interval
        self.next_refresh = now + interval
        self._schedule(interval)
        if old is not None and self.on_change is not None:
            before = {k.fingerprint for group in old.values() for k in group}
            after = {k.fingerprint for group in keys.values() for k in group}
            if before != after:
                self.on_change(self, bool(before - after))

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        self.failures += 1
        self.last_error = str(exc) or type(exc).__name__
        retry = min(self.debounce * 2 ** (self.failures - 1), _MAX_RETRY)
        self.next_refresh = now + retry
        self._schedule(retry)
        if self.keys is not None and now > self.fetched_at + self.max_age + self.max_stale:
            log.error("issuer %r: keys dropped, stale for longer than %g s (%s)", self.issuer, self.max_stale, exc)
            self.keys = None
            if self.on_change is not None:
                self.on_change(self, True)
        else:
            log.warning(
                "issuer %r: JWKS fetch failed (%s); %s, retry in %g s",
                self.issuer,
                self.last_error,
                "serving the keys fetched before" if self.keys is not None else "no keys yet",
                retry,
            )

    def _settle_asked(self) -> None:
        """The kids the fetch was made (or joined) for and that are still unknown: negative cache."""
        asked, self._asked = self._asked, set()
        keys = self.keys
        if keys is None:
            return  # a failed fetch says nothing about which kids exist
        until = self.clock() + self.negative_ttl
        for kid in asked:
            if kid not in keys:
                if len(self._unknown) >= _MAX_UNKNOWN:
                    self._unknown.pop(next(iter(self._unknown)))
                self._unknown[kid] = until
