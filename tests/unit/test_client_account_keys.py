"""The client library and the account key (issue 17), on the in-process cluster (the real
client, frontend and node code): it signs every first step, signs again past the vault's floor
after a stale refusal, changes keys (resumably), and goes through a key loss's rebind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from inproc_cluster import InProcessCluster

from client import AsyncVaultClient, VaultClient
from client import protocol as flows
from client.config import load_config
from client.errors import AccountKeyRefused, StaleSignature, Unauthenticated, error_from_status
from client.protocol import Outbound, Step
from client.session import AccountKey
from vault_common.account_binding import decode_binding, encode_binding
from vault_protocol.backup_key import BackupKey

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

PASSWORD = "correct horse battery staple"


def client(cluster: InProcessCluster, key_dir: Path, account: str) -> VaultClient:
    return VaultClient(
        load_config(cluster.client_config_path), account_id=account, key_dir=key_dir, ksf="fast"
    )


def registered(
    cluster: InProcessCluster, key_dir: Path, account: str, **kw: Any
) -> tuple[VaultClient, BackupKey]:
    """A client of a new account (its key made, logged in) and the key it registered."""
    vault = client(cluster, key_dir, account)
    vault.create_account()
    return vault, vault.register(PASSWORD, **kw)


def node_send(cluster: InProcessCluster, account: str) -> Callable[[Outbound], bytes]:
    """A flow's `send` straight to a node (as a frontend relays), errors mapped as the client
    maps them."""
    inner = cluster.node_sender(account)

    def send(outbound: Outbound) -> bytes:
        try:
            return inner(outbound)
        except grpc.RpcError as err:
            raise error_from_status(err) from None

    return send


def events(cluster: InProcessCluster, name: str) -> int:
    return sum(1 for entry in cluster.audit_entries() if str(entry[0]) == name)


def test_every_first_step_is_signed_and_a_stale_one_is_signed_again_past_the_floor(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    alice, key = registered(inproc_cluster, tmp_path, "alice")
    with alice:
        # Another device of the account signed a little ahead of this one's clock.
        ahead = time.time_ns() // 1_000_000 + 5_000
        inproc_cluster.rewrite_record("alice", lambda r: setattr(r, "last_auth_ms", ahead))
        assert alice.recover(PASSWORD) == key  # refused once as stale, then signed past it
        assert events(inproc_cluster, "auth_refused") == 1
        assert events(inproc_cluster, "evaluate") == 1


def test_a_second_stale_refusal_goes_back_to_the_caller(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    bob, _ = registered(inproc_cluster, tmp_path, "bob")
    with bob:
        stuck = [time.time_ns() // 1_000_000 + 60_000]

        def replaying_clock(floor_ms: int) -> int:
            return stuck[0]  # a broken clock: always the same ts_ms

        bob._auth_clock = replaying_clock
        inproc_cluster.rewrite_record("bob", lambda r: setattr(r, "last_auth_ms", stuck[0]))
        with pytest.raises(StaleSignature) as info:
            bob.recover(PASSWORD)
        assert info.value.floor_ms == stuck[0] and info.value.retry_safe
        assert events(inproc_cluster, "auth_refused") == 2  # the first try and its one resend
        assert events(inproc_cluster, "evaluate") == 0


def test_a_key_change_binds_the_new_key_in_the_vault_and_the_frontend(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    carol, key = registered(inproc_cluster, tmp_path, "carol", max_attempts=7)
    with carol:
        old = carol.account
        carol.change_account_key(PASSWORD)
        new = carol.account
        assert new.public_key != old.public_key
        assert inproc_cluster.account_keys.keys["carol"] == new.public_key
        assert carol.recover(PASSWORD) == key and carol.status().max_attempts == 7
    # The old key is refused by the vault itself (sealed and sent to a node directly).
    ctx = flows.FlowContext(fleet=carol._context().fleet, account_id="carol", signer=old.signer)
    with pytest.raises(AccountKeyRefused):
        flows.run(flows.status_flow(ctx), node_send(inproc_cluster, "carol"))


def test_an_interrupted_key_change_finishes_with_the_key_the_vault_bound(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    dave, key = registered(inproc_cluster, tmp_path, "dave")
    with dave:
        pending = AccountKey.pending(tmp_path, "dave")
        # A first run got as far as the vault's re-registration, then stopped.
        dave._run(
            flows.register_flow(dave._context(), PASSWORD, key, new_account_key=pending.public_key)
        )
        dave.change_account_key(PASSWORD)
        assert dave.account.public_key == pending.public_key
        assert dave.recover(PASSWORD) == key


def test_key_loss_rebind_through_the_library(tmp_path: Path) -> None:
    with InProcessCluster(tmp_path / "cluster", rebind_delay_ms=1_000) as cluster:
        with client(cluster, tmp_path / "old", "erin") as old:
            old.create_account()
            key = old.register(PASSWORD)
        device = client(cluster, tmp_path / "new", "erin")
        device.create_account("erin", login=False)
        with pytest.raises(Unauthenticated):
            device.login()
        # The operator's half (bkv-cluster rebind-account): the new key beside the bound one.
        bound = decode_binding(cluster.account_keys.keys["erin"])
        cluster.account_keys.keys["erin"] = encode_binding([*bound, device.account.public_key])
        status = device.request_rebind()
        assert status.rebind_pending and status.rebind_key == device.account.public_key
        with pytest.raises(AccountKeyRefused):
            device.recover(PASSWORD)
        deadline = time.monotonic() + 10
        while time.time() * 1000 < status.rebind_matures_at_ms:  # the vault's own deadline
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert device.recover(PASSWORD) == key
        assert events(cluster, "evaluate") == 1  # the rebind itself counted no guess
        device.close()


def test_a_record_from_before_account_keys_binds_its_first_recovery(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    frank, key = registered(inproc_cluster, tmp_path, "frank")
    with frank:
        inproc_cluster.rewrite_record("frank", lambda r: r.ClearField("account_key"))
        other = AccountKey.create(tmp_path / "other", "frank")
        ctx = flows.FlowContext(
            fleet=frank._context().fleet, account_id="frank", signer=other.signer
        )
        send = node_send(inproc_cluster, "frank")
        assert flows.run(flows.status_flow(ctx), send).registered  # any valid key, for now
        assert frank.recover(PASSWORD) == key  # the first recovery binds frank's key
        with pytest.raises(AccountKeyRefused):
            flows.run(flows.status_flow(ctx), send)


def test_first_steps_carry_a_resigner_and_second_steps_none() -> None:
    assert [s for s in Step if s.signed] == [Step.REGISTER_START, Step.RECOVER_START, Step.BEGIN]
    assert Outbound(Step.STATUS, b"x").resign is None


def test_the_awaiting_client_changes_keys_and_requests_a_rebind_alike(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    config = load_config(inproc_cluster.client_config_path)

    async def go() -> None:
        async with AsyncVaultClient(config, account_id="gina", key_dir=tmp_path, ksf="fast") as c:
            await c.create_account()
            key = await c.register(PASSWORD)
            old = c.account.public_key
            await c.change_account_key(PASSWORD)
            assert c.account.public_key != old
            assert inproc_cluster.account_keys.keys["gina"] == c.account.public_key
            assert await c.recover(PASSWORD) == key
            # The bound key asking for a rebind is no rebind: nothing pending.
            assert not (await c.request_rebind()).rebind_pending

    asyncio.run(go())
