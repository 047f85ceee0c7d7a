"""Erasure that leaves no history: compact etcd right after a lockout or a delete.

A locked record's tombstone (or a delete) supersedes the record that held the wrapped key, but
etcd keeps every earlier value of a key readable (`etcdctl get KEY --rev=N`) until its history
is compacted past the erasing write. So after every lock or delete the node compacts etcd up to
that write's revision: coalesced (one compaction covers every erasure noted within `delay_s`),
retried with a bounded backoff while etcd is unavailable, and never more than one at a time.
etcd's own periodic auto-compaction (the cluster's `etcd_compaction_retention`) is the backstop
when the node dies first. Compaction removes history from etcd's API; the bytes of freed pages
stay in etcd's data file until it is defragmented (`bkv-cluster maintain --defrag`).

A compacted value could only ever serve a restore anyway: a sealed record does not open at any
key metadata but its own (vault_node.records), so writing it back gains nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from vault_common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


class Compactor:
    """Compacts etcd up to the latest erasure revision noted, in the background."""

    def __init__(
        self,
        compact: Callable[[int], Awaitable[None]],
        *,
        delay_s: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._compact = compact
        self._delay_s = delay_s
        self._sleep = sleep
        self._wanted = 0  # highest erasure revision noted
        self._done = 0  # highest revision compacted
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def compacted(self) -> int:
        """The highest revision this node has compacted etcd to."""
        return self._done

    @property
    def pending(self) -> int:
        """The revision still to be compacted to (0 when nothing is pending)."""
        return self._wanted if self._wanted > self._done else 0

    def note(self, revision: int) -> None:
        """An erasure committed at `revision`: its history must go."""
        if revision > self._wanted:
            self._wanted = revision
            self._wake.set()

    async def step(self) -> bool:
        """Compact once to what is pending; True when it succeeded (or nothing was pending)."""
        target = self._wanted
        if target <= self._done:
            return True
        try:
            await self._compact(target)
        except Exception as exc:  # noqa: BLE001 - retried: an erased record's history must go
            log.warning(
                "compaction to revision %d failed (%s); retrying", target, type(exc).__name__
            )
            return False
        self._done = max(self._done, target)
        log.info("compacted etcd history up to revision %d (an erasure)", target)
        return True

    async def run(self) -> None:
        backoff = self._delay_s
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._sleep(self._delay_s)  # coalesce erasures that come together
            while not await self.step():
                await self._sleep(backoff)
                backoff = min(MAX_BACKOFF_S, max(backoff, 0.1) * 2)
            backoff = self._delay_s

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="compactor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
