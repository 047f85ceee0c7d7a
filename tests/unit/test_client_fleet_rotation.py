"""A fleet rotation as clients live it, on the in-process cluster: a client pinned to the old key
learns the new one from the signed announcement the frontend serves (at login, or after a vault
refuses the retired key, resending step 1 once), keeps it, and refuses forged announcements."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from inproc_cluster import InProcessCluster

from client import VaultClient
from client.config import load_config
from client.errors import FleetAnnouncementRefused, UnknownFleetKey
from vault_protocol.fleet import FleetAnnouncement, sign_announcement

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

PASSWORD = "rotated fleet password"
STEPS = ("install", "announce", "switch", "reseal", "retire")


def test_clients_pinned_to_the_old_key_cross_a_whole_rotation(tmp_path: Path) -> None:
    with InProcessCluster(tmp_path / "cluster") as cluster:
        config = load_config(cluster.client_config_path)
        keys = tmp_path / "keys"
        busy = VaultClient(config, key_dir=keys, ksf="fast")
        busy.create_account()
        key = busy.register(PASSWORD)
        quiet = VaultClient(config, key_dir=keys, ksf="fast")
        quiet.create_account()
        quiet.register(PASSWORD)
        for step in STEPS[:3]:
            cluster.rotate(step)
            assert busy.recover(PASSWORD) == key  # the overlap: the old key still opens
        assert busy.fleet.epoch == 1  # logged in before the announcement: not learnt yet
        # A new client on the old client.toml learns the new key at its login.
        fresh = VaultClient(config, key_dir=keys, ksf="fast", account_id=quiet.account_id)
        fresh.remember_fleet(tmp_path / "client.fleet")
        assert fresh.status().registered and fresh.fleet.epoch == 2
        assert (tmp_path / "client.fleet").read_bytes() == cluster.announcement
        for step in STEPS[3:]:
            cluster.rotate(step)
        evaluations = cluster.evaluations()
        # After the retirement the vault refuses epoch 1's key by name, nothing applied; the
        # client learns epoch 2 from the announcement and resends step 1, once.
        assert busy.recover(PASSWORD) == key
        assert busy.fleet.epoch == 2 and cluster.evaluations() == evaluations + 1
        # A client that kept the announcement starts on epoch 2 without asking anyone.
        kept = VaultClient(config, key_dir=keys, ksf="fast", account_id=quiet.account_id)
        kept.remember_fleet(tmp_path / "client.fleet")
        assert kept.fleet.epoch == 2
        # Without a pinned root key a client cannot learn it: refused, nothing applied.
        stale = VaultClient(
            dataclasses.replace(config, fleet_root_key=""), key_dir=keys, ksf="fast",
            account_id=quiet.account_id,
        )  # fmt: skip
        with pytest.raises(UnknownFleetKey):
            stale.recover(PASSWORD)
        assert cluster.evaluations() == evaluations + 1
        assert kept.status().guesses_left == 10
        for client in (busy, quiet, fresh, kept, stale):
            client.close()


def test_forged_announcements_leave_the_client_on_its_key(tmp_path: Path) -> None:
    with InProcessCluster(tmp_path / "cluster") as cluster:
        config = load_config(cluster.client_config_path)
        client = VaultClient(config, key_dir=tmp_path / "keys", ksf="fast")
        client.create_account()
        client.register(PASSWORD)
        genuine = cluster.announcement
        for step in STEPS[:2]:
            cluster.rotate(step)
        epoch_2 = cluster.announcement
        impostor = ed25519.Ed25519PrivateKey.generate()
        announcement = FleetAnnouncement(3, cluster.fleet_token.kem_public_key("kem.2"), b"x")
        for forged in (sign_announcement(announcement, impostor.sign), b"\x0a\x03abc"):
            cluster.announcement = forged
            with pytest.raises(FleetAnnouncementRefused):
                client.refresh_fleet()
            assert client.fleet.epoch == 1
            client.status()  # a login would only log it: the pinned key serves on
        cluster.announcement = epoch_2
        assert client.refresh_fleet() == 2
        cluster.announcement = genuine  # epoch 1's, validly signed: a replay
        with pytest.raises(FleetAnnouncementRefused, match="older"):
            client.refresh_fleet()
        assert client.fleet.epoch == 2 and client.status().registered
        client.close()


def test_a_fleet_with_another_opaque_context_is_refused_before_any_guess(tmp_path: Path) -> None:
    with InProcessCluster(tmp_path / "cluster", opaque_context=b"") as cluster:
        config = load_config(cluster.client_config_path)
        client = VaultClient(config, key_dir=tmp_path / "keys", ksf="fast")
        client.create_account()
        key = client.register(PASSWORD)
        assert client.recover(PASSWORD) == key  # the empty context, learnt from the fleet
        wrong = VaultClient(
            dataclasses.replace(config, opaque_context="BKV-v1"), key_dir=tmp_path / "keys",
            ksf="fast", account_id=client.account_id,
        )  # fmt: skip
        evaluations = cluster.evaluations()
        with pytest.raises(Exception, match="opaque_context") as refused:
            wrong.recover(PASSWORD)
        assert type(refused.value).__name__ == "ConfigError"
        assert cluster.evaluations() == evaluations
        for c in (client, wrong):
            c.close()
