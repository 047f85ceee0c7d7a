"""EtcdClient against a real etcd 3.4 with TLS, client-certificate auth and auth on (SecureEtcd):
key-value, transactions, compaction, watch (with a member kill), leases, status."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import TypeVar

import pytest
from etcd_fixtures import SecureEtcd

from deploy.cluster import free_ports
from etcd_client import (
    Compare,
    Delete,
    DeleteResult,
    EtcdClient,
    EtcdClientConfig,
    EtcdCompacted,
    EtcdNotFound,
    EtcdRequestError,
    EtcdUnavailable,
    Get,
    Permission,
    Put,
    PutResult,
    RangeResult,
    WatchEvent,
    prefix_end,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

T = TypeVar("T")
APP = "bkv-test-app"
ROLES = {"app": (Permission(b"/t/", prefix_end(b"/t/"), "readwrite"),)}
USERS = {APP: ("app",)}


@pytest.fixture(scope="module")
def etcd() -> Iterator[SecureEtcd]:
    with SecureEtcd.running(ROLES, USERS) as member:
        yield member


def run(etcd: SecureEtcd, body: Callable[[EtcdClient], Awaitable[T]], user: str = APP) -> T:
    """Run `body(client)` in a fresh event loop with a client connected as `user`."""

    async def main() -> T:
        async with EtcdClient(etcd.config_for(user)) as client:
            return await body(client)

    return asyncio.run(main())


async def until_served(fn: Callable[[], Awaitable[T]], timeout_s: float = 20.0) -> T:
    """`fn()` once etcd serves it again (after a restart): EtcdUnavailable is retried."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await fn()
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# --- key-value -----------------------------------------------------------------------------


def test_put_get_range_delete(etcd: SecureEtcd) -> None:
    async def body(c: EtcdClient) -> None:
        first = await c.put(b"/t/kv/a", b"1")
        assert first.prev_kv is None and first.header.revision > 0
        again = await c.put(b"/t/kv/a", b"2", prev_kv=True)
        assert again.prev_kv is not None and again.prev_kv.value == b"1"
        await c.put(b"/t/kv/b", b"3")
        kv = await c.get(b"/t/kv/a")
        assert kv is not None and kv.value == b"2" and kv.version == 2
        assert kv.create_revision == first.header.revision
        assert kv.mod_revision == again.header.revision
        assert await c.get(b"/t/kv/none") is None
        listing = await c.range(b"/t/kv/", range_end=prefix_end(b"/t/kv/"))
        assert [x.key for x in listing.kvs] == [b"/t/kv/a", b"/t/kv/b"]
        assert listing.count == 2 and not listing.more
        limited = await c.range(b"/t/kv/", range_end=prefix_end(b"/t/kv/"), limit=1)
        assert len(limited.kvs) == 1 and limited.count == 2 and limited.more
        keys = await c.range(b"/t/kv/", range_end=prefix_end(b"/t/kv/"), keys_only=True)
        assert all(x.value == b"" for x in keys.kvs)
        local = await c.range(b"/t/kv/a", serializable=True)
        assert local.kvs[0].value == b"2"
        old = await c.range(b"/t/kv/a", revision=first.header.revision)
        assert old.kvs[0].value == b"1"
        gone = await c.delete(b"/t/kv/a", prev_kv=True)
        assert gone.deleted == 1 and gone.prev_kvs[0].value == b"2"
        all_gone = await c.delete(b"/t/kv/", range_end=prefix_end(b"/t/kv/"))
        assert all_gone.deleted == 1 and all_gone.prev_kvs == ()
        assert (await c.range(b"/t/kv/", range_end=prefix_end(b"/t/kv/"))).count == 0

    run(etcd, body)
    # etcd's own client reads what ours wrote, and the other way round (same wire format).
    assert etcd.ctl(APP, "put", "/t/ctl", "from-etcdctl").returncode == 0
    kv = run(etcd, lambda c: c.get(b"/t/ctl"))
    assert kv is not None and kv.value == b"from-etcdctl"


