"""Sealed records and the membership lease in etcd (aetcd), behind small protocols.

`RecordStore` is what the request logic needs: a linearizable read with the key's
`mod_revision`, and compare-and-swap writes on that revision. `MemoryRecordStore` is the
in-process fake for unit tests; `EtcdStore` talks to etcd 3.4 through one aetcd client whose gRPC
channel spans every member with round-robin, so a dead member is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import aetcd
import aetcd.exceptions
import grpc

RECORDS_PREFIX = b"/bkv/v1/records/"
NODES_PREFIX = "/bkv/v1/nodes/"

# What `put`/`delete` return for a commit whose revision etcd did not report (truthy, never a
# real revision: audit lines leave it out).
COMMITTED_REVISION_UNKNOWN = -1

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreUnavailable(Exception):
    """etcd is unreachable or has no quorum; the outcome of a write in flight is unknown."""


class RecordStore(Protocol):
    """Records keyed by record id; writes are compare-and-swap on the key's `mod_revision`."""

    async def get(self, record_id: bytes) -> tuple[bytes, int] | None:
        """`(value, mod_revision)`, or None when absent. Linearizable."""
        ...

    async def put(self, record_id: bytes, value: bytes, expected_mod_revision: int) -> int:
        """Write if the key's mod_revision is still `expected_mod_revision` (0: must not exist).

        The etcd revision of the commit (> 0; `COMMITTED_REVISION_UNKNOWN` if etcd did not say),
        or 0 on a conflict, so the result is falsy exactly when nothing was written.
        `StoreUnavailable` when etcd cannot answer.
        """
        ...

    async def swap(
        self, record_id: bytes, value: bytes, expected_mod_revision: int
    ) -> tuple[int, tuple[bytes, int] | None]:
        """`put`, and on a conflict also the key's current `(value, mod_revision)` (None when
        absent) as read by the same linearizable operation, so a retry needs no extra read.

        `(revision, None)` after a commit, `(0, current)` after a conflict.
        """
        ...

    async def delete(self, record_id: bytes, expected_mod_revision: int) -> int:
        """Delete if the key's mod_revision is still `expected_mod_revision`: the revision of
        the commit, or 0 on a conflict."""
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
    """In-memory `RecordStore` with etcd's revision semantics, for unit tests."""

    def __init__(self) -> None:
        self.revision = 0
        self.data: dict[bytes, tuple[bytes, int]] = {}

    async def get(self, record_id: bytes) -> tuple[bytes, int] | None:
        await asyncio.sleep(0)  # a real store yields here: let concurrent callers interleave
        return self.data.get(record_id)

    def _current_revision(self, record_id: bytes) -> int:
        entry = self.data.get(record_id)
        return 0 if entry is None else entry[1]

    async def put(self, record_id: bytes, value: bytes, expected_mod_revision: int) -> int:
        await asyncio.sleep(0)
        if self._current_revision(record_id) != expected_mod_revision:
            return 0
        self.revision += 1
        self.data[record_id] = (value, self.revision)
        return self.revision

    async def swap(
        self, record_id: bytes, value: bytes, expected_mod_revision: int
    ) -> tuple[int, tuple[bytes, int] | None]:
        revision = await self.put(record_id, value, expected_mod_revision)
        return (revision, None) if revision else (0, self.data.get(record_id))

    async def delete(self, record_id: bytes, expected_mod_revision: int) -> int:
        await asyncio.sleep(0)
        if record_id not in self.data or self._current_revision(record_id) != expected_mod_revision:
            return 0
        self.revision += 1
        del self.data[record_id]
        return self.revision


# gRPC codes that mean "etcd could not answer now" rather than "the request is wrong".
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
    }
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            aetcd.exceptions.ConnectionFailedError,
            aetcd.exceptions.ConnectionTimeoutError,
            asyncio.TimeoutError,
            ConnectionError,
        ),
    ):
        return True
    cause = exc.__cause__
    if isinstance(exc, aetcd.exceptions.ClientError) and isinstance(cause, grpc.aio.AioRpcError):
        return cause.code() in _TRANSIENT_CODES
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSIENT_CODES
    return False


def _commit_revision(succeeded: Any, responses: Any, field: str) -> int:
    """The revision a successful one-operation transaction committed at, 0 when it failed.

    etcd 3.4 fills each sub-response's header with the transaction's revision.
    """
    if not succeeded:
        return 0
    try:
        revision = int(getattr(responses[0], field).header.revision)
    except (IndexError, AttributeError, TypeError, ValueError):
        revision = 0
    # A commit with an unreadable revision is still a commit: never report it as a conflict.
    return revision if revision > 0 else COMMITTED_REVISION_UNKNOWN


