"""The witness's logic, free of I/O: per record group, the chain of heads it has captured.

A witness holds, for every group, the recent part of the chain of heads it has captured (each
head names its predecessor's hash). A writer that committed a new head on top of `base` asks it
to capture the new one; the witness answers, for `base` and the chain it holds:

* `base` is its latest head, or is in its chain with the new head as successor, or is one head
  past its latest and extends it (`base_prev`): **CAPTURED** (the chain grows, or already had it);
* `base` is in its chain but another head follows it, or forks from it at some version, or is
  older than its latest by more than `MAX_DELAY_VERSIONS`: **ROLLBACK**. A writer's base is what
  etcd held when its compare-and-swap committed; an honest etcd never holds a head older than a
  committed one, and witnesses capture only committed heads. So a base behind the chain means
  etcd went back (a restore, however its revisions were bumped) or serves another history (a
  fork);
* `base` is several heads past its latest, and the hashes the writer read in base's sealed head
  (`base_prev`, `base_recent`: its ancestors) list the witness's latest at its version: the heads
  between were committed to etcd while no majority answered, on the very chain the witness holds;
  **CAPTURED**, the gap filled in. The same list naming another hash at that version: a fork,
  **ROLLBACK**;
* `base` is further past its latest than its ancestors reach, or older than what it still
  remembers but within the delay margin (a capture delayed across its restart): **BEHIND**,
  counted by nobody; it catches up.

Majorities: a write counts as witnessed once more than half of the fleet's witnesses (a static
list, the same on every node) have captured it; two majorities share a witness, so two forks of
one group can never both be witnessed. `merge` is the catch-up after a restart: per group the
latest head any of a majority of witnesses holds.

The MAC inputs are fixed here; `vault_node.witness_server` and `vault_node.witnessing` compute
them with the fleet's `witness` key in their token.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bkv.v1 import witness_pb2
from vault_node.heads import HASH_LEN, ZERO_HASH

WINDOW = 256  # heads per group a witness remembers
MAX_DELAY_VERSIONS = 64  # how far behind a delayed (late) capture may plausibly be
CAPTURE_MAC_PREFIX = b"bkv-v1 witness capture"
HEADS_MAC_PREFIX = b"bkv-v1 witness heads"
SESSION_KEY_PREFIX = b"bkv-v1 witness session"
NONCE_LEN = 16
MAX_TOLD = 64  # captures one stream frame tells a witness it was not asked (witness.proto)


class Verdict(enum.IntEnum):
    CAPTURED = witness_pb2.CAPTURE_VERDICT_CAPTURED
    BEHIND = witness_pb2.CAPTURE_VERDICT_BEHIND
    ROLLBACK = witness_pb2.CAPTURE_VERDICT_ROLLBACK
    NOT_READY = witness_pb2.CAPTURE_VERDICT_NOT_READY


@dataclass(frozen=True)
class Ref:
    """A head of one group: (group, version, hash)."""

    group: int
    version: int
    hash: bytes

    @classmethod
    def of(cls, ref: witness_pb2.HeadRef) -> Ref:
        return cls(int(ref.group), int(ref.version), bytes(ref.hash))

    def message(self) -> witness_pb2.HeadRef:
        return witness_pb2.HeadRef(group=self.group, version=self.version, hash=self.hash)

    def valid(self, groups: int) -> bool:
        return 0 <= self.group < groups and self.version >= 0 and len(self.hash) == HASH_LEN


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def _ref_bytes(ref: Ref) -> bytes:
    return ref.group.to_bytes(4, "big") + _u64(ref.version) + ref.hash


def capture_mac_input(witness: str, nonce: bytes, verdict: int, head: Ref, held: Ref) -> bytes:
    """What a capture answer's MAC covers: who answered, to which call, what, about which head."""
    name = witness.encode("utf-8")
    return b"".join(
        (
            CAPTURE_MAC_PREFIX,
            len(name).to_bytes(2, "big"),
            name,
            nonce,
            verdict.to_bytes(1, "big"),
            _ref_bytes(head),
            _ref_bytes(held),
        )
    )


def heads_mac_input(witness: str, nonce: bytes, ready: bool, heads: Iterable[Ref]) -> bytes:
    name = witness.encode("utf-8")
    parts = [HEADS_MAC_PREFIX, len(name).to_bytes(2, "big"), name, nonce, bytes([ready])]
    parts += [_ref_bytes(ref) for ref in sorted(heads, key=lambda r: r.group)]
    return b"".join(parts)


def session_key_input(witness: str, writer_nonce: bytes, witness_nonce: bytes) -> bytes:
    """What a capture stream's session key is the token HMAC (fleet `witness` key) of: the
    witness's name and both sides' fresh nonces. Its prefix differs from every other input MAC'd
    under that key, so a session key is never a MAC either side sends, nor the other way round."""
    name = witness.encode("utf-8")
    return b"".join(
        (SESSION_KEY_PREFIX, len(name).to_bytes(2, "big"), name, writer_nonce, witness_nonce)
    )


