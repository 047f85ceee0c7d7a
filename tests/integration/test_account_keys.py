"""The vault checks the account itself (issue 17), on the real local cluster.

A frontend (anyone holding a frontend certificate) can seal envelopes of its own for any
account — the fleet key is public — and relay a user's genuine envelopes again. Here it does
both, straight to the vault nodes with the first frontend's client certificate (as
`bad_input_wire.open_on_node` and the fuzz tier's node cases do): envelopes for a victim signed
by another key, or unsigned, and a captured genuine recover start relayed again and again.
Every one is refused with nothing applied, counted from the nodes' audit lines. Then the two
documented paths for the account key: a key change (the old key signs) and a key loss (the
operator's rebind at the frontends, then the vault's delayed rebind, with the test cluster's
`account_rebind_delay_s` of seconds).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bad_input_wire import (
    OK,
    UNAUTHENTICATED,
    Answer,
    Wire,
    login,
    open_on_node,
    relay,
    sealed_response,
)
from cluster_fixtures import TEST_REBIND_DELAY_S

from bkv.v1 import envelope_pb2
from client import VaultClient
from client.config import load_config
from client.errors import AccountKeyRefused, Unauthenticated
from client.session import AUTH_CLOCK, AccountKey
from client.vault import GrpcConnector
from deploy import cli as deploy_cli
from deploy.cluster import Cluster
from vault_common.wire import NOT_APPLIED_KEY, parse_account_refusal
from vault_protocol import opaque
from vault_protocol.account_auth import AccountSigner, sign_request
from vault_protocol.continuation import StepKeys
from vault_protocol.envelope import open_response, seal_request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PASSWORD = "the owner's passphrase"


def audit_files(cluster: Cluster) -> dict[str, list[dict[str, Any]]]:
    """Every node's audit lines, per node."""
    return {
        path.name: [json.loads(raw) for raw in path.read_text().splitlines() if raw.strip()]
        for path in sorted((cluster.directory / "logs").glob("*.audit.jsonl"))
    }


def audit(cluster: Cluster) -> list[dict[str, Any]]:
    return [line for lines in audit_files(cluster).values() for line in lines]


@dataclass
class Victim:
    """A registered account, its client (its own key) and its record id (from the audit)."""

    id: str
    client: VaultClient
    key: AccountKey
    record_id: str
    backup_key: Any

    def events(self, cluster: Cluster, event: str) -> int:
        return sum(
            1
            for line in audit(cluster)
            if line.get("record_id") == self.record_id and line.get("event") == event
        )


def client_for(cluster: Cluster, key_dir: Path, account: str, **kw: Any) -> VaultClient:
    return VaultClient(
        load_config(cluster.client_config_path), account_id=account, key_dir=key_dir,
        ksf="fast", **kw,
    )  # fmt: skip


def register_victim(cluster: Cluster, key_dir: Path, prefix: str) -> Victim:
    account = f"{prefix}-{os.urandom(6).hex()}"
    client = client_for(cluster, key_dir, account)
    client.create_account(account)
    mark = {name: len(lines) for name, lines in audit_files(cluster).items()}
    backup_key = client.register(PASSWORD)
    registered = [
        line
        for name, lines in audit_files(cluster).items()
        for line in lines[mark.get(name, 0) :]
        if line.get("event") == "register"
    ]
    assert len(registered) == 1, registered
    return Victim(account, client, client.account, str(registered[0]["record_id"]), backup_key)


def first_step(
    wire: Wire, account: str, request: envelope_pb2.VaultRequest, signer: AccountSigner | None
) -> tuple[bytes, StepKeys]:
    """A step 1 for `account` as a frontend could seal it: signed by `signer` (None: not)."""
    request.response_key = os.urandom(32)
    if signer is not None:
        sign_request(request, wire.fleet.fleet_id, account, signer, AUTH_CLOCK.next())
    return seal_request(wire.fleet, account, request), StepKeys.derive(request.response_key)


def refusal_of(answer: Answer) -> tuple[str, int] | None:
    assert answer.code == UNAUTHENTICATED, answer
    assert dict(answer.trailing).get(NOT_APPLIED_KEY) == "1", answer  # nothing applied
    return parse_account_refusal(answer.details)


