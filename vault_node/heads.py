"""Group heads: which state of every record of a group is the current one.

Records fall into `groups` groups by the first two bytes of their record id. Each group has a
head in etcd (`/bkv/v1/heads/<group, 4 hex digits>`): a `GroupHead` sealed with the `record` key
(AAD binds the group) that carries its version, the hash of the previous sealed head, and a page
with one entry per record of the group: the record id and a digest of its sealed value. Every
record write rewrites its group's head in the same etcd transaction, and a majority of witnesses
must capture the new head (`vault_node.witness_core`) before a guess-counting write is answered.

Why both: a record alone cannot prove it is the latest (a restored snapshot brings records back
at the very metadata they were sealed for); the head can, once witnesses vouch for it, and the
page ties every record to it, so an old record beside a current head, or a current record beside
an old head, fails one check or the other.

Pure: no I/O; sealing goes through the token's AES-GCM (`records.TokenOps`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from bkv.store.v1 import sealed_pb2
from bkv.v1 import witness_pb2
from vault_node.key_meta import ABSENT, KeyMeta, StoredValue
from vault_node.records import (
    FIRST_KEYS,
    Rng,
    SealKeys,
    TokenOps,
    open_sealed,
    seal_sealed,
    sealed_key_name,
)
from vault_protocol.errors import DecryptError

HEADS_PREFIX = b"/bkv/v1/heads/"
HEAD_AAD_PREFIX = b"bkv-v2 head "
HASH_LEN = 32
DIGEST_LEN = 16
ZERO_HASH = bytes(HASH_LEN)
# How many hashes before `prev` a head lists (GroupHead.recent): the longest run of heads etcd may
# hold that no witness captured (writes committed while no majority answered, at most one per
# node and request in flight: service.VaultService) that a witness can still bridge.
RECENT = 16


def group_of(record_id: bytes, groups: int) -> int:
    """The group of a record: its id's first two bytes modulo `groups` (ids are uniform)."""
    return int.from_bytes(record_id[:2], "big") % groups


def head_key(group: int) -> bytes:
    return HEADS_PREFIX + f"{group:04x}".encode("ascii")


def head_aad(group: int) -> bytes:
    return HEAD_AAD_PREFIX + group.to_bytes(4, "big")


def digest(sealed_record: bytes) -> bytes:
    """What a head's page holds for a record: the first 16 bytes of SHA-256 of its sealed value
    (the random nonce inside makes every written value's digest its own)."""
    return hashlib.sha256(sealed_record).digest()[:DIGEST_LEN]


def head_hash(sealed_head: bytes) -> bytes:
    return hashlib.sha256(sealed_head).digest()


@dataclass(frozen=True)
class Head:
    """A group's head as read from etcd (version 0, no entries: the group has none yet)."""

    group: int
    version: int
    prev: bytes
    hash: bytes
    meta: KeyMeta  # the etcd metadata of the head key (the CAS compares its mod_revision)
    entries: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    recent: tuple[bytes, ...] = ()  # hashes of versions version-2, version-3, ...
    sealed_with: str = ""  # the token key its sealed value names ("" for the empty head)

    def ancestor(self, version: int) -> bytes | None:
        """The hash of this head's ancestor at `version` (below its own), if it lists it."""
        if version == self.version - 1:
            return self.prev
        index = self.version - 2 - version
        return self.recent[index] if 0 <= index < len(self.recent) else None

    @property
    def ref(self) -> witness_pb2.HeadRef:
        return witness_pb2.HeadRef(group=self.group, version=self.version, hash=self.hash)

    def holds(self, record_id: bytes, stored: StoredValue | None) -> bool:
        """Whether the page agrees with the record as etcd returned it (absent: no entry)."""
        entry = self.entries.get(record_id)
        if stored is None:
            return entry is None
        return entry is not None and entry == digest(stored.value)


def empty_head(group: int) -> Head:
    return Head(group, 0, ZERO_HASH, ZERO_HASH, ABSENT)


def open_head(
    token: TokenOps, group: int, stored: StoredValue | None, keys: SealKeys = FIRST_KEYS
) -> Head:
    """The head of `group` from etcd's value (or the empty head); `DecryptError` for anything
    that does not open under an accepted `record` key for this group or is malformed."""
    if stored is None:
        return empty_head(group)
    plaintext = open_sealed(token, keys.record_opens, stored.value, head_aad(group))
    try:
        head = sealed_pb2.GroupHead.FromString(plaintext)
    except DecodeError:
        raise DecryptError("sealed data failed to open") from None
    recent = tuple(bytes(h) for h in head.recent)
    if (
        head.group != group
        or head.version < 1
        or len(head.prev) != HASH_LEN
        or len(recent) > min(RECENT, head.version - 1)
        or any(len(h) != HASH_LEN for h in recent)
    ):
        raise DecryptError("sealed data failed to open")
    entries = {e.record_id: e.digest for e in head.entries}
    if len(entries) != len(head.entries):
        raise DecryptError("sealed data failed to open")
    return Head(
        group, head.version, head.prev, head_hash(stored.value), stored.meta, entries, recent,
        sealed_key_name(stored.value) or "",
    )  # fmt: skip


def next_head(
    token: TokenOps,
    head: Head,
    record_id: bytes,
    sealed_record: bytes | None,
    rng: Rng,
    keys: SealKeys = FIRST_KEYS,
) -> tuple[bytes, Head]:
    """The sealed successor of `head` with the record's entry set to the digest of
    `sealed_record` (None: the record is gone), and the successor as a `Head` (its metadata
    still the old one's: etcd names the new revision only once the write commits)."""
    entries = dict(head.entries)
    if sealed_record is None:
        entries.pop(record_id, None)
    else:
        entries[record_id] = digest(sealed_record)
    # The successor lists `head`'s prev and recent: the hashes of its versions n-2, n-3, ...
    recent = (head.prev, *head.recent)[:RECENT] if head.version >= 1 else ()
    message = sealed_pb2.GroupHead(
        group=head.group,
        version=head.version + 1,
        prev=head.hash,
        recent=list(recent),
        entries=[
            sealed_pb2.HeadEntry(record_id=rid, digest=d) for rid, d in sorted(entries.items())
        ],
    )
    plaintext = message.SerializeToString()
    sealed = seal_sealed(token, keys.record, plaintext, head_aad(head.group), rng)
    successor = Head(
        head.group, head.version + 1, head.hash, head_hash(sealed), head.meta, entries, recent,
        keys.record,
    )  # fmt: skip
    return sealed, successor
