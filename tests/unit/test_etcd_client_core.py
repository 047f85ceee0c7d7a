"""etcd_client without etcd: configuration, the error mapping, prefix_end, conversion to and from
etcd's messages, the auth plan, and the shared keep-alive stream against a fake stream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from bkv.etcd import auth_pb2, kv_pb2, rpc_pb2, rpc_pb2_grpc
from etcd_client import (
    AuthPlan,
    Compare,
    Delete,
    EtcdAlreadyExists,
    EtcdAuthError,
    EtcdAuthOldRevision,
    EtcdClientConfig,
    EtcdCompacted,
    EtcdError,
    EtcdNotFound,
    EtcdPermissionDenied,
    EtcdRequestError,
    EtcdTls,
    EtcdUnavailable,
    Get,
    KeyValue,
    Permission,
    Put,
    error_from_rpc,
    prefix_end,
)
from etcd_client.client import channel_options
from etcd_client.config import channel_target
from etcd_client.convert import (
    compare_to_pb,
    event_from_pb,
    op_to_pb,
    permission_from_pb,
    permission_to_pb,
    txn_from_pb,
    txn_to_pb,
)
from etcd_client.errors import error_from_exception, error_from_watch_cancel
from etcd_client.keepalive import KeepAliveStream

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


# --- configuration -------------------------------------------------------------------------


def tls_files(tmp_path: Path) -> EtcdTls:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    return EtcdTls(
        ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "cert.pem"), key=str(tmp_path / "key.pem")
    )


def test_a_good_config_validates(tmp_path: Path) -> None:
    config = EtcdClientConfig(("127.0.0.1:2379", "127.0.0.1:2479"), tls_files(tmp_path))
    config.validate()
    assert config.tls.server_name == "bkv-etcd" and config.call_timeout_s == 2.0
    assert config.problems() == []


def test_every_config_problem_is_reported_at_once(tmp_path: Path) -> None:
    tls = EtcdTls(ca="relative/ca.pem", cert=str(tmp_path / "missing.pem"), key="", server_name=" ")
    config = EtcdClientConfig(
        ("127.0.0.1:2379", "etcd-b:2479", "127.0.0.1:0", "127.0.0.1:2379"), tls, call_timeout_s=0
    )
    with pytest.raises(ValueError) as info:
        config.validate()
    text = str(info.value)
    for expected in [
        "endpoints[2] must be host:port",
        "endpoints must not repeat a member",
        "endpoints must all be IPv4 (or all IPv6) addresses when there are several",
        "call_timeout_s must be > 0",
        "tls.ca must be an absolute path",
        "tls.cert: no such file",
        "tls.key must be set",
        "tls.server_name must not be empty",
    ]:
        assert expected in text, expected
    assert len(config.problems()) == 8


def test_file_checks_can_be_left_out(tmp_path: Path) -> None:
    tls = EtcdTls(ca="/nowhere/ca.pem", cert="/nowhere/c.pem", key="/nowhere/k.pem")
    assert tls.problems(check_files=False) == []
    assert len(tls.problems()) == 3
    assert EtcdTls("/a", "/b", "/c", server_name="two words").problems(check_files=False) == [
        "server_name must not contain spaces (got 'two words')"
    ]
    assert EtcdClientConfig((), tls).problems(check_files=False) == [
        "endpoints must list at least one host:port"
    ]


def test_channel_target_one_round_robin_target_for_all_members() -> None:
    assert channel_target(("127.0.0.1:2379",)) == "ipv4:127.0.0.1:2379"
    assert (
        channel_target(("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"))
        == "ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"
    )
    assert channel_target(("[::1]:1", "[::1]:2")) == "ipv6:[::1]:1,[::1]:2"
    assert channel_target(("etcd-a:2379",)) == "dns:///etcd-a:2379"
    for bad in [("etcd-a:1", "etcd-b:2"), ("127.0.0.1:1", "[::1]:2"), (), ("::1:2379",)]:
        with pytest.raises(ValueError):
            channel_target(bad)


def test_channel_options(tmp_path: Path) -> None:
    options = dict(channel_options(EtcdClientConfig(("127.0.0.1:1",), tls_files(tmp_path))))
    assert options["grpc.ssl_target_name_override"] == "bkv-etcd"
    assert options["grpc.lb_policy_name"] == "round_robin"
    assert options["grpc.initial_reconnect_backoff_ms"] == 100
    assert options["grpc.max_reconnect_backoff_ms"] == 1000
    assert options["grpc.keepalive_time_ms"] == 10_000


# --- the one error mapping -----------------------------------------------------------------


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


S = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (S.UNAVAILABLE, "failed to connect to all addresses", EtcdUnavailable),
        (S.UNAVAILABLE, "etcdserver: no leader", EtcdUnavailable),
        (S.UNAVAILABLE, "etcdserver: leader changed", EtcdUnavailable),
        (S.DEADLINE_EXCEEDED, "Deadline Exceeded", EtcdUnavailable),
        (S.CANCELLED, "", EtcdUnavailable),
        (S.INTERNAL, "RST_STREAM", EtcdUnavailable),
        (S.UNKNOWN, "something odd", EtcdUnavailable),
        (S.FAILED_PRECONDITION, "etcdserver: not leader", EtcdUnavailable),
        (S.RESOURCE_EXHAUSTED, "etcdserver: too many requests", EtcdUnavailable),
        (S.INVALID_ARGUMENT, "etcdserver: revision of auth store is old", EtcdAuthOldRevision),
        (S.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", EtcdCompacted),
        (
            S.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision",
            EtcdRequestError,
        ),
        (S.PERMISSION_DENIED, "etcdserver: permission denied", EtcdPermissionDenied),
        (S.UNKNOWN, "auth: permission denied", EtcdPermissionDenied),
        (S.UNAUTHENTICATED, "etcdserver: invalid auth token", EtcdAuthError),
        (S.INVALID_ARGUMENT, "etcdserver: user name is empty", EtcdAuthError),
        (S.INVALID_ARGUMENT, "etcdserver: too many operations in txn request", EtcdRequestError),
        (S.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request", EtcdRequestError),
        (S.FAILED_PRECONDITION, "etcdserver: user name already exists", EtcdAlreadyExists),
        (S.FAILED_PRECONDITION, "etcdserver: role name already exists", EtcdAlreadyExists),
        (S.FAILED_PRECONDITION, "etcdserver: role name not found", EtcdNotFound),
        (S.NOT_FOUND, "etcdserver: requested lease not found", EtcdNotFound),
        (S.FAILED_PRECONDITION, "etcdserver: root user does not exist", EtcdRequestError),
        (S.UNIMPLEMENTED, "unknown service etcdserverpb.Nope", EtcdRequestError),
    ],
)
def test_error_from_rpc(code: grpc.StatusCode, details: str, expected: type[EtcdError]) -> None:
    error = error_from_rpc(rpc_error(code, details))
    assert type(error) is expected
    assert error.code == code.name and details in str(error)


def test_compacted_and_transport_failures() -> None:
    compacted = error_from_rpc(
        rpc_error(S.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    )
    assert isinstance(compacted, EtcdCompacted) and compacted.compact_revision == 0
    assert isinstance(error_from_exception(TimeoutError()), EtcdUnavailable)
    assert isinstance(error_from_exception(ConnectionResetError()), EtcdUnavailable)
    assert isinstance(error_from_exception(grpc.aio.UsageError("closed")), EtcdUnavailable)
    assert isinstance(error_from_exception(asyncio.InvalidStateError()), EtcdUnavailable)
    already = EtcdRequestError("x")
    assert error_from_exception(already) is already
    assert isinstance(error_from_rpc(grpc.RpcError()), EtcdUnavailable)  # no status at all


def test_watch_cancel_reasons() -> None:
    compacted = error_from_watch_cancel("", 42)
    assert isinstance(compacted, EtcdCompacted) and compacted.compact_revision == 42
    denied = error_from_watch_cancel("etcdserver: permission denied", 0)
    assert isinstance(denied, EtcdPermissionDenied)
    assert isinstance(error_from_watch_cancel("etcdserver: no leader", 0), EtcdUnavailable)
    assert isinstance(error_from_watch_cancel("", 0), EtcdUnavailable)


# --- types and conversion ------------------------------------------------------------------


def test_prefix_end() -> None:
    assert prefix_end(b"/bkv/v1/nodes/") == b"/bkv/v1/nodes0"
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_compare_helpers_and_checks() -> None:
    assert Compare.version_is(b"k", 0) == Compare(b"k", "version", "=", 0)
    assert Compare.create_is(b"k", 3).target == "create"
    assert Compare.mod_is(b"k", 4).target == "mod"
    assert Compare.value_is(b"k", b"v").value == b"v"
    with pytest.raises(TypeError):
        Compare(b"k", "value", "=", 3)
    with pytest.raises(TypeError):
        Compare(b"k", "mod", "=", b"3")
    with pytest.raises(TypeError):
        Compare(b"k", "mod", "=", True)
    with pytest.raises(ValueError):
        Compare(b"k", "mod", "<=", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Compare(b"k", "size", "=", 3)  # type: ignore[arg-type]


def test_reprs_never_show_values() -> None:
    secret = b"ciphertext-of-a-secret"
    shown = " ".join(
        repr(x)
        for x in [
            KeyValue(b"/k", secret, 1, 2, 1, 0),
            Put(b"/k", secret),
            Compare.value_is(b"/k", secret),
        ]
    )
    assert secret.decode() not in shown and "<22 bytes>" in shown


@pytest.mark.parametrize(
    ("compare", "target", "field", "result"),
    [
        (Compare.version_is(b"k", 0), rpc_pb2.Compare.VERSION, "version", rpc_pb2.Compare.EQUAL),
        (Compare(b"k", "create", "!=", 5), rpc_pb2.Compare.CREATE, "create_revision", 3),
        (Compare(b"k", "mod", "<", 6), rpc_pb2.Compare.MOD, "mod_revision", 2),
        (Compare(b"k", "value", ">", b"v"), rpc_pb2.Compare.VALUE, "value", 1),
        (Compare(b"k", "lease", "=", 7), rpc_pb2.Compare.LEASE, "lease", 0),
    ],
)
def test_compare_to_pb(compare: Compare, target: int, field: str, result: int) -> None:
    pb = compare_to_pb(compare)
    assert pb.target == target and pb.result == result and pb.key == b"k"
    assert pb.WhichOneof("target_union") == field
    assert getattr(pb, field) == compare.value


def test_ops_and_txn_to_pb() -> None:
    put = op_to_pb(Put(b"k", b"v", lease=9))
    assert put.WhichOneof("request") == "request_put"
    assert (put.request_put.key, put.request_put.value, put.request_put.lease) == (b"k", b"v", 9)
    get = op_to_pb(Get(b"a", range_end=b"b"))
    assert get.request_range.key == b"a" and get.request_range.range_end == b"b"
    delete = op_to_pb(Delete(b"k"))
    assert delete.WhichOneof("request") == "request_delete_range"
    with pytest.raises(TypeError):
        op_to_pb(b"k")  # type: ignore[arg-type]
    txn = txn_to_pb([Compare.mod_is(b"k", 5)], [Put(b"k", b"v")], [Get(b"k")])
    assert len(txn.compare) == 1 and len(txn.success) == 1 and len(txn.failure) == 1
    # The wire bytes are etcd's: field numbers as in etcd's rpc.proto (Compare.range_end = 64).
    compare = rpc_pb2.Compare(key=b"k", range_end=b"l")
    assert compare.SerializeToString() == b"\x1a\x01k\x82\x04\x01l"


def test_txn_from_pb_gives_every_sub_response_the_txn_header() -> None:
    kv = kv_pb2.KeyValue(key=b"k", value=b"v", create_revision=3, mod_revision=5, version=2)
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=9, raft_term=4)
    pb = rpc_pb2.TxnResponse(
        header=header,
        succeeded=False,
        responses=[
            rpc_pb2.ResponseOp(response_range=rpc_pb2.RangeResponse(kvs=[kv], count=1)),
            rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse()),
            rpc_pb2.ResponseOp(response_delete_range=rpc_pb2.DeleteRangeResponse(deleted=1)),
        ],
    )
    result = txn_from_pb(pb)
    assert not result.succeeded and result.header.revision == 9
    got, put, deleted = result.responses
    assert all(r.header == result.header for r in result.responses)
    assert got.kvs[0] == KeyValue(b"k", b"v", 3, 5, 2, 0)  # type: ignore[union-attr]
    assert put.prev_kv is None  # type: ignore[union-attr]
    assert deleted.deleted == 1  # type: ignore[union-attr]
    with pytest.raises(EtcdError):
        txn_from_pb(rpc_pb2.TxnResponse(header=header, responses=[rpc_pb2.ResponseOp()]))


def test_events_and_permissions() -> None:
    deleted = event_from_pb(
        kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"k", mod_revision=8))
    )
    assert deleted.kind == "DELETE" and deleted.revision == 8
    assert event_from_pb(kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k"))).kind == "PUT"
    permission = Permission(b"/p/", prefix_end(b"/p/"), "readwrite")
    pb = permission_to_pb(permission)
    assert pb.permType == auth_pb2.Permission.READWRITE
    assert permission_from_pb(pb) == permission


def test_method_paths_are_etcds() -> None:
    class Channel:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def unary_unary(self, path: str, **_: Any) -> None:
            self.paths.append(path)

        unary_stream = stream_unary = stream_stream = unary_unary

    channel = Channel()
    for stub in ("KVStub", "WatchStub", "LeaseStub", "MaintenanceStub", "AuthStub"):
        getattr(rpc_pb2_grpc, stub)(channel)
    assert {
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Auth/UserAdd",
        "/etcdserverpb.Auth/RoleGrantPermission",
    } <= set(channel.paths)


def test_our_etcd_protos_keep_etcds_package_names() -> None:
    """The method paths above come from etcd's proto package names, kept as they are."""
    names = {m.full_name for m in rpc_pb2.DESCRIPTOR.message_types_by_name.values()}
    assert {"etcdserverpb.RangeRequest", "etcdserverpb.TxnRequest"} <= names


