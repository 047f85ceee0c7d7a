"""`AsyncVaultClient`: the asyncio twin of `client.VaultClient`, same behaviour and errors.

>>> async with AsyncVaultClient.from_config(  # doctest: +SKIP
...     "client.toml", account_id="alice"
... ) as vault:
...     key = await vault.register("correct horse battery staple")
...     assert await vault.recover("correct horse battery staple") == key

The protocol steps (and so the Argon2id KSF, ~0.2 s) run in a worker thread, so the event loop
keeps serving other tasks. One `grpc.aio` channel per frontend, reused (`client.channels`).
Failover, readiness, deadlines, session refresh and retries are the plans of `client.core`, the
same that `client.VaultClient` runs: this class only awaits their effects.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from client import protocol
from client.backup_file import PathArg, Progress, decrypt_backup, encrypt_backup
from client.channels import AioGrpcConnector, AsyncConnector
from client.config import ClientConfig
from client.core import Call, ClientCore, Effect, Job, NeedSession, Probe, RunFlow
from client.driver import adrive
from client.protocol import Done, Outbound, Status
from client.retry import Pause
from vault_protocol.backup_key import BackupKey
from vault_protocol.ksf import Argon2idKsf, IdentityKsf, Ksf

__all__ = ["AioGrpcConnector", "AsyncConnector", "AsyncVaultClient"]

T = TypeVar("T")


INLINE_KSF_KIB_PASSES = 1024  # Argon2id memory x passes run on the loop (1 MiB: ~1 ms here)


def _cheap_ksf(ksf: Ksf) -> bool:
    """Whether `ksf` is cheap enough to run on the event loop (see `AsyncVaultClient._run`):
    the identity, or Argon2id with little memory and few passes; any other KSF (a subclass
    too: its cost is not known here) goes to a worker thread.

    >>> _cheap_ksf(Argon2idKsf(time_cost=1, lanes=1, memory_kib=256))
    True
    >>> _cheap_ksf(Argon2idKsf())
    False
    """
    if type(ksf) is IdentityKsf:
        return True
    return type(ksf) is Argon2idKsf and ksf.memory_kib * ksf.time_cost <= INLINE_KSF_KIB_PASSES


class AsyncVaultClient(ClientCore[AsyncConnector, Callable[[float], Awaitable[None]]]):
    """Asyncio client of the Backup Key Vault; arguments as `client.VaultClient`."""

    @functools.cached_property
    def _login_lock(self) -> asyncio.Lock:
        """Concurrent calls that need a session share one login (made on first use)."""
        return asyncio.Lock()

    def _new_connector(self, config: ClientConfig) -> AsyncConnector:
        return AioGrpcConnector(config)

    def _default_sleep(self) -> Callable[[float], Awaitable[None]]:
        return asyncio.sleep

    async def __aenter__(self) -> AsyncVaultClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel; the client cannot be used afterwards."""
        self._closed = True
        await self._connector.close()

    # -- accounts -------------------------------------------------------------------------------

    async def create_account(self, account_id: str | None = None, *, login: bool = True) -> str:
        """As `VaultClient.create_account`."""
        account_id = self._new_account(account_id)
        if login:
            await self.login()
        return account_id

    async def login(self) -> None:
        """Get a fresh session token (GetChallenge → sign → Login)."""
        await adrive(self.login_plan(), self._perform)

    async def refresh_fleet(self) -> int:
        """As `VaultClient.refresh_fleet`."""
        await adrive(self.fleet_plan(), self._perform)
        return self.fleet.epoch

    # -- vault operations -----------------------------------------------------------------------

    async def register(
        self,
        password: str | bytes,
        key: BackupKey | None = None,
        max_attempts: int | None = None,
    ) -> BackupKey:
        """As `VaultClient.register`."""
        return await self._run(protocol.register_flow(self._context(), password, key, max_attempts))

    async def recover(self, password: str | bytes) -> BackupKey:
        """As `VaultClient.recover` (a retried first step may count a guess twice)."""
        return await self._run(protocol.recover_flow(self._context(), password))

    async def delete(self) -> bool:
        """As `VaultClient.delete`."""
        return await self._run(protocol.delete_flow(self._context()))

    async def status(self) -> Status:
        """As `VaultClient.status`."""
        return await self._run(protocol.status_flow(self._context()))

    async def change_account_key(self, password: str | bytes, key: BackupKey | None = None) -> None:
        """As `VaultClient.change_account_key`."""
        await adrive(self.key_change_script(password, key), self._job)

    async def request_rebind(self) -> Status:
        """As `VaultClient.request_rebind`."""
        return await self._run(protocol.rebind_flow(self._context()))

    async def encrypt_backup(
        self, src: PathArg, dst: PathArg, key: BackupKey, progress: Progress | None = None
    ) -> int:
        """`client.vault.encrypt_backup` in a worker thread."""
        return await asyncio.to_thread(
            lambda: encrypt_backup(src, dst, key, progress=progress, rng=self._rng)
        )

    async def decrypt_backup(
        self, src: PathArg, dst: PathArg, key: BackupKey, progress: Progress | None = None
    ) -> int:
        """`client.vault.decrypt_backup` in a worker thread."""
        return await asyncio.to_thread(lambda: decrypt_backup(src, dst, key, progress=progress))

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, flow: protocol.Flow[T]) -> T:
        # Only the advance that runs the KSF (Argon2id: a fifth of a second by default) goes to a
        # worker thread; the others (a blind, an HPKE seal or open: well under a millisecond)
        # run on the loop, which saves two thread hops per recovery. A cheap KSF (the "fast"
        # load-test preset: about a millisecond with OPAQUE's math) runs on the loop too: the
        # hop and its GIL hand-offs cost the load generator more CPU than the step itself
        # (docs/performance.md, tenth session).
        inline = _cheap_ksf(self._ksf)
        step = protocol.advance(flow)
        while not isinstance(step, Done):
            try:
                answer = await self._relay(step)
            except BaseException as err:  # noqa: BLE001 - thrown into the flow, which re-raises
                step = protocol.advance(flow, None, err)
                continue
            if step.step.runs_ksf_next and not inline:
                step = await asyncio.to_thread(protocol.advance, flow, answer)
            else:
                step = protocol.advance(flow, answer)
        return step.value

    async def _job(self, job: Job) -> Any:
        """Carry out one job of a script of `client.core` (a flow, or a call plan)."""
        if isinstance(job, RunFlow):
            return await self._run(job.flow)
        return await adrive(job.plan, self._perform)

    async def _relay(self, outbound: Outbound) -> bytes:
        answer: bytes = await adrive(self.relay_plan(outbound), self._perform)
        return answer

    async def _perform(self, effect: Effect) -> Any:
        """Carry out one effect of a plan of `client.core`, awaiting (the only I/O here)."""
        if isinstance(effect, Call):
            call = getattr(self._connector.stub(effect.address), effect.method)
            return await call(effect.request, timeout=effect.timeout, metadata=effect.metadata)
        if isinstance(effect, Probe):
            return await self._connector.ready(effect.address, effect.timeout)
        if isinstance(effect, Pause):
            return await self._sleep(effect.seconds)
        if isinstance(effect, NeedSession):
            async with self._login_lock:  # concurrent calls share one login
                if self._session.token() is None:
                    await self.login()
            return None
        raise AssertionError(effect)
