"""client.protocol flows against an in-process fake vault (real vault_protocol, dict store)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bkv.v1 import envelope_pb2
from client import protocol
from client.errors import InvalidPassword, Locked, NotRegistered, ProtocolError, StaleRequest
from client.protocol import FlowContext, Outbound, Status, Step
from vault_protocol import backup_key, opaque
from vault_protocol.backup_key import BackupKey
from vault_protocol.continuation import StepKeys, open_continued, parse_continued
from vault_protocol.envelope import FleetKey, is_continued, open_request, seal_response
from vault_protocol.errors import AuthenticationError
from vault_protocol.ksf import Argon2idKsf, IdentityKsf

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ACCOUNT = "alice"
PASSWORD = "correct horse battery staple"


@dataclass
class _Record:
    opaque_record: bytes
    wrapped_key: bytes
    max_attempts: int
    salt: bytes = b""  # the registration's own OPRF-key salt, as the node's generation
    ksf: bytes = b""  # serialized KsfParams, as the node keeps them
    attempts: int = 0
    locked: bool = False


@dataclass
class _Ticket:
    """What the fake keeps for a ticket it issued (the node seals this into the ticket)."""

    account: str
    op: str  # the second step it admits
    keys: StepKeys
    data: tuple[bytes, ...] = ()
    closed: int = 0  # a void recovery ticket: the outcome step 1 gave


@dataclass
class FakeVault:
    """The vault node's side of the protocol flows (protocol 3: two steps, the second continued
    under step 1's keys), in memory, with software keys."""

    default_max_attempts: int = 10
    max_attempts_cap: int = 100
    records: dict[str, _Record] = field(default_factory=dict)
    tickets: dict[bytes, _Ticket] = field(default_factory=dict)
    evaluations: int = 0
    seen_steps: list[Step] = field(default_factory=list)
    dummy_finishes: int = 0

    def __post_init__(self) -> None:
        self._kem = ec.generate_private_key(ec.SECP256R1())
        point = self._kem.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.fleet = FleetKey(point)
        self._keys = opaque.SoftwareServerKeys.generate(os.urandom)
        self._config = opaque.OpaqueConfig(ksf=IdentityKsf())

    def fleet_pem(self) -> bytes:
        return self.fleet.to_pem()

    def _ecdh(self, enc: bytes) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc)
        return self._kem.exchange(ec.ECDH(), peer)

    def handle(self, account_id: str, envelope: bytes) -> bytes:
        if is_continued(envelope):
            sealed = parse_continued(envelope, self.fleet.fleet_id)
            ticket = self.tickets[sealed.ticket]
            assert ticket.account == account_id
            request = open_continued(sealed, account_id, self.fleet.fleet_id, ticket.keys.request2)
            assert request.WhichOneof("op") == ticket.op
            response = self._second(account_id, request, ticket, sealed.ticket)
            return seal_response(ticket.keys.answer2, response, os.urandom)
        request = open_request(
            envelope, account_id, self.fleet.fleet_id, self._ecdh, self.fleet.public_key_bytes
        )
        keys = StepKeys.derive(request.response_key)
        response = self._dispatch(account_id, request, keys)
        return seal_response(keys.answer1, response, os.urandom)

    def send_for(self, account_id: str):  # type: ignore[no-untyped-def]
        def send(outbound: Outbound) -> bytes:
            self.seen_steps.append(outbound.step)
            return self.handle(account_id, outbound.envelope)

        return send

    def _issue(self, response: envelope_pb2.VaultResponse, ticket: _Ticket) -> None:
        blob = os.urandom(32)
        self.tickets[blob] = ticket
        response.ticket = blob

    def _dispatch(
        self, account: str, req: envelope_pb2.VaultRequest, keys: StepKeys
    ) -> envelope_pb2.VaultResponse:
        """Step 1."""
        R = envelope_pb2.VaultResponse
        cid = account.encode()
        op = req.WhichOneof("op")
        rec = self.records.get(account)
        if op == "register_start":
            salt = os.urandom(16)
            resp = opaque.server_registration_response(
                req.register_start.registration_request, cid + salt, self._keys
            )
            out = R(
                outcome=envelope_pb2.OUTCOME_OK,
                register_start=envelope_pb2.RegisterStartReply(registration_response=resp),
            )
            self._issue(out, _Ticket(account, "register_finish", keys, (salt,)))
            return out
        if op == "begin":
            second = "status" if req.begin.op == envelope_pb2.Begin.Op.OP_STATUS else "delete"
            out = R(outcome=envelope_pb2.OUTCOME_OK, begin=envelope_pb2.BeginReply())
            self._issue(out, _Ticket(account, second, keys))
            return out
        assert op == "recover_start", op
        out = R(recover_start=envelope_pb2.RecoverStartReply())
        if rec is None:
            out.outcome = envelope_pb2.OUTCOME_NOT_REGISTERED
        elif rec.locked:
            out.outcome = envelope_pb2.OUTCOME_LOCKED
        elif rec.attempts >= rec.max_attempts:
            rec.locked, rec.opaque_record, rec.wrapped_key = True, b"", b""
            out.outcome = envelope_pb2.OUTCOME_LOCKED
        if out.outcome:
            self._issue(out, _Ticket(account, "recover_finish", keys, closed=out.outcome))
            return out
        assert rec is not None
        rec.attempts += 1  # counted before the OPRF runs
        self.evaluations += 1
        ke2, state = opaque.server_login_start(
            rec.opaque_record,
            cid + rec.salt,
            req.recover_start.ke1,
            self._keys,
            self._config,
            os.urandom,
        )
        out.outcome = envelope_pb2.OUTCOME_OK
        out.guesses_left = rec.max_attempts - rec.attempts
        out.recover_start.ke2 = ke2
        if rec.ksf:
            out.recover_start.ksf.ParseFromString(rec.ksf)
        self._issue(
            out,
            _Ticket(
                account, "recover_finish", keys, (state.expected_client_mac, state.session_key)
            ),
        )
        return out

    def _second(
        self, account: str, req: envelope_pb2.VaultRequest, ticket: _Ticket, blob: bytes
    ) -> envelope_pb2.VaultResponse:
        R = envelope_pb2.VaultResponse
        op = req.WhichOneof("op")
        rec = self.records.get(account)
        if op == "register_finish":
            f = req.register_finish
            del self.tickets[blob]  # single use, as the node's CAS
            if f.max_attempts > self.max_attempts_cap:
                return R(
                    outcome=envelope_pb2.OUTCOME_REFUSED, max_attempts_cap=self.max_attempts_cap
                )
            self.records[account] = _Record(
                f.registration_record,
                f.wrapped_key,
                f.max_attempts or self.default_max_attempts,
                ticket.data[0],
                f.ksf.SerializeToString() if f.HasField("ksf") else b"",
            )
            return R(
                outcome=envelope_pb2.OUTCOME_OK, register_finish=envelope_pb2.RegisterFinishReply()
            )
        if op == "status":
            if rec is None:
                return R(outcome=envelope_pb2.OUTCOME_OK, status=envelope_pb2.StatusReply())
            return R(
                outcome=envelope_pb2.OUTCOME_OK,
                guesses_left=0 if rec.locked else rec.max_attempts - rec.attempts,
                status=envelope_pb2.StatusReply(
                    registered=True, locked=rec.locked, max_attempts=rec.max_attempts
                ),
            )
        if op == "delete":
            existed = self.records.pop(account, None) is not None
            return R(
                outcome=envelope_pb2.OUTCOME_OK, delete=envelope_pb2.DeleteReply(existed=existed)
            )
        assert op == "recover_finish", op
        del self.tickets[blob]
        assert len(req.recover_finish.ke3) == opaque.KE3_BYTES
        if ticket.closed:
            self.dummy_finishes += 1
            return R(outcome=ticket.closed)  # type: ignore[arg-type]
        assert rec is not None
        mac, session_key = ticket.data
        try:
            opaque.server_login_finish(mac, req.recover_finish.ke3)
        except AuthenticationError:
            self.dummy_finishes += 1
            return R(
                outcome=envelope_pb2.OUTCOME_INVALID_PASSWORD,
                guesses_left=rec.max_attempts - rec.attempts,
            )
        rec.attempts = 0
        transported = backup_key.seal_transport(session_key, rec.wrapped_key, os.urandom)
        return R(
            outcome=envelope_pb2.OUTCOME_OK,
            recover_finish=envelope_pb2.RecoverFinishReply(transported_key=transported),
        )