# --- the auth plan -------------------------------------------------------------------------


NODE_ROLE = (Permission(b"/bkv/v1/records/", prefix_end(b"/bkv/v1/records/"), "readwrite"),)


def test_a_good_plan_validates() -> None:
    AuthPlan(
        roles={"node": NODE_ROLE}, users={"root": ("root",), "bkv-node-a": ("node",)}
    ).validate()


def test_every_plan_problem_is_reported_at_once() -> None:
    plan = AuthPlan(
        roles={
            "root": NODE_ROLE,
            "empty": (),
            "bad": (Permission(b"", b"", "all"),),  # type: ignore[arg-type]
            "back": (Permission(b"/b", b"/a", "read"),),
        },
        users={"fe 1": ("node",), "": ()},
    )
    with pytest.raises(ValueError) as info:
        plan.validate()
    text = str(info.value)
    for expected in [
        'role "root" is built in',
        "role 'empty' needs a tuple of at least one permission",
        "role 'bad' permission 0: perm must be one of",
        "role 'bad' permission 0: key must not be empty",
        "role 'back' permission 0: range_end must sort after key",
        'users must contain "root" with role "root"',
        "user name 'fe 1' must be non-empty",
        "user 'fe 1' has role 'node', which the plan lacks",
        "user name '' must be non-empty",
    ]:
        assert expected in text, expected
    assert len(plan.problems()) == 9


