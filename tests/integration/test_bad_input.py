"""Bad input through the real frontends (DESIGN.md invariant 7): each case gets its documented
status (docs/architecture.md), changes no state (guesses, record) and leaves no traceback in any
node or frontend log.

Ticket *expiry* needs a clock past the node's ticket TTL (120 s in local-3dc); it is covered with an
injected clock in tests/unit/test_node_service.py (test_expired_ticket_is_a_failed_precondition).
Here a ticket replayed after a successful finish stands for the stale-ticket case.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bad_input_wire import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    OK,
    OPEN_METHOD,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    Account,
    Continued,
    Watch,
    Wire,
    assert_account_intact,
    bearer,
    call_raw,
    frontend_method,
    other_fleet,
    register_account,
    relay,
    seal,
    seal_plaintext,
    sealed_response,
    status_request,
)

from bkv.v1 import envelope_pb2
from vault_common.wire import UNKNOWN_FLEET_DETAILS
from vault_protocol import opaque
from vault_protocol.backup_key import open_transport, unwrap_key
from vault_protocol.envelope import MAX_ENVELOPE_BYTES, PROTOCOL_VERSION, pad
from vault_protocol.ksf import IdentityKsf

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

OPAQUE = opaque.OpaqueConfig(ksf=IdentityKsf())
MAX_ATTEMPTS = 10  # local-3dc's default
Outcome = envelope_pb2.Outcome


@pytest.fixture
def watch(wire: Wire) -> Watch:
    return Watch(wire)


@pytest.fixture
def account(wire: Wire, tmp_path: Path) -> Account:
    return register_account(wire, tmp_path, "badin")


def recover_start_request(
    password: bytes,
) -> tuple[opaque.ClientLoginState, envelope_pb2.VaultRequest]:
    state, ke1 = opaque.login_start(password, os.urandom)
    return state, envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1))


def relay_ok(
    wire: Wire, account: Account, request: envelope_pb2.VaultRequest | Continued
) -> envelope_pb2.VaultResponse:
    sealed = seal(wire.fleet, account.id, request)
    answer = relay(wire.frontend(0), account.token, sealed.envelope)
    assert answer.code == OK, answer
    return sealed.open(sealed_response(answer))


def finish_request(ke3: bytes, ticket: bytes) -> Continued:
    """A recovery's step 2 (protocol 3: continued under the keys of the step 1 of `ticket`)."""
    return Continued(
        envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3)), ticket
    )


def guesses_left(account: Account) -> int:
    return account.client.status().guesses_left


# -- malformed bytes ------------------------------------------------------------------------------

MALFORMED = {
    "corrupt-wire": b"\xff\xff\xff\xff",
    "truncated-field": b"\x0a\x05ab",
    "bad-utf8-string": b"\x0a\x02\xff\xfe",
}


MALFORMED_CASES = [
    pytest.param(method, payload, id=f"{method}-{name}")
    for method in ("GetChallenge", "Login", "Relay", "node-Open")
    for name, payload in MALFORMED.items()
    # RelayRequest's field 1 is bytes, not a string: that one parses (tested below).
    if not (method == "Relay" and name == "bad-utf8-string")
]


@pytest.mark.parametrize(("method", "payload"), MALFORMED_CASES)
def test_malformed_protobuf_is_invalid_argument(
    wire: Wire, watch: Watch, account: Account, method: str, payload: bytes
) -> None:
    if method == "node-Open":
        answer = call_raw(wire.node(wire.node_names[0]), OPEN_METHOD, payload)
    else:
        answer = call_raw(wire.frontend(0), frontend_method(method), payload, bearer(account.token))
    assert answer.code == INVALID_ARGUMENT, answer
    watch.assert_unharmed()
    assert_account_intact(account)


def test_garbage_envelope_in_a_valid_request(wire: Wire, watch: Watch, account: Account) -> None:
    for envelope in (b"\x00", b"\xff\xfe", b"\xff" * 64, os.urandom(600), pad(b"not an envelope")):
        answer = relay(wire.frontend(0), account.token, envelope)
        assert answer.code == INVALID_ARGUMENT, (envelope[:16], answer)
    empty = relay(wire.frontend(1), account.token, b"")
    assert empty.code == INVALID_ARGUMENT, empty
    watch.assert_unharmed()
    assert_account_intact(account)


# -- envelopes that must not open ---------------------------------------------------------------


