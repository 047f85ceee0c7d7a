"""Membership's fail-closed gate, step by step, over a fake lease store and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from test_frontend_ratelimit import FakeClock

from vault_node.membership import MemberInfo, Membership
from vault_node.store import StoreUnavailable

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

T = TypeVar("T")
TTL = 3


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeLeases:
    """Answers from a script: True = the call succeeds, False = StoreUnavailable."""

    def __init__(self) -> None:
        self.script: list[bool] = []
        self.calls: list[str] = []
        self.ttl_left = TTL

    def _next(self, what: str) -> None:
        self.calls.append(what)
        if self.script and not self.script.pop(0):
            raise StoreUnavailable("etcd is unavailable") from ConnectionError("member down")

    async def grant_lease(self, ttl_s: int) -> int:
        self._next("grant")
        return 7

    async def keep_alive(self, lease_id: int) -> int:
        self._next("keep_alive")
        return self.ttl_left

    async def put_leased(self, key: str, value: bytes, lease_id: int) -> None:
        self._next("put")

    async def revoke_lease(self, lease_id: int) -> None:
        self._next("revoke")


def make() -> tuple[Membership, FakeLeases, FakeClock, list[bool]]:
    leases, clock, changes = FakeLeases(), FakeClock(), []
    member = Membership(
        leases,
        MemberInfo(name="n1", dc="dc-a", address="127.0.0.1:1"),
        TTL,
        monotonic=clock,
        on_change=changes.append,
        retry_interval_s=0.5,
        quick_retry_s=0.05,
    )
    return member, leases, clock, changes


def test_not_serving_before_registration() -> None:
    member, _, _, _ = make()
    assert not member.serving()


def test_one_failed_refresh_is_retried_at_once_without_leaving_service() -> None:
    member, leases, _, changes = make()

    async def body() -> None:
        assert await member.step() == TTL / 3  # registers
        leases.script = [False]
        assert await member.step() == 0.05  # quick retry, probably through another member
        assert member.serving()
        assert await member.step() == TTL / 3  # the retry succeeds
        assert member.serving()

    run(body())
    assert changes == [True]


def test_two_failed_refreshes_in_a_row_fail_closed_then_recover() -> None:
    member, leases, _, changes = make()

    async def body() -> None:
        await member.step()
        leases.script = [False, False]
        assert await member.step() == 0.05
        assert await member.step() == 0.5
        assert not member.serving()  # fail closed
        assert await member.step() == TTL / 3  # etcd answers again
        assert member.serving()

    run(body())
    assert changes == [True, False, True]


def test_the_quick_retry_is_per_failure_streak() -> None:
    member, leases, _, _ = make()

    async def body() -> None:
        await member.step()
        for _ in range(3):  # an isolated failure after each success gets its quick retry
            leases.script = [False]
            assert await member.step() == 0.05
            assert await member.step() == TTL / 3
            assert member.serving()

    run(body())


def test_serving_ends_by_itself_when_the_last_success_is_a_ttl_old() -> None:
    member, _, clock, _ = make()

    async def body() -> None:
        await member.step()
        clock.now += TTL - 0.01
        assert member.serving()
        clock.now += 0.02
        assert not member.serving()

    run(body())


def test_a_failed_registration_is_not_retried_quickly() -> None:
    member, leases, _, _ = make()

    async def body() -> None:
        leases.script = [False]
        assert await member.step() == 0.5  # no lease yet: nothing to keep serving on
        assert not member.serving()

    run(body())


def test_an_expired_lease_is_granted_again() -> None:
    member, leases, _, changes = make()

    async def body() -> None:
        await member.step()
        leases.ttl_left = 0
        assert await member.step() == 0.0
        assert not member.serving()
        leases.ttl_left = TTL
        await member.step()
        assert member.serving()

    run(body())
    assert leases.calls == ["grant", "put", "keep_alive", "grant", "put"]
    assert changes == [True, False, True]


def test_the_store_is_checked_before_serving_and_an_alarm_keeps_the_node_announced() -> None:
    """After an outage the guard's probe runs before the node serves again; a probe that finds
    the store rolled back (StoreRolledBack) does not undo the registration: the node stays
    announced so that its accounts reach it and are refused there."""
    from vault_node.store_guard import StoreRolledBack

    async def go() -> None:
        leases, clock = FakeLeases(), FakeClock()
        probes: list[str] = []

        async def confirm() -> None:
            probes.append("probe")
            if len(probes) > 1:
                raise StoreRolledBack("rolled back")

        member = Membership(
            leases, MemberInfo(name="n1", dc="dc-a", address="127.0.0.1:1"), TTL,
            monotonic=clock, confirm=confirm,
        )  # fmt: skip
        await member.step()  # registers, probes once
        assert member.serving() and probes == ["probe"]
        await member.step()  # serving: a keep-alive needs no probe
        assert probes == ["probe"]
        leases.script = [False, False]
        await member.step()
        await member.step()
        assert not member.serving()
        await member.step()  # back: probe first; it finds the rollback, the node stays announced
        assert probes == ["probe", "probe"] and member.serving()
        assert leases.calls.count("revoke") == 0

    run(go())
