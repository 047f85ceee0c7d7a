"""Token-bucket rate limits per key (account, peer address) with bounded memory."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]  # monotonic seconds

DEFAULT_MAX_KEYS = 100_000
_EPSILON = 1e-9  # float refill after exactly retry_after_s must be enough


class RateLimited(Exception):
    """Too many requests (RESOURCE_EXHAUSTED); retry after `retry_after_s` seconds."""

    def __init__(self, scope: str, retry_after_s: float) -> None:
        self.scope = scope
        self.retry_after_s = retry_after_s
        super().__init__(f"rate limit for this {scope} exceeded, retry later")

    @property
    def retry_after_ms(self) -> int:
        return max(1, math.ceil(self.retry_after_s * 1000))


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """`rate` tokens per second up to `burst`, one bucket per key.

    Memory is bounded: a bucket that has refilled completely is the same as no bucket, so it is
    dropped; if `max_keys` live buckets still exist, the least recently used one is dropped.
    """

    def __init__(
        self, scope: str, rate: float, burst: int, clock: Clock, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 1, max_keys >= 1")
        self._scope = scope
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._refill_s = self._burst / rate  # time after which an idle bucket is full again

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens from `key`'s bucket or raise RateLimited."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
            self._buckets[key] = bucket
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated = now
            self._buckets.move_to_end(key)
        if bucket.tokens + _EPSILON < cost:
            raise RateLimited(self._scope, (cost - bucket.tokens) / self._rate)
        bucket.tokens = max(0.0, bucket.tokens - cost)
        self._evict(now)

    def _evict(self, now: float) -> None:
        # Oldest first: stop at the first bucket that is still refilling (later ones are newer).
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            idle_full = now - oldest.updated >= self._refill_s
            if not idle_full and len(self._buckets) <= self._max_keys:
                break
            # Security: evicting a non-full bucket under memory pressure hands that key a fresh
            # burst; the per-peer limit still caps how fast anyone can cycle through keys.
            del self._buckets[key]
