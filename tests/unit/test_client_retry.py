"""client.retry: the one retry policy, deterministic with an injected clock and rng."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import pytest

from client.driver import adrive, drive
from client.errors import ConfigError, InvalidPassword, ProtocolError, RateLimited, Unavailable
from client.retry import Pause, RetryPolicy, RetryState, retrying

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

T = TypeVar("T")


def _single(remaining: float) -> Generator[float, Any, Any]:
    """A one-effect attempt plan: the effect is the time left; its result, the attempt's."""
    return (yield remaining)


def call_with_retry(
    attempt: Callable[[float], T], state: RetryState, *, sleep: Callable[[float], None]
) -> T:
    """`retrying` run blocking: each try is `attempt(time_left_s)`, each Pause a `sleep`."""

    def perform(effect: Any) -> Any:
        return sleep(effect.seconds) if isinstance(effect, Pause) else attempt(effect)

    result: T = drive(retrying(_single, state), perform)
    return result


async def acall_with_retry(
    attempt: Callable[[float], Awaitable[T]],
    state: RetryState,
    *,
    sleep: Callable[[float], Awaitable[None]],
) -> T:
    """`retrying` run awaiting: the same plan, the same `RetryState` decisions."""

    async def perform(effect: Any) -> Any:
        return await (sleep(effect.seconds) if isinstance(effect, Pause) else attempt(effect))

    result: T = await adrive(retrying(_single, state), perform)
    return result


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def _failing(errors: list[BaseException], result: str = "ok"):  # type: ignore[no-untyped-def]
    calls: list[float] = []

    def attempt(remaining: float) -> str:
        calls.append(remaining)
        if errors:
            raise errors.pop(0)
        return result

    return attempt, calls


def _run(
    attempt,
    policy: RetryPolicy,
    t: FakeTime,
    counts_guess: bool,
    u: float = 0.5,
    finishes: bool = False,
):  # type: ignore[no-untyped-def]
    state = RetryState(
        policy, counts_guess=counts_guess, finishes=finishes, clock=t.clock, uniform=lambda: u
    )
    return call_with_retry(attempt, state, sleep=t.sleep)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    p = RetryPolicy(base_delay_s=0.1, multiplier=2.0, max_delay_s=0.5)
    assert [p.backoff(n, lambda: 1.0) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert p.backoff(3, lambda: 0.0) == 0.0


def test_unavailable_is_retried_with_deterministic_delays() -> None:
    t = FakeTime()
    attempt, calls = _failing([Unavailable(), Unavailable(), Unavailable()])
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.1, multiplier=2.0, max_delay_s=1.0)
    assert _run(attempt, policy, t, counts_guess=False) == "ok"
    assert len(calls) == 4
    assert t.sleeps == [0.05, 0.1, 0.2]


def test_other_steps_give_up_after_max_attempts() -> None:
    t = FakeTime()
    attempt, calls = _failing([Unavailable()] * 10)
    with pytest.raises(Unavailable):
        _run(attempt, RetryPolicy(max_attempts=3), t, counts_guess=False)
    assert len(calls) == 3


def test_a_guess_counting_step_is_retried_at_most_once() -> None:
    t = FakeTime()
    attempt, calls = _failing([Unavailable()] * 10)
    with pytest.raises(Unavailable):
        _run(attempt, RetryPolicy(max_attempts=10), t, counts_guess=True)
    assert len(calls) == 2  # the first try and one retry


def test_unsent_tries_do_not_use_up_the_guess_budget() -> None:
    t = FakeTime()
    attempt, calls = _failing([Unavailable(sent=False), Unavailable(sent=False), Unavailable()])
    assert _run(attempt, RetryPolicy(max_attempts=10), t, counts_guess=True) == "ok"
    assert len(calls) == 4


def test_a_guess_step_the_vault_did_not_apply_is_retried_like_any_other() -> None:
    # UNAVAILABLE with bkv-not-applied (a node that was not serving) maps to sent=False.
    t = FakeTime()
    attempt, calls = _failing([Unavailable(sent=False)] * 10)
    with pytest.raises(Unavailable):
        _run(attempt, RetryPolicy(max_attempts=5), t, counts_guess=True)
    assert len(calls) == 5


