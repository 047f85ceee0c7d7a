"""`AsyncVaultClient`: the asyncio twin of `client.VaultClient`, same behaviour and errors.

>>> async with AsyncVaultClient.from_config(  # doctest: +SKIP
...     "client.toml", account_id="alice"
... ) as vault:
...     key = await vault.register("correct horse battery staple")
...     assert await vault.recover("correct horse battery staple") == key

The protocol steps (and so the Argon2id KSF, ~0.2 s) run in a worker thread, so the event loop
keeps serving other tasks. One `grpc.aio` channel per frontend, reused; failover, deadlines,
session refresh and retries exactly as in `client.vault` (the retry decisions are the same
`client.retry.RetryState`).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio

from bkv.v1 import frontend_pb2, frontend_pb2_grpc
from client import protocol
from client.config import ClientConfig, load_config
from client.core import ClientCore
from client.errors import (
    ProtocolError,
    Unauthenticated,
    Unavailable,
    VaultError,
    error_from_status,
)
from client.protocol import Done, Outbound, Status
from client.retry import RetryPolicy, RetryState, acall_with_retry
from client.session import login_request, wall_clock_ms
from client.vault import (
    Progress,
    channel_credentials,
    channel_options,
    decrypt_backup,
    default_config_path,
    encrypt_backup,
)
from vault_protocol.backup_key import BackupKey
from vault_protocol.ksf import Ksf

T = TypeVar("T")
_METHODS = ("GetChallenge", "Login", "Relay")


class AsyncConnector(Protocol):
    """How the asyncio client reaches frontends (injected by tests)."""

    def stub(self, address: str) -> Any:
        """The `grpc.aio` `Frontend` stub for `address`, opened on first use."""
        ...

    async def ready(self, address: str, timeout: float) -> bool:
        """Whether `address` has (or gets within `timeout`) a connection; sends nothing."""
        ...

    async def close(self) -> None:
        """Close every channel."""
        ...


class AioGrpcConnector:
    """One `grpc.aio` channel per frontend, opened lazily and reused."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._channels: dict[str, tuple[grpc.aio.Channel, frontend_pb2_grpc.FrontendStub]] = {}

    def _entry(self, address: str) -> tuple[grpc.aio.Channel, frontend_pb2_grpc.FrontendStub]:
        if address not in self._channels:
            creds = channel_credentials(self._config)
            options = channel_options(self._config)
            if creds is None:
                channel = grpc.aio.insecure_channel(address, options=options)
            else:
                channel = grpc.aio.secure_channel(address, creds, options=options)
            self._channels[address] = (channel, frontend_pb2_grpc.FrontendStub(channel))
        return self._channels[address]

    def stub(self, address: str) -> Any:
        return self._entry(address)[1]

    async def ready(self, address: str, timeout: float) -> bool:
        channel = self._entry(address)[0]
        # The common case costs no task and no timer: the channel is already connected.
        if channel.get_state() == grpc.ChannelConnectivity.READY:
            return True
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()


class AsyncVaultClient(ClientCore):
    """Asyncio client of the Backup Key Vault; arguments as `client.VaultClient`."""

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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Callable[[], float] = random.random,
        clock_ms: Callable[[], int] = wall_clock_ms,
        connector: AsyncConnector | None = None,
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
        self._connector = connector or AioGrpcConnector(config)
        self._login_lock = asyncio.Lock()

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> AsyncVaultClient:
        """Build from client.toml (`path`, else `$BKV_CONFIG`, else `./client.toml`)."""
        return cls(load_config(path if path is not None else default_config_path()), **kwargs)

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
        account = self.account
        challenge = await self._rpc(
            "GetChallenge", frontend_pb2.ChallengeRequest(account_id=account.account_id)
        )
        reply = await self._rpc(
            "Login", login_request(account, challenge.challenge, self.config.enrollment_token)
        )
        self._session.store(reply)

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

    async def encrypt_backup(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        key: BackupKey,
        progress: Progress | None = None,
    ) -> int:
        """`client.vault.encrypt_backup` in a worker thread."""
        return await asyncio.to_thread(
            lambda: encrypt_backup(src, dst, key, progress=progress, rng=self._rng)
        )

    async def decrypt_backup(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        key: BackupKey,
        progress: Progress | None = None,
    ) -> int:
        """`client.vault.decrypt_backup` in a worker thread."""
        return await asyncio.to_thread(lambda: decrypt_backup(src, dst, key, progress=progress))

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, flow: protocol.Flow[T]) -> T:
        # Only the advance that runs the KSF (Argon2id: a fifth of a second by default) goes to a
        # worker thread; the others (a blind, an HPKE seal or open: well under a millisecond)
        # run on the loop, which saves two thread hops per recovery.
        step = protocol.advance(flow)
        while not isinstance(step, Done):
            try:
                answer = await self._relay(step)
            except BaseException as err:  # noqa: BLE001 - thrown into the flow, which re-raises
                step = protocol.advance(flow, None, err)
                continue
            if step.step.runs_ksf_next:
                step = await asyncio.to_thread(protocol.advance, flow, answer)
            else:
                step = protocol.advance(flow, answer)
        return step.value

    async def _ensure_session(self) -> None:
        async with self._login_lock:  # concurrent calls share one login
            if self._session.token() is None:
                await self.login()

    async def _relay(self, outbound: Outbound) -> bytes:
        request = frontend_pb2.RelayRequest(envelope=outbound.envelope)
        state = self._step_retry(outbound.step)  # shared across the re-login below
        for auth_try in range(2):
            await self._ensure_session()
            try:
                reply = await self._rpc(
                    "Relay",
                    request,
                    metadata=self._session.metadata(),
                    state=state,
                )
                return bytes(reply.sealed_response)
            except Unauthenticated:
                # Refused before relaying: no guess counted; one fresh login, one more try.
                self._session.invalidate()
                if auth_try == 1:
                    raise
        raise AssertionError("unreachable")

    async def _attempt(self, method: str, request: Any, metadata: Any, remaining: float) -> Any:
        n = len(self.config.frontends)
        for offset in range(n):
            index = (self._preferred + offset) % n
            address = self.config.frontends[index]
            wait = min(self.config.connect_timeout_s, max(remaining, 0.001))
            if not await self._connector.ready(address, wait):
                continue  # nothing was sent to this one: skipping it cannot count a guess
            call = getattr(self._connector.stub(address), method)
            try:
                reply = await call(
                    request,
                    timeout=max(0.001, min(self.config.call_timeout_s, remaining)),
                    metadata=metadata,
                )
            except grpc.RpcError as err:
                error = error_from_status(err, where=address)
                if isinstance(error, Unavailable):
                    self._preferred = (index + 1) % n
                raise error from None
            self._preferred = index
            return reply
        raise Unavailable("no frontend could be reached", sent=False)

    async def _rpc(
        self,
        method: str,
        request: Any,
        *,
        metadata: Any = None,
        state: RetryState | None = None,
    ) -> Any:
        """One call with its retries: under `state` (a flow step's budget), or a fresh budget
        for a call that counts no guess."""
        if self._closed:
            raise ProtocolError("the client is closed")
        if method not in _METHODS:
            raise ValueError(method)
        try:
            return await acall_with_retry(
                lambda remaining: self._attempt(method, request, metadata, remaining),
                state or self._step_retry(),
                sleep=self._sleep,
            )
        except VaultError:
            raise
        except grpc.RpcError:  # defensive: nothing above should let one through
            raise ProtocolError(f"unexpected gRPC failure on {method}") from None
