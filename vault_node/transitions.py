"""The record's state machine: pure functions from (record as stored, request) to a `Step`.

No I/O, no token, no clock: each function looks at the `Current` state of one etcd key (its
metadata and the record it holds, already opened) and says what to write and what to answer.
`vault_node.service` runs each of them inside its one compare-and-swap loop: decide, seal and
write the step's record for the key's next version, and on a conflict decide again from the
state the failed write read. As in Juicebox's `hsm_core`, the rules can be tested without a
token or a store (tests/unit/test_transitions.py).

States of a key: absent; RESERVED (made by register start, no secret); ACTIVE; LOCKED (secrets
erased for good); or tampered (a value that does not open at the metadata etcd returns it with:
storage wrote it, not a vault node).

Who may act on a key (issue 17): every step 1 is signed by an account key (`Signer`, verified
by the service). An ACTIVE or LOCKED record is bound to one key (`account_key`): only that key,
or a pending rebind's key once its delay has passed (`matured`), may count a guess, begin a
status or a delete, or re-register (`authorize`). A key holding no bound key -- absent,
RESERVED, tampered, or a record written before account keys -- is trust on first use: the
registration (or, for an old record, the first successful recovery) binds its signer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bkv.store.v1 import sealed_pb2
from vault_node.heads import Head
from vault_node.key_meta import ABSENT, KeyMeta
from vault_node.records import CREDENTIAL_ACCOUNT, CREDENTIAL_ACCOUNT_GENERATION

ACTIVE = sealed_pb2.RECORD_STATE_ACTIVE
LOCKED = sealed_pb2.RECORD_STATE_LOCKED
RESERVED = sealed_pb2.RECORD_STATE_RESERVED
CREDENTIAL_SCHEMES = frozenset({CREDENTIAL_ACCOUNT, CREDENTIAL_ACCOUNT_GENERATION})


@dataclass(frozen=True)
class Current:
    """One etcd key as a vault node sees it: its metadata, the record it holds, and its group's
    head (vault_node.heads).

    `record` is None when the key is absent or when its value did not open, or does not match
    its group's head (`tampered`); `head` is None when the head itself did not open.
    """

    meta: KeyMeta
    record: sealed_pb2.Record | None = None
    tampered: bool = False
    head: Head | None = None
    sealed_with: str = ""  # the token key the record's value names ("" when it has none)

    @property
    def registered(self) -> bool:
        """Holds a registration (active or locked): what status and delete call "existed"."""
        return self.record is not None and self.record.state in (ACTIVE, LOCKED)


NOTHING = Current(ABSENT)


@dataclass(frozen=True)
class Signer:
    """Who signed a step 1 (its verified account key and its `ts_ms`), with the node's clock and
    the operator's rebind delay, so that the transitions stay pure."""

    key: bytes
    ts_ms: int
    now_ms: int = 0
    rebind_delay_ms: int = 0


class Kind(enum.Enum):
    """What a step answers (and, with a write, what its commit means)."""

    AUTH_REFUSED = "auth_refused"  # signed by a key the record is not bound to: no write
    AUTH_STALE = "auth_stale"  # its ts_ms is not after the record's last_auth_ms: no write
    ADMITTED = "admitted"  # the signer may act on the key; nothing to write for it
    REBIND_STARTED = "rebind_started"  # write: the signer's key is now the pending rebind
    REBIND_PENDING = "rebind_pending"  # the signer's key was already pending: no write
    REBIND_CANCELLED = "rebind_cancelled"  # write: the bound key signed; the pending one is gone
    NOT_REGISTERED = "not_registered"  # absent or RESERVED: no write
    LOCKED = "locked"  # already locked: no write
    TAMPERED = "tampered"  # the stored value did not open: no write, nothing evaluated
    STALE = "stale"  # a ticket for another registration, or already redeemed: no write
    EVALUATE = "evaluate"  # write: attempts + 1 committed, then the OPRF may run
    LOCK = "lock"  # write: the last guess was spent before, now erased for good
    RELEASE = "release"  # write: a good client MAC forgave this ticket's guesses
    REWRITE = "rewrite"  # write: a bad client MAC rewrote the record unchanged (same work)
    REGISTERED = "registered"  # write (or a retry of this very registration: no write)
    RESERVED = "reserved"  # register start: the absent key reserved (write), or already there
    DELETED = "deleted"  # erase the key (or nothing to erase)
    RESEAL = "reseal"  # write: the record unchanged under the fleet's current key (rotation)


@dataclass(frozen=True)
class Step:
    """A decision: the record to write (sealed for the key's next version, whose number the
    node also puts in its `version`), or the key to erase, or neither; and what to answer once
    that is committed."""

    kind: Kind
    write: sealed_pb2.Record | None = None
    erase: bool = False
    existed: bool = False  # DELETED: whether the key held a registration

    @property
    def writes(self) -> bool:
        return self.write is not None or self.erase