def test_txn_both_branches(etcd: SecureEtcd) -> None:
    async def body(c: EtcdClient) -> None:
        key = b"/t/txn/k"
        created = await c.txn([Compare.create_is(key, 0)], [Put(key, b"v1")], [Get(key)])
        assert created.succeeded and isinstance(created.responses[0], PutResult)
        assert created.responses[0].header == created.header
        # Put-if-absent again: fails, and the failure branch's get shows the key's metadata.
        lost = await c.txn([Compare.create_is(key, 0)], [Put(key, b"v2")], [Get(key)])
        assert not lost.succeeded
        got = lost.responses[0]
        assert isinstance(got, RangeResult) and got.header == lost.header
        kv = got.kvs[0]
        assert kv.value == b"v1" and kv.version == 1
        assert kv.create_revision == kv.mod_revision == created.header.revision
        # Compare-and-swap on mod_revision, as a vault node does per recovery step.
        swapped = await c.txn(
            [Compare.mod_is(key, kv.mod_revision), Compare.value_is(key, b"v1")],
            [Put(key, b"v2"), Get(key)],
        )
        assert swapped.succeeded and len(swapped.responses) == 2
        after = swapped.responses[1]
        assert isinstance(after, RangeResult) and after.kvs[0].version == 2
        stale = await c.txn([Compare.mod_is(key, kv.mod_revision)], [Put(key, b"v3")])
        assert not stale.succeeded and stale.responses == ()
        assert (await c.txn([Compare(key, "version", ">", 1)], [Delete(key)])).succeeded
        deleted = await c.txn([Compare.version_is(key, 0)], [Get(key)], [Delete(key)])
        assert deleted.succeeded and isinstance(deleted.responses[0], RangeResult)
        assert deleted.responses[0].kvs == ()
        removed = await c.txn([Compare.version_is(b"/t/txn/x", 0)], [Put(b"/t/txn/x", b"")])
        assert removed.succeeded
        gone = await c.txn([], [Delete(b"/t/txn/", prefix_end(b"/t/txn/"))])
        assert isinstance(gone.responses[0], DeleteResult) and gone.responses[0].deleted == 1
        with pytest.raises(EtcdRequestError):  # a txn may not write one key twice
            await c.txn([], [Put(key, b"a"), Put(key, b"b")])

    run(etcd, body)


def test_compact_then_an_old_revision_is_compacted(etcd: SecureEtcd) -> None:
    async def body(c: EtcdClient) -> None:
        old = await c.put(b"/t/compact", b"old")
        new = await c.put(b"/t/compact", b"new")
        header = await c.compact(new.header.revision)
        assert header.revision >= new.header.revision
        with pytest.raises(EtcdCompacted):
            await c.range(b"/t/compact", revision=old.header.revision)
        assert (await c.range(b"/t/compact", revision=new.header.revision)).kvs[0].value == b"new"
        with pytest.raises(EtcdCompacted) as info:
            async with aclosing(
                c.watch(b"/t/compact", start_revision=old.header.revision)
            ) as events:
                async for _ in events:
                    raise AssertionError("a compacted watch yields nothing")
        assert info.value.compact_revision == new.header.revision
        with pytest.raises(EtcdRequestError):  # a future revision
            await c.range(b"/t/compact", revision=new.header.revision + 1000)

    run(etcd, body)


def test_status_names_the_cluster(etcd: SecureEtcd) -> None:
    status = run(etcd, lambda c: c.status())
    assert status.header.cluster_id != 0 and status.header.member_id != 0
    assert status.version.startswith("3.4.") and status.leader == status.header.member_id
    assert status.raft_term >= 1 and status.raft_index >= 1 and status.db_size > 0


# --- leases --------------------------------------------------------------------------------


def test_lease_grant_keep_alive_revoke(etcd: SecureEtcd) -> None:
    async def body(c: EtcdClient) -> None:
        lease = await c.lease_grant(30)
        assert lease.lease_id != 0 and lease.ttl_s == 30
        await c.put(b"/t/lease/member", b"me", lease=lease.lease_id)
        kv = await c.get(b"/t/lease/member")
        assert kv is not None and kv.lease == lease.lease_id
        ttls = await asyncio.gather(*(c.lease_keep_alive(lease.lease_id) for _ in range(8)))
        assert all(20 < t <= 30 for t in ttls)
        assert c.keep_alive_streams_opened == 1  # one stream for every refresh
        assert 0 < await c.lease_time_to_live(lease.lease_id) <= 30
        await c.lease_revoke(lease.lease_id)
        assert await c.get(b"/t/lease/member") is None  # the key went with its lease
        assert await c.lease_keep_alive(lease.lease_id) <= 0
        assert await c.lease_time_to_live(lease.lease_id) == -1
        with pytest.raises(EtcdNotFound):
            await c.lease_revoke(lease.lease_id)

    run(etcd, body)


