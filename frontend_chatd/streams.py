"""Open over a pool of long-lived request/response streams per node (VaultNode.OpenStream).

A unary call costs gRPC a new HTTP/2 stream, its headers and trailers, and the call's objects in
both processes; a stream that stays open carries each request as one message each way. Measured
on this machine (deploy/bench/stream_cost.py, docs/performance.md's ninth session): a pool of
request/response streams costs well under half the CPU per message of unary calls, and less than
one stream carrying many requests at once (ids, futures and a write lock cost most of the gain).

Each stream carries ONE request at a time: write a frame, read its reply, and give the stream
back. So a stream is exactly a unary call as far as failures go:

* the request's deadline is enforced here; when it passes, or the caller is cancelled, the stream
  is cancelled (the node cancels the request's work, as it does a unary call's) and dropped;
* when the stream fails, the request fails with the stream's own status and NO trailers: a frame
  that may have reached the node is never "not applied" unless the node's reply frame said so.
  (A stream that never connected fails with gRPC's "failed to connect to all addresses", which
  the relay already reads as "wrote nothing", as it does for a unary call.)
* a node's answer in a reply frame becomes the same AioRpcError a unary Open would raise (the
  not-applied flag and retry-after as trailers), so `relay.classify` maps both paths once.

A node that does not implement OpenStream (an older node) answers UNIMPLEMENTED before any
handler ran: the request goes out again as a unary Open and that node gets unary calls for a
while. When every stream of a node is busy, the request is a unary call too (no queueing here).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from bkv.v1 import node_pb2
from frontend_chatd.relay import OpenCall
from frontend_chatd.routing import NodeInfo

log = logging.getLogger(__name__)

NOT_APPLIED_TRAILER = ("bkv-not-applied", "1")
UNARY_ONLY_S = 60.0  # an older node is asked again for streams after this long
_ENDED = "vault node ended the stream"
_VALID_CODES = {code.value[0]: code for code in grpc.StatusCode}


def rpc_error(
    code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
) -> grpc.aio.AioRpcError:
    """The AioRpcError a unary call with this status would have raised."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details=details
    )


def reply_result(reply: Any) -> node_pb2.OpenReply:
    """The OpenReply of an OK reply frame; otherwise raises the node's status as an AioRpcError,
    with the trailers the unary Open would have carried."""
    if reply.code == 0:
        return node_pb2.OpenReply(sealed_response=reply.sealed_response)
    code = _VALID_CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN
    trailers: list[tuple[str, str]] = []
    # Security: only the node's explicit flag says "not applied"; it is honoured for UNAVAILABLE
    # only, as the unary trailer is (relay._wrote_nothing reads it on UNAVAILABLE alone).
    if reply.not_applied:
        trailers.append(NOT_APPLIED_TRAILER)
    if reply.retry_after_ms:
        trailers.append(("retry-after-ms", reply.retry_after_ms))
    raise rpc_error(code, reply.details, tuple(trailers))


async def stream_failure(call: Any) -> grpc.aio.AioRpcError:
    """The error a request gets when its stream ended without its reply: the stream's status,
    without trailers (a stream's status is never about one frame)."""
    try:
        code = await call.code()
        details = await call.details()
    except Exception:  # noqa: BLE001 - a call that cannot say why it ended: it may have applied
        return rpc_error(grpc.StatusCode.UNAVAILABLE, _ENDED)
    if code is None or code == grpc.StatusCode.OK:
        return rpc_error(grpc.StatusCode.UNAVAILABLE, _ENDED)
    return rpc_error(code, details or "")