def _refusal(current: Current) -> Step | None:
    """The answer for a key no password can be evaluated against, or None if it is active."""
    if current.tampered:
        return Step(Kind.TAMPERED)
    record = current.record
    if record is None or record.state == RESERVED:
        return Step(Kind.NOT_REGISTERED)
    if record.state == LOCKED:
        return Step(Kind.LOCKED)
    if record.state != ACTIVE or record.credential_scheme not in CREDENTIAL_SCHEMES:
        # Vault nodes never seal another state or scheme: not ours to evaluate, whoever wrote it.
        return Step(Kind.TAMPERED)
    return None


def _copy(record: sealed_pb2.Record) -> sealed_pb2.Record:
    out = sealed_pb2.Record()
    out.CopyFrom(record)
    return out


def tombstone(record: sealed_pb2.Record) -> sealed_pb2.Record:
    """The record with its secrets erased for good (LOCKED): counters, generation and the
    account binding only (a frontend cannot re-register someone else's locked account)."""
    return sealed_pb2.Record(
        state=LOCKED,
        attempts=record.attempts,
        max_attempts=record.max_attempts,
        generation=record.generation,
        evaluations=record.evaluations,
        last_redeemed=record.last_redeemed,
        credential_scheme=record.credential_scheme,
        account_key=record.account_key,
        last_auth_ms=record.last_auth_ms,
        pending_key=record.pending_key,
        pending_since_ms=record.pending_since_ms,
    )


def _bound(current: Current) -> sealed_pb2.Record | None:
    """The record if it is bound to an account key (ACTIVE or LOCKED with `account_key`)."""
    record = current.record
    if current.tampered or record is None or record.state not in (ACTIVE, LOCKED):
        return None
    return record if record.account_key else None


def matured(record: sealed_pb2.Record, signer: Signer) -> bool:
    """`signer` holds the record's pending rebind key and the operator's delay has passed."""
    return bool(
        record.pending_key
        and record.pending_key == signer.key
        and signer.now_ms >= record.pending_since_ms + signer.rebind_delay_ms
    )


def authorize(current: Current, signer: Signer) -> Step | None:
    """AUTH_REFUSED when `current` is bound to another key than the signer's (and the signer's
    is not a matured pending rebind); None when the signer may act.

    Security: this is the vault's own check of the account; the frontend's word for it is not
    enough (issue 17). A key bound to no account key is trust on first use (module docstring).
    """
    record = _bound(current)
    if record is None or record.account_key == signer.key or matured(record, signer):
        return None
    return Step(Kind.AUTH_REFUSED)


def fresh(current: Current, signer: Signer) -> bool:
    """The signed request is newer than the last one that wrote this record for a guess or a
    rebind. Security: a frontend that relays a user's genuine signed recover start again (to
    burn guesses) is refused; each signed request counts at most once."""
    record = current.record
    return record is None or signer.ts_ms > record.last_auth_ms


def cancels(current: Current, signer: Signer) -> bool:
    """The bound key signed while a rebind is pending: that rebind is cancelled."""
    record = _bound(current)
    return bool(record is not None and record.pending_key and record.account_key == signer.key)


def _cancelled(record: sealed_pb2.Record) -> sealed_pb2.Record:
    out = _copy(record)
    out.ClearField("pending_key")
    out.ClearField("pending_since_ms")
    return out


def admit(current: Current, signer: Signer) -> Step:
    """Any step 1 other than a recover start, before its own work: AUTH_REFUSED, or the bound
    key's request cancelling a pending rebind (a write; AUTH_STALE if the request is a replay),
    or ADMITTED (nothing to write)."""
    denied = authorize(current, signer)
    if denied is not None:
        return denied
    if not cancels(current, signer):
        return Step(Kind.ADMITTED)
    if not fresh(current, signer):
        return Step(Kind.AUTH_STALE)
    record = current.record
    assert record is not None
    cancelled = _cancelled(record)
    cancelled.last_auth_ms = signer.ts_ms
    return Step(Kind.REBIND_CANCELLED, write=cancelled)


def request_rebind(current: Current, signer: Signer) -> Step:
    """Key loss (Begin OP_REBIND): make the signer's key the record's pending rebind, from now.

    No guess is counted. Only a bound record needs one (elsewhere the signer is trusted on
    first use: ADMITTED); the bound key asking is a cancellation (`admit`). Security: the
    pending key may sign like the bound one only after the operator's delay, and any request
    the bound key signs meanwhile cancels it, so its owner has the whole delay to notice (status
    shows it) and object; guesses stay capped whoever signs them.
    """
    record = _bound(current)
    if current.tampered:
        return Step(Kind.TAMPERED)
    if record is None or record.account_key == signer.key:
        return admit(current, signer)
    if record.pending_key == signer.key:
        return Step(Kind.REBIND_PENDING)  # the delay runs from the first request, not the last
    if not fresh(current, signer):
        return Step(Kind.AUTH_STALE)
    pending = _copy(record)
    pending.pending_key = signer.key
    pending.pending_since_ms = signer.now_ms
    pending.last_auth_ms = signer.ts_ms
    return Step(Kind.REBIND_STARTED, write=pending)


