"""client.protocol flows against the real vault node code, in process (tests/inproc_cluster.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from account_keys import account_signer
from inproc_cluster import InProcessCluster

from bkv.v1 import envelope_pb2
from client import protocol
from client.errors import InvalidPassword, Locked, NotRegistered, ProtocolError, StaleRequest
from client.protocol import FlowContext, Outbound, Status, Step
from vault_protocol import opaque
from vault_protocol.backup_key import BackupKey
from vault_protocol.envelope import FleetKey
from vault_protocol.ksf import Argon2idKsf, IdentityKsf

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ACCOUNT = "alice"
PASSWORD = "correct horse battery staple"


@dataclass
class Vault:
    """The real vault: the in-process cluster's nodes (node service, software token, memory
    store, witnesses), reached over gRPC as the frontend reaches them."""

    cluster: InProcessCluster
    seen_steps: list[Step] = field(default_factory=list)

    def events(self, name: str) -> int:
        """How many audit lines of event `name` the nodes wrote."""
        return sum(1 for entry in self.cluster.audit_entries() if str(entry[0]) == name)

    @property
    def fleet(self) -> FleetKey:
        return FleetKey(self.cluster.fleet_token.kem_public_key())

    def send_for(self, account_id: str) -> Callable[[Outbound], bytes]:
        inner = self.cluster.node_sender(account_id)

        def send(outbound: Outbound) -> bytes:
            self.seen_steps.append(outbound.step)
            return inner(outbound)

        return send


@pytest.fixture
def vault(inproc_cluster: InProcessCluster) -> Vault:
    return Vault(inproc_cluster)


def _ctx(vault: Vault, account: str = ACCOUNT) -> FlowContext:
    return FlowContext(
        fleet=vault.fleet,
        account_id=account,
        signer=account_signer(account),
        opaque=opaque.OpaqueConfig(ksf=IdentityKsf()),
    )


def test_register_then_recover_returns_the_same_key(vault: Vault) -> None:
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


def test_register_with_a_given_key_and_limit(vault: Vault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    given = BackupKey(bytes(range(32)))
    assert protocol.run(protocol.register_flow(ctx, PASSWORD, given, max_attempts=3), send) == given
    assert protocol.run(protocol.status_flow(ctx), send) == Status(True, 3, False, 3)


def test_wrong_password_raises_guesses_left_after_a_dummy_finish(vault: Vault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    protocol.run(protocol.register_flow(ctx, PASSWORD, max_attempts=5), send)
    vault.seen_steps.clear()
    with pytest.raises(InvalidPassword) as info:
        protocol.run(protocol.recover_flow(ctx, "hunter2-guess"), send)
    assert info.value.guesses_left == 4
    # Protocol 3: a finish all the same (random KE3-sized bytes), so a wrong password shows the
    # frontend the pattern of a right one; the vault redeems nothing.
    assert vault.seen_steps == [Step.RECOVER_START, Step.RECOVER_FINISH]
    assert vault.events("bad_mac") == 1 and vault.events("success") == 0
    assert PASSWORD not in str(info.value) and "hunter2" not in str(info.value)
    # A right password afterwards resets the counter.
    protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.status_flow(ctx), send).guesses_left == 5


def test_locked_after_max_attempts_even_with_the_right_password(vault: Vault) -> None:
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


def test_not_registered(vault: Vault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.status_flow(ctx), send) == Status(False, 0, False, 0)


def test_delete(vault: Vault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    protocol.run(protocol.register_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.delete_flow(ctx), send) is True
    assert protocol.run(protocol.delete_flow(ctx), send) is False
    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)


def test_accounts_are_separate(vault: Vault) -> None:
    protocol.run(protocol.register_flow(_ctx(vault), PASSWORD), vault.send_for(ACCOUNT))
    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(_ctx(vault, "bob"), PASSWORD), vault.send_for("bob"))


def test_a_forged_or_garbled_answer_is_a_protocol_error(vault: Vault) -> None:
    ctx = _ctx(vault)
    with pytest.raises(ProtocolError):
        protocol.run(protocol.status_flow(ctx), lambda outbound: b"\x0a\x0c" + bytes(12))
    with pytest.raises(ProtocolError):
        protocol.run(protocol.status_flow(ctx), lambda outbound: b"garbage")


def test_an_answer_of_the_wrong_kind_is_a_protocol_error(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def wrong_kind(*args: object) -> envelope_pb2.VaultResponse:
        return envelope_pb2.VaultResponse(
            outcome=envelope_pb2.OUTCOME_OK, delete=envelope_pb2.DeleteReply(existed=True)
        )

    monkeypatch.setattr(vault.cluster.nodes[0].service, "_second_step", wrong_kind)
    with pytest.raises(ProtocolError, match="wrong reply"):
        protocol.run(protocol.status_flow(_ctx(vault)), vault.send_for(ACCOUNT))


def test_errors_from_send_propagate_unchanged(vault: Vault) -> None:
    class Boom(Exception):
        pass

    def send(outbound: Outbound) -> bytes:
        raise Boom

    with pytest.raises(Boom):
        protocol.run(protocol.register_flow(_ctx(vault), PASSWORD), send)


def test_outbound_and_results_never_show_secrets(vault: Vault) -> None:
    ctx = _ctx(vault)
    flow = protocol.register_flow(ctx, PASSWORD)
    step = protocol.advance(flow)
    assert isinstance(step, Outbound)
    assert repr(step) == f"Outbound(step=register_start, {len(step.envelope)} bytes)"
    assert PASSWORD.encode() not in step.envelope  # sealed
    flow.close()


def test_max_attempts_out_of_range_is_refused(vault: Vault) -> None:
    for bad in (0, protocol.MAX_ATTEMPTS_LIMIT + 1):
        with pytest.raises(ValueError):
            protocol.register_flow(_ctx(vault), PASSWORD, max_attempts=bad)


def test_the_clients_attempt_limit_is_the_vaults() -> None:
    from vault_node.config import MAX_ATTEMPTS_LIMIT

    assert protocol.MAX_ATTEMPTS_LIMIT == MAX_ATTEMPTS_LIMIT  # no value passes here, fails there


def test_a_stale_register_finish_starts_the_registration_again_once(vault: Vault) -> None:
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


def test_password_is_nfc_normalised(vault: Vault) -> None:
    ctx, send = _ctx(vault), vault.send_for(ACCOUNT)
    key = protocol.run(protocol.register_flow(ctx, "caf\u00e9"), send)
    assert protocol.run(protocol.recover_flow(ctx, "cafe\u0301"), send) == key


def test_real_argon2_fast_preset_round_trip(vault: Vault) -> None:
    from client.config import ksf_named

    ctx = FlowContext(
        vault.fleet, ACCOUNT, account_signer(ACCOUNT), opaque.OpaqueConfig(ksf=ksf_named("fast"))
    )
    send = vault.send_for(ACCOUNT)
    key = protocol.run(protocol.register_flow(ctx, PASSWORD), send)
    assert protocol.run(protocol.recover_flow(ctx, PASSWORD), send) == key


def test_recovery_stretches_as_the_registration_did(vault: Vault) -> None:
    """Registered with the "fast" KSF, recovered by a client configured with another one: the
    right password still works (it used to count as a wrong guess), a wrong one still fails."""
    fast = Argon2idKsf(time_cost=1, lanes=1, memory_kib=256)
    other = Argon2idKsf(time_cost=2, lanes=1, memory_kib=512)
    send = vault.send_for(ACCOUNT)

    def ctx(ksf: Argon2idKsf) -> FlowContext:
        return FlowContext(
            fleet=vault.fleet,
            account_id=ACCOUNT,
            signer=account_signer(ACCOUNT),
            opaque=opaque.OpaqueConfig(ksf=ksf),
        )

    key = protocol.run(protocol.register_flow(ctx(fast), PASSWORD), send)
    assert protocol.run(protocol.recover_flow(ctx(other), PASSWORD), send) == key
    with pytest.raises(InvalidPassword):
        protocol.run(protocol.recover_flow(ctx(other), "wrong"), send)
    # Parameters beyond the bounds (a record must not exhaust the client) are refused.
    too_costly = envelope_pb2.KsfParams(
        argon2id_time_cost=1, argon2id_lanes=1, argon2id_memory_kib=2**31
    ).SerializeToString()
    vault.cluster.rewrite_record(ACCOUNT, lambda record: setattr(record, "ksf_params", too_costly))
    with pytest.raises(ProtocolError):
        protocol.run(protocol.recover_flow(ctx(other), PASSWORD), send)


def test_closed_recoveries_still_send_a_dummy_finish(vault: Vault) -> None:
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
    # One guess evaluated (the wrong one); the dummy finishes redeemed nothing.
    assert vault.cluster.evaluations() == 1
    assert vault.events("success") == 0 and vault.events("bad_mac") == 1


def test_a_failed_dummy_finish_does_not_hide_the_outcome(vault: Vault) -> None:
    from client.errors import Unavailable

    ctx, inner = _ctx(vault), vault.send_for(ACCOUNT)

    def send(outbound: Outbound) -> bytes:
        if outbound.step is Step.RECOVER_FINISH:
            raise Unavailable("lost")
        return inner(outbound)

    with pytest.raises(NotRegistered):
        protocol.run(protocol.recover_flow(ctx, PASSWORD), send)


def test_every_flow_is_two_envelopes_of_one_size_per_step(vault: Vault) -> None:
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


def test_a_registration_above_the_vaults_cap_is_bad_input(vault: Vault) -> None:
    from client.errors import BadInput

    cap = vault.cluster.nodes[0].service._config.max_attempts_cap
    with pytest.raises(BadInput, match=f"at most {cap}"):
        protocol.run(
            protocol.register_flow(_ctx(vault), PASSWORD, max_attempts=cap + 1),
            vault.send_for(ACCOUNT),
        )
    # Nothing stored.
    assert (
        protocol.run(protocol.status_flow(_ctx(vault)), vault.send_for(ACCOUNT)).registered is False
    )


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
