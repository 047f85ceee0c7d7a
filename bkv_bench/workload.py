"""The operations of a bench run, against a real cluster through `client.AsyncVaultClient`.

Accounts are created and registered in a setup phase that is not measured, split into two pools:

* the *main* pool serves `recover`, `register` and `delete`. Accounts are used in turn (a FIFO
  queue, one operation per account at a time), so a `delete` never races a `recover` of the same
  account. A deleted account is re-registered when its turn comes, whatever operation was drawn,
  and that operation is counted as a `register` (and noted in `substituted`).
* the *wrong* pool serves wrong-password recoveries. Before an account could lock, its turn is
  spent re-registering it (again counted as a `register`), so no guess limit is ever reached and
  the right-password accounts are never touched by wrong guesses.

Security: passwords are random per account and per run, held only in memory, never printed; the
recovered keys are compared with the registered ones and dropped.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bkv_bench.config import Mix
from bkv_bench.histogram import Recorder
from client.aio import AioGrpcConnector, AsyncVaultClient
from client.config import ClientConfig
from client.errors import InvalidPassword, Locked, VaultError
from vault_protocol.backup_key import BackupKey

RESET_AT_GUESSES_LEFT = 2  # re-register a wrong-pool account before it gets this close to locking


class BenchSetupError(RuntimeError):
    """The setup phase could not register any account."""


class SharedConnector:
    """One `grpc.aio` channel per frontend shared by every bench account's client.

    Each client's `close()` leaves the channels open; `close_all()` closes them at the end.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._inner = AioGrpcConnector(config)

    def stub(self, address: str) -> Any:
        return self._inner.stub(address)

    async def ready(self, address: str, timeout: float) -> bool:
        return await self._inner.ready(address, timeout)

    async def close(self) -> None:
        return None

    async def close_all(self) -> None:
        await self._inner.close()


@dataclass(eq=False)
class Account:
    """One bench account: its client, password and the key it registered (never shown)."""

    client: AsyncVaultClient
    pool: str
    password: str = field(repr=False)
    key: BackupKey | None = field(default=None, repr=False)
    registered: bool = False
    guesses_left: int | None = None  # unknown until a wrong guess reports it


def error_name(err: BaseException) -> str:
    """The error type as the report shows it (class name; unexpected ones marked)."""
    if isinstance(err, VaultError):
        return type(err).__name__
    return f"unexpected:{type(err).__name__}"


def pool_sizes(accounts: int, mix: Mix) -> tuple[int, int]:
    """(main, wrong) pool sizes: wrong guesses get their share of the mix, at least one."""
    wrong_share = mix.fraction("wrong")
    if wrong_share <= 0 or accounts < 2:
        return accounts, 0
    if wrong_share >= 1:
        return 0, accounts
    wrong = min(accounts - 1, max(1, math.ceil(accounts * wrong_share)))
    return accounts - wrong, wrong


