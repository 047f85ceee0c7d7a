"""Routing choice, the node table and watcher (fake etcd), relay retry policy, status mapping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from test_frontend_ratelimit import FakeClock

from bkv.v1 import node_pb2
from etcd_client import EtcdCompacted, EtcdUnavailable, KeyValue, WatchEvent
from frontend_chatd.ratelimit import RateLimited
from frontend_chatd.relay import NodeRejected, NodeTimedOut, NoNodeAvailable, Relay, Suspects
from frontend_chatd.routing import (
    NodeInfo,
    NodeTable,
    NodeWatcher,
    affine_order,
    order_nodes,
    parse_node,
)
from frontend_chatd.server import RequestTooLarge, to_status
from frontend_chatd.sessions import InvalidArgument, Unauthenticated

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

A1 = NodeInfo("a1", "dc-a", "127.0.0.1:1001")
A2 = NodeInfo("a2", "dc-a", "127.0.0.1:1002")
B1 = NodeInfo("b1", "dc-b", "127.0.0.1:2001")
C1 = NodeInfo("c1", "dc-c", "127.0.0.1:3001")


def value(node: NodeInfo) -> bytes:
    return json.dumps({"name": node.name, "dc": node.dc, "address": node.address}).encode()


def key(node: NodeInfo) -> bytes:
    return f"/bkv/v1/nodes/{node.dc}/{node.name}".encode()


# --- choice ---------------------------------------------------------------------------------


def test_same_dc_first_round_robin_then_others() -> None:
    nodes = [C1, B1, A2, A1]
    plans = [order_nodes(nodes, "dc-a", turn) for turn in range(4)]
    assert [p[:2] for p in plans] == [[A1, A2], [A2, A1], [A1, A2], [A2, A1]]
    for p in plans:
        assert set(p[2:]) == {B1, C1}


def test_no_local_node_uses_others_round_robin() -> None:
    firsts = {order_nodes([B1, C1], "dc-a", turn)[0] for turn in range(2)}
    assert firsts == {B1, C1}


def test_failover_order_local_then_remote() -> None:
    plan = order_nodes([A1, B1], "dc-a", 7)
    assert plan == [A1, B1]
    assert order_nodes([], "dc-a", 0) == []


def test_affine_order_keeps_an_account_on_one_node_and_spreads_accounts() -> None:
    nodes = [C1, B1, A2, A1]
    plans = {affine_order(nodes, "dc-a", f"acct-{i}")[0] for i in range(64)}
    assert plans == {A1, A2}  # own DC first, both local nodes used
    for i in range(16):
        account = f"acct-{i}"
        plan = affine_order(nodes, "dc-a", account)
        assert plan == affine_order(list(reversed(nodes)), "dc-a", account)  # stable
        assert set(plan[:2]) == {A1, A2} and set(plan[2:]) == {B1, C1}
        # A node leaving moves only its own accounts.
        without_a2 = affine_order([C1, B1, A1], "dc-a", account)
        assert plan[0] == A2 or without_a2[0] == plan[0]
    table = NodeTable("dc-a")
    table.replace([(key(n), value(n)) for n in nodes])
    assert table.plan("acct-1") == table.plan("acct-1") == affine_order(nodes, "dc-a", "acct-1")


def test_parse_node_rejects_bad_values() -> None:
    assert parse_node(value(A1)) == A1
    for bad in [
        b"",
        b"[]",
        b"{",
        b'{"name":"x","dc":"d"}',
        b'{"name":"x","dc":"d","address":"h"}',
        b'{"name":1,"dc":"d","address":"h:1"}',
        b"\xff",
        b"x" * 5000,
    ]:
        assert parse_node(bad) is None


def test_table_put_delete_replace_and_plan() -> None:
    table = NodeTable("dc-b")
    table.replace([(key(A1), value(A1)), (key(B1), value(B1)), (b"/bkv/v1/nodes/x", b"junk")])
    assert set(table.nodes()) == {A1, B1}
    assert table.plan()[0] == B1
    table.delete(key(B1))
    assert table.plan() == [A1]
    table.put(key(C1), value(C1))
    table.put(key(A1), b"junk")  # a malformed update removes the node
    assert table.nodes() == [C1]


# --- watcher with a fake etcd client -------------------------------------------------------


def KV(k: bytes, v: bytes, mod: int) -> KeyValue:
    return KeyValue(k, v, create_revision=mod, mod_revision=mod, version=1, lease=0)


def Event(kind: str, kv: KeyValue) -> WatchEvent:
    return WatchEvent(kind, kv)  # type: ignore[arg-type]


class Listing:
    def __init__(self, kvs: list[KeyValue], revision: int) -> None:
        self.kvs = kvs
        self.header = type("H", (), {"revision": revision})()


class FakeEtcd:
    """Scripted, with EtcdClient's range/watch: listings and watch streams are consumed in
    order; records start revisions. A watch item that is an exception fails the set-up (before
    `on_created`); a list is created, yields its items (raising exceptions), then stays open."""

    def __init__(self, listings: list[Any], watches: list[Any]) -> None:
        self.listings = listings
        self.watches = watches
        self.watch_starts: list[int] = []
        self.list_calls = 0

    async def range(self, key: bytes, *, range_end: bytes) -> Listing:
        assert (key, range_end) == (b"/bkv/v1/nodes/", b"/bkv/v1/nodes0")
        self.list_calls += 1
        item = self.listings.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    async def watch(
        self,
        key: bytes,
        *,
        range_end: bytes,
        start_revision: int,
        on_created: Callable[[int], None],
    ) -> AsyncIterator[WatchEvent]:
        assert (key, range_end) == (b"/bkv/v1/nodes/", b"/bkv/v1/nodes0")
        self.watch_starts.append(start_revision)
        if not self.watches:
            await asyncio.Event().wait()  # hang: the test cancels
        item = self.watches.pop(0)
        if isinstance(item, BaseException):
            raise item
        on_created(start_revision - 1)
        for event in item:
            if isinstance(event, BaseException):
                raise event
            yield event
        await asyncio.Event().wait()


def run_watcher(etcd: FakeEtcd, table: NodeTable, until: Any) -> list[bool]:
    states: list[bool] = []

    async def main() -> None:
        async def no_sleep(_: float) -> None:
            await asyncio.sleep(0)

        watcher = NodeWatcher(etcd, table, on_state=states.append, sleep=no_sleep)
        task = asyncio.create_task(watcher.run())
        for _ in range(1000):
            await asyncio.sleep(0)
            if until(watcher):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert until(watcher)

    asyncio.run(main())
    return states


def test_watch_lists_then_follows_and_resumes_after_unavailable() -> None:
    unavailable = EtcdUnavailable("member killed")
    etcd = FakeEtcd(
        listings=[Listing([KV(key(A1), value(A1), 5)], revision=10)],
        watches=[
            [Event("PUT", KV(key(B1), value(B1), 11)), unavailable],
            unavailable,  # re-watch fails once (no member reachable yet)
            [Event("DELETE", KV(key(A1), b"", 14)), Event("PUT", KV(key(C1), value(C1), 15))],
        ],
    )
    table = NodeTable("dc-a")
    states = run_watcher(etcd, table, lambda w: w.revision == 15)
    assert etcd.watch_starts == [11, 12, 12]  # resumed from the last revision seen
    assert etcd.list_calls == 1
    assert set(table.nodes()) == {B1, C1}
    assert states[:3] == [True, False, True]


def test_watch_relists_after_compaction() -> None:
    etcd = FakeEtcd(
        listings=[
            EtcdUnavailable("etcd down"),
            Listing([KV(key(A1), value(A1), 5)], revision=10),
            Listing([KV(key(B1), value(B1), 40)], revision=50),
        ],
        watches=[EtcdCompacted("compacted", compact_revision=30), []],
    )
    table = NodeTable("dc-a")
    states = run_watcher(etcd, table, lambda w: len(etcd.watch_starts) == 2 and w.ready)
    assert etcd.watch_starts == [11, 51]
    assert table.nodes() == [B1]
    assert states == [True]


# --- relay ---------------------------------------------------------------------------------


def rpc_error(code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


def run_relay(
    plan: list[NodeInfo], outcomes: dict[str, Any], suspects: Suspects | None = None
) -> tuple[Any, list[str]]:
    calls: list[str] = []

    async def open_call(node: NodeInfo, request: node_pb2.OpenRequest, timeout: float) -> Any:
        calls.append(node.name)
        assert request.account_id == "alice" and request.envelope == b"env" and timeout == 2.0
        outcome = outcomes[node.name]
        if isinstance(outcome, BaseException):
            raise outcome
        return node_pb2.OpenReply(sealed_response=outcome)

    relay = Relay(lambda _account: list(plan), open_call, 2.0, suspects)
    try:
        return asyncio.run(relay.relay("alice", b"env")), calls
    except (NoNodeAvailable, NodeTimedOut, NodeRejected) as e:
        return e, calls


def test_relay_first_node_answers() -> None:
    result, calls = run_relay([A1, A2, B1], {"a1": b"sealed"})
    assert result == b"sealed" and calls == ["a1"]


def test_relay_retries_once_on_unavailable() -> None:
    down = rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; refused")
    result, calls = run_relay([A1, B1, C1], {"a1": down, "b1": b"ok"})
    assert result == b"ok" and calls == ["a1", "b1"]
    result, calls = run_relay([A1, B1, C1], {"a1": down, "b1": down, "c1": b"never"})
    assert isinstance(result, NoNodeAvailable) and calls == ["a1", "b1"]
    result, calls = run_relay([A1], {"a1": down})
    assert isinstance(result, NoNodeAvailable) and calls == ["a1"]


def test_relay_never_sends_a_request_that_may_have_counted_to_a_second_node() -> None:
    lost = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection reset")  # may have applied
    result, calls = run_relay([A1, B1, C1], {"a1": lost, "b1": b"would count again"})
    assert isinstance(result, NoNodeAvailable) and result.maybe_applied
    assert calls == ["a1"]
    idle = rpc_error(grpc.StatusCode.UNAVAILABLE, "not serving", [("bkv-not-applied", "1")])
    result, calls = run_relay([A1, B1, C1], {"a1": idle, "b1": b"ok"})
    assert result == b"ok" and calls == ["a1", "b1"]


def test_relay_says_not_applied_only_when_no_node_may_have_acted() -> None:
    idle = rpc_error(grpc.StatusCode.UNAVAILABLE, "not serving", [("bkv-not-applied", "1")])
    refused = rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; x")
    lost = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection reset")  # may have applied
    for first, second, maybe in [
        (idle, idle, False),
        (refused, idle, False),
        (idle, lost, True),
        (lost, refused, True),
    ]:
        result, _ = run_relay([A1, B1], {"a1": first, "b1": second})
        assert isinstance(result, NoNodeAvailable) and result.maybe_applied is maybe
        trailing = to_status(result).trailing
        assert trailing == (() if maybe else (("bkv-not-applied", "1"),))


def test_suspects_go_last_until_their_cool_down_ends() -> None:
    clock = FakeClock()  # now = 100.0
    suspects = Suspects(clock, cooldown_s=5.0)
    assert suspects.order([A1, A2, B1]) == [A1, A2, B1]
    suspects.mark(A1)
    suspects.mark(A2)
    assert suspects.order([A1, A2, B1, C1]) == [B1, C1, A1, A2]
    clock.now = 104.9
    assert suspects.order([A1, B1]) == [B1, A1]
    suspects.clear(A2)
    assert suspects.order([A2, B1]) == [A2, B1]
    clock.now = 105.0
    assert suspects.order([A1, B1]) == [A1, B1]  # cool-down over


def test_a_node_that_timed_out_is_tried_last_by_the_next_requests() -> None:
    clock = FakeClock()  # now = 100.0
    suspects = Suspects(clock, cooldown_s=5.0)
    timeout = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    result, calls = run_relay([A1, A2, B1], {"a1": timeout, "a2": b"ok"}, suspects)
    assert isinstance(result, NodeTimedOut) and calls == ["a1"]  # may have applied: no retry
    result, calls = run_relay([A1, A2, B1], {"a1": b"never", "a2": b"ok"}, suspects)
    assert result == b"ok" and calls == ["a2"]  # the client's retry goes elsewhere
    clock.now = 106.0
    result, calls = run_relay([A1, A2, B1], {"a1": b"back", "a2": b"ok"}, suspects)
    assert result == b"back" and calls == ["a1"]


def test_an_unreachable_node_is_suspected_and_a_success_clears_it() -> None:
    clock = FakeClock()  # now = 100.0
    suspects = Suspects(clock, cooldown_s=5.0)
    down = rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; refused")
    result, calls = run_relay([A1, A2], {"a1": down, "a2": b"ok"}, suspects)
    assert result == b"ok" and calls == ["a1", "a2"]
    assert suspects.suspected(A1) and not suspects.suspected(A2)
    result, calls = run_relay([A2, A1], {"a2": down, "a1": b"ok"}, suspects)
    assert result == b"ok" and calls == ["a2", "a1"]  # suspected a1 still beats nothing
    assert not suspects.suspected(A1) and suspects.suspected(A2)


def test_relay_passes_node_statuses_without_retry() -> None:
    for code in [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ]:
        err = rpc_error(code, "node says\nno", [("retry-after-ms", "250")])
        result, calls = run_relay([A1, B1], {"a1": err, "b1": b"never"})
        assert isinstance(result, NodeRejected) and calls == ["a1"]
        assert result.status.code == code and result.status.details == "node saysno"
        assert result.status.retry_after_ms == "250"


def test_a_nodes_account_refusal_is_passed_on_with_nothing_applied() -> None:
    """The node refused the request's account signature (issue 17): the client's own answer,
    passed on without trying another node; any other UNAUTHENTICATED from a node is about the
    frontend itself (an outage to the client)."""
    from vault_common.wire import account_refusal_details

    details = account_refusal_details("stale", 42)
    err = rpc_error(grpc.StatusCode.UNAUTHENTICATED, details, [("bkv-not-applied", "1")])
    result, calls = run_relay([A1, B1], {"a1": err, "b1": b"never"})
    assert isinstance(result, NodeRejected) and calls == ["a1"]
    assert result.status.details == details and result.status.not_applied
    answer = to_status(result)
    assert answer.code == grpc.StatusCode.UNAUTHENTICATED and answer.message == details
    assert answer.trailing == (("bkv-not-applied", "1"),)
    other = rpc_error(grpc.StatusCode.UNAUTHENTICATED, "certificate not accepted")
    result, _ = run_relay([A1, B1], {"a1": other, "b1": b"never"})
    assert isinstance(result, NoNodeAvailable)


def test_relay_deadline_is_not_retried() -> None:
    err = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    result, calls = run_relay([A1, B1], {"a1": err, "b1": b"never"})
    assert isinstance(result, NodeTimedOut) and calls == ["a1"]
    assert "may have been applied" in str(result)


def test_relay_without_nodes() -> None:
    result, calls = run_relay([], {})
    assert isinstance(result, NoNodeAvailable) and calls == []


# --- the one status mapping ----------------------------------------------------------------


def test_status_mapping() -> None:
    S = grpc.StatusCode
    assert to_status(Unauthenticated("x")).code == S.UNAUTHENTICATED
    assert to_status(InvalidArgument("x")).code == S.INVALID_ARGUMENT
    limited = to_status(RateLimited("account", 0.25))
    assert limited.code == S.RESOURCE_EXHAUSTED
    assert limited.trailing == (("retry-after-ms", "250"),)
    assert to_status(RequestTooLarge("x")).code == S.RESOURCE_EXHAUSTED
    assert to_status(NoNodeAvailable("x")).code == S.UNAVAILABLE
    assert to_status(NoNodeAvailable("x")).trailing == (("bkv-not-applied", "1"),)
    assert to_status(NoNodeAvailable("x", maybe_applied=True)).trailing == ()
    assert to_status(NodeTimedOut("x")).code == S.UNAVAILABLE
    assert to_status(NodeTimedOut("x")).trailing == ()  # it may have been applied
    from frontend_chatd.relay import NodeStatus

    rejected = to_status(NodeRejected(NodeStatus(S.FAILED_PRECONDITION, "stale ticket")))
    assert (rejected.code, rejected.message) == (S.FAILED_PRECONDITION, "stale ticket")
    internal = to_status(KeyError("secret-ish detail"))
    assert internal.code == S.INTERNAL and "secret" not in internal.message
