"""Relay a sealed envelope to a vault node: one try, and one more only if it surely did nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from bkv.v1 import node_pb2
from frontend_chatd.routing import NodeInfo
from vault_common.wire import (
    NEVER_CONNECTED_PREFIX,
    NOT_APPLIED_KEY,
    RETRY_AFTER_MS_KEY,
    parse_account_refusal,
    trailer,
)

log = logging.getLogger(__name__)

OpenCall = Callable[[NodeInfo, node_pb2.OpenRequest, float], Awaitable[node_pb2.OpenReply]]
MAX_DETAIL_CHARS = 200


class NoNodeAvailable(Exception):
    """No vault node is known, or every node tried was unreachable (UNAVAILABLE, retry later).

    `maybe_applied` is False when no node can have acted on the request: none was known, none
    accepted a connection, or each one tried said it wrote nothing.
    """

    def __init__(self, message: str, *, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class NodeTimedOut(Exception):
    """The node did not answer within the deadline (UNAVAILABLE): the request may have applied."""


@dataclass(frozen=True)
class NodeStatus:
    """A gRPC status answered by the node, passed on to the client with the same code."""

    code: grpc.StatusCode
    details: str
    retry_after_ms: str | None = None
    not_applied: bool = False  # the node said it wrote nothing (passed on as its trailer)


class NodeRejected(Exception):
    def __init__(self, status: NodeStatus) -> None:
        self.status = status
        super().__init__(f"vault node answered {status.code.name}")


class _Unreachable(Exception):
    """Internal: this node could not be reached or is not serving; another may be tried."""

    def __init__(self, message: str, *, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


def _wrote_nothing(error: grpc.aio.AioRpcError) -> bool:
    """The node said it wrote nothing, or our channel never reached it."""
    if (error.details() or "").startswith(NEVER_CONNECTED_PREFIX):
        return True
    return trailer(error.trailing_metadata(), NOT_APPLIED_KEY) == "1"


def classify(error: grpc.aio.AioRpcError) -> Exception:
    """The one place that turns a node's gRPC status into a typed relay error."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return _Unreachable(_short(error.details()), maybe_applied=not _wrote_nothing(error))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeTimedOut("vault node did not answer in time; the request may have been applied")
    if code == grpc.StatusCode.UNAUTHENTICATED and parse_account_refusal(error.details() or ""):
        # The node checked the request's account signature and refused it (nothing applied):
        # the client's answer, passed on as it is; another node would answer the same.
        return NodeRejected(NodeStatus(code, _short(error.details()), not_applied=True))
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        # The node refused this frontend (mTLS set-up), not the client's session: a client
        # that logs in again would not help, so this is an outage from the client's view.
        return NoNodeAvailable("vault node refused this frontend")
    retry_after = trailer(error.trailing_metadata(), RETRY_AFTER_MS_KEY)
    if retry_after is not None and not retry_after.isdigit():
        retry_after = None
    return NodeRejected(NodeStatus(code, _short(error.details()), retry_after))


def _short(details: str | None) -> str:
    text = "".join(c for c in (details or "") if c.isprintable())
    return text[:MAX_DETAIL_CHARS] or "vault node error"


SUSPECT_COOLDOWN_S = 5.0


class Suspects:
    """Nodes that recently timed out or could not be reached: tried last for a while.

    A vault node that hangs (a SIGSTOP, a stalled VM) keeps its membership key until its lease
    expires, and account affinity would keep sending the same accounts to it. Marking it after
    one timeout sends the next requests (the client's retry included) to the next node in the
    plan instead. Routing is never trusted for safety, so this only moves load.
    """

    def __init__(self, clock: Callable[[], float], cooldown_s: float = SUSPECT_COOLDOWN_S) -> None:
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._until: dict[str, float] = {}

    def mark(self, node: NodeInfo) -> None:
        self._until[node.name] = self._clock() + self._cooldown_s

    def clear(self, node: NodeInfo) -> None:
        self._until.pop(node.name, None)

    def suspected(self, node: NodeInfo) -> bool:
        until = self._until.get(node.name)
        if until is None:
            return False
        if self._clock() >= until:
            del self._until[node.name]  # the cool-down is over: back in its place
            return False
        return True

    def order(self, plan: list[NodeInfo]) -> list[NodeInfo]:
        """`plan` with suspected nodes moved to the end, each group in its own order."""
        if not self._until:
            return plan
        suspected = [self.suspected(node) for node in plan]
        return [n for n, s in zip(plan, suspected, strict=True) if not s] + [
            n for n, s in zip(plan, suspected, strict=True) if s
        ]


class Relay:
    """Forwards Open(account_id, envelope) to nodes in the routing plan's order."""

    def __init__(
        self,
        plan: Callable[[str], list[NodeInfo]],
        open_call: OpenCall,
        deadline_s: float,
        suspects: Suspects | None = None,
    ) -> None:
        self._plan = plan
        self._open = open_call
        self._deadline_s = deadline_s
        self._suspects = suspects if suspects is not None else Suspects(time.monotonic)

    async def relay(self, account_id: str, envelope: bytes) -> bytes:
        """The node's sealed response; raises NoNodeAvailable, NodeTimedOut or NodeRejected."""
        # Security: the account id comes from the verified session, never from the client's
        # request, and is bound into the envelope's HPKE info: a swap fails to open on the node.
        request = node_pb2.OpenRequest(account_id=account_id, envelope=envelope)
        # At most one retry, and only when the first node certainly did nothing (never reached,
        # or it said "not applied"). A request that may have counted a guess is never sent to a
        # second node: the client's own single retry is then the only one, so one password
        # attempt counts at most twice (DESIGN: never retry a step silently more than once).
        candidates = self._suspects.order(self._plan(account_id))[:2]
        if not candidates:
            raise NoNodeAvailable("no vault node available")
        last = "no vault node available"
        for node in candidates:
            try:
                reply = await self._open(node, request, self._deadline_s)
            except grpc.aio.AioRpcError as e:
                error = classify(e)
                if isinstance(error, _Unreachable | NodeTimedOut):
                    self._suspects.mark(node)
                if not isinstance(error, _Unreachable):
                    raise error from None
                log.warning("vault node %s (%s) unreachable: %s", node.name, node.dc, error)
                last = f"vault node unavailable: {error}"
                if error.maybe_applied:
                    raise NoNodeAvailable(last, maybe_applied=True) from None
                continue
            self._suspects.clear(node)
            return bytes(reply.sealed_response)
        raise NoNodeAvailable(last, maybe_applied=False)


def stub_open_call(stub_for: Callable[[NodeInfo], object]) -> OpenCall:
    """An OpenCall over grpc stubs (`stub_for(node)` returns a VaultNodeStub)."""

    async def call(
        node: NodeInfo, request: node_pb2.OpenRequest, timeout: float
    ) -> node_pb2.OpenReply:
        stub = stub_for(node)
        reply: node_pb2.OpenReply = await stub.Open(request, timeout=timeout)  # type: ignore[attr-defined]
        return reply

    return call
