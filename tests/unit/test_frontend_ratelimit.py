"""Token buckets with an injected clock: refill, retry-after, bounded memory."""

from __future__ import annotations

import pytest

from frontend_chatd.ratelimit import RateLimited, TokenBucketLimiter

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_limited_with_retry_after() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter("account", rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.acquire("alice")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("alice")
    assert info.value.retry_after_ms == 500
    assert info.value.scope == "account"
    limiter.acquire("bob")  # buckets are per key


def test_refill_after_retry_after() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter("peer", rate=10.0, burst=1, clock=clock)
    limiter.acquire("p")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("p")
    clock.now += info.value.retry_after_s
    limiter.acquire("p")


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter("peer", rate=1.0, burst=2, clock=clock)
    limiter.acquire("p")
    clock.now += 1000
    limiter.acquire("p")
    limiter.acquire("p")
    with pytest.raises(RateLimited):
        limiter.acquire("p")


def test_clock_going_backwards_gives_no_tokens() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter("peer", rate=1.0, burst=1, clock=clock)
    limiter.acquire("p")
    clock.now -= 50
    with pytest.raises(RateLimited):
        limiter.acquire("p")


def test_idle_full_buckets_are_evicted() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter("peer", rate=1.0, burst=2, clock=clock)
    for i in range(50):
        limiter.acquire(f"k{i}")
    assert len(limiter) == 50
    clock.now += 2.0  # every bucket is full again
    limiter.acquire("new")
    assert len(limiter) == 1


def test_memory_bounded_by_max_keys() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter("peer", rate=1.0, burst=5, clock=clock, max_keys=10)
    for i in range(1000):
        limiter.acquire(f"k{i}")
    assert len(limiter) == 10


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter("peer", rate=0, burst=1, clock=FakeClock())
    with pytest.raises(ValueError):
        TokenBucketLimiter("peer", rate=1, burst=0, clock=FakeClock())
