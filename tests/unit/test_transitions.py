"""vault_node.transitions: the record's state machine, with no token, store or clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.store.v1 import sealed_pb2
from vault_node import transitions as t
from vault_node.key_meta import KeyMeta
from vault_node.transitions import Current, Kind

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

META = KeyMeta(create_revision=10, mod_revision=20, version=3)
GEN = b"g" * 16
KEY = b"A" * 32  # the account key the records below are bound to
SIGNER = t.Signer(KEY, ts_ms=1_000, now_ms=1_000)


def active(attempts: int = 0, max_attempts: int = 10, evaluations: int = 0) -> sealed_pb2.Record:
    return sealed_pb2.Record(
        state=t.ACTIVE,
        opaque_record=b"r" * 192,
        wrapped_key=b"k" * 60,
        attempts=attempts,
        max_attempts=max_attempts,
        generation=GEN,
        evaluations=evaluations,
        credential_scheme=1,
        account_key=KEY,
    )


def ticket(evaluation: int, meta: KeyMeta = META) -> sealed_pb2.Ticket:
    return sealed_pb2.Ticket(
        generation=GEN, evaluation=evaluation, create_revision=meta.create_revision,
        version=meta.version, signer_key=KEY,
    )  # fmt: skip


def test_a_guess_is_counted_in_the_write_that_precedes_the_evaluation() -> None:
    step = t.count_guess(Current(META, active(attempts=2, evaluations=5)), SIGNER)
    assert step.kind is Kind.EVALUATE and step.write is not None and not step.erase
    assert (step.write.attempts, step.write.evaluations) == (3, 6)
    assert step.write.opaque_record and step.write.wrapped_key


def test_the_last_guess_spent_means_lock_and_erase() -> None:
    step = t.count_guess(Current(META, active(attempts=10, evaluations=10)), SIGNER)
    assert step.kind is Kind.LOCK and step.write is not None
    assert step.write.state == t.LOCKED
    assert not step.write.opaque_record and not step.write.wrapped_key
    assert step.write.attempts == 10 and step.write.generation == GEN


@pytest.mark.parametrize(
    ("current", "kind"),
    [
        (t.NOTHING, Kind.NOT_REGISTERED),
        (Current(META, sealed_pb2.Record(state=t.RESERVED)), Kind.NOT_REGISTERED),
        (Current(META, sealed_pb2.Record(state=t.LOCKED)), Kind.LOCKED),
        (Current(META, None, tampered=True), Kind.TAMPERED),
        (
            Current(META, sealed_pb2.Record(state=sealed_pb2.RECORD_STATE_UNSPECIFIED)),
            Kind.TAMPERED,
        ),
        (Current(META, sealed_pb2.Record(state=t.ACTIVE, credential_scheme=9)), Kind.TAMPERED),
    ],
)
def test_nothing_is_written_or_evaluated_for_a_closed_key(current: Current, kind: Kind) -> None:
    for step in (t.count_guess(current, SIGNER), t.redeem(current, ticket(1))):
        assert step.kind is kind and not step.writes


def test_a_redemption_forgives_only_the_guesses_up_to_its_ticket() -> None:
    record = active(attempts=4, evaluations=7)
    step = t.redeem(Current(META, record), ticket(5))
    assert step.kind is Kind.RELEASE and step.write is not None
    assert step.write.attempts == 2 and step.write.last_redeemed == 5  # evaluations 6 and 7 stay
    assert step.write.wrapped_key == record.wrapped_key


@pytest.mark.parametrize(
    ("record_change", "ticket_change"),
    [
        ({"generation": b"h" * 16}, {}),  # another registration's ticket
        ({"last_redeemed": 5}, {}),  # already redeemed
        ({}, {"evaluation": 8}),  # from the future
        ({}, {"create_revision": 9}),  # another incarnation of the key
        ({}, {"version": 4}),  # a value from before the ticket's guess
    ],
)
def test_a_ticket_is_single_use_and_bound_to_its_key(
    record_change: dict[str, object], ticket_change: dict[str, object]
) -> None:
    record = active(attempts=1, evaluations=7)
    for name, value in record_change.items():
        setattr(record, name, value)
    tk = ticket(5)
    for name, value in ticket_change.items():
        setattr(tk, name, value)
    assert t.redeem(Current(META, record), tk) == t.Step(Kind.STALE)


def test_a_ticket_is_redeemable_at_a_later_version_of_the_same_key() -> None:
    later = KeyMeta(META.create_revision, 40, META.version + 5)
    assert t.redeem(Current(later, active(evaluations=7)), ticket(5)).kind is Kind.RELEASE


def registration_ticket(meta: KeyMeta) -> sealed_pb2.RegistrationTicket:
    return sealed_pb2.RegistrationTicket(
        generation=GEN, base_revision=meta.mod_revision,
        base_create_revision=meta.create_revision, base_version=meta.version,
    )  # fmt: skip


def test_register_replaces_whatever_the_key_holds_at_its_base() -> None:
    new = active()
    for held in (None, sealed_pb2.Record(state=t.LOCKED), sealed_pb2.Record(state=t.RESERVED)):
        step = t.register(Current(META, held), registration_ticket(META), new)
        assert step.kind is Kind.REGISTERED and step.write == new and step.write is not new
    tampered = Current(META, None, tampered=True)
    assert t.register(tampered, registration_ticket(META), new).write == new


def test_register_off_its_base_is_stale_unless_it_is_this_registration() -> None:
    new = active()
    moved = KeyMeta(META.create_revision, 30, META.version + 1)
    other = sealed_pb2.Record()
    other.CopyFrom(new)
    other.wrapped_key = b"x" * 60
    assert t.register(Current(moved, other), registration_ticket(META), new).kind is Kind.STALE
    retry = t.register(Current(moved, new), registration_ticket(META), new)
    assert retry.kind is Kind.REGISTERED and not retry.writes
    recreated = KeyMeta(50, 50, 1)  # deleted and made again: a new create_revision
    step = t.register(Current(recreated, None), registration_ticket(META), new)
    assert step.kind is Kind.STALE


def test_delete_erases_any_existing_key_and_says_whether_it_held_a_registration() -> None:
    assert t.delete(t.NOTHING) == t.Step(Kind.DELETED)
    for held, existed in (
        (active(), True),
        (sealed_pb2.Record(state=t.LOCKED), True),
        (sealed_pb2.Record(state=t.RESERVED), False),
    ):
        step = t.delete(Current(META, held))
        assert step.erase and step.existed is existed
    assert t.delete(Current(META, None, tampered=True)).existed


@given(attempts=st.integers(0, 20), max_attempts=st.integers(1, 10), evaluations=st.integers(0, 40))
def test_no_sequence_of_guesses_evaluates_more_than_the_limit(
    attempts: int, max_attempts: int, evaluations: int
) -> None:
    """From any state, count_guess until it stops writing: at most max - attempts evaluations,
    and the record ends locked with its secrets gone."""
    record = active(min(attempts, max_attempts), max_attempts, evaluations)
    current = Current(META, record)
    evaluated = 0
    for n in range(50):
        step = t.count_guess(current, t.Signer(KEY, ts_ms=n + 1))
        if not step.writes:
            break
        assert step.write is not None
        evaluated += step.kind is Kind.EVALUATE
        current = Current(current.meta.after_write(current.meta.mod_revision + 1), step.write)
    assert evaluated == max_attempts - min(attempts, max_attempts)
    assert current.record is not None and current.record.state == t.LOCKED
    assert not current.record.wrapped_key


def test_guesses_left() -> None:
    assert t.guesses_left(active(attempts=3, max_attempts=10)) == 7
    assert t.guesses_left(sealed_pb2.Record(state=t.LOCKED, max_attempts=10)) == 0


# -- the account key (issue 17) ------------------------------------------------------------------

OTHER = b"B" * 32  # a key the records are not bound to (a frontend's own, say)
DAY_MS = 86_400_000


def signer(key: bytes = KEY, ts_ms: int = 1_000, now_ms: int = 1_000) -> t.Signer:
    return t.Signer(key, ts_ms=ts_ms, now_ms=now_ms, rebind_delay_ms=DAY_MS)


def test_another_key_is_refused_before_anything_is_decided() -> None:
    """No guess, no lock, no reservation, no begin, whatever the record's state."""
    for record in (active(), active(attempts=10, evaluations=10), t.tombstone(active())):
        current = Current(META, record)
        assert t.count_guess(current, signer(OTHER)) == t.Step(Kind.AUTH_REFUSED)
        assert t.reserve(current, signer(OTHER)) == t.Step(Kind.AUTH_REFUSED)
        assert t.admit(current, signer(OTHER)) == t.Step(Kind.AUTH_REFUSED)
    assert t.count_guess(Current(META, active()), signer()).kind is Kind.EVALUATE


