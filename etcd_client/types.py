"""What the etcd client returns and takes: frozen dataclasses, free of protobuf.

Values are secrets' ciphertexts and account keys: no `repr` here shows one (only its size), so
a result that ends up in a log line or a test failure reveals nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CompareTarget = Literal["version", "create", "mod", "value", "lease"]
CompareOp = Literal["=", "!=", "<", ">"]
PermissionType = Literal["read", "write", "readwrite"]

COMPARE_TARGETS: tuple[str, ...] = ("version", "create", "mod", "value", "lease")
COMPARE_OPS: tuple[str, ...] = ("=", "!=", "<", ">")
PERMISSION_TYPES: tuple[str, ...] = ("read", "write", "readwrite")


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with `prefix`": the prefix with its last byte
    below 0xff incremented (trailing 0xff bytes dropped); b"\\0" (every key) when there is none."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _size(value: bytes) -> str:
    """What a repr shows instead of a value."""
    return f"<{len(value)} bytes>"


@dataclass(frozen=True, slots=True)
class Header:
    """etcd's response header: which cluster and member answered, at which revision and term."""

    cluster_id: int
    member_id: int
    revision: int  # the store's revision when the request was applied (or read)
    raft_term: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it."""

    key: bytes
    value: bytes = field(repr=False)  # never shown: records are secrets' ciphertexts
    create_revision: int
    mod_revision: int
    version: int  # 1 after creation, +1 per change; 0 for a deleted key in a DELETE event
    lease: int  # lease id the key is attached to, 0 for none

    def __repr__(self) -> str:
        """Every field but the value, which is shown by its size only."""
        return (
            f"KeyValue(key={self.key!r}, value={_size(self.value)}, "
            f"create_revision={self.create_revision}, mod_revision={self.mod_revision}, "
            f"version={self.version}, lease={self.lease})"
        )


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The keys found; `count` is the number of keys in the range (all, even beyond a limit),
    `more` says a limit cut the result short."""

    header: Header
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool


@dataclass(frozen=True, slots=True)
class PutResult:
    """A put's header; `prev_kv` is the key before the put when asked for (None if it was absent
    or not asked for)."""

    header: Header
    prev_kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """How many keys were deleted, and which (when asked for)."""

    header: Header
    deleted: int
    prev_kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the compares held, and the responses of the branch that ran, in order. Each
    sub-response's header is the transaction's."""

    header: Header
    succeeded: bool
    responses: tuple[RangeResult | PutResult | DeleteResult, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """One predicate of a transaction: `target` of `key` (or of every key in
    [key, range_end)) `op` `value`. "create" and "mod" are revisions, 0 for an absent key;
    "version" is 0 for an absent key; "value" compares bytes."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    value: int | bytes = field(repr=False)
    range_end: bytes = b""

    def __post_init__(self) -> None:
        """Reject an unknown target or op, and an operand of the wrong type (a caller bug)."""
        if self.target not in COMPARE_TARGETS:
            raise ValueError(f"compare target must be one of {COMPARE_TARGETS}")
        if self.op not in COMPARE_OPS:
            raise ValueError(f"compare op must be one of {COMPARE_OPS}")
        if self.target == "value":
            if not isinstance(self.value, bytes):
                raise TypeError("a value compare takes bytes")
        elif isinstance(self.value, bool) or not isinstance(self.value, int):
            raise TypeError(f"a {self.target} compare takes an int")

    def __repr__(self) -> str:
        """The predicate, with a bytes operand shown by its size only."""
        shown = _size(self.value) if isinstance(self.value, bytes) else str(self.value)
        return f"Compare({self.key!r} {self.target} {self.op} {shown})"

    @classmethod
    def version_is(cls, key: bytes, version: int) -> Compare:
        """The key's version equals `version` (0: the key does not exist)."""
        return cls(key, "version", "=", version)

    @classmethod
    def create_is(cls, key: bytes, revision: int) -> Compare:
        """The key's create_revision equals `revision` (0: the key does not exist)."""
        return cls(key, "create", "=", revision)

    @classmethod
    def mod_is(cls, key: bytes, revision: int) -> Compare:
        """The key's mod_revision equals `revision` (0: the key does not exist)."""
        return cls(key, "mod", "=", revision)

    @classmethod
    def value_is(cls, key: bytes, value: bytes) -> Compare:
        """The key's value equals `value`."""
        return cls(key, "value", "=", value)


@dataclass(frozen=True, slots=True)
class Get:
    """Transaction operation: read `key` (or [key, range_end)); gives a RangeResult."""

    key: bytes
    range_end: bytes = b""


@dataclass(frozen=True, slots=True)
class Put:
    """Transaction operation: write `value` at `key` (on `lease`, 0: none); gives a PutResult."""

    key: bytes
    value: bytes = field(repr=False)
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Transaction operation: delete `key` (or [key, range_end)); gives a DeleteResult."""

    key: bytes
    range_end: bytes = b""


TxnOp = Get | Put | Delete


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch: PUT carries the new key, DELETE the key with `mod_revision`
    set to the revision of the deletion (and an empty value)."""

    kind: Literal["PUT", "DELETE"]
    kv: KeyValue

    @property
    def revision(self) -> int:
        """The revision of this change: resume a watch from `revision + 1`."""
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class LeaseGrantResult:
    """A new lease: its id and the TTL etcd granted (seconds)."""

    header: Header
    lease_id: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class StatusResult:
    """One member's status (the member that the channel's round robin picked)."""

    header: Header
    version: str  # etcd server version, e.g. "3.4.23"
    leader: int  # member id of the leader as this member sees it (0: none)
    db_size: int  # bytes of the backend database file
    raft_index: int
    raft_term: int


@dataclass(frozen=True, slots=True)
class Permission:
    """An etcd role's permission: `perm` on `key` alone (range_end b"") or on [key, range_end)
    (range_end = prefix_end(key) for every key with that prefix)."""

    key: bytes
    range_end: bytes
    perm: PermissionType

    def problems(self) -> list[str]:
        """What is wrong with this permission (empty when etcd will accept it)."""
        problems: list[str] = []
        if self.perm not in PERMISSION_TYPES:
            problems.append(f"perm must be one of {PERMISSION_TYPES} (got {self.perm!r})")
        if not self.key:
            problems.append("key must not be empty")
        elif self.range_end and self.range_end != b"\0" and self.range_end <= self.key:
            problems.append(f"range_end must sort after key {self.key!r}")
        return problems