def test_a_finishing_step_waits_out_rate_limits() -> None:
    t = FakeTime()
    attempt, calls = _failing([RateLimited(0.4), RateLimited(0.2)])
    policy = RetryPolicy(base_delay_s=0.1)
    assert _run(attempt, policy, t, counts_guess=False, finishes=True, u=0.5) == "ok"
    assert len(calls) == 3
    assert t.sleeps == pytest.approx([0.45, 0.25])  # retry_after plus jitter


@pytest.mark.parametrize(
    "error",
    [RateLimited(None), RateLimited(11.0)],  # no hint; longer than max_rate_limit_wait_s
)
def test_a_finishing_step_gives_up_on_unusable_rate_limits(error: RateLimited) -> None:
    t = FakeTime()
    attempt, calls = _failing([error])
    with pytest.raises(RateLimited):
        _run(attempt, RetryPolicy(max_rate_limit_wait_s=10.0), t, False, finishes=True)
    assert len(calls) == 1 and t.sleeps == []


def test_a_finishing_step_waits_out_rate_limits_at_most_max_attempts_times() -> None:
    t = FakeTime()
    attempt, calls = _failing([RateLimited(0.1)] * 10)
    with pytest.raises(RateLimited):
        _run(attempt, RetryPolicy(max_attempts=3), t, False, finishes=True)
    assert len(calls) == 3


def test_a_starting_step_returns_rate_limits_to_the_caller() -> None:
    t = FakeTime()
    attempt, calls = _failing([RateLimited(0.1)])
    with pytest.raises(RateLimited):
        _run(attempt, RetryPolicy(), t, counts_guess=True)
    assert len(calls) == 1 and t.sleeps == []


@pytest.mark.parametrize(
    "error", [InvalidPassword(3), ProtocolError("x"), ConfigError("y"), KeyError("z")]
)
def test_only_unavailable_is_retried(error: BaseException) -> None:
    t = FakeTime()
    attempt, calls = _failing([error])
    with pytest.raises(type(error)):
        _run(attempt, RetryPolicy(), t, counts_guess=False)
    assert len(calls) == 1 and t.sleeps == []


def test_no_retry_starts_after_the_overall_deadline() -> None:
    t = FakeTime()
    calls: list[float] = []

    def attempt(remaining: float) -> str:
        calls.append(remaining)
        t.now += 4.0  # each try burns 4 s
        raise Unavailable()

    with pytest.raises(Unavailable):
        _run(attempt, RetryPolicy(max_attempts=100, overall_deadline_s=10.0), t, False, u=0.0)
    assert calls == [10.0, 6.0, 2.0]  # each try is told how much time is left


def test_policy_validate_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(max_attempts=0, guess_step_max_attempts=3, multiplier=0.5)
    text = str(info.value)
    assert "max_attempts" in text and "guess_step_max_attempts" in text and "multiplier" in text


def test_async_loop_makes_the_same_decisions() -> None:
    t = FakeTime()
    errors: list[BaseException] = [Unavailable()] * 10
    calls: list[float] = []

    async def attempt(remaining: float) -> str:
        calls.append(remaining)
        raise errors.pop(0)

    async def go() -> None:
        state = RetryState(RetryPolicy(), counts_guess=True, clock=t.clock, uniform=lambda: 0.5)
        await acall_with_retry(attempt, state, sleep=t.asleep)

    with pytest.raises(Unavailable):
        asyncio.run(go())
    assert len(calls) == 2 and t.sleeps == [0.05]


def test_a_stale_signature_is_signed_again_once_at_once() -> None:
    from client.errors import StaleSignature

    def state(resignable: bool) -> RetryState:
        return RetryState(
            RetryPolicy(), counts_guess=True, resignable=resignable, clock=lambda: 0.0,
            uniform=lambda: 0.5,
        )  # fmt: skip

    first = state(True)
    assert first.resign_floor_ms is None
    assert first.after_failure(StaleSignature(41)) == 0.0 and first.resign_floor_ms == 41
    assert first.after_failure(StaleSignature(43)) is None  # never a second time
    assert state(False).after_failure(StaleSignature(41)) is None  # a second step: no
    # A stale refusal applied nothing: the guess step still has its one retry after it.
    after = state(True)
    after.after_failure(StaleSignature(41))
    assert after.after_failure(Unavailable()) is not None