def test_a_key_bound_to_nothing_is_trusted_on_first_use() -> None:
    """Absent, reserved, tampered, or written before account keys: any signer may act."""
    legacy = active()
    legacy.ClearField("account_key")
    assert t.count_guess(Current(META, legacy), signer(OTHER)).kind is Kind.EVALUATE
    assert t.count_guess(t.NOTHING, signer(OTHER)).kind is Kind.NOT_REGISTERED
    reserved = Current(META, sealed_pb2.Record(state=t.RESERVED))
    assert t.reserve(reserved, signer(OTHER)).kind is Kind.RESERVED
    assert t.reserve(t.NOTHING, signer(OTHER)).write == sealed_pb2.Record(state=t.RESERVED)
    assert t.count_guess(Current(META, None, tampered=True), signer(OTHER)).kind is Kind.TAMPERED


def test_each_signed_request_counts_once_and_its_time_is_stored() -> None:
    current = Current(META, active(evaluations=3))
    step = t.count_guess(current, signer(ts_ms=5_000))
    assert step.kind is Kind.EVALUATE and step.write is not None
    assert step.write.last_auth_ms == 5_000
    after = Current(META.after_write(21), step.write)
    for ts in (4_999, 5_000):  # the same request relayed again, or an older one
        assert t.count_guess(after, signer(ts_ms=ts)) == t.Step(Kind.AUTH_STALE)
    assert t.count_guess(after, signer(ts_ms=5_001)).kind is Kind.EVALUATE
    spent = Current(META, active(attempts=10, evaluations=10))
    locked = t.count_guess(spent, signer(ts_ms=7_000)).write
    assert locked is not None and locked.state == t.LOCKED and locked.last_auth_ms == 7_000
    assert locked.account_key == KEY  # a tombstone stays bound to its key


