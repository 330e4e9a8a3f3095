"""Pure-Python twin of ``gateway._fast.ratelimit`` (same API, same behaviour).

A table of token buckets keyed by any hashable key (a tuple such as
``(principal, tool)``), refilled from a monotonic ``now`` passed in by the
caller: nothing here reads a clock, so tests drive time by hand.

The algorithm, for one bucket whose whole state is the pair ``(tokens, last)``
(so a shared store such as Redis can hold it and run the same steps)::

    refill:  if now > last: tokens += rate * (now - last); last = now
             tokens = min(tokens, burst)            # a missing bucket is (burst, now)
    take:    if tokens >= cost: tokens -= cost -> 0.0            (admitted)
             elif cost > burst or rate == 0     -> inf           (never, at this rate/burst)
             else                               -> (cost - tokens) / rate + WAIT_PAD
    debit:   tokens = min(tokens - cost, burst)  (may go negative; a negative cost refunds)
    peek:    the refilled tokens, nothing stored

``last`` only moves forward: a ``now`` earlier than it refills nothing. A
refused ``take`` takes nothing. ``WAIT_PAD`` (1 µs) rounds the wait up so that
``take(key, cost, now + wait, ...)`` passes despite float rounding in
``now + wait``.

Eviction. Each bucket also carries a ``deadline`` (table bookkeeping, like a
Redis key's TTL, not bucket state): the moment it will be full again, or
``last + idle``, whichever is first. Dropping a bucket at the moment it is full
again changes nothing (a new bucket starts full); ``idle`` bounds how long a
bucket that refills slowly (deeply debited, or ``rate == 0``) is kept, after
which the key starts over with a full bucket. Expired buckets are dropped by a
sweep over the table that runs at most once every ``idle / 2`` seconds of
``now`` (so each untouched bucket is looked at a few times before it goes: O(1)
amortized per call; the sweep itself is O(n), about a millisecond for 100 000
buckets compiled). When a new key finds the table full, the table sweeps and
then, if it is still above ``max_buckets - max_buckets // 16``, drops the buckets
with the earliest deadlines (the closest to full, so the least allowance is
given away; ties go in insertion order) down to that mark: a full table costs
one sort per ``max_buckets // 16`` new keys. Under a flood of new keys the
table stays bounded, and keys evicted early get a fresh full bucket.

Arguments are checked: ``cost`` finite (and >= 0 for ``take``), ``rate`` and
``burst`` >= 0 (``inf`` allowed), ``now`` finite; otherwise ``ValueError``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable
from operator import index

__all__ = ["TokenBuckets", "WAIT_PAD"]

INF = float("inf")
WAIT_PAD = 1e-6  # seconds added to a finite wait (see the module docstring)


class _Bucket:
    """One key's state ``(tokens, last)`` and its eviction ``deadline``."""

    __slots__ = ("tokens", "last", "deadline")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last
        self.deadline = last


def _refill(b: _Bucket, now: float, rate: float, burst: float) -> None:
    """Add ``rate`` tokens per second since ``b.last`` (if ``now`` is later), capped at ``burst``."""
    tokens = b.tokens
    elapsed = now - b.last
    if elapsed > 0.0:
        tokens += rate * elapsed
        b.last = now
    if tokens > burst:
        tokens = burst
    b.tokens = tokens


def _deadline(b: _Bucket, rate: float, burst: float, idle: float) -> float:
    """When ``b`` may be dropped: full again, or ``idle`` seconds after ``last``, whichever is first."""
    tokens = b.tokens
    if tokens >= burst:
        return b.last
    d = b.last + idle
    if rate > 0.0:
        full = b.last + (burst - tokens) / rate
        if full < d:
            d = full
    return d


def _check(cost: float, now: float, rate: float, burst: float) -> None:
    if not (cost - cost == 0.0 and now - now == 0.0 and rate >= 0.0 and burst >= 0.0):
        raise ValueError(f"bad bucket arguments: cost={cost!r} now={now!r} rate={rate!r} burst={burst!r}")


