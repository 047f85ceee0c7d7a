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
from typing import Any, TypeVar, cast

from client.protocol import Done, Flow, advance

T = TypeVar("T")
E = TypeVar("E")

Plan = Generator[E, Any, T]


def _advance(plan: Plan[E, T], result: Any = None, error: Exception | None = None) -> Any:
    """`client.protocol.advance` for any plan: the next effect, or `Done(value)` at its end."""
    return advance(cast("Flow[T]", plan), result, error)


def drive(plan: Plan[E, T], perform: Callable[[E], Any]) -> T:
    """Run `plan` to its end, carrying out each effect with `perform` (blocking)."""
    with contextlib.closing(plan):
        step = _advance(plan)
        while not isinstance(step, Done):
            try:
                result = perform(step)
            except Exception as err:  # noqa: BLE001 - thrown into the plan, which decides
                step = _advance(plan, error=err)
            else:
                step = _advance(plan, result)
        return step.value  # type: ignore[no-any-return]


async def adrive(plan: Plan[E, T], perform: Callable[[E], Awaitable[Any]]) -> T:
    """Run `plan` to its end, awaiting each effect with `perform` (asyncio)."""
    with contextlib.closing(plan):
        step = _advance(plan)
        while not isinstance(step, Done):
            try:
                result = await perform(step)
            except Exception as err:  # noqa: BLE001 - thrown into the plan, which decides
                step = _advance(plan, error=err)
            else:
                step = _advance(plan, result)
        return step.value  # type: ignore[no-any-return]
