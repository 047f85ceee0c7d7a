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
from vault_node.key_meta import KeyMeta
from vault_node.membership import MemberInfo, Membership
from vault_node.store import EtcdStore, StoreUnavailable, record_key
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


def test_reads_and_writes_carry_etcds_key_metadata(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        assert await store.get(rid) is None
        reserved, revision = await store.reserve(rid, b"placeholder")
        assert revision > 0 and reserved.meta == KeyMeta(revision, revision, 1)
        again, none = await store.reserve(rid, b"other")  # exists: read in the same txn
        assert none == 0 and again == reserved
        rev2, conflict = await store.swap(rid, b"v2", reserved.meta)
        assert rev2 > revision and conflict is None
        got = await store.get(rid)
        assert got is not None and got.value == b"v2"
        assert got.meta == reserved.meta.after_write(rev2)  # known without a read
        stale, current = await store.swap(rid, b"v3", reserved.meta)  # stale compare
        assert stale == 0 and current == got  # the failed txn read the key itself
        assert (await store.delete(rid, reserved.meta))[0] == 0
        assert (await store.delete(rid, got.meta))[0] > rev2
        assert await store.get(rid) is None

    with_store(etcd_member, body)


def test_concurrent_compare_and_swap_loses_no_increment(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        current, _ = await store.reserve(rid, b"0")
        conflicts = 0

        async def increment() -> None:
            nonlocal conflicts
            stored = await store.get(rid)
            while True:
                assert stored is not None
                value = str(int(stored.value) + 1).encode()
                revision, conflict = await store.swap(rid, value, stored.meta)
                if revision:
                    return
                conflicts += 1
                stored = conflict

        await asyncio.gather(*(increment() for _ in range(20)))
        final = await store.get(rid)
        assert final is not None and final.value == b"20" and final.meta.version == 21
        assert conflicts > 0
        del current

    with_store(etcd_member, body)


def test_store_unavailable_when_etcd_is_down(etcd_member: SecureEtcd) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        stored, _ = await store.reserve(rid, b"v")
        etcd_member.kill()
        for call in (
            lambda: store.get(rid),
            lambda: store.swap(rid, b"w", stored.meta),
            lambda: store.delete(rid, stored.meta),
            lambda: store.grant_lease(5),
        ):
            with pytest.raises(StoreUnavailable):
                await call()
        await asyncio.to_thread(etcd_member.start)
        got = await store.get(rid)
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
        for call in (lambda: store.get(rid), lambda: store.reserve(rid, b"x")):
            with pytest.raises(StoreUnavailable):  # permission denied: no record for it
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
        reserved, revision = await store.reserve(rid, b"secret-free placeholder")
        erased, _ = await store.delete(rid, reserved.meta)
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
        current, _ = await store.reserve(rid, b"0")
        saved = etcd_member.ctl(ROOT, "snapshot", "save", str(snapshot))
        assert saved.returncode == 0, saved.stderr
        for i in range(5):
            revision, _ = await store.swap(rid, str(i).encode(), current.meta)
            current = await store.get(rid) or current
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
            await store.get(os.urandom(32))
        await store.close()

    asyncio.run(after())
    assert len(alarms) == 1 and guard.state().alarm_revision < mark
    # A node restarted on the checkpoint it wrote keeps refusing, and another etcd cluster is
    # refused by its id alone (a fresh guard pinned to another id).
    assert guard.state().cluster_id == pinned

    async def other_cluster() -> None:
        store = store_for(etcd_member, guard=StoreGuard(GuardState(pinned ^ 1)))
        with pytest.raises(StoreRolledBack, match="another store"):
            await store.get(os.urandom(32))
        await store.close()

    asyncio.run(other_cluster())