def test_keep_alive_stream_survives_a_member_restart() -> None:
    with SecureEtcd.running(ROLES, USERS) as member:

        async def body(c: EtcdClient) -> None:
            lease = await c.lease_grant(60)
            assert await c.lease_keep_alive(lease.lease_id) > 0
            assert c.keep_alive_streams_opened == 1
            await asyncio.to_thread(member.kill)
            with pytest.raises(EtcdUnavailable):
                await c.lease_keep_alive(lease.lease_id)
            await asyncio.to_thread(member.start)
            ttl = await until_served(lambda: c.lease_keep_alive(lease.lease_id))
            assert ttl > 0 and c.keep_alive_streams_opened >= 2
            opened = c.keep_alive_streams_opened
            assert await c.lease_keep_alive(lease.lease_id) > 0
            assert c.keep_alive_streams_opened == opened  # the new stream is kept

        run(member, body)


# --- watch ---------------------------------------------------------------------------------


async def take(events: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with asyncio.timeout(10):
        async for event in events:
            out.append(event)
            if len(out) == n:
                break
    return out


def test_watch_from_a_revision_then_a_killed_member_then_resume() -> None:
    prefix = b"/t/watch/"
    with SecureEtcd.running(ROLES, USERS) as member:

        async def body(c: EtcdClient) -> None:
            first = await c.put(prefix + b"a", b"1")
            await c.put(prefix + b"b", b"2")
            await c.delete(prefix + b"a")
            await c.put(b"/t/elsewhere", b"x")  # outside the prefix: not seen
            created: list[int] = []
            watch = c.watch(
                prefix,
                range_end=prefix_end(prefix),
                start_revision=first.header.revision,
                on_created=created.append,
            )
            async with aclosing(watch) as events:
                seen = await take(events, 3)
                assert [(e.kind, e.kv.key) for e in seen] == [
                    ("PUT", prefix + b"a"),
                    ("PUT", prefix + b"b"),
                    ("DELETE", prefix + b"a"),
                ]
                revisions = [e.revision for e in seen]
                assert revisions == sorted(revisions) and revisions[0] == first.header.revision
                assert len(created) == 1 and created[0] >= revisions[-1]
                live = await c.put(prefix + b"c", b"3")
                (event,) = await take(events, 1)
                assert event.revision == live.header.revision and event.kv.value == b"3"
                await asyncio.to_thread(member.kill)
                with pytest.raises(EtcdUnavailable):
                    async with asyncio.timeout(20):
                        await anext(events)
            last = event.revision
            await asyncio.to_thread(member.start)
            after = await until_served(lambda: c.put(prefix + b"d", b"4"))

            async def resume() -> list[WatchEvent]:
                watch = c.watch(prefix, range_end=prefix_end(prefix), start_revision=last + 1)
                async with aclosing(watch) as events:
                    return await take(events, 1)

            (resumed,) = await until_served(resume)
            assert resumed.kv.key == prefix + b"d" and resumed.revision == after.header.revision

        run(member, body)


# --- the channel ---------------------------------------------------------------------------


def test_a_dead_endpoint_in_the_list_is_skipped(etcd: SecureEtcd) -> None:
    dead = f"127.0.0.1:{free_ports('127.0.0.1', 1)[0]}"
    config = EtcdClientConfig(endpoints=(etcd.endpoint, dead), tls=etcd.tls_for(APP))

    async def main() -> None:
        async with EtcdClient(config) as c:
            for i in range(20):
                await c.put(b"/t/rr", str(i).encode())
            kv = await c.get(b"/t/rr")
            assert kv is not None and kv.value == b"19"

    asyncio.run(main())


def test_a_member_that_never_answers_costs_one_call_timeout(etcd: SecureEtcd) -> None:
    with socket.socket() as silent:  # accepts TCP (the kernel's backlog), never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        config = EtcdClientConfig(
            endpoints=(f"{host}:{port}",), tls=etcd.tls_for(APP), call_timeout_s=0.3
        )

        async def main() -> float:
            async with EtcdClient(config) as c:
                started = time.monotonic()
                with pytest.raises(EtcdUnavailable):
                    await c.get(b"/t/x")
                return time.monotonic() - started

        elapsed = asyncio.run(main())
    assert elapsed < 0.3 + 0.5 + 0.5
