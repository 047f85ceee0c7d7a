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

import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from client import protocol
from client.backup_file import CorruptBackup, Progress, decrypt_backup, encrypt_backup
from client.channels import Connector, GrpcConnector
from client.config import ClientConfig, default_config_path, load_config
from client.core import Call, ClientCore, Effect, NeedSession, Probe
from client.driver import drive
from client.protocol import Outbound, Status
from client.retry import Pause, RetryPolicy
from client.session import wall_clock_ms
from vault_protocol.backup_key import BackupKey
from vault_protocol.ksf import Ksf

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


class VaultClient(ClientCore):
    """Synchronous client of the Backup Key Vault (see the module docstring for an example).

    config: the validated client.toml contents.
    account_id: the account to act as (needed by everything but the backup file functions).
    key_dir: where `<account>.account.key` lives (default: the config file's folder).
    ksf: the client KSF; None = the config's preset ("default": Argon2id t=3 p=4 64 MiB). A
        cheaper one (e.g. `"fast"` or `Argon2idKsf(time_cost=1, ...)`) only for load tests.
    retry: the retry policy (default: `RetryPolicy()` with the config's overall deadline).
    rng, clock, sleep, uniform, clock_ms, connector: injected for tests.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        account_id: str | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        ksf: Ksf | str | None = None,
        retry: RetryPolicy | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        uniform: Callable[[], float] = random.random,
        clock_ms: Callable[[], int] = wall_clock_ms,
        connector: Connector | None = None,
    ) -> None:
        super().__init__(
            config,
            account_id=account_id,
            key_dir=key_dir,
            ksf=ksf,
            retry=retry,
            rng=rng,
            clock=clock,
            uniform=uniform,
            clock_ms=clock_ms,
        )
        self._sleep = sleep
        self._connector = connector or GrpcConnector(config)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> VaultClient:
        """Build from client.toml (`path`, else `$BKV_CONFIG`, else `./client.toml`)."""
        return cls(load_config(path if path is not None else default_config_path()), **kwargs)

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
        """Registered?, guesses left, locked?"""
        return self._run(protocol.status_flow(self._context()))

    def encrypt_backup(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        key: BackupKey,
        progress: Progress | None = None,
    ) -> int:
        """`client.vault.encrypt_backup` (no network)."""
        return encrypt_backup(src, dst, key, progress=progress, rng=self._rng)

    def decrypt_backup(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        key: BackupKey,
        progress: Progress | None = None,
    ) -> int:
        """`client.vault.decrypt_backup` (no network)."""
        return decrypt_backup(src, dst, key, progress=progress)

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, flow: protocol.Flow[T]) -> T:
        return protocol.run(flow, self._relay)

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