# --- the shared keep-alive stream (fake stream) --------------------------------------------


class FakeKeepAliveCall:
    """Answers each request with TTL 10, or fails as scripted."""

    def __init__(self, fail_on_write: bool = False, hang: bool = False) -> None:
        self.fail_on_write = fail_on_write
        self.hang = hang
        self.pending: asyncio.Queue[int] = asyncio.Queue()
        self.cancelled = False

    async def write(self, request: Any) -> None:
        if self.fail_on_write:
            raise rpc_error(S.UNAVAILABLE, "stream broken")
        await self.pending.put(request.ID)

    async def read(self) -> Any:
        lease_id = await self.pending.get()
        if self.hang:
            await asyncio.Event().wait()
        return rpc_pb2.LeaseKeepAliveResponse(ID=lease_id, TTL=10)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_keep_alive_reuses_one_stream_and_serialises_callers() -> None:
    async def main() -> None:
        calls: list[FakeKeepAliveCall] = []

        def open_call() -> FakeKeepAliveCall:
            calls.append(FakeKeepAliveCall())
            return calls[-1]

        stream = KeepAliveStream(open_call, 1.0)
        results = await asyncio.gather(*(stream.keep_alive(i) for i in range(1, 6)))
        assert results == [10] * 5
        assert len(calls) == 1 and stream.streams_opened == 1

    asyncio.run(main())


