"""`VaultClient`: the synchronous client applications embed.

>>> with VaultClient.from_config("client.toml", account_id="alice") as vault:  # doctest: +SKIP
...     vault.create_account()              # once: makes alice's key file (0600) and logs in
...     key = vault.register("correct horse battery staple")
...     vault.status()                      # Status(registered=True, guesses_left=10, ...)
...     same = vault.recover("correct horse battery staple")
...     vault.encrypt_backup("chat.db", "chat.db.bkv", key)

How calls travel: one gRPC channel per frontend, opened lazily and reused; a call goes to the
frontend that last answered; a frontend that cannot connect within `connect_timeout_s` is skipped
(nothing was sent); one that answers UNAVAILABLE sends the next try to the next frontend, under
the policy of `client.retry`. Every RPC carries a deadline. A session token is fetched on first
use, refreshed before it expires, and once more on UNAUTHENTICATED.

Not thread-safe: use one client per thread (or `AsyncVaultClient` in asyncio code).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bkv.v1 import frontend_pb2, frontend_pb2_grpc
from client import protocol
from client.config import ClientConfig, load_config
from client.core import ClientCore
from client.errors import (
    BadInput,
    ProtocolError,
    Unauthenticated,
    Unavailable,
    VaultError,
    error_from_status,
)
from client.protocol import Outbound, Status
from client.retry import RetryPolicy, RetryState, call_with_retry
from client.session import login_request, wall_clock_ms
from vault_protocol import backup_file
from vault_protocol import errors as vp_errors
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
log = logging.getLogger(__name__)
Progress = Callable[[int], None]
_METHODS = ("GetChallenge", "Login", "Relay")
_CORRUPT = "the backup file is corrupt, truncated or the key is wrong"


def default_config_path() -> Path:
    """`$BKV_CONFIG` if set, else `./client.toml`."""
    return Path(os.environ.get("BKV_CONFIG") or "client.toml")


def channel_options(config: ClientConfig) -> list[tuple[str, Any]]:
    """gRPC channel options shared by the sync and asyncio clients."""
    options: list[tuple[str, Any]] = [
        # Reconnect quickly when a frontend restarts (gRPC's default backoff is 1 s, up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if not config.insecure:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return options


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials trusting only the cluster CA (None with `insecure = true`)."""
    if config.insecure:
        log.warning("insecure = true: plaintext gRPC to the frontends (tests only)")
        return None
    try:
        return grpc.ssl_channel_credentials(root_certificates=Path(config.ca).read_bytes())
    except OSError:
        raise BadInput(f"cannot read the cluster CA {config.ca}") from None


class Connector(Protocol):
    """How the client reaches frontends: one stub per address, reused; injected by tests."""

    def stub(self, address: str) -> Any:
        """The `Frontend` stub for `address` (its channel is opened on first use)."""
        ...

    def ready(self, address: str, timeout: float) -> bool:
        """Whether `address` has (or gets within `timeout`) a connection; sends nothing."""
        ...

    def close(self) -> None:
        """Close every channel."""
        ...