def session_mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 under a capture stream's session key, in software.

    Security: the key is the token's HMAC over `session_key_input`, so only a holder of the
    fleet's `witness` key (a token) can make it; it lives in the memory of the two vault-node
    processes of one stream (the HSM boundary, like the records they open) and dies with it."""
    return hmac.new(key, data, hashlib.sha256).digest()


class WitnessState:
    """Every group's recent chain of captured heads; `ready` once caught up after a start."""

    def __init__(self, groups: int, heads: Iterable[Ref] = (), *, ready: bool = False) -> None:
        self.groups = groups
        self.ready = ready
        self._chains: dict[int, deque[tuple[int, bytes]]] = {}
        for ref in heads:
            self._adopt(ref)

    def latest(self, group: int) -> Ref:
        chain = self._chains.get(group)
        if not chain:
            return Ref(group, 0, ZERO_HASH)
        version, digest = chain[-1]
        return Ref(group, version, digest)

    def heads(self) -> list[Ref]:
        """The latest head of every group this witness has seen (version > 0)."""
        return [self.latest(g) for g in sorted(self._chains) if self.latest(g).version > 0]

    def _adopt(self, ref: Ref) -> None:
        """Take `ref` as the group's latest (catch-up or load): the old chain is dropped unless
        `ref` extends it, since only the latest is known for sure."""
        if ref.version <= self.latest(ref.group).version:
            return
        chain = deque([(ref.version, ref.hash)], maxlen=WINDOW)
        self._chains[ref.group] = chain

    def _append(self, group: int, version: int, digest: bytes) -> None:
        chain = self._chains.get(group)
        if chain is None:
            chain = self._chains[group] = deque([(0, ZERO_HASH)], maxlen=WINDOW)
        chain.append((version, digest))

    def capture(
        self, base: Ref, base_prev: bytes, head: Ref, base_recent: Sequence[bytes] = ()
    ) -> tuple[Verdict, Ref]:
        """Judge a writer's capture request; on CAPTURED the chain holds `head` afterwards.

        `base_prev` and `base_recent` are base's ancestors (versions base-1, base-2, ...) as its
        sealed head lists them. Security: they come from a vault node (mTLS), which opened that
        head with its token: etcd can show an old or forked head, never invent an ancestor list.
        """
        group = base.group
        if not self.ready:
            return Verdict.NOT_READY, self.latest(group)
        if head.group != group or head.version != base.version + 1:
            return Verdict.ROLLBACK, self.latest(group)  # not a successor at all: never count it
        chain = self._chains.get(group) or deque([(0, ZERO_HASH)])
        known = dict(chain)
        latest_version, latest_hash = chain[-1]
        if base.version in known:
            if known[base.version] != base.hash:
                return Verdict.ROLLBACK, self.latest(group)  # a fork at the base's version
            if base.version == latest_version:
                self._append(group, head.version, head.hash)
                return Verdict.CAPTURED, self.latest(group)
            # Base is behind our latest: fine only if its successor here is this very head
            # (this capture arrived after a later one that extended it).
            follower = known.get(head.version)
            verdict = Verdict.CAPTURED if follower == head.hash else Verdict.ROLLBACK
            return verdict, self.latest(group)
        if base.version > latest_version:
            ancestors = [base_prev, *base_recent]  # versions base-1, base-2, ...
            reach = base.version - 1 - latest_version
            if reach >= len(ancestors):
                return Verdict.BEHIND, self.latest(group)  # too far ahead to judge
            if ancestors[reach] != latest_hash:
                return Verdict.ROLLBACK, self.latest(group)  # forks from our latest
            for version in range(latest_version + 1, base.version):
                self._append(group, version, ancestors[base.version - 1 - version])
            self._append(group, base.version, base.hash)
            self._append(group, head.version, head.hash)
            return Verdict.CAPTURED, self.latest(group)
        if base.version < latest_version - MAX_DELAY_VERSIONS:
            return Verdict.ROLLBACK, self.latest(group)  # far older than anything in flight
        return Verdict.BEHIND, self.latest(group)  # older than we remember, within the margin

    def merge(self, heads: Iterable[Ref]) -> list[Ref]:
        """Catch-up: take every group's newer head from a peer; the groups that moved."""
        moved: list[Ref] = []
        for ref in heads:
            if 0 <= ref.group < self.groups and ref.version > self.latest(ref.group).version:
                self._adopt(ref)
                moved.append(ref)
        return moved


def majority(witnesses: int) -> int:
    """How many witnesses make a majority of `witnesses`."""
    return witnesses // 2 + 1
