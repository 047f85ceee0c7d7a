"""Scenarios written once against the cluster interface that both tiers share (a
`client_config_path`, the frontends behind it), so a test picks its tier by fixture:

    def test_x(inproc_cluster: InProcessCluster, tmp_path: Path) -> None:   # unit tier
        register_recover_lockout(inproc_cluster, tmp_path)
    def test_x(healthy_cluster: Cluster, tmp_path: Path) -> None:           # integration tier
        register_recover_lockout(healthy_cluster, tmp_path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest

from client import InvalidPassword, Locked, VaultClient
from client.config import load_config
from client.protocol import Status

PASSWORD = "a long and correct passphrase"


class ClientFacing(Protocol):
    """What a scenario needs of a cluster: the client configuration it writes."""

    @property
    def client_config_path(self) -> Path: ...


def client_for(cluster: ClientFacing, key_dir: Path, **kwargs: object) -> VaultClient:
    """A client of `cluster` (fast KSF) whose account key lives in `key_dir`."""
    key_dir.mkdir(parents=True, exist_ok=True)
    return VaultClient(
        load_config(cluster.client_config_path), key_dir=key_dir, ksf="fast", **kwargs
    )


def register_recover_lockout(cluster: ClientFacing, work: Path, max_attempts: int = 3) -> None:
    """Through the frontends: register, recover, wrong guesses count down and a right one
    resets the count, then `max_attempts` wrong guesses lock the key for good (the right
    password included)."""
    with client_for(cluster, work / "keys") as client:
        client.create_account()
        key = client.register(PASSWORD, max_attempts=max_attempts)
        assert client.recover(PASSWORD) == key
        with pytest.raises(InvalidPassword) as first:
            client.recover("not the password")
        assert first.value.guesses_left == max_attempts - 1
        assert client.recover(PASSWORD) == key  # resets the count
        assert client.status() == Status(True, max_attempts, False, max_attempts)
        for left in range(max_attempts - 1, -1, -1):
            with pytest.raises(InvalidPassword) as wrong:
                client.recover(f"wrong {left}")
            assert wrong.value.guesses_left == left
        for _ in range(2):
            with pytest.raises(Locked):
                client.recover(PASSWORD)
        assert client.status() == Status(False, 0, True, max_attempts)