def count_guess(current: Current, signer: Signer) -> Step:
    """Recovery step 1: commit one more attempt before the OPRF runs, or lock.

    Security: the guess is counted in the write, and the OPRF may run only once that write has
    committed; a crash or a lost answer after it costs the user a guess, never an attacker a
    free one. A record out of guesses is erased for good instead (permanent lockout). Only the
    record's own account key (`authorize`) may spend its guesses, each signed request once
    (`fresh`: the write stores its ts_ms).
    """
    denied = authorize(current, signer)
    if denied is not None:
        return denied
    refusal = _refusal(current)
    if refusal is not None:
        return refusal
    record = current.record
    assert record is not None
    if not fresh(current, signer):
        return Step(Kind.AUTH_STALE)
    if record.attempts >= record.max_attempts:
        locked = tombstone(_cancelled(record) if cancels(current, signer) else record)
        locked.last_auth_ms = signer.ts_ms
        return Step(Kind.LOCK, write=locked)
    counted = _cancelled(record) if cancels(current, signer) else _copy(record)
    counted.attempts = record.attempts + 1
    counted.evaluations = record.evaluations + 1
    counted.last_auth_ms = signer.ts_ms
    return Step(Kind.EVALUATE, write=counted)


def _signer_still_admitted(record: sealed_pb2.Record, signer_key: bytes) -> bool:
    """The key that signed a recover start may still redeem it: the bound key, the pending one
    (cancelled meanwhile by the bound key: no longer), or any key of an unbound record."""
    if not record.account_key:
        return True
    return bool(signer_key) and signer_key in (record.account_key, record.pending_key)


def redeemable(current: Current, ticket: sealed_pb2.Ticket) -> bool:
    """Whether a login ticket may still release the key of `current`.

    Single use: a ticket of an older registration, or one already redeemed (or older than one
    redeemed), cannot release the key again. Bound to its key: the same create_revision (not a
    recreated key) at the version its guess committed or later (not a value from before it).
    And to its signer: a pending rebind the bound key cancelled since redeems nothing.
    """
    record = current.record
    return bool(
        record is not None
        and not current.tampered
        and record.state == ACTIVE
        and record.generation == ticket.generation
        and record.last_redeemed < ticket.evaluation <= record.evaluations
        and current.meta.create_revision == ticket.create_revision
        and current.meta.version >= ticket.version
        and _signer_still_admitted(record, ticket.signer_key)
    )


def redeem(current: Current, ticket: sealed_pb2.Ticket) -> Step:
    """Recovery step 2 after a good client MAC: forgive the guesses up to this ticket's.

    Security: only the guesses up to this ticket's evaluation are forgiven; wrong ones evaluated
    after it (while its finish was held back, say) stay counted. The first successful recovery
    signed by a matured pending key binds it (key loss), and one of a record written before
    account keys binds its signer.
    """
    refusal = _refusal(current)
    if refusal is not None:
        return refusal
    if not redeemable(current, ticket):
        return Step(Kind.STALE)
    record = current.record
    assert record is not None
    redeemed = _copy(record)
    redeemed.attempts = min(record.attempts, record.evaluations - ticket.evaluation)
    redeemed.last_redeemed = ticket.evaluation
    signer = ticket.signer_key
    if signer and (not record.account_key or signer == record.pending_key):
        redeemed = _cancelled(redeemed)
        redeemed.account_key = signer
    return Step(Kind.RELEASE, write=redeemed)


def rewrite(current: Current) -> Step:
    """Recovery step 2 after a bad client MAC (a wrong password's dummy finish): write the
    record back unchanged, freshly sealed for the key's next version.

    Security: the guess was counted at step 1 and nothing is forgiven; the write is there so
    that a wrong finish does the storage work of a right one (one compare-and-swap, one head),
    and neither etcd nor anyone timing the node tells them apart by it. Juicebox writes the user
    record "so that there's a write either way" for the same reason.
    """
    refusal = _refusal(current)
    if refusal is not None:
        return refusal
    record = current.record
    assert record is not None
    return Step(Kind.REWRITE, write=_copy(record))


def as_begun(current: Current) -> tuple[int, bytes]:
    """What a delete's first step binds its ticket to: the key's create_revision (0: absent)
    and the registration's generation (empty: none that opened)."""
    record = current.record
    return current.meta.create_revision, record.generation if record is not None else b""