def test_envelope_for_another_fleet(wire: Wire, watch: Watch, account: Account) -> None:
    # Each carries a first recovery step: had any of them opened, a guess would have counted.
    _, request = recover_start_request(account.password)
    stranger = other_fleet()
    cases = {
        "sealed to another fleet": seal(stranger, account.id, request).envelope,
        "another fleet's key, our fleet id": seal_plaintext(
            stranger,
            account.id,
            pad(request.SerializeToString()),
            info_fleet_id=wire.fleet.fleet_id,
            envelope_fleet_id=wire.fleet.fleet_id,
        ),
        "our key, info bound to another fleet": seal_plaintext(
            wire.fleet,
            account.id,
            pad(request.SerializeToString()),
            info_fleet_id=stranger.fleet_id,
        ),
        "our key, claims another fleet id": seal_plaintext(
            wire.fleet,
            account.id,
            pad(request.SerializeToString()),
            envelope_fleet_id=stranger.fleet_id,
        ),
        "wrong version": seal_plaintext(
            wire.fleet, account.id, pad(request.SerializeToString()), version=PROTOCOL_VERSION + 1
        ),
    }
    # A fleet id the vault holds no key for is refused by name (the client then fetches the
    # fleet's signed announcement): FAILED_PRECONDITION, nothing applied, like the others.
    unknown_fleet = {"sealed to another fleet", "our key, claims another fleet id"}
    for name, envelope in cases.items():
        answer = relay(wire.frontend(0), account.token, envelope)
        if name in unknown_fleet:
            assert answer.code == FAILED_PRECONDITION, (name, answer)
            assert answer.details == UNKNOWN_FLEET_DETAILS, (name, answer)
        else:
            assert answer.code == INVALID_ARGUMENT, (name, answer)
    watch.assert_unharmed()
    assert_account_intact(account)


