"""Membership: the node's key in etcd on a lease, our own keep-alive loop, and the fail-closed gate.

The node serves only while (a) its membership key is registered and (b) its last successful etcd
round trip (grant, put or lease refresh) is younger than the lease TTL. A refresh that fails is
tried once more at once (the etcd channel balances over every member, so the second try usually
reaches another one: one member restarting or catching up is not a lost quorum); when that fails
too the node is not-serving until a refresh succeeds. The loop keeps refreshing (or re-granting
and re-putting when the lease is gone) and the node serves again by itself when etcd answers.

Security: the gate is defence in depth. A node that still serves during the one quick retry
cannot evaluate a password without etcd: every evaluation first commits its attempt there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from vault_common.tasks import cancel_and_wait
from vault_node.store import NODES_PREFIX, LeaseStore, StoreUnavailable
from vault_node.store_guard import StoreRolledBack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberInfo:
    name: str
    dc: str
    address: str
    # The fleet key epochs the node took from its token (`Keyring.describe`): a progress report
    # for the operator's `rotate-fleet`, which waits until every node shows the epochs it set.
    # Nobody decides anything on it (etcd could forge it: it would only hurry an operator).
    fleet: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{NODES_PREFIX}{self.dc}/{self.name}"

    def value(self) -> bytes:
        entry: dict[str, Any] = {"name": self.name, "dc": self.dc, "address": self.address}
        if self.fleet is not None:
            entry["fleet"] = self.fleet
        return json.dumps(entry, separators=(",", ":")).encode("utf-8")


class Membership:
    """Keeps `info` registered in etcd on a lease of `ttl_s` seconds."""

    def __init__(
        self,
        store: LeaseStore,
        info: MemberInfo,
        ttl_s: int,
        *,
        monotonic: Callable[[], float],
        on_change: Callable[[bool], None] = lambda serving: None,
        retry_interval_s: float | None = None,
        quick_retry_s: float = 0.05,
        confirm: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._info = info
        self._ttl = ttl_s
        self._now = monotonic
        self._on_change = on_change
        self._refresh_interval = ttl_s / 3
        self._retry_interval = (
            retry_interval_s if retry_interval_s is not None else min(0.5, ttl_s / 3)
        )
        self._quick_retry = quick_retry_s
        # Run once before the node serves again after not serving (the store guard's probe).
        self._confirm = confirm
        self._failures = 0  # consecutive failed etcd round trips
        self._lease: int | None = None
        self._registered = False
        self._last_ok: float | None = None
        self._reported: bool | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def serving(self) -> bool:
        """Fail closed: registered and the last etcd round trip is younger than the TTL."""
        if not self._registered or self._last_ok is None:
            return False
        return self._now() - self._last_ok < self._ttl

    def lease_age_s(self) -> float:
        """Seconds since the last successful etcd round trip, NaN before the first (metrics)."""
        return math.nan if self._last_ok is None else self._now() - self._last_ok

    def _report(self) -> None:
        state = self.serving()
        if state != self._reported:
            self._reported = state
            log.info("membership %s: serving=%s", self._info.key, state)
            self._on_change(state)

    async def update(self, info: MemberInfo) -> None:
        """Announce `info` from now on (a reload changed the node's fleet epochs): put at once
        on the current lease when registered, else at the next registration."""
        self._info = info
        if self._lease is not None and self._registered:
            try:
                await self._store.put_leased(info.key, info.value(), self._lease)
            except StoreUnavailable:
                log.info("membership value not updated now; the next registration puts it")

    async def register_once(self) -> None:
        """Grant a lease and put the membership key (raises `StoreUnavailable`)."""
        lease = await self._store.grant_lease(self._ttl)
        await self._store.put_leased(self._info.key, self._info.value(), lease)
        await self._check_store()
        # Only a lease that carries our key counts; a lease whose put failed expires by itself.
        self._lease = lease
        self._last_ok = self._now()
        self._registered = True
        self._failures = 0
        self._report()

    async def _check_store(self) -> None:
        """The store guard's probe before serving (again). A latched alarm does not stop the
        node from staying announced: its accounts must keep reaching it, to be refused there."""
        if self._confirm is not None:
            with contextlib.suppress(StoreRolledBack):
                await self._confirm()

    async def step(self) -> float:
        """One iteration of the loop; returns how long to wait before the next one."""
        try:
            if self._lease is None:
                await self.register_once()
                return self._refresh_interval
            ttl_left = await self._store.keep_alive(self._lease)
            if ttl_left <= 0:
                # The lease expired while we could not refresh it: the key is gone with it.
                log.warning("membership lease expired; registering again")
                self._registered = False
                self._lease = None
                self._report()
                return 0.0
            if not self.serving():
                await self._check_store()
            self._last_ok = self._now()
            self._registered = True
            self._failures = 0
            self._report()
            return self._refresh_interval
        except StoreRolledBack:
            # The store guard latched an alarm: the node serves nothing until an operator
            # clears it; keep the lease loop alive (and quiet) meanwhile.
            self._registered = False
            self._report()
            return self._retry_interval
        except StoreUnavailable as exc:
            self._failures += 1
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "StoreUnavailable"
            if self._failures == 1 and self._lease is not None:
                log.info("membership refresh failed (%s); trying once more at once", cause)
                return self._quick_retry
            # Fail closed: a node that cannot reach etcd twice in a row must not evaluate
            # passwords (serving() also ends by itself once the last success is a TTL old).
            log.warning("membership refresh failed (%s): not serving", cause)
            self._registered = False
            self._report()
            return self._retry_interval

    async def run(self) -> None:
        """Run the keep-alive loop until `stop()`."""
        while not self._stopping.is_set():
            delay = await self.step()
            self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="membership")

    async def stop(self) -> None:
        """Stop the loop and revoke the lease (best effort), which removes the key at once."""
        self._stopping.set()
        await cancel_and_wait(self._task)
        self._registered = False
        self._report()
        if self._lease is not None:
            try:
                await self._store.revoke_lease(self._lease)
            except StoreUnavailable:
                log.warning("could not revoke the membership lease; it expires by itself")
            self._lease = None
