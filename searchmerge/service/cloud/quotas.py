"""Per-edge sample quotas: no edge can flood the service, or the drift check, with samples.

Each edge has a token bucket of ``per_minute`` samples that refills continuously (a full
minute's worth at most, so an edge that was cut off catches up at the quota's pace, not in
one burst). An upload takes one token per sample, whole or not at all; one that does not fit
is refused with how long to wait (HTTP 429 with ``Retry-After``), and the edge keeps its
samples and sends them later. The buckets live in the service's memory: a restarted service
starts them full, and each of several ``serve`` processes on one database keeps its own.

Example:
    >>> quota = SampleQuota(per_minute=60, clock=lambda: 0.0)
    >>> quota.take("gate", 60)
    >>> try:
    ...     quota.take("gate", 1)
    ... except QuotaExceeded as exc:
    ...     print(exc.retry_after)
    1.0
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from searchmerge.core.errors import SearchmergeError

__all__ = ["QuotaExceeded", "SampleQuota"]


class QuotaExceeded(SearchmergeError):
    """An upload would take an edge past its sample quota; ``retry_after`` says when it fits."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SampleQuota:
    """Token buckets of samples, one per edge.

    Args:
        per_minute: Samples an edge may send a minute (also the most it can send at once).
        clock: Seconds, monotonic (for tests).
    """

    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise SearchmergeError(f"the sample quota must be at least 1 a minute, got {per_minute}")
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # edge -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, edge: str, count: int) -> None:
        """Take ``count`` samples from ``edge``'s quota, or raise :class:`QuotaExceeded` (taking none)."""
        with self._lock:
            now = self._clock()
            tokens, when = self._buckets.get(edge, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - when) * self._rate)
            if count > self.per_minute:
                raise QuotaExceeded(f"an upload of {count} samples is more than edge {edge!r}'s quota of"
                                    f" {self.per_minute} a minute; send fewer at a time", 60.0)
            if count > tokens:
                self._buckets[edge] = (tokens, now)
                wait = math.ceil((count - tokens) / self._rate * 10) / 10
                raise QuotaExceeded(f"edge {edge!r} sent more than its {self.per_minute} samples a minute;"
                                    f" retry in {wait:.1f} s", wait)
            self._buckets[edge] = (tokens - count, now)
