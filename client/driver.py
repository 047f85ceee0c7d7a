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

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
E = TypeVar("E")

Plan = Generator[E, Any, T]


def drive(plan: Plan[E, T], perform: Callable[[E], Any]) -> T:
    """Run `plan` to its end, carrying out each effect with `perform` (blocking)."""
    try:
        effect = next(plan)
        while True:
            try:
                result = perform(effect)
            except Exception as err:  # noqa: BLE001 - thrown into the plan, which decides
                effect = plan.throw(err)
            else:
                effect = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        plan.close()


async def adrive(plan: Plan[E, T], perform: Callable[[E], Awaitable[Any]]) -> T:
    """Run `plan` to its end, awaiting each effect with `perform` (asyncio)."""
    try:
        effect = next(plan)
        while True:
            try:
                result = await perform(effect)
            except Exception as err:  # noqa: BLE001 - thrown into the plan, which decides
                effect = plan.throw(err)
            else:
                effect = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        plan.close()