@pytest.fixture
def vault() -> FakeVault:
    return FakeVault()


def _ctx(vault: FakeVault, account: str = ACCOUNT) -> FlowContext:
    return FlowContext(
        fleet=vault.fleet, account_id=account, opaque=opaque.OpaqueConfig(ksf=IdentityKsf())
    )


def test_register_then_recover_returns_the_same_key(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    key = protocol.run(protocol.register_flow(ctx, PASSWORD), send)
    assert isinstance(key, BackupKey)
    assert protocol.run(protocol.recover_flow(ctx, PASSWORD), send) == key
    assert vault.seen_steps == [
        Step.REGISTER_START,
        Step.REGISTER_FINISH,
        Step.RECOVER_START,
        Step.RECOVER_FINISH,
    ]


def test_register_with_a_given_key_and_limit(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    given = BackupKey(bytes(range(32)))
    assert protocol.run(protocol.register_flow(ctx, PASSWORD, given, max_attempts=3), send) == given
    assert protocol.run(protocol.status_flow(ctx), send) == Status(True, 3, False, 3)


def test_wrong_password_raises_guesses_left_after_a_dummy_finish(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    protocol.run(protocol.register_flow(ctx, PASSWORD, max_attempts=5), send)
    vault.seen_steps.clear()
    with pytest.raises(InvalidPassword) as info:
        protocol.run(protocol.recover_flow(ctx, "hunter2-guess"), send)
    assert info.value.guesses_left == 4
    # Protocol 3: a finish all the same (random KE3-sized bytes), so a wrong password shows the
    # frontend the pattern of a right one; the vault redeems nothing.
    assert vault.seen_steps == [Step.RECOVER_START, Step.RECOVER_FINISH]
    assert vault.dummy_finishes == 1
    assert PASSWORD not in str(info.value) and "hunter2" not in str(info.value)
    # A right password afterwards resets the counter.
    protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.status_flow(ctx), send).guesses_left == 5


def test_locked_after_max_attempts_even_with_the_right_password(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    protocol.run(protocol.register_flow(ctx, PASSWORD, max_attempts=2), send)
    for left in (1, 0):
        with pytest.raises(InvalidPassword) as info:
            protocol.run(protocol.recover_flow(ctx, "nope"), send)
        assert info.value.guesses_left == left
    with pytest.raises(Locked):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    with pytest.raises(Locked):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.status_flow(ctx), send) == Status(False, 0, True, 2)


def test_not_registered(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.status_flow(ctx), send) == Status(False, 0, False, 0)


def test_delete(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    protocol.run(protocol.register_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.delete_flow(ctx), send) is True
    assert protocol.run(protocol.delete_flow(ctx), send) is False
    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)


def test_accounts_are_separate(vault: FakeVault) -> None:
    protocol.run(protocol.register_flow(_ctx(vault), PASSWORD), vault.send_for(ACCOUNT))
    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(_ctx(vault, "bob"), PASSWORD), vault.send_for("bob"))


def test_a_forged_or_garbled_answer_is_a_protocol_error(vault: FakeVault) -> None:
    ctx = _ctx(vault)
    with pytest.raises(ProtocolError):
        protocol.run(protocol.status_flow(ctx), lambda outbound: b"\x0a\x0c" + bytes(12))
    with pytest.raises(ProtocolError):
        protocol.run(protocol.status_flow(ctx), lambda outbound: b"garbage")


def test_an_answer_of_the_wrong_kind_is_a_protocol_error(
    vault: FakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong_kind(*args: object) -> envelope_pb2.VaultResponse:
        return envelope_pb2.VaultResponse(
            outcome=envelope_pb2.OUTCOME_OK, delete=envelope_pb2.DeleteReply(existed=True)
        )

    monkeypatch.setattr(vault, "_second", wrong_kind)
    with pytest.raises(ProtocolError, match="wrong reply"):
        protocol.run(protocol.status_flow(_ctx(vault)), vault.send_for(ACCOUNT))


def test_errors_from_send_propagate_unchanged(vault: FakeVault) -> None:
    class Boom(Exception):
        pass

    def send(outbound: Outbound) -> bytes:
        raise Boom

    with pytest.raises(Boom):
        protocol.run(protocol.register_flow(_ctx(vault), PASSWORD), send)


def test_outbound_and_results_never_show_secrets(vault: FakeVault) -> None:
    ctx = _ctx(vault)
    flow = protocol.register_flow(ctx, PASSWORD)
    step = protocol.advance(flow)
    assert isinstance(step, Outbound)
    assert repr(step) == f"Outbound(step=register_start, {len(step.envelope)} bytes)"
    assert PASSWORD.encode() not in step.envelope  # sealed
    flow.close()


def test_max_attempts_out_of_range_is_refused(vault: FakeVault) -> None:
    for bad in (0, protocol.MAX_ATTEMPTS_LIMIT + 1):
        with pytest.raises(ValueError):
            protocol.register_flow(_ctx(vault), PASSWORD, max_attempts=bad)


def test_the_clients_attempt_limit_is_the_vaults() -> None:
    from vault_node.config import MAX_ATTEMPTS_LIMIT

    assert protocol.MAX_ATTEMPTS_LIMIT == MAX_ATTEMPTS_LIMIT  # no value passes here, fails there


def test_a_stale_register_finish_starts_the_registration_again_once(vault: FakeVault) -> None:
    ctx, inner = _ctx(vault), vault.send_for(ACCOUNT)
    stale_left = [1]

    def send(outbound: Outbound) -> bytes:
        if outbound.step is Step.REGISTER_FINISH and stale_left[0]:
            stale_left[0] -= 1
            vault.seen_steps.append(outbound.step)
            raise StaleRequest("the record changed")
        return inner(outbound)

    key = protocol.run(protocol.register_flow(ctx, PASSWORD), send)
    assert vault.seen_steps == [Step.REGISTER_START, Step.REGISTER_FINISH] * 2
    assert protocol.run(protocol.recover_flow(ctx, PASSWORD), send) == key  # the same key
    vault.seen_steps.clear()
    stale_left[0] = 2
    with pytest.raises(StaleRequest):
        protocol.run(protocol.register_flow(ctx, PASSWORD), send)
    assert vault.seen_steps == [Step.REGISTER_START, Step.REGISTER_FINISH] * 2  # once, no more


def test_password_is_nfc_normalised(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    key = protocol.run(protocol.register_flow(ctx, "caf\u00e9"), send)
    assert protocol.run(protocol.recover_flow(ctx, "cafe\u0301"), send) == key


def test_real_argon2_fast_preset_round_trip(vault: FakeVault) -> None:
    from client.config import ksf_named

    ctx = FlowContext(vault.fleet, ACCOUNT, opaque.OpaqueConfig(ksf=ksf_named("fast")))
    send = vault.send_for(ACCOUNT)
    key = protocol.run(protocol.register_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.recover_flow(ctx, PASSWORD), send) == key


def test_recovery_stretches_as_the_registration_did(vault: FakeVault) -> None:
    """Registered with the "fast" KSF, recovered by a client configured with another one: the
    right password still works (it used to count as a wrong guess), a wrong one still fails."""
    fast = Argon2idKsf(time_cost=1, lanes=1, memory_kib=256)
    other = Argon2idKsf(time_cost=2, lanes=1, memory_kib=512)
    send = vault.send_for(ACCOUNT)

    def ctx(ksf: Argon2idKsf) -> FlowContext:
        return FlowContext(
            fleet=vault.fleet, account_id=ACCOUNT, opaque=opaque.OpaqueConfig(ksf=ksf)
        )

    key = protocol.run(protocol.register_flow(ctx(fast), PASSWORD), send)
    assert protocol.run(protocol.recover_flow(ctx(other), PASSWORD), send) == key
    with pytest.raises(InvalidPassword):
        protocol.run(protocol.recover_flow(ctx(other), "wrong"), send)
    # Parameters beyond the bounds (a record must not exhaust the client) are refused.
    vault.records[ACCOUNT].ksf = envelope_pb2.KsfParams(
        argon2id_time_cost=1, argon2id_lanes=1, argon2id_memory_kib=2**31
    ).SerializeToString()
    with pytest.raises(ProtocolError):
        protocol.run(protocol.recover_flow(ctx(other), PASSWORD), send)


def test_closed_recoveries_still_send_a_dummy_finish(vault: FakeVault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    protocol.run(protocol.register_flow(ctx, PASSWORD, max_attempts=1), send)
    with pytest.raises(InvalidPassword):
        protocol.run(protocol.recover_flow(ctx, "nope"), send)
    with pytest.raises(Locked):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    recoveries = [s for s in vault.seen_steps if s in (Step.RECOVER_START, Step.RECOVER_FINISH)]
    assert recoveries == [Step.RECOVER_START, Step.RECOVER_FINISH] * 3
    assert vault.dummy_finishes == 3


def test_a_failed_dummy_finish_does_not_hide_the_outcome(vault: FakeVault) -> None:
    from client.errors import Unavailable

    ctx, inner = _ctx(vault), vault.send_for(ACCOUNT)

    def send(outbound: Outbound) -> bytes:
        if outbound.step is Step.RECOVER_FINISH:
            raise Unavailable("lost")
        return inner(outbound)

    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)


def test_every_flow_is_two_envelopes_of_one_size_per_step(vault: FakeVault) -> None:
    ctx, inner = _ctx(vault), vault.send_for(ACCOUNT)
    sizes: dict[int, set[int]] = {0: set(), 1: set()}
    answers: dict[int, set[int]] = {0: set(), 1: set()}
    count = [0]

    def send(outbound: Outbound) -> bytes:
        answer = inner(outbound)
        sizes[count[0] % 2].add(len(outbound.envelope))
        answers[count[0] % 2].add(len(answer))
        count[0] += 1
        return answer

    def quietly(flow: protocol.Flow[object]) -> None:
        try:
            protocol.run(flow, send)
        except (InvalidPassword, Locked, NotRegistered):
            pass

    quietly(protocol.recover_flow(ctx, PASSWORD))  # not registered
    quietly(protocol.register_flow(ctx, PASSWORD, max_attempts=1))
    quietly(protocol.recover_flow(ctx, PASSWORD))  # right
    quietly(protocol.recover_flow(ctx, "wrong"))  # wrong
    quietly(protocol.recover_flow(ctx, PASSWORD))  # locked
    quietly(protocol.status_flow(ctx))
    quietly(protocol.delete_flow(ctx))
    assert count[0] == 14
    assert all(len(s) == 1 for s in sizes.values()), sizes
    assert answers[0] and answers[1]


def test_a_registration_above_the_vaults_cap_is_bad_input(vault: FakeVault) -> None:
    from client.errors import BadInput

    vault.max_attempts_cap = 20
    with pytest.raises(BadInput, match="at most 20"):
        protocol.run(
            protocol.register_flow(_ctx(vault), PASSWORD, max_attempts=21),
            vault.send_for(ACCOUNT),
        )
    assert ACCOUNT not in vault.records


def test_a_version_refusal_names_both_versions() -> None:
    import grpc

    from client.errors import error_from_status

    class Refusal:
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.INVALID_ARGUMENT

        def trailing_metadata(self) -> tuple[()]:
            return ()

        def details(self) -> str:
            return (
                "unsupported protocol version: this vault speaks protocol 4; envelope is "
                "version 3 - upgrade the client <script>"
            )

    error = error_from_status(Refusal())
    assert isinstance(error, ProtocolError)
    assert (
        str(error)
        == "this vault speaks protocol 4; this client sent version 3 - upgrade the client"
    )
