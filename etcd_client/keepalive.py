"""Lease keep-alive over one long-lived LeaseKeepAlive stream, shared by every caller of a client.

etcd renews a lease for each LeaseKeepAliveRequest and answers with the TTL left, in order, on
the same stream. One stream per client (not one per refresh, as aetcd's one-shot `refresh`
opened) keeps a refresh to one message each way. Callers are serialised by a lock, so each
answer belongs to the request just sent. After any failure or timeout the stream is dropped —
a late answer must never be taken for the next caller's — and the next refresh opens a new one
(through the channel's round robin, so usually on a live member).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from bkv.etcd import rpc_pb2
from etcd_client.errors import EtcdUnavailable, error_from_exception

log = logging.getLogger(__name__)


class KeepAliveStream:
    """Refreshes leases over one LeaseKeepAlive stream, reopened after a failure."""

    def __init__(self, open_call: Callable[[], Any], timeout_s: float) -> None:
        """`open_call()` starts a LeaseKeepAlive stream; every refresh, waiting for the lock
        included, is bounded by `timeout_s`."""
        self._open_call = open_call
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._call: Any = None
        self.streams_opened = 0  # how many streams this client has opened (tests, diagnostics)

    async def keep_alive(self, lease_id: int) -> int:
        """Renew `lease_id` once: the TTL left in seconds, <= 0 when the lease no longer exists.

        Raises EtcdUnavailable (timeout, stream broken twice), or the error etcd answered.
        """
        try:
            async with asyncio.timeout(self._timeout_s), self._lock:
                return await self._refresh(lease_id)
        except (grpc.RpcError, grpc.aio.BaseError, OSError, asyncio.InvalidStateError) as e:
            raise error_from_exception(e) from e

    async def _refresh(self, lease_id: int) -> int:
        """One renewal under the lock: on the open stream, or on a new one if that broke."""
        request = rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)
        for attempt in (1, 2):
            fresh = self._call is None
            if fresh:
                self._call = self._open_call()
                self.streams_opened += 1
            call = self._call
            try:
                await call.write(request)
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise EtcdUnavailable("etcd ended the lease keep-alive stream")
                    if response.ID == lease_id:
                        return int(response.TTL)
                    # An answer to another lease id cannot follow a serialised request on a
                    # stream that had no failure; skip it rather than misattribute it.
            except asyncio.CancelledError:
                self._drop(call)
                raise
            except Exception as e:
                self._drop(call)
                if fresh or attempt == 2:
                    raise
                # The stream came from an earlier call and died meanwhile (member restarted,
                # connection lost): renewing is idempotent, so try once on a new stream.
                log.info("lease keep-alive stream broken (%s), reopening", type(e).__name__)
        raise AssertionError("unreachable")

    def _drop(self, call: Any) -> None:
        """Forget (and cancel) `call`, so that no late answer on it reaches another caller."""
        if self._call is call:
            self._call = None
        call.cancel()

    def close(self) -> None:
        """Cancel the stream, if one is open."""
        if self._call is not None:
            self._drop(self._call)