def attacks() -> dict[str, Callable[[], envelope_pb2.VaultRequest]]:
    def recover_start() -> envelope_pb2.VaultRequest:
        _, ke1 = opaque.login_start(b"the frontend's guess", os.urandom)
        return envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1))

    def register_start() -> envelope_pb2.VaultRequest:
        _, request = opaque.registration_start(b"the frontend's own password", os.urandom)
        return envelope_pb2.VaultRequest(
            register_start=envelope_pb2.RegisterStart(registration_request=request)
        )

    def begin(op: int) -> Callable[[], envelope_pb2.VaultRequest]:
        return lambda: envelope_pb2.VaultRequest(begin=envelope_pb2.Begin(op=op))  # type: ignore[arg-type]

    return {
        "guess": recover_start,
        "re-registration": register_start,
        "delete": begin(envelope_pb2.Begin.Op.OP_DELETE),
        "status": begin(envelope_pb2.Begin.Op.OP_STATUS),
    }


def test_a_frontend_cannot_act_for_an_account_without_its_key(
    cluster: Cluster, wire: Wire, tmp_path: Path
) -> None:
    """The issue's attack: valid envelopes for the victim, sealed at the frontend side and
    signed by another key (or not at all), to every vault node: refused, nothing evaluated,
    the victim's counter unchanged, and the victim still recovers with the right password."""
    victim = register_victim(cluster, tmp_path, "victim")
    evaluations_before = victim.events(cluster, "evaluate")
    refused_before = victim.events(cluster, "auth_refused")
    frontends_key = AccountKey.create(tmp_path, "mallory").signer
    sent = 0
    for node in wire.node_names:
        for name, make in attacks().items():
            for signer in (frontends_key, None):
                envelope, _ = first_step(wire, victim.id, make(), signer)
                answer = open_on_node(wire.node(node), victim.id, envelope)
                expected = ("key", 0) if signer is not None else ("signature", 0)
                assert refusal_of(answer) == expected, (node, name, answer)
                sent += 1
    status = victim.client.status()
    assert status.registered and status.guesses_left == status.max_attempts == 10
    assert victim.events(cluster, "evaluate") == evaluations_before  # 0 evaluations
    assert victim.events(cluster, "auth_refused") - refused_before == sent
    assert victim.events(cluster, "delete") == 0 and victim.events(cluster, "register") == 1
    assert victim.client.recover(PASSWORD) == victim.backup_key


class CapturingConnector(GrpcConnector):
    """The client's connector, keeping every envelope it relays: what the frontend receives."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.relayed: list[bytes] = []

    def stub(self, address: str) -> Any:
        inner = super().stub(address)
        relayed = self.relayed

        class Stub:
            def __getattr__(self, name: str) -> Any:
                method = getattr(inner, name)
                if name != "Relay":
                    return method

                def relay(request: Any, *args: Any, **kwargs: Any) -> Any:
                    relayed.append(bytes(request.envelope))
                    return method(request, *args, **kwargs)

                return relay

        return Stub()


def test_a_relayed_genuine_recover_start_counts_once(
    cluster: Cluster, wire: Wire, tmp_path: Path
) -> None:
    """A frontend keeps a user's genuine signed recover start (a wrong password's) and relays
    it again, to every node and through a frontend: 0 evaluations beyond the user's one."""
    victim = register_victim(cluster, tmp_path, "replayed")
    config = load_config(cluster.client_config_path)
    connector = CapturingConnector(config)
    with client_for(cluster, tmp_path, victim.id, connector=connector) as user:
        before = victim.events(cluster, "evaluate")
        with pytest.raises(Exception) as info:
            user.recover("a wrong guess the user made")
        assert type(info.value).__name__ == "InvalidPassword"
    assert victim.events(cluster, "evaluate") == before + 1
    captured = connector.relayed[0]  # the recover start (then its dummy finish)
    floor = None
    for _ in range(3):
        for node in wire.node_names:
            answer = open_on_node(wire.node(node), victim.id, captured)
            reason, floor = refusal_of(answer) or ("", 0)
            assert reason == "stale", answer
    token = login(wire.frontend(0), victim.key)
    for i in range(4):
        answer = relay(wire.frontend(i), token, captured)
        assert refusal_of(answer) == ("stale", floor), answer
    assert victim.events(cluster, "evaluate") == before + 1  # 0 extra evaluations
    assert victim.client.status().guesses_left == 9
    assert victim.client.recover(PASSWORD) == victim.backup_key


