"""Sealed records and the membership lease in etcd, behind small protocols.

`RecordStore` is what the request logic needs: a linearizable read of a record and its group's
head (vault_node.heads) with their etcd metadata, one compare-and-swap write of both (a put or a
delete of the record, a put of the head) on both keys' `mod_revision`, and compaction.
`MemoryRecordStore` is the in-process fake with etcd's revision semantics for unit tests;
`EtcdStore` talks to etcd 3.4 through `etcd_client` over TLS with this node's client
certificate, and hands every linearizable answer to the `StoreGuard`, so that a store rolled
back below what this node has seen is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from etcd_client import EtcdClient, EtcdClientConfig, prefix_end
from etcd_client.errors import EtcdCompacted, EtcdError
from etcd_client.types import Compare, Delete, Get, Header, KeyValue, Put, RangeResult
from vault_node.heads import HEADS_PREFIX, head_key
from vault_node.key_meta import ABSENT, KeyMeta, StoredValue
from vault_node.store_guard import StoreGuard

RECORDS_PREFIX = b"/bkv/v1/records/"
NODES_PREFIX = "/bkv/v1/nodes/"

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    """A record and its group's head as one linearizable read returned them (None: absent)."""

    record: StoredValue | None
    head: StoredValue | None


# (commit revision, None) after a commit; (0, the record and head as the failed transaction read
# them) after a conflict.
WriteResult = tuple[int, Snapshot | None]


class _Answer(Protocol):
    """An etcd answer that carries a response header (ranges and transactions)."""

    @property
    def header(self) -> Header: ...


R = TypeVar("R", bound=_Answer)


@dataclass(frozen=True)
class Write:
    """One `RecordStore.write`'s arguments (the unit `write_many` puts several of in one
    transaction: vault_node.group_commit)."""

    record_id: bytes
    value: bytes | None = field(repr=False)
    expected: KeyMeta
    group: int
    head: bytes = field(repr=False)
    expected_head: KeyMeta


# (commit revision, ()) when every write committed; (0, each write's record and head as the
# failed transaction read them, in order) when any compare failed and nothing was written.
ManyResult = tuple[int, tuple[Snapshot, ...]]


class StoreUnavailable(Exception):
    """etcd is unreachable, has no quorum or refused us; a write in flight may have applied."""


class RecordStore(Protocol):
    """Records keyed by record id, each with its group's head (vault_node.heads); writes are
    compare-and-swap on both keys' `mod_revision`, in one transaction."""

    async def read(self, record_id: bytes, group: int) -> Snapshot:
        """The record and its group's head, both as of one revision. Linearizable."""
        ...

    async def write(
        self,
        record_id: bytes,
        value: bytes | None,
        expected: KeyMeta,
        group: int,
        head: bytes,
        expected_head: KeyMeta,
    ) -> WriteResult:
        """Put `value` (None: delete the record) and the group's new `head`, if both keys are
        still at `expected` / `expected_head` (ABSENT: the key must not exist); on a conflict
        the two keys as the same transaction read them, so a retry needs no extra read."""
        ...

    async def compact(self, revision: int) -> None:
        """Compact etcd's history up to `revision` (an older compaction is fine)."""
        ...


class LeaseStore(Protocol):
    """The lease operations that membership needs."""

    async def grant_lease(self, ttl_s: int) -> int:
        """A new lease id."""
        ...

    async def keep_alive(self, lease_id: int) -> int:
        """Refresh once; the TTL left in seconds, <= 0 when the lease no longer exists."""
        ...

    async def put_leased(self, key: str, value: bytes, lease_id: int) -> None: ...

    async def revoke_lease(self, lease_id: int) -> None: ...


def record_key(record_id: bytes) -> bytes:
    """etcd key of a record: the hex record id only, which reveals no account."""
    return RECORDS_PREFIX + record_id.hex().encode("ascii")