def grpc_target(endpoints: Sequence[str]) -> tuple[str, int]:
    """aetcd's (host, port) pair that spells the gRPC target `ipv4:A:pa,B:pb,C:pc`.

    aetcd joins `f"{host}:{port}"`, so the host carries every member but the last port.
    """
    if not endpoints:
        raise ValueError("at least one etcd endpoint is needed")
    joined = ",".join(endpoints)
    host, _, port = joined.rpartition(":")
    scheme = "ipv4:" if all(_is_ipv4_endpoint(e) for e in endpoints) else "dns:///"
    if scheme == "dns:///" and len(endpoints) > 1:
        raise ValueError("several etcd endpoints must be given as IPv4 host:port")
    return scheme + host, int(port)


def _is_ipv4_endpoint(endpoint: str) -> bool:
    host = endpoint.rpartition(":")[0]
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)


class EtcdStore:
    """`RecordStore` and `LeaseStore` over one aetcd client (one channel, all members)."""

    def __init__(self, endpoints: Sequence[str], *, call_timeout_s: float = 2.0) -> None:
        host, port = grpc_target(endpoints)
        self._timeout = call_timeout_s
        self._client = aetcd.Client(
            host=host,
            port=port,
            timeout=call_timeout_s,  # type: ignore[arg-type]  # aetcd passes it to gRPC as is
            options={
                "grpc.lb_policy_name": "round_robin",
                # Quick reconnects after a member comes back, so fail-closed ends soon.
                "grpc.initial_reconnect_backoff_ms": 100,
                "grpc.max_reconnect_backoff_ms": 1000,
            },
        )

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            # A hard bound on top of gRPC's deadline (aetcd's reconnect path has none); a
            # timeout scope costs no extra task, unlike wait_for (measured 10 vs 20 us a call).
            async with asyncio.timeout(self._timeout + 1.0):
                return await fn()
        except Exception as exc:
            if _is_transient(exc):
                raise StoreUnavailable("etcd is unavailable") from exc
            raise

    # -- records --

    async def get(self, record_id: bytes) -> tuple[bytes, int] | None:
        # serializable=False: a linearizable read goes through the leader's quorum, so a
        # partitioned member can never hand us an old attempt counter.
        result: Any = await self._call(
            lambda: self._client.get(record_key(record_id), serializable=False)
        )
        if result is None:
            return None
        return bytes(result.value), int(result.mod_revision)

    def _compare(self, key: bytes, expected_mod_revision: int) -> Any:
        tx = self._client.transactions
        if expected_mod_revision == 0:
            return tx.version(key) == 0  # the key must not exist
        return tx.mod(key) == expected_mod_revision

    async def put(self, record_id: bytes, value: bytes, expected_mod_revision: int) -> int:
        revision, _current = await self.swap(record_id, value, expected_mod_revision)
        return revision

    async def swap(
        self, record_id: bytes, value: bytes, expected_mod_revision: int
    ) -> tuple[int, tuple[bytes, int] | None]:
        key = record_key(record_id)
        tx = self._client.transactions
        # One round trip either way: the failure branch reads the key inside the transaction,
        # which etcd serialises like any write, so the value returned is linearizable.
        succeeded, responses = await self._call(
            lambda: self._client.transaction(
                compare=[self._compare(key, expected_mod_revision)],
                success=[tx.put(key, value)],
                failure=[tx.get(key)],
            )
        )
        if succeeded:
            return _commit_revision(succeeded, responses, "response_put"), None
        try:
            kvs = responses[0]
        except IndexError:
            kvs = []
        if not kvs:
            return 0, None
        current, meta = kvs[0]
        return 0, (bytes(current), int(meta.mod_revision))

    async def delete(self, record_id: bytes, expected_mod_revision: int) -> int:
        if expected_mod_revision == 0:
            return 0
        key = record_key(record_id)
        tx = self._client.transactions
        succeeded, responses = await self._call(
            lambda: self._client.transaction(
                compare=[self._compare(key, expected_mod_revision)],
                success=[tx.delete(key)],
                failure=[],
            )
        )
        return _commit_revision(succeeded, responses, "response_delete_range")

    # -- leases --

    async def grant_lease(self, ttl_s: int) -> int:
        lease: Any = await self._call(lambda: self._client.lease(ttl_s))
        return int(lease.id)

    async def keep_alive(self, lease_id: int) -> int:
        reply: Any = await self._call(lambda: self._client.refresh_lease(lease_id))
        return 0 if reply is None else int(reply.TTL)

    async def put_leased(self, key: str, value: bytes, lease_id: int) -> None:
        await self._call(lambda: self._client.put(key.encode("utf-8"), value, lease=lease_id))

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call(lambda: self._client.revoke_lease(lease_id))

    async def ping(self) -> None:
        """One linearizable round trip (for health checks in tests and tools)."""
        await self._call(lambda: self._client.get(b"/bkv/v1/ping", serializable=False))