def test_a_key_change_moves_both_bindings(cluster: Cluster, wire: Wire, tmp_path: Path) -> None:
    victim = register_victim(cluster, tmp_path, "rekey")
    old = victim.key
    victim.client.change_account_key(PASSWORD)
    new = victim.client.account
    assert new.public_key != old.public_key and new.path == old.path  # the file was replaced
    assert not Path(str(new.path) + ".new").exists()
    # The vault refuses the old key now; the new one recovers the same K.
    envelope, _ = first_step(wire, victim.id, attacks()["status"](), old.signer)
    assert refusal_of(open_on_node(wire.node(wire.node_names[0]), victim.id, envelope)) == (
        "key",
        0,
    )
    assert victim.client.recover(PASSWORD) == victim.backup_key
    # ... and so do the frontends: the old key no longer logs in.
    with pytest.raises(AssertionError):
        login(wire.frontend(0), old)
    fresh = client_for(cluster, tmp_path, victim.id)
    assert fresh.recover(PASSWORD) == victim.backup_key


def await_condition(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_key_loss_rebind_waits_the_delay_and_the_old_key_can_cancel(
    cluster: Cluster, wire: Wire, tmp_path: Path
) -> None:
    """The operator adds the new device's key at the frontends; the vault binds it only after
    the delay, and only if the old key signed nothing meanwhile."""
    lost = register_victim(cluster, tmp_path / "old-device", "lost")
    new_dir = tmp_path / "new-device"
    device = client_for(cluster, new_dir, lost.id)
    device.create_account(lost.id, login=False)
    with pytest.raises(Unauthenticated):  # the frontends know only the lost key so far
        device.login()
    rebound = cluster.rebind_account(lost.id, device.account.public_key)
    assert rebound.after == (lost.key.public_key, device.account.public_key)
    evaluations = lost.events(cluster, "evaluate")

    # Cancelled: the old device is not lost after all and signs anything (a status).
    pending = device.request_rebind()
    assert pending.rebind_pending and pending.rebind_key == device.account.public_key
    seen = lost.client.status()
    assert seen.rebind_cancelled_key == device.account.public_key and not seen.rebind_pending
    with pytest.raises(AccountKeyRefused):
        device.recover(PASSWORD)

    # Asked again and left alone for the delay: the new key may recover, and binds.
    pending = device.request_rebind()
    assert pending.rebind_pending
    assert pending.rebind_matures_at_ms - time.time() * 1000 <= TEST_REBIND_DELAY_S * 1000 + 1000
    with pytest.raises(AccountKeyRefused):
        device.recover(PASSWORD)  # before the delay: refused, nothing evaluated

    def matured() -> bool:
        try:
            device.status()
        except AccountKeyRefused:
            return False
        return True

    await_condition(matured, TEST_REBIND_DELAY_S + 15, "the rebind to mature")
    assert lost.events(cluster, "evaluate") == evaluations  # no guess was spent by the waiting
    assert device.recover(PASSWORD) == lost.backup_key
    with pytest.raises(AccountKeyRefused):
        lost.client.status()  # the lost key is the one refused now
    assert lost.events(cluster, "rebind") == 2 and lost.events(cluster, "rebind_cancel") == 1
    # The operator drops the lost key at the frontends once the vault has bound the new one
    # (the command line this time).
    argv = ["rebind-account", "--dir", str(cluster.directory), "--replace", lost.id,
            device.account.public_key.hex()]  # fmt: skip
    assert deploy_cli.main(argv) == 0
    login(wire.frontend(0), device.account)
    with pytest.raises(AssertionError):
        login(wire.frontend(0), lost.key)


def test_the_node_answer_to_a_genuine_signed_step_opens(
    cluster: Cluster, wire: Wire, tmp_path: Path
) -> None:
    """The refusals above are the signature's, not the wire's: the owner's own key, sealed the
    same way at the frontend side, is answered."""
    victim = register_victim(cluster, tmp_path, "owner")
    envelope, keys = first_step(wire, victim.id, attacks()["status"](), victim.key.signer)
    answer = open_on_node(wire.node(wire.node_names[0]), victim.id, envelope)
    assert answer.code == OK, answer
    response = open_response(keys.answer1, sealed_response(answer, node_level=True))
    assert response.outcome == envelope_pb2.OUTCOME_OK and response.ticket
