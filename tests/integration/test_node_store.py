"""vault_node.store, the store guard and membership against a real etcd 3.4 member (started here)
with TLS, client-certificate auth and the node grants `bkv-cluster` gives (deploy.etcd_auth)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from etcd_fixtures import ROOT, SecureEtcd

from deploy.etcd_auth import frontend_grants, node_grants
from vault_node.group_commit import GroupCommitStore
from vault_node.key_meta import ABSENT, KeyMeta, StoredValue
from vault_node.membership import MemberInfo, Membership
from vault_node.store import EtcdStore, Snapshot, StoreUnavailable, Write, record_key
from vault_node.store_guard import GuardState, StoreGuard, StoreRolledBack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NODE, DC = "node-1", "dc-a"
NODE_USER = "bkv-node-node-1"
FRONTEND_USER = "bkv-frontend-fe-1"


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


async def await_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.05)


@pytest.fixture
def etcd_member() -> Iterator[SecureEtcd]:
    node_roles, node_users = node_grants(NODE, DC)
    fe_roles, fe_users = frontend_grants("fe-1")
    member = SecureEtcd({**node_roles, **fe_roles}, {**node_users, **fe_users})
    try:
        member.start()
        yield member
    finally:
        member.close()


def store_for(
    member: SecureEtcd, user: str = NODE_USER, guard: StoreGuard | None = None
) -> EtcdStore:
    return EtcdStore(member.config_for(user, call_timeout_s=1.0), guard or StoreGuard(GuardState()))


def with_store(
    member: SecureEtcd, body: Callable[[EtcdStore], Awaitable[None]], user: str = NODE_USER
) -> None:
    async def go() -> None:
        store = store_for(member, user)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())


G = 7  # the group the tests' records and heads use


async def create(store: EtcdStore, rid: bytes, value: bytes) -> StoredValue:
    """Make the record (and its group's head, whatever it holds) as a node would."""
    snapshot = await store.read(rid, G)
    head = snapshot.head.meta if snapshot.head is not None else ABSENT
    revision, conflict = await store.write(rid, value, ABSENT, G, b"head", head)
    assert revision and conflict is None
    got = (await store.read(rid, G)).record
    assert got is not None
    return got


def test_reads_and_writes_carry_etcds_key_metadata(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        assert await store.read(rid, G) == Snapshot(None, None)
        revision, conflict = await store.write(rid, b"v1", ABSENT, G, b"h1", ABSENT)
        assert revision > 0 and conflict is None
        first = await store.read(rid, G)
        assert first.record is not None and first.head is not None
        assert first.record.meta == KeyMeta(revision, revision, 1)
        assert (first.record.value, first.head.value) == (b"v1", b"h1")
        # Create-only: the record exists now, so the same write conflicts and returns both keys.
        again, current = await store.write(rid, b"x", ABSENT, G, b"h", first.head.meta)
        assert again == 0 and current == first
        rev2, _ = await store.write(rid, b"v2", first.record.meta, G, b"h2", first.head.meta)
        second = await store.read(rid, G)
        assert second.record is not None and second.head is not None
        assert second.record.meta == first.record.meta.after_write(rev2)  # known without a read
        assert second.head.meta == first.head.meta.after_write(rev2)
        # A stale compare on either key: conflict, nothing written.
        stale_record = await store.write(rid, b"v3", first.record.meta, G, b"h", second.head.meta)
        stale_head = await store.write(rid, b"v3", second.record.meta, G, b"h", first.head.meta)
        assert stale_record == (0, second) and stale_head == (0, second)
        deleted, _ = await store.write(rid, None, second.record.meta, G, b"h3", second.head.meta)
        assert deleted > rev2
        after = await store.read(rid, G)
        assert after.record is None and after.head is not None and after.head.value == b"h3"

    with_store(etcd_member, body)


def test_concurrent_compare_and_swap_loses_no_increment(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        await create(store, rid, b"0")
        conflicts = 0

        async def increment() -> None:
            nonlocal conflicts
            snapshot = await store.read(rid, G)
            while True:
                record, head = snapshot.record, snapshot.head
                assert record is not None and head is not None
                value = str(int(record.value) + 1).encode()
                revision, conflict = await store.write(rid, value, record.meta, G, b"h", head.meta)
                if revision:
                    return
                conflicts += 1
                assert conflict is not None
                snapshot = conflict

        await asyncio.gather(*(increment() for _ in range(20)))
        final = (await store.read(rid, G)).record
        assert final is not None and final.value == b"20" and final.meta.version == 21
        assert conflicts > 0

    with_store(etcd_member, body)


def test_a_batched_write_commits_all_or_returns_every_key(etcd_member: SecureEtcd) -> None:
    """EtcdStore.write_many (group commit's transaction): every record and head of the batch
    at one revision, or nothing and each write's two keys as the transaction read them."""

    async def body(store: EtcdStore) -> None:
        rids = [os.urandom(32) for _ in range(3)]
        writes = [Write(r, b"v%d" % i, ABSENT, 10 + i, b"h%d" % i, ABSENT)
                  for i, r in enumerate(rids)]  # fmt: skip
        revision, read = await store.write_many(writes)
        assert revision > 0 and read == ()
        first = [await store.read(r, 10 + i) for i, r in enumerate(rids)]
        for i, snapshot in enumerate(first):
            assert snapshot.record is not None and snapshot.head is not None
            assert snapshot.record.meta == KeyMeta(revision, revision, 1)
            assert (snapshot.record.value, snapshot.head.value) == (b"v%d" % i, b"h%d" % i)
        # One stale compare (the second write still says ABSENT): nothing of the batch.
        metas = [(s.record.meta, s.head.meta) for s in first if s.record and s.head]
        pairs = enumerate(zip(rids, metas, strict=True))
        again = [Write(r, b"w", rec if i != 1 else ABSENT, 10 + i, b"g", head)
                 for i, (r, (rec, head)) in pairs]  # fmt: skip
        assert await store.write_many(again) == (0, tuple(first))
        # Group commit over the real store: the two good writes commit, the stale one conflicts.
        batched = GroupCommitStore(store, window_s=0.005, max_batch=8)
        results = await asyncio.gather(*(
            batched.write(w.record_id, w.value, w.expected, w.group, w.head, w.expected_head)
            for w in again
        ))  # fmt: skip
        assert results[1] == (0, first[1]) and results[0][0] and results[2][0]

    with_store(etcd_member, body)


def test_store_unavailable_when_etcd_is_down(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        stored = await create(store, rid, b"v")
        etcd_member.kill()
        for call in (
            lambda: store.read(rid, G),
            lambda: store.write(rid, b"w", stored.meta, G, b"h", ABSENT),
            lambda: store.grant_lease(5),
        ):
            with pytest.raises(StoreUnavailable):
                await call()
        await asyncio.to_thread(etcd_member.start)
        got = (await store.read(rid, G)).record
        assert got is not None and got.value == b"v"

    with_store(etcd_member, body)


def test_the_node_identity_may_touch_records_and_its_own_membership_only(
    etcd_member: SecureEtcd,
) -> None:
    async def node(store: EtcdStore) -> None:
        lease = await store.grant_lease(5)
        await store.put_leased(f"/bkv/v1/nodes/{DC}/{NODE}", b"{}", lease)
        with pytest.raises(StoreUnavailable):  # permission denied: another node's key
            await store.put_leased(f"/bkv/v1/nodes/{DC}/node-2", b"{}", lease)
        await store.revoke_lease(lease)

    async def frontend(store: EtcdStore) -> None:
        rid = os.urandom(32)
        for call in (
            lambda: store.read(rid, G),
            lambda: store.write(rid, b"x", ABSENT, G, b"h", ABSENT),
        ):
            with pytest.raises(StoreUnavailable):  # permission denied: no record nor head
                await call()

    with_store(etcd_member, node)
    with_store(etcd_member, frontend, user=FRONTEND_USER)


def test_lease_keep_alive_and_revoke(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        lease = await store.grant_lease(5)
        await store.put_leased(f"/bkv/v1/nodes/{DC}/{NODE}", b"x", lease)
        assert 0 < await store.keep_alive(lease) <= 5
        await store.revoke_lease(lease)
        assert await store.keep_alive(lease) <= 0

    with_store(etcd_member, body)


def test_membership_registers_fails_closed_and_recovers(etcd_member: SecureEtcd) -> None:
    def member_value() -> bytes | None:
        done = etcd_member.ctl(ROOT, "get", f"/bkv/v1/nodes/{DC}/{NODE}", "--print-value-only")
        return done.stdout.strip().encode() or None

    async def body(store: EtcdStore) -> None:
        info = MemberInfo(name=NODE, dc=DC, address="127.0.0.1:1234")
        changes: list[bool] = []
        member = Membership(
            store, info, 2, monotonic=time.monotonic, on_change=changes.append,
            retry_interval_s=0.1,
        )  # fmt: skip
        member.start()
        try:
            await await_until(member.serving, 10, "membership never registered")
            raw = await asyncio.to_thread(member_value)
            assert raw is not None and json.loads(raw) == {
                "name": NODE, "dc": DC, "address": "127.0.0.1:1234",
            }  # fmt: skip
            etcd_member.kill()
            await await_until(lambda: not member.serving(), 5, "still serving without etcd")
            await asyncio.to_thread(etcd_member.start)
            await await_until(member.serving, 10, "did not serve again after etcd returned")
            assert changes[:3] == [True, False, True]
        finally:
            await member.stop()
        assert await asyncio.to_thread(member_value) is None  # lease revoked on stop

    with_store(etcd_member, body)


def test_compaction_removes_an_erased_values_history(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        reserved = await create(store, rid, b"secret-free placeholder")
        revision = reserved.meta.mod_revision
        head = (await store.read(rid, G)).head
        assert head is not None
        erased, _ = await store.write(rid, None, reserved.meta, G, b"h", head.meta)
        key = record_key(rid).decode()
        assert etcd_member.ctl(ROOT, "get", key, f"--rev={revision}").returncode == 0
        await store.compact(erased)
        await store.compact(erased - 1)  # an older compaction is no error
        done = etcd_member.ctl(ROOT, "get", key, f"--rev={revision}")
        assert done.returncode != 0 and "compacted" in done.stderr

    with_store(etcd_member, body)


def test_a_restored_snapshot_latches_the_guard(etcd_member: SecureEtcd) -> None:
    """A plain restore (same member name, peer URL and token: the same cluster id) takes etcd
    back below the revisions this node saw: the guard refuses it, and keeps refusing after the
    store's revision passes the old mark again."""
    snapshot = etcd_member.dir / "snap.db"
    alarms: list[str] = []
    guard = StoreGuard(GuardState(), on_alarm=alarms.append)

    async def before() -> None:
        store = store_for(etcd_member, guard=guard)
        rid = os.urandom(32)
        await create(store, rid, b"0")
        saved = etcd_member.ctl(ROOT, "snapshot", "save", str(snapshot))
        assert saved.returncode == 0, saved.stderr
        for i in range(5):
            snap = await store.read(rid, G)
            assert snap.record is not None and snap.head is not None
            revision, _ = await store.write(
                rid, str(i).encode(), snap.record.meta, G, b"h", snap.head.meta
            )
            assert revision
        await store.close()

    asyncio.run(before())
    pinned, mark = guard.state().cluster_id, guard.high_water
    assert pinned and mark
    etcd_member.kill()
    shutil.rmtree(etcd_member.data_dir)
    restore = subprocess.run(
        ["etcdctl", "snapshot", "restore", str(snapshot), f"--data-dir={etcd_member.data_dir}",
         f"--name={etcd_member.name}",
         f"--initial-cluster={etcd_member.name}=https://127.0.0.1:{etcd_member.peer_port}",
         f"--initial-advertise-peer-urls=https://127.0.0.1:{etcd_member.peer_port}"],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    etcd_member.start()

    async def after() -> None:
        store = store_for(etcd_member, guard=guard)
        with pytest.raises(StoreRolledBack, match="rolled back"):
            await store.probe(f"/bkv/v1/nodes/{DC}/{NODE}")
        # Writes carry the store past the old mark: still refused (latched).
        for i in range(10):
            etcd_member.ctl(ROOT, "put", f"/bkv/v1/nodes/{DC}/{NODE}", str(i))
        with pytest.raises(StoreRolledBack):
            await store.read(os.urandom(32), G)
        await store.close()

    asyncio.run(after())
    assert len(alarms) == 1 and guard.state().alarm_revision < mark
    # A node restarted on the checkpoint it wrote keeps refusing, and another etcd cluster is
    # refused by its id alone (a fresh guard pinned to another id).
    assert guard.state().cluster_id == pinned

    async def other_cluster() -> None:
        store = store_for(etcd_member, guard=StoreGuard(GuardState(pinned ^ 1)))
        with pytest.raises(StoreRolledBack, match="another store"):
            await store.read(os.urandom(32), G)
        await store.close()

    asyncio.run(other_cluster())