def delete_begun(current: Current, create_revision: int, generation: bytes) -> Step:
    """Delete step 2: erase the key as `delete`, but only if it is still the key and the
    registration the delete began on (`as_begun`); otherwise STALE, nothing erased.

    Security: a relayed delete cannot be replayed onto a later registration of the account
    (a new registration has a new generation, a key made again a new create_revision).
    """
    if as_begun(current) != (create_revision, generation):
        return Step(Kind.STALE)
    return delete(current)


def is_this_registration(current: Current, new: sealed_pb2.Record) -> bool:
    """The key already holds exactly `new` (a client's retry of an unconfirmed finish)."""
    record = current.record
    return bool(
        record is not None
        and not current.tampered
        and record.state == ACTIVE
        and record.generation == new.generation
        and record.opaque_record == new.opaque_record
        and record.wrapped_key == new.wrapped_key
    )


def at_base(current: Current, ticket: sealed_pb2.RegistrationTicket) -> bool:
    """The key is still at the write its registration ticket was issued against."""
    meta = current.meta
    return bool(
        meta.exists
        and meta.mod_revision == ticket.base_revision
        and meta.create_revision == ticket.base_create_revision
        and meta.version == ticket.base_version
    )


def register(
    current: Current, ticket: sealed_pb2.RegistrationTicket, new: sealed_pb2.Record
) -> Step:
    """Register finish: replace whatever the key holds (a locked or tampered record included)
    with `new`, but only if the key is still at the ticket's base write.

    Security: a replayed or late finish meets a key that moved on and changes nothing; the key's
    base always names a real write (register start reserves an absent key), so a finish can
    never match a key that was deleted and made again.
    """
    if at_base(current, ticket):
        registered = _copy(new)
        # Never below what the key held: a recover start signed before this registration and
        # held back by a frontend stays a replay (`fresh`).
        if current.record is not None:
            registered.last_auth_ms = max(new.last_auth_ms, current.record.last_auth_ms)
        return Step(Kind.REGISTERED, write=registered)
    if is_this_registration(current, new):
        return Step(Kind.REGISTERED)
    return Step(Kind.STALE)


def reserve(current: Current, signer: Signer) -> Step:
    """Register start: make an absent key exist with the secret-free RESERVED placeholder, so
    that the registration's ticket names a real write; an existing key is left as it is (a
    tampered value too: the finish may replace it). A key bound to another account key than
    the signer's is refused (AUTH_REFUSED): a frontend cannot re-register someone's account."""
    denied = authorize(current, signer)
    if denied is not None:
        return denied
    if current.meta.exists:
        return Step(Kind.RESERVED)
    return Step(Kind.RESERVED, write=sealed_pb2.Record(state=RESERVED))


def delete(current: Current) -> Step:
    """Delete: erase the key, whatever it holds (a tampered value too).

    The key may become absent at once: no ticket is ever bound to an absent key (registration
    reserves it first), and a key made again later gets a new create_revision that no earlier
    value or ticket matches.
    """
    if not current.meta.exists:
        return Step(Kind.DELETED)
    return Step(Kind.DELETED, erase=True, existed=current.registered or current.tampered)


def guesses_left(record: sealed_pb2.Record) -> int:
    """Guesses the record still allows (0 when locked)."""
    if record.state == LOCKED:
        return 0
    return max(0, int(record.max_attempts) - int(record.attempts))


def reseal(current: Current, seal_label: str, *, erase_placeholder: bool) -> Step:
    """A fleet rotation's re-seal (vault_node.reseal): the record written back unchanged, so
    that it and its group's head are sealed with the current epoch's `record` key
    (`seal_label`); nothing when both already are.

    A RESERVED placeholder cannot be written again (only a key's first value is one): it is
    erased instead when `erase_placeholder` (absent and reserved answer alike, and no
    registration ticket can still name it), else left for a later pass. A key that is absent
    while its group's head is not yet re-sealed gets its head rewritten alone (an erase of
    nothing). Security: no counter, generation or state changes, so no guess is granted or
    forgiven; the write goes through the same compare-and-swap and head as any other.
    """
    head = current.head
    head_stale = head is not None and head.version > 0 and head.sealed_with != seal_label
    if current.tampered:
        return Step(Kind.TAMPERED)
    record = current.record
    if record is None:
        return Step(Kind.RESEAL, erase=True) if head_stale else Step(Kind.NOT_REGISTERED)
    if current.sealed_with == seal_label and not head_stale:
        return Step(Kind.RESEAL)
    if record.state == RESERVED:
        return Step(Kind.RESEAL, erase=True) if erase_placeholder else Step(Kind.RESERVED)
    return Step(Kind.RESEAL, write=_copy(record))
