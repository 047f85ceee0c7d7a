"""Sealed records and the membership lease in etcd, behind small protocols.

`RecordStore` is what the request logic needs: a linearizable read that returns the key's etcd
metadata with its value, register start's reservation, compare-and-swap writes and deletes on
the key's `mod_revision`, and compaction. `MemoryRecordStore` is the in-process fake with etcd's
revision semantics for unit tests; `EtcdStore` talks to etcd 3.4 through `etcd_client` over TLS
with this node's client certificate, and hands every linearizable answer to the `StoreGuard`,
so that a store rolled back below what this node has seen is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from etcd_client import EtcdClient, EtcdClientConfig
from etcd_client.errors import EtcdCompacted, EtcdError
from etcd_client.types import Compare, Delete, Get, Header, KeyValue, Put, RangeResult
from vault_node.key_meta import ABSENT, KeyMeta, StoredValue
from vault_node.store_guard import StoreGuard

RECORDS_PREFIX = b"/bkv/v1/records/"
NODES_PREFIX = "/bkv/v1/nodes/"

log = logging.getLogger(__name__)
T = TypeVar("T")

# (commit revision, None) after a commit; (0, the key as the failed transaction read it) after a
# conflict, None for an absent key.
SwapResult = tuple[int, StoredValue | None]


class StoreUnavailable(Exception):
    """etcd is unreachable, has no quorum or refused us; a write in flight may have applied."""


class RecordStore(Protocol):
    """Records keyed by record id; writes are compare-and-swap on the key's `mod_revision`."""

    async def get(self, record_id: bytes) -> StoredValue | None:
        """The key's value and metadata, or None when absent. Linearizable."""
        ...

    async def reserve(self, record_id: bytes, placeholder: bytes) -> tuple[StoredValue, int]:
        """Create the key with `placeholder` if it is absent, in one transaction.

        `(the key as it is afterwards, the commit revision)`, the revision 0 when the key
        existed (then the value is the existing one).
        """
        ...

    async def swap(self, record_id: bytes, value: bytes, expected: KeyMeta) -> SwapResult:
        """Write `value` if the key is still at `expected` (its `mod_revision`); on a conflict,
        the key as the same transaction read it, so a retry needs no extra read."""
        ...

    async def delete(self, record_id: bytes, expected: KeyMeta) -> SwapResult:
        """Delete the key if it is still at `expected`; as `swap` otherwise."""
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

    `data` maps record ids to `StoredValue`s; tests may write it directly, as an etcd insider
    would (`put_back`, `recreate`), to check that the node refuses what it did not write.
    """

    def __init__(self) -> None:
        self.revision = 0
        self.compacted = 0
        self.data: dict[bytes, StoredValue] = {}

    async def get(self, record_id: bytes) -> StoredValue | None:
        await asyncio.sleep(0)  # a real store yields here: let concurrent callers interleave
        return self.data.get(record_id)

    def _meta(self, record_id: bytes) -> KeyMeta:
        entry = self.data.get(record_id)
        return ABSENT if entry is None else entry.meta

    def put_back(self, record_id: bytes, value: bytes) -> StoredValue:
        """An unconditional put, as `etcdctl put` makes it."""
        self.revision += 1
        stored = StoredValue(value, self._meta(record_id).after_write(self.revision))
        self.data[record_id] = stored
        return stored

    def remove(self, record_id: bytes) -> None:
        """An unconditional delete, as `etcdctl del` makes it."""
        if self.data.pop(record_id, None) is not None:
            self.revision += 1

    async def reserve(self, record_id: bytes, placeholder: bytes) -> tuple[StoredValue, int]:
        await asyncio.sleep(0)
        existing = self.data.get(record_id)
        if existing is not None:
            return existing, 0
        stored = self.put_back(record_id, placeholder)
        return stored, self.revision

    async def swap(self, record_id: bytes, value: bytes, expected: KeyMeta) -> SwapResult:
        await asyncio.sleep(0)
        if not expected.exists or self._meta(record_id).mod_revision != expected.mod_revision:
            return 0, self.data.get(record_id)
        self.put_back(record_id, value)
        return self.revision, None

    async def delete(self, record_id: bytes, expected: KeyMeta) -> SwapResult:
        await asyncio.sleep(0)
        if not expected.exists or self._meta(record_id).mod_revision != expected.mod_revision:
            return 0, self.data.get(record_id)
        self.remove(record_id)
        return self.revision, None

    async def compact(self, revision: int) -> None:
        await asyncio.sleep(0)
        self.compacted = max(self.compacted, min(revision, self.revision))


def _stored(kv: KeyValue) -> StoredValue:
    return StoredValue(kv.value, KeyMeta(kv.create_revision, kv.mod_revision, kv.version))


def _first(result: RangeResult) -> StoredValue | None:
    return _stored(result.kvs[0]) if result.kvs else None


class EtcdStore:
    """`RecordStore` and `LeaseStore` over one `EtcdClient` (one TLS channel, every member).

    Every record answer (ranges and transactions, which etcd serves linearizably) and the
    guard's probe go through the guard with the high-water mark taken before the request was
    sent. Lease keep-alive answers do not (a follower fills their header from its own, possibly
    older, revision), nor do membership puts (see `put_leased`).
    """

    def __init__(self, config: EtcdClientConfig, guard: StoreGuard) -> None:
        self._client = EtcdClient(config)
        self._guard = guard
        self._timeout = config.call_timeout_s

    @property
    def guard(self) -> StoreGuard:
        return self._guard

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except EtcdError as exc:
            # Permission denied, too: an etcd admin who takes our rights away denies service,
            # nothing more. The class of the error goes to the log, never a value.
            raise StoreUnavailable(f"etcd: {type(exc).__name__}") from exc
        except (TimeoutError, ConnectionError) as exc:
            raise StoreUnavailable(f"etcd: {type(exc).__name__}") from exc

    def _observe(self, header: Header, floor: int) -> None:
        self._guard.observe(header.cluster_id, header.revision, floor)

    # -- records --

    async def get(self, record_id: bytes) -> StoredValue | None:
        # Linearizable (not serializable): a partitioned member can never hand us an old
        # attempt counter, and the answer's revision is one the guard may compare.
        self._guard.check()
        floor = self._guard.floor()
        result = await self._call(lambda: self._client.range(record_key(record_id)))
        self._observe(result.header, floor)
        return _first(result)

    async def reserve(self, record_id: bytes, placeholder: bytes) -> tuple[StoredValue, int]:
        key = record_key(record_id)
        self._guard.check()
        floor = self._guard.floor()
        result = await self._call(
            lambda: self._client.txn(
                [Compare.version_is(key, 0)], [Put(key, placeholder)], [Get(key)]
            )
        )
        self._observe(result.header, floor)
        revision = result.header.revision
        if result.succeeded:
            return StoredValue(placeholder, ABSENT.after_write(revision)), revision
        got = result.responses[0] if result.responses else None
        if not isinstance(got, RangeResult) or not got.kvs:
            # Deleted between the compare and the read of the same transaction cannot happen
            # in etcd; treat a malformed answer as the store failing.
            raise StoreUnavailable("etcd answered a reservation without the key")
        return _stored(got.kvs[0]), 0

    async def _conditional(
        self, record_id: bytes, expected: KeyMeta, op: Put | Delete
    ) -> SwapResult:
        if not expected.exists:
            raise ValueError("a compare-and-swap needs an existing key")
        key = record_key(record_id)
        self._guard.check()
        floor = self._guard.floor()
        # One round trip either way: the failure branch reads the key inside the transaction,
        # which etcd serialises like any write, so the value returned is linearizable.
        result = await self._call(
            lambda: self._client.txn([Compare.mod_is(key, expected.mod_revision)], [op], [Get(key)])
        )
        self._observe(result.header, floor)
        if result.succeeded:
            return result.header.revision, None
        got = result.responses[0] if result.responses else None
        return 0, (_first(got) if isinstance(got, RangeResult) else None)

    async def swap(self, record_id: bytes, value: bytes, expected: KeyMeta) -> SwapResult:
        return await self._conditional(record_id, expected, Put(record_key(record_id), value))

    async def delete(self, record_id: bytes, expected: KeyMeta) -> SwapResult:
        return await self._conditional(record_id, expected, Delete(record_key(record_id)))

    async def compact(self, revision: int) -> None:
        try:
            await self._client.compact(revision, physical=True)
        except EtcdCompacted:
            return  # someone (another node, etcd's own periodic compaction) went further
        except EtcdError as exc:
            raise StoreUnavailable(f"etcd: {type(exc).__name__}") from exc
        except (TimeoutError, ConnectionError) as exc:
            raise StoreUnavailable(f"etcd: {type(exc).__name__}") from exc

    async def probe(self, key: str) -> None:
        """One linearizable read of `key` (the node's own membership key), for the guard."""
        self._guard.check()
        floor = self._guard.floor()
        result = await self._call(lambda: self._client.range(key.encode("utf-8"), keys_only=True))
        self._observe(result.header, floor)

    # -- leases --

    async def grant_lease(self, ttl_s: int) -> int:
        lease = await self._call(lambda: self._client.lease_grant(ttl_s))
        return lease.lease_id

    async def keep_alive(self, lease_id: int) -> int:
        return await self._call(lambda: self._client.lease_keep_alive(lease_id))

    async def put_leased(self, key: str, value: bytes, lease_id: int) -> None:
        # Not checked by the guard: a node whose guard latched an alarm stays announced, so
        # that its accounts keep being routed to it and refused (service.StoreRefused).
        await self._call(lambda: self._client.put(key.encode("utf-8"), value, lease=lease_id))

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call(lambda: self._client.lease_revoke(lease_id))

    async def ping(self) -> None:
        """One linearizable round trip (for health checks in tests and tools): a read of the
        records prefix itself, a key no record has and the node may read."""
        await self._call(lambda: self._client.range(RECORDS_PREFIX, keys_only=True))
