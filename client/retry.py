"""The client's one retry policy and its one retry loop (`retrying`, a sans-I/O plan).

Policy, written down as STYLE.md asks:

* Only `Unavailable` is retried, and `RateLimited` on a step that finishes a flow. Every other
  error (wrong password, locked, not registered, unauthenticated, protocol; rate limited on a
  step that starts one) goes straight back to the caller.
* A step that finishes a flow (`RecoverFinish`, `RegisterFinish`) waits out `RateLimited` (the
  frontend's `retry_after`, plus jitter up to `base_delay_s`) and is sent again, within
  `max_attempts`, the deadline and `max_rate_limit_wait_s` per wait: the frontend throttled it
  before relaying, so nothing was applied, and giving up would waste the guess that the first
  step already counted.
* A step that counts a guess (the first recovery step, `RecoverStart`) is sent **at most twice**:
  the first try and one retry. **A retried recovery start may count a guess twice**: when the
  first attempt reached a vault node, which committed `attempts+1` before the answer was lost,
  the retry counts another one. We accept that (DESIGN.md: counting an attempt that then failed
  to answer is allowed) but never retry such a step silently more than once.
  An attempt that failed with `Unavailable(sent=False)` cannot have counted a guess and does
  not use up that budget: the request never left this process (no connection to any frontend),
  or the answer carried `bkv-not-applied: 1` (no vault node wrote anything: the node it reached
  was not serving, or none could be reached). Such tries are bounded by `max_attempts` and the
  deadline like any other.
* Every retry of a first step is signed afresh (`Outbound.resign`, a new `ts_ms`): the vault
  refuses a signed request it has seen, so a copy of one it applied would only come back as a
  replay. A first step the vault refused as `StaleSignature` (its timestamp not after the last
  one the vault accepted for the account: nothing was applied, the refusal carries
  `bkv-not-applied: 1`) is signed past the vault's timestamp (`RetryState.resign_floor_ms`)
  and sent **once** more, at once. A second stale refusal goes back to the caller: another
  device or process keeps signing ahead, or someone keeps replaying.
* Every other step is tried up to `max_attempts` times in all.
* Between tries: exponential backoff with full jitter, `delay = u * min(max_delay_s,
  base_delay_s * multiplier**n)` with `u` from an injected uniform `rng` in [0, 1), and never past
  the overall deadline (`overall_deadline_s` from the first try): when the next try could not
  start before it, the last `Unavailable` is raised.

>>> policy = RetryPolicy(base_delay_s=0.1, multiplier=2.0, max_delay_s=1.0)
>>> [policy.backoff(n, lambda: 0.5) for n in range(5)]
[0.05, 0.1, 0.2, 0.4, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from client.errors import ConfigError, RateLimited, StaleSignature, Unavailable

T = TypeVar("T")

Clock = Callable[[], float]
Uniform = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently the client retries `Unavailable`.

    max_attempts: tries in all for a step that does not count a guess (>= 1).
    guess_step_max_attempts: tries in all for a step that counts a guess; 2 = one retry (1..2).
    base_delay_s: backoff before the first retry, before jitter.
    multiplier: growth of the backoff per retry (>= 1).
    max_delay_s: cap on one backoff, before jitter.
    overall_deadline_s: no try starts later than this after the first.
    max_rate_limit_wait_s: the longest `retry_after` a finishing step waits out.
    """

    max_attempts: int = 5
    guess_step_max_attempts: int = 2
    base_delay_s: float = 0.1
    multiplier: float = 2.0
    max_delay_s: float = 1.0
    overall_deadline_s: float = 30.0
    max_rate_limit_wait_s: float = 10.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError listing every out-of-range field at once."""
        problems: list[str] = []
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1")
        if not 1 <= self.guess_step_max_attempts <= 2:
            problems.append("guess_step_max_attempts must be 1 or 2 (never more than one retry)")
        if self.base_delay_s < 0:
            problems.append("base_delay_s must not be negative")
        if self.multiplier < 1:
            problems.append("multiplier must be at least 1")
        if self.max_delay_s < self.base_delay_s:
            problems.append("max_delay_s must be at least base_delay_s")
        if self.overall_deadline_s <= 0:
            problems.append("overall_deadline_s must be positive")
        if self.max_rate_limit_wait_s < 0:
            problems.append("max_rate_limit_wait_s must not be negative")
        if problems:
            raise ConfigError("retry policy: " + "; ".join(problems))

    def backoff(self, retry_index: int, uniform: Uniform) -> float:
        """Delay before retry number `retry_index` (0 = first retry), full jitter."""
        ceiling = min(self.max_delay_s, self.base_delay_s * self.multiplier**retry_index)
        return uniform() * ceiling


class RetryState:
    """The pure decision part of a retry loop: after a failure, wait how long, or give up.

    >>> state = RetryState(RetryPolicy(), counts_guess=True, clock=lambda: 0.0, uniform=lambda: 0.0)
    >>> state.after_failure(Unavailable())
    0.0
    >>> state.after_failure(Unavailable()) is None  # a guess-counting step: one retry only
    True
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        counts_guess: bool,
        clock: Clock,
        uniform: Uniform,
        finishes: bool = False,
        resignable: bool = False,
    ):
        self._policy = policy
        self._counts_guess = counts_guess
        self._finishes = finishes
        self._resignable = resignable
        # Set once a stale signature was refused: every later try is signed afresh past it.
        self.resign_floor_ms: int | None = None
        self._clock = clock
        self._uniform = uniform
        self._deadline = clock() + policy.overall_deadline_s
        self._tries = 0
        self._sent_tries = 0

    @property
    def tries(self) -> int:
        """Failed tries so far (0 before the first one failed)."""
        return self._tries

    def remaining(self) -> float:
        """Seconds left before the overall deadline (never negative)."""
        return max(0.0, self._deadline - self._clock())

    def after_failure(self, err: Unavailable | RateLimited | StaleSignature) -> float | None:
        """Record a failed try; return the delay before the next one, or None to give up."""
        self._tries += 1
        if isinstance(err, RateLimited):
            return self._after_rate_limit(err)
        if isinstance(err, StaleSignature):
            # Not applied (the vault checked the signature before anything else): one fresh
            # signature past the vault's floor, at once; never a second.
            if not self._resignable or self.resign_floor_ms is not None:
                return None
            self.resign_floor_ms = err.floor_ms
            return 0.0
        if err.sent:
            self._sent_tries += 1
        if self._tries >= self._policy.max_attempts:
            return None
        if self._counts_guess and self._sent_tries >= self._policy.guess_step_max_attempts:
            return None
        delay = self._policy.backoff(self._tries - 1, self._uniform)
        if self._clock() + delay >= self._deadline:
            return None
        return delay

    def _after_rate_limit(self, err: RateLimited) -> float | None:
        # Throttled before relaying: nothing applied. Only a finishing step waits it out.
        if not self._finishes or err.retry_after is None:
            return None
        if self._tries >= self._policy.max_attempts:
            return None
        if err.retry_after > self._policy.max_rate_limit_wait_s:
            return None
        delay = err.retry_after + self._uniform() * self._policy.base_delay_s
        if self._clock() + delay >= self._deadline:
            return None
        return delay


@dataclass(frozen=True)
class Pause:
    """Effect: wait `seconds` before the next try (the driver sleeps, blocking or awaiting)."""

    seconds: float


def retrying(
    attempt: Callable[[float], Generator[Any, Any, T]], state: RetryState
) -> Generator[Any, Any, T]:
    """The one retry loop, as a plan: run the plan `attempt(time_left_s)`, and after each
    `Unavailable` / `RateLimited` / `StaleSignature` either yield `Pause(delay)` and try again
    or re-raise, as `state` decides. Every other error goes straight through."""
    while True:
        try:
            return (yield from attempt(state.remaining()))
        except (Unavailable, RateLimited, StaleSignature) as err:
            delay = state.after_failure(err)
            if delay is None:
                raise
        yield Pause(delay)