class Workload:
    """Runs bench operations and records each one in `recorder`."""

    def __init__(
        self,
        config: ClientConfig,
        key_dir: Path,
        *,
        ksf: str,
        recorder: Recorder,
        clock: Callable[[], float] = time.monotonic,
        run_id: str | None = None,
        client_factory: Callable[[ClientConfig, Path, str, Any], Any] | None = None,
    ) -> None:
        self._config = config
        self._key_dir = key_dir
        self._ksf = ksf
        self.recorder = recorder
        self._clock = clock
        self._run_id = run_id or secrets.token_hex(4)
        self._connector = SharedConnector(config)
        self._factory = client_factory
        self._main: asyncio.Queue[Account] = asyncio.Queue()
        self._wrong: asyncio.Queue[Account] = asyncio.Queue()
        self.accounts: list[Account] = []
        self.setup_failures: dict[str, int] = {}

    def _client(self) -> AsyncVaultClient:
        if self._factory is not None:  # tests: a fake client
            return self._factory(self._config, self._key_dir, self._ksf, self._connector)  # type: ignore[no-any-return]
        return AsyncVaultClient(
            self._config, key_dir=self._key_dir, ksf=self._ksf, connector=self._connector
        )

    # -- setup (not measured) --------------------------------------------------------------

    async def setup(self, accounts: int, mix: Mix, concurrency: int) -> None:
        """Create and register `accounts` accounts, `concurrency` at a time."""
        main, wrong = pool_sizes(accounts, mix)
        pools = ["main"] * main + ["wrong"] * wrong
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(index: int, pool: str) -> Account | None:
            async with gate:
                account = Account(self._client(), pool, secrets.token_urlsafe(18))
                try:
                    await account.client.create_account(f"bench-{self._run_id}-{index}")
                    await self._register(account)
                except Exception as err:  # noqa: BLE001 - counted, the run goes on without it
                    name = error_name(err)
                    self.setup_failures[name] = self.setup_failures.get(name, 0) + 1
                    return None
                return account

        made = await asyncio.gather(*(one(i, p) for i, p in enumerate(pools)))
        self.accounts = [a for a in made if a is not None]
        for account in self.accounts:
            (self._main if account.pool == "main" else self._wrong).put_nowait(account)
        if self._main.empty() and self._wrong.empty():
            raise BenchSetupError(f"no account could be registered: {self.setup_failures}")
        if main and self._main.empty():
            raise BenchSetupError("no account of the main pool could be registered")
        if wrong and self._wrong.empty():
            raise BenchSetupError("no account of the wrong-password pool could be registered")

    async def _register(self, account: Account) -> None:
        key = await account.client.register(account.password)
        account.key, account.registered, account.guesses_left = key, True, None

    # -- measured operations ---------------------------------------------------------------

    async def execute(self, op: str, started_at: float) -> None:
        """Run one operation drawn from the mix; record it with latency from `started_at`."""
        queue = self._wrong if op == "wrong" else self._main
        account = await queue.get()
        try:
            actual, error = await self._run(op, account)
        finally:
            queue.put_nowait(account)
        if actual != op:
            self.recorder.substituted[f"{op}->{actual}"] += 1
        now = self._clock()
        self.recorder.record(actual, now, now - started_at if error is None else None, error=error)

    def abandon(self, op: str, reason: str) -> None:
        """An operation that never ran (dropped by the open loop) or was cut off at the end."""
        self.recorder.record(op, self._clock(), None, error=reason)

    async def _run(self, op: str, account: Account) -> tuple[str, str | None]:
        near_lock = (
            account.guesses_left is not None and account.guesses_left <= RESET_AT_GUESSES_LEFT
        )
        if not account.registered or (op == "wrong" and near_lock):
            op = "register"
        try:
            if op == "register":
                await self._register(account)
            elif op == "recover":
                key = await account.client.recover(account.password)
                if key != account.key:
                    return op, "wrong_key"
            elif op == "delete":
                await account.client.delete()
                account.registered, account.key = False, None
            elif op == "wrong":
                return op, await self._wrong_guess(account)
            else:
                raise ValueError(f"unknown operation {op!r}")
        except Exception as err:  # noqa: BLE001 - every failure is counted by type, the run goes on
            return op, error_name(err)
        return op, None

    async def _wrong_guess(self, account: Account) -> str | None:
        try:
            await account.client.recover(account.password + "-not-it")
        except InvalidPassword as err:
            account.guesses_left = err.guesses_left
            return None
        except Locked:
            account.guesses_left = 0
            return "Locked"
        return "wrong_password_accepted"

    # -- teardown --------------------------------------------------------------------------

    async def cleanup(self, timeout_s: float = 30.0) -> int:
        """Delete every bench account's record (not measured); returns how many failed."""
        failed = 0
        gate = asyncio.Semaphore(16)

        async def one(account: Account) -> None:
            nonlocal failed
            try:
                async with gate:
                    await account.client.delete()
            except Exception:  # noqa: BLE001 - best effort; counted
                failed += 1

        pending = [one(a) for a in self.accounts if a.registered]
        if pending:
            try:
                await asyncio.wait_for(asyncio.gather(*pending), timeout_s)
            except TimeoutError:
                failed += 1
        await self._connector.close_all()
        return failed
