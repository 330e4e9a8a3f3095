"""Counts over the last few seconds: a ring of time buckets.

The breaker judges the failure ratio of the last ``window`` seconds and the
retry budget compares the retries of the last 10 s with the calls of the same
10 s. Both keep a ``Window``: a fixed ring of buckets, each covering
``span / buckets`` seconds and holding one count per field. Adding touches one
bucket (emptied first if it holds an older stretch of time); ``totals`` sums
the buckets still inside the span. So a count leaves the window in steps of one
bucket, never all at once, and nothing grows with the traffic.

Time is passed in (``now``, seconds from any monotonic origin), so a test can
drive it.
"""

from __future__ import annotations

__all__ = ["Window"]


class Window:
    """``fields`` counts over the last ``span`` seconds, in ``buckets`` buckets."""

    __slots__ = ("width", "size", "fields", "stamps", "counts")

    def __init__(self, span: float, fields: int, buckets: int = 10) -> None:
        self.width = span / buckets
        """Seconds one bucket covers."""
        self.size = buckets
        self.fields = fields
        self.stamps = [-1] * buckets
        """Which stretch of time (``int(now / width)``) each bucket counts; -1: none yet."""
        self.counts = [[0] * fields for _ in range(buckets)]

    def add(self, now: float, field: int, amount: int = 1) -> None:
        """Count ``amount`` of ``field`` at time ``now``."""
        tick = int(now / self.width)
        i = tick % self.size
        row = self.counts[i]
        if self.stamps[i] != tick:  # the bucket last counted an older stretch: start it again
            self.stamps[i] = tick
            for j in range(self.fields):
                row[j] = 0
        row[field] += amount

    def totals(self, now: float) -> list[int]:
        """Each field's count over the buckets inside the span ending at ``now``."""
        tick = int(now / self.width)
        oldest = tick - self.size
        out = [0] * self.fields
        for stamp, row in zip(self.stamps, self.counts):
            if oldest < stamp <= tick:
                for j in range(self.fields):
                    out[j] += row[j]
        return out

    def clear(self) -> None:
        """Forget every count."""
        self.stamps = [-1] * self.size
