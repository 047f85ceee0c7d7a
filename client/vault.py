"""`VaultClient`: the synchronous client applications embed.

>>> with VaultClient.from_config("client.toml", account_id="alice") as vault:  # doctest: +SKIP
...     vault.create_account()              # once: makes alice's key file (0600) and logs in
...     key = vault.register("correct horse battery staple")
...     vault.status()                      # Status(registered=True, guesses_left=10, ...)
...     same = vault.recover("correct horse battery staple")
...     vault.encrypt_backup("chat.db", "chat.db.bkv", key)

How calls travel: one gRPC channel per frontend (`client.channels`), opened lazily and reused; a
call goes to the frontend that last answered; a frontend that does not say it serves within
`connect_timeout_s` is skipped (nothing was sent); one that answers UNAVAILABLE sends the next
try to the next frontend, under the policy of `client.retry`. Every RPC carries a deadline. A
session token is fetched on first use, refreshed before it expires, and once more on
UNAUTHENTICATED. These decisions are made in `client.core`, the same for `AsyncVaultClient`;
this class only carries its calls out, blocking.

Not thread-safe: use one client per thread (or `AsyncVaultClient` in asyncio code).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from client import protocol
from client.backup_file import (
    CorruptBackup,
    PathArg,
    Progress,
    decrypt_backup,
    encrypt_backup,
)
from client.channels import Connector, GrpcConnector
from client.config import ClientConfig, default_config_path
from client.core import Call, ClientCore, Effect, Job, NeedSession, Probe, RunFlow
from client.driver import drive
from client.protocol import Outbound, Status
from client.retry import Pause
from vault_protocol.backup_key import BackupKey

__all__ = [
    "Connector",
    "CorruptBackup",
    "GrpcConnector",
    "VaultClient",
    "decrypt_backup",
    "default_config_path",
    "encrypt_backup",
]

T = TypeVar("T")


class VaultClient(ClientCore[Connector, Callable[[float], None]]):
    """Synchronous client of the Backup Key Vault (see the module docstring for an example).

    Arguments: `client.core.ClientCore` (config, account_id, key_dir, ksf, retry; rng, clock,
    sleep, uniform, clock_ms, connector injected for tests). Build from a file with
    `VaultClient.from_config(path, account_id=...)`.
    """

    def _new_connector(self, config: ClientConfig) -> Connector:
        return GrpcConnector(config)

    def _default_sleep(self) -> Callable[[float], None]:
        return time.sleep

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every channel; the client cannot be used afterwards."""
        self._closed = True
        self._connector.close()

    # -- accounts -------------------------------------------------------------------------------

    def create_account(self, account_id: str | None = None, *, login: bool = True) -> str:
        """Make the account's Ed25519 key (0600 file in `key_dir`) and, by default, log in once
        so the frontend binds the account id to it. Returns the account id (fresh if none given).
        """
        account_id = self._new_account(account_id)
        if login:
            self.login()
        return account_id

    def login(self) -> None:
        """Get a fresh session token (GetChallenge → sign → Login)."""
        drive(self.login_plan(), self._perform)

    def refresh_fleet(self) -> int:
        """Fetch the fleet's signed key announcement and take it if it is newer than the key
        this client seals to (logins do it too); the epoch sealed to now.
        `FleetAnnouncementRefused` for an unsigned, forged or older one (the key stays)."""
        drive(self.fleet_plan(), self._perform)
        return self.fleet.epoch

    # -- vault operations -----------------------------------------------------------------------

    def register(
        self,
        password: str | bytes,
        key: BackupKey | None = None,
        max_attempts: int | None = None,
    ) -> BackupKey:
        """Escrow `key` (a fresh random one when None) behind `password`; returns the key.

        Re-registering replaces the previous key. `max_attempts`: wrong passwords allowed before
        the key is erased (None: the vault's default, 10).
        """
        return self._run(protocol.register_flow(self._context(), password, key, max_attempts))

    def recover(self, password: str | bytes) -> BackupKey:
        """Get the key back. InvalidPassword(guesses_left) / Locked / NotRegistered otherwise.

        Note: if the first step is retried after an UNAVAILABLE, one wrong password may count
        twice (see `client.retry`).
        """
        return self._run(protocol.recover_flow(self._context(), password))

    def delete(self) -> bool:
        """Erase the account's key from the vault; returns whether there was one."""
        return self._run(protocol.delete_flow(self._context()))

    def status(self) -> Status:
        """Registered?, guesses left, locked? (and a pending rebind, see `request_rebind`)"""
        return self._run(protocol.status_flow(self._context()))

    def change_account_key(self, password: str | bytes, key: BackupKey | None = None) -> None:
        """Replace the account key by a new one, while you still hold the old key: the vault
        record is registered again under the new key (signed by the old one; K and the password
        stay, K recovered first unless given, which counts as a recovery) and the frontend's
        binding follows. Safe to run again after an interruption (`client.core`)."""
        drive(self.key_change_script(password, key), self._job)

    def request_rebind(self) -> Status:
        """Key loss (the old key is gone): ask the vault to bind this client's key once the
        operator's delay has passed (the operator rebinds the frontend's login first: see
        client/README.md). Counts no guess; returns the status showing when it matures."""
        return self._run(protocol.rebind_flow(self._context()))

    def encrypt_backup(
        self, src: PathArg, dst: PathArg, key: BackupKey, progress: Progress | None = None
    ) -> int:
        """`client.vault.encrypt_backup` (no network)."""
        return encrypt_backup(src, dst, key, progress=progress, rng=self._rng)

    def decrypt_backup(
        self, src: PathArg, dst: PathArg, key: BackupKey, progress: Progress | None = None
    ) -> int:
        """`client.vault.decrypt_backup` (no network)."""
        return decrypt_backup(src, dst, key, progress=progress)

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, flow: protocol.Flow[T]) -> T:
        return protocol.run(flow, self._relay)

    def _job(self, job: Job) -> Any:
        """Carry out one job of a script of `client.core` (a flow, or a call plan)."""
        if isinstance(job, RunFlow):
            return self._run(job.flow)
        return drive(job.plan, self._perform)

    def _relay(self, outbound: Outbound) -> bytes:
        answer: bytes = drive(self.relay_plan(outbound), self._perform)
        return answer

    def _perform(self, effect: Effect) -> Any:
        """Carry out one effect of a plan of `client.core`, blocking (the only I/O here)."""
        if isinstance(effect, Call):
            call = getattr(self._connector.stub(effect.address), effect.method)
            return call(effect.request, timeout=effect.timeout, metadata=effect.metadata)
        if isinstance(effect, Probe):
            return self._connector.ready(effect.address, effect.timeout)
        if isinstance(effect, Pause):
            return self._sleep(effect.seconds)
        if isinstance(effect, NeedSession):
            return self.login()
        raise AssertionError(effect)