def test_truncated_envelope(wire: Wire, watch: Watch, account: Account) -> None:
    _, request = recover_start_request(account.password)
    envelope = seal(wire.fleet, account.id, request).envelope
    for cut in (1, 2, 20, 70, 90, len(envelope) // 2, len(envelope) - 16, len(envelope) - 1):
        answer = relay(wire.frontend(0), account.token, envelope[:cut])
        assert answer.code == INVALID_ARGUMENT, (cut, answer)
    watch.assert_unharmed()
    assert_account_intact(account)


def test_envelope_for_another_account_is_refused(
    wire: Wire, watch: Watch, account: Account, tmp_path: Path
) -> None:
    """A sealed recovery step of the victim, relayed under the attacker's session: the account
    bound into HPKE's info does not match, so it never opens and the victim loses no guess."""
    attacker = register_account(wire, tmp_path / "attacker", "attacker")
    _, request = recover_start_request(account.password)
    envelope = seal(wire.fleet, account.id, request).envelope
    answer = relay(wire.frontend(0), attacker.token, envelope)
    assert answer.code == INVALID_ARGUMENT, answer
    watch.assert_unharmed()
    assert_account_intact(account)
    assert_account_intact(attacker)


# -- sessions -----------------------------------------------------------------------------------


def test_missing_and_forged_session(wire: Wire, watch: Watch, account: Account) -> None:
    _, request = recover_start_request(account.password)
    envelope = seal(wire.fleet, account.id, request).envelope
    forged = account.token[:-4] + ("AAAA" if not account.token.endswith("AAAA") else "BBBB")
    for token in (None, "", "not-a-token", forged):
        answer = relay(wire.frontend(0), token, envelope)
        assert answer.code == UNAUTHENTICATED, (token, answer)
    watch.assert_unharmed()
    assert_account_intact(account)


# -- tickets and KE3 ------------------------------------------------------------------------------


def test_ticket_replayed_after_a_successful_finish(
    wire: Wire, watch: Watch, account: Account
) -> None:
    state, request = recover_start_request(account.password)
    first = relay_ok(wire, account, request)
    assert first.outcome == Outcome.OUTCOME_OK and first.guesses_left == MAX_ATTEMPTS - 1
    ke3, session_key, export_key = opaque.login_finish(state, first.recover_start.ke2, OPAQUE)
    done = relay_ok(wire, account, finish_request(ke3, first.ticket))
    assert done.outcome == Outcome.OUTCOME_OK
    wrapped = open_transport(session_key, done.recover_finish.transported_key)
    assert unwrap_key(wrapped, export_key, account.id) == account.backup_key

    # The same KE3 and ticket again, freshly sealed, on the other frontend (another node).
    replay = seal(wire.fleet, account.id, finish_request(ke3, first.ticket))
    answer = relay(wire.frontend(1), account.token, replay.envelope)
    assert answer.code == FAILED_PRECONDITION, answer
    assert guesses_left(account) == MAX_ATTEMPTS
    watch.assert_unharmed()
    assert_account_intact(account)


def test_tampered_ke3_is_a_wrong_password_and_changes_nothing(
    wire: Wire, watch: Watch, account: Account
) -> None:
    state, request = recover_start_request(account.password)
    first = relay_ok(wire, account, request)
    ticket = first.ticket
    assert first.guesses_left == MAX_ATTEMPTS - 1  # the first step counted its guess
    ke3, session_key, _ = opaque.login_finish(state, first.recover_start.ke2, OPAQUE)
    tampered = bytes([ke3[0] ^ 0x01]) + ke3[1:]

    bad = relay_ok(wire, account, finish_request(tampered, ticket))
    assert bad.outcome == Outcome.OUTCOME_INVALID_PASSWORD, bad
    assert bad.guesses_left == MAX_ATTEMPTS - 1
    assert guesses_left(account) == MAX_ATTEMPTS - 1  # no second count, no reset

    # The tampered MAC did not use the ticket up: the genuine KE3 still redeems it.
    good = relay_ok(wire, account, finish_request(ke3, ticket))
    assert good.outcome == Outcome.OUTCOME_OK
    assert open_transport(session_key, good.recover_finish.transported_key)

    # Replayed tampered after the success: a wrong MAC or a stale ticket, never a state change.
    replay = seal(wire.fleet, account.id, finish_request(tampered, ticket))
    answer = relay(wire.frontend(0), account.token, replay.envelope)
    if answer.code == OK:
        outcome = replay.open(sealed_response(answer))
        assert outcome.outcome == Outcome.OUTCOME_INVALID_PASSWORD, outcome
    else:
        assert answer.code == FAILED_PRECONDITION, answer
    assert guesses_left(account) == MAX_ATTEMPTS
    watch.assert_unharmed()
    assert_account_intact(account)


def test_forged_ticket_is_invalid_argument(wire: Wire, watch: Watch, account: Account) -> None:
    state, request = recover_start_request(account.password)
    first = relay_ok(wire, account, request)
    ke3, _, _ = opaque.login_finish(state, first.recover_start.ke2, OPAQUE)
    ticket = bytearray(first.ticket)
    ticket[-1] ^= 0x80
    for forged in (bytes(ticket), b"", os.urandom(len(ticket))):
        sealed = seal(wire.fleet, account.id, finish_request(ke3, forged))
        answer = relay(wire.frontend(0), account.token, sealed.envelope)
        assert answer.code == INVALID_ARGUMENT, answer
    assert guesses_left(account) == MAX_ATTEMPTS - 1
    # Leave the account as it was: redeem the genuine ticket.
    assert relay_ok(wire, account, finish_request(ke3, first.ticket)).outcome == (
        Outcome.OUTCOME_OK
    )
    watch.assert_unharmed()
    assert_account_intact(account)


# -- sizes ---------------------------------------------------------------------------------------


def test_ten_megabyte_request_is_resource_exhausted(
    wire: Wire, watch: Watch, account: Account
) -> None:
    answer = relay(wire.frontend(0), account.token, os.urandom(10 * 1024 * 1024))
    assert answer.code == RESOURCE_EXHAUSTED, answer
    watch.assert_unharmed()
    assert_account_intact(account)


def test_envelope_over_the_node_limit_is_invalid_argument(
    wire: Wire, watch: Watch, account: Account
) -> None:
    # Under the frontend's 64 KiB request limit, over the 32 KiB envelope limit of the nodes.
    answer = relay(wire.frontend(0), account.token, os.urandom(MAX_ENVELOPE_BYTES + 1))
    assert answer.code == INVALID_ARGUMENT, answer
    watch.assert_unharmed()
    assert_account_intact(account)


def test_status_envelope_still_works(wire: Wire, account: Account) -> None:
    """The control: the same plumbing with a genuine envelope gets a sealed OK."""
    begun = relay_ok(wire, account, status_request())
    assert begun.outcome == Outcome.OUTCOME_OK and begun.ticket
    status = envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest())
    reply = relay_ok(wire, account, Continued(status, begun.ticket))
    assert reply.outcome == Outcome.OUTCOME_OK and reply.status.registered


def test_a_version_2_envelope_is_refused_by_name(
    wire: Wire, watch: Watch, account: Account
) -> None:
    """An envelope of protocol 2 (a client not upgraded): INVALID_ARGUMENT naming both versions,
    which the client library turns into an "upgrade the client" error; nothing applied."""
    _, request = recover_start_request(account.password)
    request.response_key = os.urandom(32)
    envelope = seal_plaintext(wire.fleet, account.id, pad(request.SerializeToString()), version=2)
    answer = relay(wire.frontend(0), account.token, envelope)
    assert answer.code == INVALID_ARGUMENT, answer
    assert "this vault speaks protocol 3; envelope is version 2 - upgrade the client" in str(
        answer.details
    ), answer
    watch.assert_unharmed()
    assert_account_intact(account)
