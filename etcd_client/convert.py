"""Conversion between the client's types and etcd's protobuf messages (bkv.etcd), both ways.

The only module besides `client.py` that touches the generated messages. Requests are built
field by field, straight into the message, with no intermediate dicts: a vault node makes one
Txn per recovery step, so this sits on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bkv.etcd import auth_pb2, kv_pb2, rpc_pb2
from etcd_client.errors import EtcdError
from etcd_client.types import (
    Compare,
    Delete,
    DeleteResult,
    Get,
    Header,
    KeyValue,
    Permission,
    PermissionType,
    Put,
    PutResult,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchEvent,
)

_PB_COMPARE = rpc_pb2.Compare
_PB_REQUEST_OP = rpc_pb2.RequestOp
_PB_TXN = rpc_pb2.TxnRequest

_RESULTS = {
    "=": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    "<": rpc_pb2.Compare.LESS,
    ">": rpc_pb2.Compare.GREATER,
}
# target -> (etcd's CompareTarget, the target_union field that carries the operand)
_TARGETS = {
    "version": (rpc_pb2.Compare.VERSION, "version"),
    "create": (rpc_pb2.Compare.CREATE, "create_revision"),
    "mod": (rpc_pb2.Compare.MOD, "mod_revision"),
    "value": (rpc_pb2.Compare.VALUE, "value"),
    "lease": (rpc_pb2.Compare.LEASE, "lease"),
}
_PERM_TO_PB = {
    "read": auth_pb2.Permission.READ,
    "write": auth_pb2.Permission.WRITE,
    "readwrite": auth_pb2.Permission.READWRITE,
}
_PERM_FROM_PB: dict[int, PermissionType] = {
    auth_pb2.Permission.READ: "read",
    auth_pb2.Permission.WRITE: "write",
    auth_pb2.Permission.READWRITE: "readwrite",
}
_DELETE_EVENT = kv_pb2.Event.DELETE


def compare_to_pb(compare: Compare) -> Any:
    """etcd's Compare message for one predicate."""
    pb = _PB_COMPARE()
    _fill_compare(pb, compare)
    return pb


def _fill_compare(pb: Any, compare: Compare) -> None:
    """Set the fields of an empty Compare message `pb` from `compare`."""
    target, operand = _TARGETS[compare.target]
    pb.result = _RESULTS[compare.op]
    pb.target = target
    pb.key = compare.key
    if compare.range_end:
        pb.range_end = compare.range_end
    setattr(pb, operand, compare.value)


def op_to_pb(op: TxnOp) -> Any:
    """etcd's RequestOp for one transaction operation."""
    pb = _PB_REQUEST_OP()
    _fill_op(pb, op)
    return pb


def _fill_op(pb: Any, op: TxnOp) -> None:
    """Set the fields of an empty RequestOp message `pb` from `op`."""
    # Field by field into the message in place: assigning a sub-message (RequestOp(request_put=
    # PutRequest(...))) copies it, and a Txn built that way cost 3x as much CPU.
    if type(op) is Put:
        put = pb.request_put
        put.key = op.key
        put.value = op.value
        if op.lease:
            put.lease = op.lease
    elif type(op) is Get:
        get = pb.request_range
        get.key = op.key
        if op.range_end:
            get.range_end = op.range_end
    elif type(op) is Delete:
        delete = pb.request_delete_range
        delete.key = op.key
        if op.range_end:
            delete.range_end = op.range_end
    else:
        raise TypeError(f"not a transaction operation: {type(op).__name__}")


def txn_to_pb(
    compare: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
) -> Any:
    """etcd's TxnRequest, built in place (no sub-message is copied)."""
    pb = _PB_TXN()
    for c in compare:
        _fill_compare(pb.compare.add(), c)
    for op in success:
        _fill_op(pb.success.add(), op)
    for op in failure:
        _fill_op(pb.failure.add(), op)
    return pb


def permission_to_pb(permission: Permission) -> Any:
    """etcd's authpb.Permission."""
    return auth_pb2.Permission(
        permType=_PERM_TO_PB[permission.perm],
        key=permission.key,
        range_end=permission.range_end,
    )


def permission_from_pb(pb: Any) -> Permission:
    """A role's permission as etcd reports it."""
    return Permission(bytes(pb.key), bytes(pb.range_end), _PERM_FROM_PB[pb.permType])


def header_from_pb(pb: Any) -> Header:
    """The response header."""
    return Header(pb.cluster_id, pb.member_id, pb.revision, pb.raft_term)


def kv_from_pb(pb: Any) -> KeyValue:
    """One key-value (bytes fields are already `bytes` in protobuf's Python API)."""
    return KeyValue(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease)


def range_from_pb(pb: Any, header: Header | None = None) -> RangeResult:
    """A RangeResponse; `header` replaces the message's own (a txn's sub-response)."""
    return RangeResult(
        header or header_from_pb(pb.header),
        tuple(kv_from_pb(kv) for kv in pb.kvs),
        pb.count,
        pb.more,
    )


def put_from_pb(pb: Any, header: Header | None = None) -> PutResult:
    """A PutResponse."""
    prev = kv_from_pb(pb.prev_kv) if pb.HasField("prev_kv") else None
    return PutResult(header or header_from_pb(pb.header), prev)


def delete_from_pb(pb: Any, header: Header | None = None) -> DeleteResult:
    """A DeleteRangeResponse."""
    return DeleteResult(
        header or header_from_pb(pb.header),
        pb.deleted,
        tuple(kv_from_pb(kv) for kv in pb.prev_kvs),
    )


def txn_from_pb(pb: Any) -> TxnResult:
    """A TxnResponse; every sub-response gets the transaction's header."""
    header = header_from_pb(pb.header)
    responses: list[RangeResult | PutResult | DeleteResult] = []
    for op in pb.responses:
        kind = op.WhichOneof("response")
        if kind == "response_range":
            responses.append(range_from_pb(op.response_range, header))
        elif kind == "response_put":
            responses.append(put_from_pb(op.response_put, header))
        elif kind == "response_delete_range":
            responses.append(delete_from_pb(op.response_delete_range, header))
        else:  # a nested txn (never sent by us) or a field newer than our proto
            raise EtcdError(f"unexpected transaction response {kind!r}")
    return TxnResult(header, pb.succeeded, tuple(responses))


def event_from_pb(pb: Any) -> WatchEvent:
    """One watch event."""
    return WatchEvent("DELETE" if pb.type == _DELETE_EVENT else "PUT", kv_from_pb(pb.kv))