class NodeStreams:
    """The stream pool of one node address: idle streams, how many are open, unary-only mark."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: list[Any] = []
        self.open = 0
        self.unary_until = 0.0


class StreamPool:
    """An OpenCall over long-lived OpenStream streams, `size` at most per node, falling back to
    the unary `Open` (see the module's docstring for the failure rules)."""

    def __init__(
        self,
        stub_for: Callable[[NodeInfo], Any],
        size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub_for = stub_for
        self._size = size
        self._clock = clock
        self._nodes: dict[str, NodeStreams] = {}
        self._ids = itertools.count(1)

    def _pool(self, node: NodeInfo) -> NodeStreams:
        pool = self._nodes.get(node.address)
        if pool is None:
            pool = self._nodes[node.address] = NodeStreams(self._size)
        return pool

    def _checkout(self, node: NodeInfo, pool: NodeStreams) -> Any | None:
        """An idle live stream, a new one, or None (all busy, or the node is unary-only)."""
        if pool.unary_until > self._clock():
            return None
        while pool.idle:
            call = pool.idle.pop()
            if not call.done():
                return call
            pool.open -= 1  # ended while idle (the connection closed): drop it
        if pool.open >= pool.size:
            return None
        pool.open += 1
        return self._stub_for(node).OpenStream()

    def _drop(self, pool: NodeStreams, call: Any) -> None:
        pool.open -= 1
        call.cancel()

    async def call(
        self, node: NodeInfo, request: node_pb2.OpenRequest, timeout: float
    ) -> node_pb2.OpenReply:
        pool = self._pool(node)
        call = self._checkout(node, pool)
        if call is None:
            return await self._unary(node, request, timeout)
        rid = next(self._ids)
        frame = node_pb2.OpenFrame(
            id=rid,
            account_id=request.account_id,
            envelope=request.envelope,
            deadline_ms=max(1, int(timeout * 1000)),
        )
        try:
            reply = await asyncio.wait_for(self._exchange(node, call, frame), timeout)
        except TimeoutError:
            self._drop(pool, call)  # the node cancels the request's work, as for a unary call
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except grpc.aio.AioRpcError as e:
            self._drop(pool, call)
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                # An older node: the method never ran, so nothing was applied; unary from now.
                log.info("vault node %s has no OpenStream: unary calls", node.name)
                pool.unary_until = self._clock() + UNARY_ONLY_S
                return await self._unary(node, request, timeout)
            raise
        except BaseException:
            self._drop(pool, call)  # cancelled by our caller: cancel the node's work too
            raise
        pool.idle.append(call)
        return reply_result(reply)

    async def _exchange(self, node: NodeInfo, call: Any, frame: Any) -> Any:
        """Write the frame and read its reply; raises the stream's failure as an AioRpcError."""
        try:
            await call.write(frame)
        except grpc.aio.AioRpcError as e:
            raise await stream_failure(call) from e
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as e:
            raise await stream_failure(call) from e
        while True:
            try:
                reply = await call.read()
            except grpc.aio.AioRpcError as e:
                raise await stream_failure(call) from e
            if reply is grpc.aio.EOF:
                raise await stream_failure(call)
            if reply.id == frame.id:
                return reply
            # Not ours (no request of ours is outstanding on it but this one): ignored, with
            # the ids only, never the frame's bytes. The deadline bounds the wait.
            log.warning(
                "vault node %s: a stream reply for unknown id %d (waiting for %d), ignored",
                node.name,
                reply.id,
                frame.id,
            )

    async def _unary(
        self, node: NodeInfo, request: node_pb2.OpenRequest, timeout: float
    ) -> node_pb2.OpenReply:
        reply: node_pb2.OpenReply = await self._stub_for(node).Open(request, timeout=timeout)
        return reply

    def retain(self, addresses: set[str]) -> None:
        """Forget the pools of nodes that left (their channels close in NodeChannels)."""
        for address in [a for a in self._nodes if a not in addresses]:
            pool = self._nodes.pop(address)
            for call in pool.idle:
                call.cancel()

    def close(self) -> None:
        for address in list(self._nodes):
            pool = self._nodes.pop(address)
            for call in pool.idle:
                call.cancel()


def pooled_open_call(pool: StreamPool) -> OpenCall:
    """The Relay's OpenCall over `pool`."""
    return pool.call
