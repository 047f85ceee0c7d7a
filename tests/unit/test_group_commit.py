"""vault_node.group_commit over the in-memory store (etcd's revision semantics): writes of one
window share a transaction and its revision, a conflict costs only its own write, one write per
group per batch, an etcd failure reaches every caller of the batch, a caller cancelled before
its batch left writes nothing, and the node config bounds the option."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest

from vault_node.config import NodeConfig, NodeSection
from vault_node.group_commit import GroupCommitStore
from vault_node.key_meta import ABSENT, KeyMeta, StoredValue
from vault_node.store import ManyResult, MemoryRecordStore, StoreUnavailable, Write, WriteResult

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

WINDOW_S = 0.002


class Spy(MemoryRecordStore):
    """The memory store, counting its transactions; `fail` makes the next batch raise."""

    def __init__(self) -> None:
        super().__init__()
        self.singles = 0
        self.many: list[int] = []
        self.fail: Exception | None = None

    async def write(self, *args: object, **kwargs: object) -> WriteResult:  # type: ignore[override]
        self.singles += 1
        return await super().write(*args, **kwargs)  # type: ignore[arg-type]

    async def write_many(self, writes: Sequence[Write]) -> ManyResult:
        self.many.append(len(writes))
        if self.fail is not None:
            raise self.fail
        return await super().write_many(writes)


def rid(n: int) -> bytes:
    return n.to_bytes(2, "big") + bytes(30)


def put(store: GroupCommitStore, n: int, group: int, expected: KeyMeta = ABSENT,
        expected_head: KeyMeta = ABSENT) -> asyncio.Future[WriteResult]:  # fmt: skip
    return asyncio.ensure_future(
        store.write(rid(n), b"record %d" % n, expected, group, b"head %d" % n, expected_head)
    )


def test_writes_of_one_window_share_one_transaction_and_its_revision() -> None:
    async def go() -> None:
        spy = Spy()
        store = GroupCommitStore(spy, window_s=WINDOW_S, max_batch=8)
        results = await asyncio.gather(*(put(store, n, group=n) for n in range(5)))
        assert spy.many == [5] and spy.singles == 0
        assert {r for r in results} == {(1, None)}  # one revision, no conflict
        for n in range(5):
            assert spy.data[rid(n)] == StoredValue(b"record %d" % n, KeyMeta(1, 1, 1))
            assert spy.heads[n].meta == KeyMeta(1, 1, 1)
        assert store.batches == 1 and store.batched == 5

    asyncio.run(go())


def test_a_full_batch_leaves_at_once_and_a_lone_write_goes_single() -> None:
    async def go() -> None:
        spy = Spy()
        store = GroupCommitStore(spy, window_s=0.05, max_batch=3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(put(store, n, group=n) for n in range(3)))
        assert loop.time() - started < 0.04  # did not wait for the window
        assert spy.many == [3]
        assert await put(store, 9, group=9) == (2, None)  # alone in its window: a plain write
        assert spy.many == [3] and spy.singles == 1

    asyncio.run(go())


def test_a_conflict_costs_only_its_own_write() -> None:
    async def go() -> None:
        spy = Spy()
        store = GroupCommitStore(spy, window_s=WINDOW_S, max_batch=8)
        await put(store, 1, group=1)  # record 1 exists now (revision 1): ABSENT is stale
        stale = put(store, 1, group=1, expected=ABSENT, expected_head=ABSENT)
        fine = [put(store, n, group=n) for n in (2, 3)]
        conflict = await stale
        assert conflict[0] == 0 and conflict[1] is not None
        assert conflict[1].record == spy.data[rid(1)]  # as the failed transaction read it
        committed = await asyncio.gather(*fine)
        assert all(rev and snapshot is None for rev, snapshot in committed)
        assert spy.many == [3] and spy.singles == 1 + 2  # the first put, then two retried alone
        assert spy.data[rid(1)].meta.version == 1  # the stale write changed nothing

    asyncio.run(go())


def test_a_second_write_of_a_group_never_shares_the_batch() -> None:
    async def go() -> None:
        spy = Spy()
        store = GroupCommitStore(spy, window_s=WINDOW_S, max_batch=8)
        first, second, other = put(store, 1, group=7), put(store, 2, group=7), put(store, 3, 8)
        results = await asyncio.gather(first, second, other)
        assert spy.many == [2]  # the first of group 7 and group 8's; the second went alone
        # Both writes of group 7 were decided on the same (absent) head: only one commits, and
        # the other write of the batch (group 8) commits all the same (alone, if need be).
        assert sorted(bool(rev) for rev, _ in results[:2]) == [False, True]
        assert results[2][0] and rid(3) in spy.data

    asyncio.run(go())


def test_an_etcd_failure_reaches_every_caller_of_the_batch() -> None:
    async def go() -> None:
        spy = Spy()
        spy.fail = StoreUnavailable("etcd: EtcdUnavailable")
        store = GroupCommitStore(spy, window_s=WINDOW_S, max_batch=8)
        results = await asyncio.gather(
            *(put(store, n, group=n) for n in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results)

    asyncio.run(go())


def test_a_caller_cancelled_before_its_batch_left_writes_nothing() -> None:
    async def go() -> None:
        spy = Spy()
        store = GroupCommitStore(spy, window_s=0.02, max_batch=8)
        gone, kept, also = put(store, 1, group=1), put(store, 2, group=2), put(store, 3, 3)
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(kept, also)
        assert rid(1) not in spy.data and rid(2) in spy.data
        assert spy.many == [2]
        await store.close()

    asyncio.run(go())


def test_the_node_config_bounds_the_option() -> None:
    base = NodeSection(name="n", dc="dc", listen="127.0.0.1:1", advertise="127.0.0.1:1")
    for bad in (
        dataclasses.replace(base, group_commit_us=-1),
        dataclasses.replace(base, group_commit_us=200_000),
        dataclasses.replace(base, group_commit_max=1),
        dataclasses.replace(base, group_commit_max=65),
    ):
        problems = NodeConfig(node=bad).problems()
        assert any("group_commit" in p for p in problems), bad
    assert not any("group_commit" in p for p in NodeConfig(node=base).problems())
    with pytest.raises(ValueError):
        GroupCommitStore(Spy(), window_s=0, max_batch=8)