class GrpcConnector:
    """One gRPC channel per frontend, opened lazily, reused across calls, TLS unless insecure.

    Readiness is probed with the frontend's health service, not with `channel_ready_future`:
    that one leaves a connectivity-polling thread which raises "Channel closed" when the channel
    is closed under it (grpc/grpc#18995). A frontend stays "confirmed" until a call to it fails
    with UNAVAILABLE; only then is it probed again.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._channels: dict[str, tuple[grpc.Channel, frontend_pb2_grpc.FrontendStub]] = {}
        self._confirmed: set[str] = set()

    def _entry(self, address: str) -> tuple[grpc.Channel, frontend_pb2_grpc.FrontendStub]:
        if address not in self._channels:
            creds = channel_credentials(self._config)
            options = channel_options(self._config)
            if creds is None:
                channel = grpc.insecure_channel(address, options=options)
            else:
                channel = grpc.secure_channel(address, creds, options=options)
            self._channels[address] = (channel, frontend_pb2_grpc.FrontendStub(channel))
        return self._channels[address]

    def stub(self, address: str) -> Any:
        return _ForgetOnUnavailable(
            self._entry(address)[1], lambda: self._confirmed.discard(address)
        )

    def ready(self, address: str, timeout: float) -> bool:
        if address in self._confirmed:
            return True
        health = health_pb2_grpc.HealthStub(self._entry(address)[0])
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False  # nothing of the vault protocol was sent to this frontend
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return False
        self._confirmed.add(address)
        return True

    def close(self) -> None:
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()
        self._confirmed.clear()


class _ForgetOnUnavailable:
    """A stub whose calls drop the frontend's "confirmed" mark when they fail with UNAVAILABLE."""

    def __init__(self, stub: Any, forget: Callable[[], None]) -> None:
        self._stub = stub
        self._forget = forget

    def __getattr__(self, method: str) -> Callable[..., Any]:
        call = getattr(self._stub, method)

        def invoke(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(*args, **kwargs)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    self._forget()
                raise

        return invoke


class CorruptBackup(BadInput):
    """The backup file is corrupt, truncated, not a backup, or the key is wrong.

    Retry: never as is (the same bytes and key fail the same way).
    """


@contextlib.contextmanager
def _atomic_output(dst: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A temp file beside `dst`, renamed onto it only when the block succeeds; removed otherwise."""
    target = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_source(src: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(src, "rb")  # closed by the caller's `with`
    except OSError as err:
        raise BadInput(f"cannot read {src}: {err.strerror}") from None


def encrypt_backup(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    key: BackupKey,
    *,
    progress: Progress | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> int:
    """Encrypt file `src` into `dst` in constant memory; returns the plaintext size.

    `dst` appears only complete (written beside it, then renamed).
    """
    with _open_source(src) as fin:
        try:
            with _atomic_output(dst) as fout:
                return backup_file.encrypt_stream(fin, fout, key, rng, progress=progress)
        except OSError as err:
            raise BadInput(f"cannot write {dst}: {err.strerror}") from None


def decrypt_backup(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    key: BackupKey,
    *,
    progress: Progress | None = None,
) -> int:
    """Decrypt backup file `src` into `dst` in constant memory; returns the plaintext size.

    Raises CorruptBackup for any failure to decrypt; `dst` is then left untouched.
    """
    with _open_source(src) as fin:
        try:
            with _atomic_output(dst) as fout:
                return backup_file.decrypt_stream(fin, fout, key, progress=progress)
        except vp_errors.ProtocolError:
            raise CorruptBackup(_CORRUPT) from None
        except OSError as err:
            raise BadInput(f"cannot write {dst}: {err.strerror}") from None


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

    @classmethod
    def from_args(
        cls,
        *,
        frontends: list[str] | tuple[str, ...],
        fleet_public_key: str,
        fleet_id: str,
        ca: str = "",
        server_name: str = "localhost",
        insecure: bool = False,
        **kwargs: Any,
    ) -> VaultClient:
        """Build without a file; the arguments mean what client.toml's [cluster] fields mean."""
        config = ClientConfig(
            frontends=tuple(frontends),
            ca=ca,
            server_name=server_name,
            fleet_public_key=fleet_public_key,
            fleet_id=fleet_id,
            insecure=insecure,
        )
        return cls(config, **kwargs)

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
        account = self.account
        challenge = self._rpc(
            "GetChallenge", frontend_pb2.ChallengeRequest(account_id=account.account_id)
        )
        reply = self._rpc(
            "Login", login_request(account, challenge.challenge, self.config.enrollment_token)
        )
        self._session.store(reply)

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
        request = frontend_pb2.RelayRequest(envelope=outbound.envelope)
        state = self._step_retry(outbound.step)  # shared across the re-login below
        for auth_try in range(2):
            if self._session.token() is None:
                self.login()
            try:
                reply = self._rpc(
                    "Relay",
                    request,
                    metadata=self._session.metadata(),
                    state=state,
                )
                return bytes(reply.sealed_response)
            except Unauthenticated:
                # The frontend refused the session before relaying: no guess was counted, so
                # one fresh login and one more try are safe.
                self._session.invalidate()
                if auth_try == 1:
                    raise
        raise AssertionError("unreachable")

    def _attempt(self, method: str, request: Any, metadata: Any, remaining: float) -> Any:
        """One try: the first frontend (from the preferred one) that connects gets the call."""
        n = len(self.config.frontends)
        for offset in range(n):
            index = (self._preferred + offset) % n
            address = self.config.frontends[index]
            wait = min(self.config.connect_timeout_s, max(remaining, 0.001))
            if not self._connector.ready(address, wait):
                continue  # nothing was sent to this one: skipping it cannot count a guess
            call = getattr(self._connector.stub(address), method)
            try:
                reply = call(
                    request,
                    timeout=max(0.001, min(self.config.call_timeout_s, remaining)),
                    metadata=metadata,
                )
            except grpc.RpcError as err:
                error = error_from_status(err, where=address)
                if isinstance(error, Unavailable):
                    self._preferred = (index + 1) % n  # the next try goes to the next frontend
                raise error from None
            self._preferred = index
            return reply
        raise Unavailable("no frontend could be reached", sent=False)

    def _rpc(
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
            return call_with_retry(
                lambda remaining: self._attempt(method, request, metadata, remaining),
                state or self._step_retry(),
                sleep=self._sleep,
            )
        except VaultError:
            raise
        except grpc.RpcError:  # defensive: nothing above should let one through
            raise ProtocolError(f"unexpected gRPC failure on {method}") from None
