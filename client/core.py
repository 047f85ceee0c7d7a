"""State and steps that `VaultClient` and `AsyncVaultClient` share; they add only the I/O.

The flows themselves are I/O-free in `client.protocol`; this is what is left around them that
does not depend on sync or async: the configuration, the account key, the session token, which
frontend to try first, and the context a flow runs in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.config import ClientConfig, ksf_named, load_fleet_key
from client.errors import BadInput
from client.protocol import FlowContext, Step
from client.retry import RetryPolicy, RetryState
from client.session import AccountKey, Session, new_account_id, wall_clock_ms
from vault_protocol.ksf import Ksf
from vault_protocol.opaque import OpaqueConfig


def resolve_ksf(config: ClientConfig, ksf: Ksf | str | None) -> Ksf:
    """The KSF to use: an explicit one, a preset name, or the config's preset."""
    if ksf is None:
        return ksf_named(config.ksf)
    if isinstance(ksf, str):
        return ksf_named(ksf)
    return ksf


class ClientCore:
    """Configuration, account and session of one client (not thread-safe)."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        account_id: str | None,
        key_dir: str | os.PathLike[str] | None,
        ksf: Ksf | str | None,
        retry: RetryPolicy | None,
        rng: Callable[[int], bytes],
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[], float],
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.config = config.validate()
        self.account_id = account_id
        base = Path(config.source).parent if config.source else Path.cwd()
        self.key_dir = Path(key_dir) if key_dir is not None else base
        self._ksf = resolve_ksf(config, ksf)
        self._retry = retry or RetryPolicy(overall_deadline_s=config.overall_deadline_s)
        self._rng = rng
        self._clock = clock
        self._uniform = uniform
        self._session = Session(clock_ms=clock_ms)
        # Start at a random frontend so that many clients spread over all of them.
        count = len(config.frontends)
        self._preferred = min(int(uniform() * count), count - 1)
        self._account: AccountKey | None = None
        self._fleet: Any = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(account_id={self.account_id!r}, "
            f"frontends={self.config.frontends!r})"
        )

    @property
    def account(self) -> AccountKey:
        """The account key, loaded from `key_dir` on first use (BadInput if there is none)."""
        if self._account is None:
            if not self.account_id:
                raise BadInput("no account: pass account_id (or --account / $BKV_ACCOUNT)")
            self._account = AccountKey.load(self.key_dir, self.account_id)
        return self._account

    def _new_account(self, account_id: str | None) -> str:
        """Make and keep a fresh account key (0600 file in `key_dir`); the session restarts."""
        account_id = account_id or self.account_id or new_account_id()
        self._account = AccountKey.create(self.key_dir, account_id)
        self.account_id = account_id
        self._session.invalidate()
        return account_id

    def _step_retry(self, step: Step | None = None) -> RetryState:
        """One retry budget for one step, shared by its tries before and after a fresh login:
        a try that may have counted a guess, then a refused session, must not give the guess
        step two more tries. None: a call outside a flow (login), which counts no guess."""
        return RetryState(
            self._retry,
            counts_guess=step is not None and step.counts_guess,
            finishes=step is not None and step.finishes,
            clock=self._clock,
            uniform=self._uniform,
        )

    def _context(self) -> FlowContext:
        if self._fleet is None:
            self._fleet = load_fleet_key(self.config)
        return FlowContext(
            fleet=self._fleet,
            account_id=self.account.account_id,
            opaque=OpaqueConfig(ksf=self._ksf),
            rng=self._rng,
        )
