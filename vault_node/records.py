"""Records at rest, and the sealing every token-sealed value shares (records, protocol 3's tickets
in `vault_node.tickets`, group heads), with AES-256-GCM under keys that never leave the token.

`TokenOps` (vault_node.token_api) is the slice of the token that the request logic needs; tests
pass the software token. Every failure to open a record or a ticket is one `DecryptError` (no
oracle).

A record is bound to where and when it was written: its AAD holds the record id and the etcd
metadata `(create_revision, version)` that the key has once the write storing it commits
(`record_aad`). etcd assigns those numbers, never a client, and never gives one key the same
pair twice (a put-back raises the version, a delete-and-recreate changes the create_revision),
so a value read back from history, a snapshot or another key fails to open where it is put.
The one value sealed before its key's create_revision is known is the key's first: the secret-free
RESERVED placeholder of register start, sealed for version 1 with create_revision 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError

from bkv.store.v1 import sealed_pb2
from vault_node.key_meta import KeyMeta, StoredValue
from vault_node.token_api import TokenOps as TokenOps  # re-exported (heads, tests)
from vault_protocol.errors import DecryptError

NONCE_LEN = 12
RECORD_KEY = "record"
TICKET_KEY = "ticket"
RECORD_AAD_PREFIX = b"bkv-v2 record "  # format 2: bound to etcd metadata (sealed.proto)
MAX_SEALED_BYTES = 16 * 1024

Rng = Callable[[int], bytes]

# Record.credential_scheme: how the OPRF key's credential_identifier is formed.
CREDENTIAL_ACCOUNT = 0  # the account id alone (records written before schemes existed)
CREDENTIAL_ACCOUNT_GENERATION = 1  # u16 len || account || generation (every new registration)


def credential_identifier(account: bytes, generation: bytes, scheme: int) -> bytes:
    """RFC 9807's credential_identifier for a record, from which its OPRF key is derived.

    Security: with scheme 1 every registration has an OPRF key of its own (the generation is
    random per registration), so a registration request, which is never counted, evaluates a
    key no live record uses: it cannot serve as a free password oracle for the account's record.
    """
    if scheme == CREDENTIAL_ACCOUNT:
        return account
    if scheme == CREDENTIAL_ACCOUNT_GENERATION:
        return len(account).to_bytes(2, "big") + account + generation
    raise ValueError(f"unknown credential scheme {scheme}")


def record_aad(record_id: bytes, create_revision: int, version: int) -> bytes:
    """Binds a sealed record to its id (etcd cannot move one account's record to another) and to
    the key's `(create_revision, version)` after the write that stores it (etcd cannot write an
    earlier value of the key back: the key would then be at another version or incarnation)."""
    if not 0 <= create_revision < 1 << 63 or not 1 <= version < 1 << 63:
        raise ValueError("etcd metadata out of range")
    return b"".join(
        (
            RECORD_AAD_PREFIX,
            len(record_id).to_bytes(2, "big"),
            record_id,
            create_revision.to_bytes(8, "big"),
            version.to_bytes(8, "big"),
        )
    )


def _written_at(meta: KeyMeta) -> tuple[int, int]:
    """The `(create_revision, version)` a value stored at `meta` is sealed for.

    Version 1 is a key's first value, written before etcd has said its create_revision: bound
    to create_revision 0, and only ever the secret-free placeholder (checked on both sides).
    """
    if meta.version == 1:
        return 0, 1
    return meta.create_revision, meta.version


@dataclass(frozen=True)
class SealKeys:
    """Which token keys seal and which open, in the fleet's key epoch (vault_node.fleet_keys).

    A `Sealed` names the key it was sealed with (`key_name`), so a value is opened with the key
    it names, provided that key is one the node accepts now; new values are sealed with the
    current epoch's key. Outside a rotation both are the first epoch's `record` and `ticket`.
    """

    record: str = RECORD_KEY
    ticket: str = TICKET_KEY
    record_opens: frozenset[str] = field(default=frozenset({RECORD_KEY}))
    ticket_opens: frozenset[str] = field(default=frozenset({TICKET_KEY}))


FIRST_KEYS = SealKeys()


def sealed_key_name(blob: bytes) -> str | None:
    """The key a stored `Sealed` says it was sealed with, without opening it (None when the
    bytes are no `Sealed`): what a re-seal pass looks for."""
    if len(blob) > MAX_SEALED_BYTES:
        return None
    try:
        return str(sealed_pb2.Sealed.FromString(blob).key_name)
    except DecodeError:
        return None


def seal_sealed(token: TokenOps, key_name: str, plaintext: bytes, aad: bytes, rng: Rng) -> bytes:
    """A serialized `Sealed` of `plaintext` under token key `key_name`, bound to `aad`."""
    nonce = rng(NONCE_LEN)
    if len(nonce) != NONCE_LEN:
        raise ValueError("rng returned the wrong number of bytes")
    ciphertext = token.aes_gcm_seal(key_name, nonce, plaintext, aad)
    sealed = sealed_pb2.Sealed(key_name=key_name, nonce=nonce, ciphertext=ciphertext)
    return bytes(sealed.SerializeToString())


def open_sealed(token: TokenOps, key_names: str | frozenset[str], blob: bytes, aad: bytes) -> bytes:
    """The plaintext of `seal_sealed`'s output, opened with the key it names if that is one of
    `key_names`; one `DecryptError` for every failure."""
    if len(blob) > MAX_SEALED_BYTES:
        raise DecryptError("sealed data failed to open")
    try:
        sealed = sealed_pb2.Sealed.FromString(blob)
    except DecodeError:
        raise DecryptError("sealed data failed to open") from None
    accepted = frozenset({key_names}) if isinstance(key_names, str) else key_names
    # Security: only a key the node accepts now, whatever name storage put there (a retired
    # epoch's key is destroyed anyway; a name of another purpose is refused here).
    if sealed.key_name not in accepted or len(sealed.nonce) != NONCE_LEN:
        raise DecryptError("sealed data failed to open")
    try:
        return token.aes_gcm_open(sealed.key_name, sealed.nonce, sealed.ciphertext, aad)
    except Exception:  # noqa: BLE001
        # One error for every cause (tag, length, token refusal): nothing to learn from failures.
        raise DecryptError("sealed data failed to open") from None


M = TypeVar("M", sealed_pb2.Record, sealed_pb2.Ticket, sealed_pb2.RegistrationTicket)


def _parse(message_type: type[M], plaintext: bytes) -> M:
    try:
        return message_type.FromString(plaintext)
    except DecodeError:
        raise DecryptError("sealed data failed to open") from None


def seal_record(
    token: TokenOps,
    record_id: bytes,
    record: sealed_pb2.Record,
    stored_at: KeyMeta,
    rng: Rng,
    keys: SealKeys = FIRST_KEYS,
) -> bytes:
    """Serialized `Sealed` of `record` under the (current epoch's) `record` key, for the key
    `record_id` at `stored_at`: the metadata the key will have once this value's write
    commits."""
    placeholder = record.state == sealed_pb2.RECORD_STATE_RESERVED
    if placeholder != (stored_at.version == 1):
        # A secret never goes into a value whose create_revision is not bound (version 1).
        raise ValueError("only the RESERVED placeholder is a key's first value")
    aad = record_aad(record_id, *_written_at(stored_at))
    return seal_sealed(token, keys.record, record.SerializeToString(), aad, rng)


def open_record(
    token: TokenOps, record_id: bytes, stored: StoredValue, keys: SealKeys = FIRST_KEYS
) -> sealed_pb2.Record:
    """Open a sealed record read from etcd at the metadata etcd returned it with; `DecryptError`
    for any failure, a value written back from elsewhere or earlier included."""
    aad = record_aad(record_id, *_written_at(stored.meta))
    plaintext = open_sealed(token, keys.record_opens, stored.value, aad)
    record = _parse(sealed_pb2.Record, plaintext)
    if (record.state == sealed_pb2.RECORD_STATE_RESERVED) != (stored.meta.version == 1):
        raise DecryptError("sealed data failed to open")
    return record