class MemoryRecordStore:
    """In-memory `RecordStore` with etcd's revision semantics, for unit tests.

    `data` maps record ids and `heads` group numbers to `StoredValue`s; tests may write them
    directly, as an etcd insider would (`put_back`, `remove`, `restore`), to check that the node
    refuses what it did not write.
    """

    def __init__(self) -> None:
        self.revision = 0
        self.compacted = 0
        self.data: dict[bytes, StoredValue] = {}
        self.heads: dict[int, StoredValue] = {}

    def _meta(self, table: dict[Any, StoredValue], key: Any) -> KeyMeta:
        entry = table.get(key)
        return ABSENT if entry is None else entry.meta

    def _put(self, table: dict[Any, StoredValue], key: Any, value: bytes) -> StoredValue:
        """Put `value` at the current revision (the caller has counted the revision)."""
        stored = StoredValue(value, self._meta(table, key).after_write(self.revision))
        table[key] = stored
        return stored

    def put_back(self, record_id: bytes, value: bytes) -> StoredValue:
        """An unconditional put of a record, as `etcdctl put` makes it."""
        self.revision += 1
        return self._put(self.data, record_id, value)

    def put_head_back(self, group: int, value: bytes) -> StoredValue:
        """An unconditional put of a group's head."""
        self.revision += 1
        return self._put(self.heads, group, value)

    def remove(self, record_id: bytes) -> None:
        """An unconditional delete, as `etcdctl del` makes it."""
        if self.data.pop(record_id, None) is not None:
            self.revision += 1

    def copy(self) -> tuple[dict[bytes, StoredValue], dict[int, StoredValue], int]:
        """A snapshot of the whole store (`etcdctl snapshot save`)."""
        return dict(self.data), dict(self.heads), self.revision

    def restore(
        self, snapshot: tuple[dict[bytes, StoredValue], dict[int, StoredValue], int], bump: int = 0
    ) -> None:
        """Put a snapshot back, its revision raised by `bump` (a restore that bumps revisions)."""
        self.data, self.heads = dict(snapshot[0]), dict(snapshot[1])
        self.revision = snapshot[2] + bump

    async def read(self, record_id: bytes, group: int) -> Snapshot:
        await asyncio.sleep(0)  # a real store yields here: let concurrent callers interleave
        return Snapshot(self.data.get(record_id), self.heads.get(group))

    async def write(
        self,
        record_id: bytes,
        value: bytes | None,
        expected: KeyMeta,
        group: int,
        head: bytes,
        expected_head: KeyMeta,
    ) -> WriteResult:
        await asyncio.sleep(0)
        if (
            self._meta(self.data, record_id).mod_revision != expected.mod_revision
            or self._meta(self.heads, group).mod_revision != expected_head.mod_revision
        ):
            return 0, Snapshot(self.data.get(record_id), self.heads.get(group))
        self.revision += 1
        if value is None:
            self.data.pop(record_id, None)
        else:
            self._put(self.data, record_id, value)
        self._put(self.heads, group, head)
        return self.revision, None

    async def write_many(self, writes: Sequence[Write]) -> ManyResult:
        """Every write in one transaction (distinct records and groups): all or none."""
        await asyncio.sleep(0)
        if any(
            self._meta(self.data, w.record_id).mod_revision != w.expected.mod_revision
            or self._meta(self.heads, w.group).mod_revision != w.expected_head.mod_revision
            for w in writes
        ):
            return 0, tuple(Snapshot(self.data.get(w.record_id), self.heads.get(w.group))
                            for w in writes)  # fmt: skip
        self.revision += 1
        for w in writes:
            if w.value is None:
                self.data.pop(w.record_id, None)
            else:
                meta = self._meta(self.data, w.record_id).after_write(self.revision)
                self.data[w.record_id] = StoredValue(w.value, meta)
            head_meta = self._meta(self.heads, w.group).after_write(self.revision)
            self.heads[w.group] = StoredValue(w.head, head_meta)
        return self.revision, ()

    async def compact(self, revision: int) -> None:
        await asyncio.sleep(0)
        self.compacted = max(self.compacted, min(revision, self.revision))

    async def scan_records(self, start: bytes, limit: int) -> list[tuple[bytes, StoredValue]]:
        await asyncio.sleep(0)
        ids = sorted(rid for rid in self.data if rid.hex() >= start.hex())[:limit]
        return [(rid, self.data[rid]) for rid in ids]

    async def read_heads(self) -> list[tuple[int, StoredValue]]:
        await asyncio.sleep(0)
        return sorted(self.heads.items())


