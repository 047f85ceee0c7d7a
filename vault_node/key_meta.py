"""etcd's per-key metadata, the part of a record that storage cannot forge.

etcd gives every key a `create_revision` (the revision of the write that created it), a
`mod_revision` (the revision of its last write) and a `version` (writes since it was created).
No client chooses these numbers: etcd assigns revisions from one counter that only grows, so a
value written back later (a put-back, a delete-and-recreate, a copy from history) always lands
at a new `mod_revision`, a higher `version` or a new `create_revision`. A sealed record binds the
`(create_revision, version)` of the write that stored it (`vault_node.records`), so it opens only
where and when it was written.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyMeta:
    """A key's etcd metadata; all zero for an absent key."""

    create_revision: int
    mod_revision: int
    version: int

    @property
    def exists(self) -> bool:
        return self.version > 0

    def after_write(self, revision: int) -> KeyMeta:
        """The metadata after a put of this key committed at `revision`.

        A put of an absent key creates it (create_revision = revision, version 1); a put of an
        existing key keeps its create_revision and adds one to its version.
        """
        if not self.exists:
            return KeyMeta(revision, revision, 1)
        return KeyMeta(self.create_revision, revision, self.version + 1)

    def successor(self) -> KeyMeta:
        """What an update of this existing key will give it, before etcd names the revision
        (`mod_revision` 0): the metadata a value written by that update is sealed for."""
        if not self.exists:
            raise ValueError("only register start's reservation writes an absent key")
        return KeyMeta(self.create_revision, 0, self.version + 1)


ABSENT = KeyMeta(0, 0, 0)


@dataclass(frozen=True)
class StoredValue:
    """A key's value as etcd returned it, with the metadata it was returned with."""

    value: bytes
    meta: KeyMeta
