"""The two loops that run a sans-I/O plan: one blocking (`drive`), one awaiting (`adrive`).

A plan is a generator that yields effects (probe this frontend, make this call, pause) and
receives each one's result; an effect that fails is thrown back into the plan, which decides
what the failure means. Every decision lives in the plan (`client.core`, `client.retry`); these
loops only carry effects out, so the blocking and the awaiting client cannot drift apart.

>>> def plan():
...     answer = yield "question"
...     return answer * 2
>>> drive(plan(), lambda effect: len(effect))
16
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
E = TypeVar("E")

Plan = Generator[E, Any, T]


class _Outcome:
    """What became of one effect: its result, or the exception it raised."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.result = result
        self.error = error


def _resume(plan: Plan[E, T], outcome: _Outcome | None) -> tuple[bool, Any]:
    """Hand `outcome` to the plan (None: start it) -> (True, next effect) or (False, its value)."""
    try:
        if outcome is None:
            return True, next(plan)
        if outcome.error is not None:
            return True, plan.throw(outcome.error)
        return True, plan.send(outcome.result)
    except StopIteration as stop:
        return False, stop.value


def drive(plan: Plan[E, T], perform: Callable[[E], Any]) -> T:
    """Run `plan` to its end, carrying out each effect with `perform` (blocking)."""
    with contextlib.closing(plan):
        running, value = _resume(plan, None)
        while running:
            try:
                outcome = _Outcome(perform(value))
            except Exception as err:  # noqa: BLE001 - thrown into the plan, which decides
                outcome = _Outcome(error=err)
            running, value = _resume(plan, outcome)
        return value  # type: ignore[no-any-return]


async def adrive(plan: Plan[E, T], perform: Callable[[E], Awaitable[Any]]) -> T:
    """Run `plan` to its end, awaiting each effect with `perform` (asyncio)."""
    with contextlib.closing(plan):
        running, value = _resume(plan, None)
        while running:
            try:
                outcome = _Outcome(await perform(value))
            except Exception as err:  # noqa: BLE001 - thrown into the plan, which decides
                outcome = _Outcome(error=err)
            running, value = _resume(plan, outcome)
        return value  # type: ignore[no-any-return]