def _stored(kv: KeyValue) -> StoredValue:
    return StoredValue(kv.value, KeyMeta(kv.create_revision, kv.mod_revision, kv.version))


def _first(result: object) -> StoredValue | None:
    if isinstance(result, RangeResult) and result.kvs:
        return _stored(result.kvs[0])
    return None


def _snapshot(responses: tuple[object, ...]) -> Snapshot:
    if len(responses) != 2:
        raise StoreUnavailable("etcd answered a record read without both keys")
    return Snapshot(_first(responses[0]), _first(responses[1]))


def _compare(key: bytes, expected: KeyMeta) -> Compare:
    """The key is still at `expected`: its mod_revision, or absent (version 0)."""
    if not expected.exists:
        return Compare.version_is(key, 0)
    return Compare.mod_is(key, expected.mod_revision)


class EtcdStore:
    """`RecordStore` and `LeaseStore` over one `EtcdClient` (one TLS channel, every member).

    Every record answer (ranges and transactions, which etcd serves linearizably) and the
    guard's probe go through the guard with the high-water mark taken before the request was
    sent. Lease keep-alive answers do not (a follower fills their header from its own, possibly
    older, revision), nor do membership puts (see `put_leased`).
    """

    def __init__(
        self,
        config: EtcdClientConfig,
        guard: StoreGuard,
        observe: Callable[[str, float, bool], None] = lambda call, seconds, ok: None,
    ) -> None:
        self._client = EtcdClient(config)
        self._observe_call = observe  # (call name, seconds, succeeded): the node's metrics
        self._guard = guard
        self._timeout = config.call_timeout_s

    @property
    def guard(self) -> StoreGuard:
        return self._guard

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, call: str, fn: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        ok = False
        try:
            result = await fn()
            ok = True
            return result
        except (EtcdError, TimeoutError, ConnectionError) as exc:
            # Permission denied, too: an etcd admin who takes our rights away denies service,
            # nothing more. The class of the error goes to the log, never a value.
            raise StoreUnavailable(f"etcd: {type(exc).__name__}") from exc
        finally:
            self._observe_call(call, time.perf_counter() - started, ok)

    async def _guarded(self, call: str, fn: Callable[[], Awaitable[R]]) -> R:
        """`_call` for an answer etcd serves linearizably: refused while the guard is alarmed,
        and its header handed to the guard with the high-water mark from before it was sent."""
        self._guard.check()
        floor = self._guard.floor()
        result = await self._call(call, fn)
        self._guard.observe(result.header.cluster_id, result.header.revision, floor)
        return result

    # -- records --

    async def read(self, record_id: bytes, group: int) -> Snapshot:
        # Linearizable (not serializable): a partitioned member can never hand us an old
        # attempt counter, and the answer's revision is one the guard may compare. A
        # transaction with no compare: both keys at one revision, one round trip.
        result = await self._guarded(
            "read", lambda: self._client.txn([], [Get(record_key(record_id)), Get(head_key(group))])
        )
        return _snapshot(result.responses)

    async def write(
        self,
        record_id: bytes,
        value: bytes | None,
        expected: KeyMeta,
        group: int,
        head: bytes,
        expected_head: KeyMeta,
    ) -> WriteResult:
        key, hkey = record_key(record_id), head_key(group)
        record_op: Put | Delete = Delete(key) if value is None else Put(key, value)
        # One round trip either way: the failure branch reads both keys inside the
        # transaction, which etcd serialises like any write, so what it returns is current.
        result = await self._guarded(
            "write",
            lambda: self._client.txn(
                [_compare(key, expected), _compare(hkey, expected_head)],
                [record_op, Put(hkey, head)],
                [Get(key), Get(hkey)],
            ),
        )
        if result.succeeded:
            return result.header.revision, None
        return 0, _snapshot(result.responses)

    async def write_many(self, writes: Sequence[Write]) -> ManyResult:
        """`writes` (distinct records and groups) in one transaction: every record and head
        compared as `write` compares them, all put (or the record deleted) if every compare
        holds; otherwise nothing, and the failure branch reads every key (one round trip)."""
        compares: list[Compare] = []
        success: list[Put | Delete] = []
        failure: list[Get] = []
        for w in writes:
            key, hkey = record_key(w.record_id), head_key(w.group)
            compares += [_compare(key, w.expected), _compare(hkey, w.expected_head)]
            success += [Delete(key) if w.value is None else Put(key, w.value), Put(hkey, w.head)]
            failure += [Get(key), Get(hkey)]
        result = await self._guarded(
            "write_many", lambda: self._client.txn(compares, success, failure)
        )
        if result.succeeded:
            return result.header.revision, ()
        if len(result.responses) != 2 * len(writes):
            raise StoreUnavailable("etcd answered a batched write without every key")
        pairs = zip(result.responses[::2], result.responses[1::2], strict=True)
        return 0, tuple(Snapshot(_first(record), _first(head)) for record, head in pairs)

    async def read_heads(self) -> list[tuple[int, StoredValue]]:
        """Every group head in etcd (a linearizable range over the heads prefix), by group:
        what a witness an operator reset adopts (witness_server)."""
        result = await self._guarded(
            "read_heads",
            lambda: self._client.range(HEADS_PREFIX, range_end=prefix_end(HEADS_PREFIX)),
        )
        heads: list[tuple[int, StoredValue]] = []
        for kv in result.kvs:
            try:
                group = int(kv.key[len(HEADS_PREFIX) :].decode("ascii"), 16)
            except ValueError:
                continue  # not a head key of ours
            heads.append((group, _stored(kv)))
        return heads

    async def scan_records(self, start: bytes, limit: int) -> list[tuple[bytes, StoredValue]]:
        """Up to `limit` records from record id `start` on, in etcd key order (a linearizable
        range through the guard): what a fleet rotation's re-seal pass walks (vault_node.reseal).
        """
        first = record_key(start) if start else RECORDS_PREFIX
        result = await self._guarded(
            "scan_records",
            lambda: self._client.range(first, range_end=prefix_end(RECORDS_PREFIX), limit=limit),
        )
        out: list[tuple[bytes, StoredValue]] = []
        for kv in result.kvs:
            try:
                record_id = bytes.fromhex(kv.key[len(RECORDS_PREFIX) :].decode("ascii"))
            except ValueError:
                continue  # not a record key of ours
            if record_id:
                out.append((record_id, _stored(kv)))
        return out

    async def compact(self, revision: int) -> None:
        async def compact_once() -> None:
            try:
                await self._client.compact(revision, physical=True)
            except EtcdCompacted:
                pass  # someone (another node, etcd's own periodic compaction) went further

        await self._call("compact", compact_once)

    async def probe(self, key: str) -> None:
        """One linearizable read of `key` (the node's own membership key), for the guard."""
        await self._guarded(
            "probe", lambda: self._client.range(key.encode("utf-8"), keys_only=True)
        )

    # -- leases --

    async def grant_lease(self, ttl_s: int) -> int:
        lease = await self._call("lease_grant", lambda: self._client.lease_grant(ttl_s))
        return lease.lease_id

    async def keep_alive(self, lease_id: int) -> int:
        return await self._call("lease_keep_alive", lambda: self._client.lease_keep_alive(lease_id))

    async def put_leased(self, key: str, value: bytes, lease_id: int) -> None:
        # Not checked by the guard: a node whose guard latched an alarm stays announced, so
        # that its accounts keep being routed to it and refused (service.StoreRefused).
        await self._call(
            "put_leased", lambda: self._client.put(key.encode("utf-8"), value, lease=lease_id)
        )

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call("lease_revoke", lambda: self._client.lease_revoke(lease_id))

    async def ping(self) -> None:
        """One linearizable round trip (for health checks in tests and tools): a read of the
        records prefix itself, a key no record has and the node may read."""
        await self._call("ping", lambda: self._client.range(RECORDS_PREFIX, keys_only=True))