def test_a_registration_binds_its_key_and_never_lowers_the_replay_floor() -> None:
    held = active()
    held.last_auth_ms = 9_000
    new = active()
    new.account_key, new.last_auth_ms = OTHER, 8_000  # a key change, signed at 8 s
    step = t.register(Current(META, held), registration_ticket(META), new)
    assert step.write is not None and step.write.account_key == OTHER
    assert step.write.last_auth_ms == 9_000


def test_a_rebind_waits_its_delay_and_the_bound_key_cancels_it() -> None:
    current = Current(META, active())
    started = t.request_rebind(current, signer(OTHER, ts_ms=2_000, now_ms=10_000))
    assert started.kind is Kind.REBIND_STARTED and started.write is not None
    assert (started.write.pending_key, started.write.pending_since_ms) == (OTHER, 10_000)
    assert started.write.account_key == KEY and started.write.attempts == 0  # no guess
    pending = Current(META.after_write(21), started.write)
    # Asking again keeps the first date; before the delay the pending key is refused.
    again = t.request_rebind(pending, signer(OTHER, ts_ms=3_000, now_ms=20_000))
    assert again == t.Step(Kind.REBIND_PENDING)
    early = signer(OTHER, ts_ms=3_000, now_ms=10_000 + DAY_MS - 1)
    assert t.count_guess(pending, early) == t.Step(Kind.AUTH_REFUSED)
    ripe = signer(OTHER, ts_ms=3_000, now_ms=10_000 + DAY_MS)
    assert t.count_guess(pending, ripe).kind is Kind.EVALUATE
    assert t.admit(pending, ripe) == t.Step(Kind.ADMITTED)
    # The bound key signing anything cancels it (a write), and a replay of its old request
    # does not (stale).
    cancelled = t.admit(pending, signer(ts_ms=4_000))
    assert cancelled.kind is Kind.REBIND_CANCELLED and cancelled.write is not None
    assert not cancelled.write.pending_key and cancelled.write.last_auth_ms == 4_000
    assert t.admit(pending, signer(ts_ms=1_500)) == t.Step(Kind.AUTH_STALE)
    counted = t.count_guess(pending, signer(ts_ms=4_000)).write
    assert counted is not None and not counted.pending_key
    assert t.request_rebind(pending, signer(ts_ms=4_000)).kind is Kind.REBIND_CANCELLED


def test_the_first_recovery_of_a_matured_key_binds_it() -> None:
    record = active(evaluations=7)
    record.pending_key, record.pending_since_ms = OTHER, 1
    by_pending = ticket(5)
    by_pending.signer_key = OTHER
    step = t.redeem(Current(META, record), by_pending)
    assert step.kind is Kind.RELEASE and step.write is not None
    assert step.write.account_key == OTHER and not step.write.pending_key
    # Cancelled meanwhile by the bound key: the pending key's ticket redeems nothing.
    record.ClearField("pending_key")
    assert t.redeem(Current(META, record), by_pending) == t.Step(Kind.STALE)
    # A record written before account keys binds the first key that recovers it.
    legacy = active(evaluations=7)
    legacy.ClearField("account_key")
    bound = t.redeem(Current(META, legacy), by_pending).write
    assert bound is not None and bound.account_key == OTHER