def test_keep_alive_reopens_a_broken_stream_within_the_same_call() -> None:
    async def main() -> None:
        script = [FakeKeepAliveCall(), FakeKeepAliveCall(), FakeKeepAliveCall(fail_on_write=True)]
        opened: list[FakeKeepAliveCall] = []

        def open_call() -> FakeKeepAliveCall:
            opened.append(script.pop(0))
            return opened[-1]

        stream = KeepAliveStream(open_call, 1.0)
        assert await stream.keep_alive(7) == 10
        opened[0].fail_on_write = True  # the member restarted: the old stream is dead
        assert await stream.keep_alive(7) == 10  # reopened once, same call
        assert opened[0].cancelled and stream.streams_opened == 2
        opened[1].fail_on_write = True
        # The stream breaks and so does its replacement: one retry only, then unavailable.
        with pytest.raises(EtcdUnavailable):
            await stream.keep_alive(7)
        assert stream.streams_opened == 3

    asyncio.run(main())


def test_keep_alive_is_bounded_and_drops_a_stream_that_timed_out() -> None:
    async def main() -> None:
        opened: list[FakeKeepAliveCall] = []

        def open_call() -> FakeKeepAliveCall:
            opened.append(FakeKeepAliveCall(hang=not opened))
            return opened[-1]

        stream = KeepAliveStream(open_call, 0.05)
        with pytest.raises(EtcdUnavailable):
            await stream.keep_alive(1)
        assert opened[0].cancelled  # a late answer on it can never reach the next caller
        assert await stream.keep_alive(1) == 10
        assert stream.streams_opened == 2

    asyncio.run(main())
