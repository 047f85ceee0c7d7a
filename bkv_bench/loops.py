"""The two load generators: closed loop (N workers) and open loop (fixed rate).

Both are bounded twice, by an operation count and by a deadline, and stop by themselves. They
only decide *when* an operation starts; `execute(op, started_at)` runs it and records it. In the
open loop `started_at` is the *scheduled* start, so that a slow cluster (or a slow generator) shows
up as latency instead of silently lowering the offered load (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Execute = Callable[[str, float], Coroutine[Any, Any, None]]
Choose = Callable[[], str]
Abandon = Callable[[str, str], None]


@dataclass
class Budget:
    """At most `max_ops` operations, none started at or after `deadline` (clock seconds)."""

    max_ops: int
    deadline: float
    started: int = 0

    def take(self, now: float) -> bool:
        """Claim one operation; False once the count or the time is used up."""
        if self.started >= self.max_ops or now >= self.deadline:
            return False
        self.started += 1
        return True


async def _drain(tasks: dict[asyncio.Task[None], str], drain_s: float, abandon: Abandon) -> None:
    """Wait for in-flight operations up to `drain_s`; cancel and report the rest."""
    if not tasks:
        return
    _, pending = await asyncio.wait(list(tasks), timeout=drain_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        abandon(tasks[task], "unfinished")


async def closed_loop(
    concurrency: int,
    budget: Budget,
    choose: Choose,
    execute: Execute,
    *,
    abandon: Abandon,
    clock: Clock = time.monotonic,
    drain_s: float = 30.0,
) -> None:
    """`concurrency` workers, each starting its next operation when the last one finished."""
    current: dict[int, str] = {}

    async def worker(index: int) -> None:
        while budget.take(clock()):
            op = choose()
            current[index] = op
            await execute(op, clock())
            current.pop(index, None)

    tasks = {asyncio.create_task(worker(i)): str(i) for i in range(concurrency)}
    wait_s = max(0.0, budget.deadline - clock()) + drain_s
    _, pending = await asyncio.wait(list(tasks), timeout=wait_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for op in current.values():
        abandon(op, "unfinished")


async def open_loop(
    rate: float,
    budget: Budget,
    choose: Choose,
    execute: Execute,
    *,
    abandon: Abandon,
    max_inflight: int,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    drain_s: float = 30.0,
) -> None:
    """Start operation i at `t0 + i / rate`, whatever the earlier ones are doing.

    When `max_inflight` operations are already running, the scheduled one is not started and is
    reported to `abandon(op, "dropped")`: it still counts against the budget, so an overloaded
    cluster shows errors instead of a quietly lower offered rate.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    interval = 1.0 / rate
    t0 = clock()
    tasks: dict[asyncio.Task[None], str] = {}
    i = 0
    while True:
        scheduled = t0 + i * interval
        delay = scheduled - clock()
        if delay > 0:
            await sleep(delay)
        if not budget.take(scheduled):
            break
        i += 1
        op = choose()
        for done in [t for t in tasks if t.done()]:
            del tasks[done]
        if len(tasks) >= max_inflight:
            abandon(op, "dropped")
            continue
        tasks[asyncio.create_task(execute(op, scheduled))] = op
    await _drain(tasks, drain_s, abandon)