class TokenBuckets:
    """A bounded table of token buckets, one per key (see the module docstring for the algorithm).

    ``max_buckets``: the most buckets held at once (>= 1). ``idle``: seconds
    after its last use that a bucket which is not yet full again is dropped
    anyway (> 0; ``inf`` keeps it until it is full or the table is full).
    """

    __slots__ = ("_buckets", "_max", "_idle", "_interval", "_next_sweep")

    def __init__(self, max_buckets: int = 100_000, idle: float = 300.0) -> None:
        max_buckets = index(max_buckets)
        idle = float(idle)
        if max_buckets < 1 or not idle > 0.0:
            raise ValueError(f"need max_buckets >= 1 and idle > 0, got {max_buckets!r}, {idle!r}")
        self._buckets: dict[Hashable, _Bucket] = {}
        self._max = max_buckets
        self._idle = idle
        self._interval = idle / 2.0
        self._next_sweep = -INF

    def take(self, key: Hashable, cost: float, now: float, rate: float, burst: float) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 if taken, else the seconds to wait (inf: never).

        A refused call takes nothing. ``cost > burst`` (or ``rate == 0`` with
        too few tokens) can never pass and returns ``inf``.
        """
        cost = float(cost)
        now = float(now)
        rate = float(rate)
        burst = float(burst)
        _check(cost, now, rate, burst)
        if cost < 0.0:
            raise ValueError(f"take: cost must be >= 0, got {cost!r}")
        if now >= self._next_sweep:
            self._sweep(now)
        b = self._buckets.get(key)
        if b is None:
            b = self._insert(key, now, burst)
        else:
            _refill(b, now, rate, burst)
        tokens = b.tokens
        if tokens >= cost:
            b.tokens = tokens - cost
            wait = 0.0
        elif cost > burst or not rate > 0.0:
            wait = INF
        else:
            wait = (cost - tokens) / rate + WAIT_PAD
        b.deadline = _deadline(b, rate, burst, self._idle)
        return wait

    def debit(self, key: Hashable, cost: float, now: float, rate: float, burst: float) -> None:
        """Subtract ``cost`` after the fact (may go negative, so later takes wait); a negative cost refunds."""
        cost = float(cost)
        now = float(now)
        rate = float(rate)
        burst = float(burst)
        _check(cost, now, rate, burst)
        if now >= self._next_sweep:
            self._sweep(now)
        b = self._buckets.get(key)
        if b is None:
            b = self._insert(key, now, burst)
        else:
            _refill(b, now, rate, burst)
        tokens = b.tokens - cost
        if tokens > burst:
            tokens = burst
        b.tokens = tokens
        b.deadline = _deadline(b, rate, burst, self._idle)

    def peek(self, key: Hashable, now: float, rate: float, burst: float) -> float:
        """The tokens ``key`` has at ``now`` (``burst`` for a key with no bucket); changes nothing."""
        now = float(now)
        rate = float(rate)
        burst = float(burst)
        _check(0.0, now, rate, burst)
        b = self._buckets.get(key)
        if b is None:
            return burst
        tokens = b.tokens
        elapsed = now - b.last
        if elapsed > 0.0:
            tokens += rate * elapsed
        if tokens > burst:
            tokens = burst
        return tokens

    def clear(self) -> None:
        """Drop every bucket."""
        self._buckets.clear()
        self._next_sweep = -INF

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def max_buckets(self) -> int:
        """The most buckets held at once."""
        return self._max

    @property
    def idle(self) -> float:
        """Seconds after which an unused bucket is dropped even if not yet full."""
        return self._idle

    # -- eviction -------------------------------------------------------------

    def _insert(self, key: Hashable, now: float, burst: float) -> _Bucket:
        if len(self._buckets) >= self._max:
            self._make_room(now)
        b = _Bucket(burst, now)
        self._buckets[key] = b
        return b

    def _sweep(self, now: float) -> None:
        """Drop every bucket whose deadline has passed."""
        self._next_sweep = now + self._interval
        victims = [k for k, b in self._buckets.items() if b.deadline <= now]
        for k in victims:
            del self._buckets[k]

    def _make_room(self, now: float) -> None:
        """Sweep, then drop the earliest deadlines until ``max // 16`` (at least one) slots are free."""
        self._sweep(now)
        buckets = self._buckets
        excess = len(buckets) - (self._max - max(1, self._max // 16))
        if excess <= 0:
            return
        ordered = sorted(b.deadline for b in buckets.values())
        cutoff = ordered[excess - 1]
        ties = excess - bisect_left(ordered, cutoff)  # how many at exactly the cutoff go
        victims = []
        for k, b in buckets.items():
            d = b.deadline
            if d < cutoff:
                victims.append(k)
            elif d == cutoff and ties > 0:
                victims.append(k)
                ties -= 1
        for k in victims:
            del buckets[k]
