"""Closed and open loops: bounded by count and time, open loop timed from the schedule."""

import asyncio

import pytest

from bkv_bench.loops import Budget, closed_loop, open_loop

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class FakeTime:
    """A clock that only moves when the loop sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def test_budget_stops_on_count_and_on_time() -> None:
    b = Budget(max_ops=2, deadline=10.0)
    assert [b.take(0.0), b.take(0.0), b.take(0.0)] == [True, True, False]
    assert not Budget(max_ops=5, deadline=1.0).take(1.0)


def test_closed_loop_runs_exactly_the_count_with_bounded_concurrency() -> None:
    started: list[str] = []
    running = 0
    peak = 0

    async def execute(op: str, started_at: float) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        started.append(op)
        await asyncio.sleep(0)
        running -= 1

    abandoned: list[tuple[str, str]] = []
    asyncio.run(
        closed_loop(3, Budget(25, 1e12), lambda: "recover", execute,
                    abandon=lambda op, why: abandoned.append((op, why)))
    )  # fmt: skip
    assert len(started) == 25
    assert peak <= 3
    assert abandoned == []


def test_closed_loop_stops_at_the_deadline_and_reports_cut_operations() -> None:
    async def execute(op: str, started_at: float) -> None:
        await asyncio.sleep(10)  # never finishes within the drain time

    abandoned: list[tuple[str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await closed_loop(2, Budget(1000, loop.time() + 0.05), lambda: "delete", execute,
                          abandon=lambda op, why: abandoned.append((op, why)),
                          clock=loop.time, drain_s=0.05)  # fmt: skip

    asyncio.run(main())
    assert abandoned == [("delete", "unfinished"), ("delete", "unfinished")]


def test_open_loop_schedules_at_fixed_intervals_and_measures_from_the_schedule() -> None:
    t = FakeTime()
    scheduled: list[float] = []
    latencies: list[float] = []

    async def execute(op: str, started_at: float) -> None:
        scheduled.append(started_at)
        await t.sleep(0.25)  # slower than the interval: the schedule must not wait for it
        latencies.append(t.clock() - started_at)

    asyncio.run(
        open_loop(10.0, Budget(20, 1e12), lambda: "recover", execute,
                  abandon=lambda op, why: None, max_inflight=100, clock=t.clock,
                  sleep=t.sleep, drain_s=5.0)
    )  # fmt: skip
    assert len(scheduled) == 20
    assert scheduled == pytest.approx([i * 0.1 for i in range(20)])
    assert all(lat >= 0.25 - 1e-9 for lat in latencies)


def test_open_loop_drops_beyond_max_inflight_and_cuts_what_outlives_the_drain() -> None:
    t = FakeTime()
    abandoned: list[tuple[str, str]] = []

    async def execute(op: str, started_at: float) -> None:
        await asyncio.sleep(10)  # never finishes

    asyncio.run(
        open_loop(100.0, Budget(10, 1e12), lambda: "wrong", execute,
                  abandon=lambda op, why: abandoned.append((op, why)), max_inflight=3,
                  clock=t.clock, sleep=t.sleep, drain_s=0.05)
    )  # fmt: skip
    assert abandoned.count(("wrong", "dropped")) == 7
    assert abandoned.count(("wrong", "unfinished")) == 3
    assert len(abandoned) == 10


def test_open_loop_stops_at_its_deadline() -> None:
    t = FakeTime()
    count = 0

    async def execute(op: str, started_at: float) -> None:
        nonlocal count
        count += 1

    asyncio.run(
        open_loop(100.0, Budget(10_000, 0.5), lambda: "recover", execute,
                  abandon=lambda op, why: None, max_inflight=10, clock=t.clock, sleep=t.sleep)
    )  # fmt: skip
    assert count == 50
