"""EtcdClient: an asyncio client of etcd 3.4's v3 API over one grpc.aio TLS channel.

One secure channel spans every member (round robin; a dead member is skipped), created once
with its stubs: no call creates a channel, a stub or a task of ours. Every unary call has a
gRPC deadline (`call_timeout_s`) and, behind it, a hard asyncio bound; every failure leaves as
an `EtcdError` (errors.py). Nothing here logs a key's value (records are secrets' ciphertexts);
logs carry error types only.

Retry policy (as etcd's own client: reads may be retried, writes only when surely not applied):
this client retries by itself only a request etcd refused before applying it because the auth
store changed under it (`EtcdAuthOldRevision`), once. Everything else is the caller's decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bkv.etcd import auth_pb2, rpc_pb2, rpc_pb2_grpc
from etcd_client.config import EtcdClientConfig, channel_target
from etcd_client.convert import (
    delete_from_pb,
    event_from_pb,
    header_from_pb,
    kv_from_pb,
    permission_from_pb,
    permission_to_pb,
    put_from_pb,
    range_from_pb,
    txn_from_pb,
    txn_to_pb,
)
from etcd_client.errors import (
    EtcdAlreadyExists,
    EtcdAuthOldRevision,
    EtcdError,
    EtcdUnavailable,
    error_from_exception,
    error_from_watch_cancel,
)
from etcd_client.keepalive import KeepAliveStream
from etcd_client.types import (
    Compare,
    DeleteResult,
    Header,
    KeyValue,
    LeaseGrantResult,
    Permission,
    PermissionType,
    PutResult,
    RangeResult,
    StatusResult,
    TxnOp,
    TxnResult,
    WatchEvent,
)
from vault_common.channels import ETCD_MAX_RECEIVE_BYTES, etcd_channel_options

log = logging.getLogger(__name__)

# The asyncio bound fires this long after the gRPC deadline, so that normally the deadline
# (DEADLINE_EXCEEDED, with the call cancelled in gRPC core) ends a call, and the bound only
# catches a call that gRPC failed to end.
HARD_BOUND_MARGIN_S = 0.5
MAX_RECEIVE_BYTES = ETCD_MAX_RECEIVE_BYTES
# Streams ask the member to end them when it has no leader ("hasleader", etcd's
# WithRequireLeader): a watch or keep-alive on a partitioned member then fails over instead of
# going silent.
_STREAM_METADATA = (("hasleader", "true"),)
# What the client catches from gRPC and asyncio and maps with error_from_exception.
_CALL_ERRORS = (grpc.RpcError, grpc.aio.BaseError, OSError, asyncio.InvalidStateError)


def channel_options(config: EtcdClientConfig) -> list[tuple[str, Any]]:
    """The gRPC channel options for the members of `config` (vault_common.channels)."""
    return etcd_channel_options(config.tls.server_name, max_receive_bytes=MAX_RECEIVE_BYTES)


def _read(path: str) -> bytes:
    """The bytes of a PEM file."""
    return Path(path).read_bytes()


class EtcdClient:
    """One process's connection to the etcd cluster, authenticated by its client certificate.

    Create it inside the event loop that will use it; `close()` it when done (or use
    `async with`).
    """

    def __init__(self, config: EtcdClientConfig) -> None:
        """Validate `config` (ValueError listing every problem), read the PEM files and open
        the channel (connections are made on first use)."""
        config.validate()
        self.config = config
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(config.tls.ca),
            private_key=_read(config.tls.key),
            certificate_chain=_read(config.tls.cert),
        )
        self._channel = grpc.aio.secure_channel(
            channel_target(config.endpoints), credentials, options=channel_options(config)
        )
        self._timeout_s = config.call_timeout_s
        kv = rpc_pb2_grpc.KVStub(self._channel)
        lease = rpc_pb2_grpc.LeaseStub(self._channel)
        auth = rpc_pb2_grpc.AuthStub(self._channel)
        self._range = kv.Range
        self._put = kv.Put
        self._delete_range = kv.DeleteRange
        self._txn = kv.Txn
        self._compact = kv.Compact
        self._watch = rpc_pb2_grpc.WatchStub(self._channel).Watch
        self._lease_grant = lease.LeaseGrant
        self._lease_revoke = lease.LeaseRevoke
        self._lease_ttl = lease.LeaseTimeToLive
        self._status = rpc_pb2_grpc.MaintenanceStub(self._channel).Status
        self._auth = auth
        self._keep_alive = KeepAliveStream(
            lambda: lease.LeaseKeepAlive(metadata=_STREAM_METADATA), self._timeout_s
        )

    async def __aenter__(self) -> EtcdClient:
        """The client itself; `close()` on leaving the block."""
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Close the client."""
        await self.close()

    async def close(self) -> None:
        """End every stream and close the channel; calls in flight fail with EtcdUnavailable."""
        self._keep_alive.close()
        await self._channel.close()

    async def _call(self, method: Callable[..., Any], request: Any, timeout_s: float = 0.0) -> Any:
        """One unary call, bounded and with its errors mapped."""
        timeout = timeout_s or self._timeout_s
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(timeout + HARD_BOUND_MARGIN_S):
                    return await method(request, timeout=timeout)
            except _CALL_ERRORS as e:
                error = error_from_exception(e)
                # Refused before it was applied (auth revision moved): safe to send again.
                if attempt == 1 and isinstance(error, EtcdAuthOldRevision):
                    continue
                raise error from e
        raise AssertionError("unreachable")

    # --- key-value ------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        *,
        range_end: bytes = b"",
        revision: int = 0,
        serializable: bool = False,
        limit: int = 0,
        keys_only: bool = False,
    ) -> RangeResult:
        """Keys in [key, range_end) (just `key` when range_end is empty), at `revision` (0: the
        newest). Linearizable unless `serializable` (member-local, possibly stale).
        EtcdCompacted when `revision` has been compacted."""
        request = rpc_pb2.RangeRequest(
            key=key,
            range_end=range_end,
            revision=revision,
            serializable=serializable,
            limit=limit,
            keys_only=keys_only,
        )
        return range_from_pb(await self._call(self._range, request))

    async def get(self, key: bytes) -> KeyValue | None:
        """The key (linearizable read), or None when absent."""
        response = await self._call(self._range, rpc_pb2.RangeRequest(key=key))
        return kv_from_pb(response.kvs[0]) if response.kvs else None

    async def put(
        self, key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        """Write `value` at `key` (attached to `lease`, 0: none)."""
        request = rpc_pb2.PutRequest(key=key, value=value, lease=lease, prev_kv=prev_kv)
        return put_from_pb(await self._call(self._put, request))

    async def delete(
        self, key: bytes, *, range_end: bytes = b"", prev_kv: bool = False
    ) -> DeleteResult:
        """Delete `key` (or every key in [key, range_end))."""
        request = rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=prev_kv)
        return delete_from_pb(await self._call(self._delete_range, request))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds, run `success`, else `failure`, atomically.

        EtcdUnavailable means the transaction may or may not have been applied."""
        return txn_from_pb(await self._call(self._txn, txn_to_pb(compare, success, failure)))

    async def compact(
        self, revision: int, *, physical: bool = True, timeout_s: float = 0.0
    ) -> Header:
        """Discard the history before `revision`. `physical` waits until the compaction is
        applied to the member's database (removed entries are gone from it, not only hidden);
        that can take longer than one ordinary call: pass `timeout_s` for a larger bound."""
        request = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        return header_from_pb((await self._call(self._compact, request, timeout_s)).header)

    # --- watch ----------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        *,
        range_end: bytes = b"",
        start_revision: int = 0,
        on_created: Callable[[int], None] | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes of `key` (or of [key, range_end)) from `start_revision` on (0: from now), in
        revision order, for as long as the caller iterates.

        `on_created(revision)` is called once etcd has set the watch up (revision: the store's
        then). Setting up is bounded by the call timeout; after that the stream has no deadline.
        Raises EtcdCompacted when `start_revision` is compacted (list again), EtcdUnavailable
        when the stream dies (a killed member ends it with UNAVAILABLE; the member loses its
        leader): resume from the last event's revision + 1. Use `contextlib.aclosing` when
        leaving the loop early, so that the stream ends at once.
        """
        request = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision
            )
        )
        call = self._watch(metadata=_STREAM_METADATA)
        try:
            async with asyncio.timeout(self._timeout_s):
                await call.write(request)
                response = await call.read()
            while True:
                if response is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd ended the watch stream")
                if response.canceled or response.compact_revision:
                    raise error_from_watch_cancel(response.cancel_reason, response.compact_revision)
                if response.created and on_created is not None:
                    on_created(response.header.revision)
                for event in response.events:
                    yield event_from_pb(event)
                response = await call.read()
        except _CALL_ERRORS as e:
            raise error_from_exception(e) from e
        finally:
            call.cancel()

    # --- leases ---------------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int) -> LeaseGrantResult:
        """A new lease of `ttl_s` seconds (etcd may grant more: its minimum is about 1.5 s x
        its election timeout)."""
        response = await self._call(self._lease_grant, rpc_pb2.LeaseGrantRequest(TTL=ttl_s))
        if response.error:
            raise EtcdError(f"etcd refused the lease: {response.error}")
        return LeaseGrantResult(header_from_pb(response.header), response.ID, response.TTL)

    async def lease_keep_alive(self, lease_id: int) -> int:
        """Renew the lease once: the TTL left in seconds, <= 0 when the lease is gone.

        Over one long-lived LeaseKeepAlive stream per client, reopened after a failure;
        concurrent callers are serialised; bounded by the call timeout."""
        return await self._keep_alive.keep_alive(lease_id)

    @property
    def keep_alive_streams_opened(self) -> int:
        """How many LeaseKeepAlive streams this client has opened so far."""
        return self._keep_alive.streams_opened

    async def lease_revoke(self, lease_id: int) -> Header:
        """Revoke the lease: every key attached to it is deleted. EtcdNotFound if it is gone."""
        response = await self._call(self._lease_revoke, rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        return header_from_pb(response.header)

    async def lease_time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left; -1 when it has expired or never existed."""
        response = await self._call(self._lease_ttl, rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id))
        return int(response.TTL)

    # --- maintenance ----------------------------------------------------------------------

    async def status(self) -> StatusResult:
        """The status of the member the channel picked for this call."""
        r = await self._call(self._status, rpc_pb2.StatusRequest())
        return StatusResult(
            header_from_pb(r.header), r.version, r.leader, r.dbSize, r.raftIndex, r.raftTerm
        )

    # --- auth administration (root identity, or any identity while auth is off) -----------

    async def user_add(self, name: str) -> bool:
        """Add user `name` without a password (UserAddOptions.no_password, etcd 3.4): it can
        authenticate only by a client certificate whose CN is `name`.

        True when the user was added, False when it already existed (not an error, so that a
        bootstrap can run again; the existing user keeps its roles and any password)."""
        request = rpc_pb2.AuthUserAddRequest(
            name=name, options=auth_pb2.UserAddOptions(no_password=True)
        )
        try:
            await self._call(self._auth.UserAdd, request)
        except EtcdAlreadyExists:
            return False
        return True

    async def user_get(self, name: str) -> tuple[str, ...]:
        """The roles of user `name` (EtcdNotFound when there is no such user)."""
        response = await self._call(self._auth.UserGet, rpc_pb2.AuthUserGetRequest(name=name))
        return tuple(response.roles)

    async def user_grant_role(self, user: str, role: str) -> None:
        """Grant `role` to `user` (granting a role it has already is a no-op in etcd)."""
        request = rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role)
        await self._call(self._auth.UserGrantRole, request)

    async def role_add(self, name: str) -> bool:
        """Add role `name`: True when added, False when it already existed (not an error)."""
        try:
            await self._call(self._auth.RoleAdd, rpc_pb2.AuthRoleAddRequest(name=name))
        except EtcdAlreadyExists:
            return False
        return True

    async def role_get(self, name: str) -> tuple[Permission, ...]:
        """The permissions of role `name` (EtcdNotFound when there is no such role)."""
        response = await self._call(self._auth.RoleGet, rpc_pb2.AuthRoleGetRequest(role=name))
        return tuple(permission_from_pb(p) for p in response.perm)

    async def role_grant_permission(
        self, role: str, key: bytes, range_end: bytes, perm: PermissionType
    ) -> None:
        """Let `role` do `perm` on `key` (range_end b"") or on [key, range_end). A permission on
        the same key and range_end is replaced by this one."""
        permission = Permission(key, range_end, perm)
        problems = permission.problems()
        if problems:
            raise ValueError("; ".join(problems))
        request = rpc_pb2.AuthRoleGrantPermissionRequest(
            name=role, perm=permission_to_pb(permission)
        )
        await self._call(self._auth.RoleGrantPermission, request)

    async def auth_enable(self) -> None:
        """Turn etcd's authentication on (a no-op when it is on already). Needs user "root"
        with role "root" (etcd refuses otherwise: EtcdRequestError)."""
        await self._call(self._auth.AuthEnable, rpc_pb2.AuthEnableRequest())
