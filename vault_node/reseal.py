"""A fleet rotation's re-seal pass: every record and group head still sealed with an older
epoch's `record` key is written back under the current one, so that the old keys can go.

Records are re-sealed on their next write anyway (a node seals with its seal epoch only); this
pass does the rest, in the background, on every node whose token's fleet state still accepts an
epoch other than the one it seals with (vault_node.fleet_keys). The decision to run is the
token's, never etcd's. Each rewrite is `VaultService.reseal`: one record, through the node's one
compare-and-swap loop, with its group's head and a (lazy) witness capture, its counters as they
were, audited `reseal`. The pass walks etcd's record keys from a random place (so the nodes of a
fleet mostly work on different records; a record another node re-sealed first is skipped by its
key name), then the group heads.

What it cannot re-seal it leaves, and says so: a value that does not open (tampered: refused and
audited, as a request would), and a RESERVED placeholder of a registration that may still be in
flight: a placeholder cannot be written twice, so it is erased instead (absent and reserved
answer alike), but only once no registration ticket of the old epoch can still name it
(`placeholder_delay_s` after this node switched sealing).

`bkv-cluster rotate-fleet` waits for the pass by reading etcd: it is over when no stored value
names an older key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from vault_node.fleet_keys import Keyring
from vault_node.key_meta import StoredValue
from vault_node.records import sealed_key_name
from vault_node.service import (
    RecordTampered,
    StoreRefused,
    Unavailable,
    VaultService,
)

log = logging.getLogger(__name__)

PAGE = 256  # records per etcd range
IDLE_RECHECK_S = 10.0  # while an older epoch is accepted: look again for stragglers this often
BACKOFF_S = 1.0  # after etcd or the witnesses failed a rewrite


def head_only_id(group: int) -> bytes:
    """A record id in `group` that no account has (real ids are 32-byte HMACs): re-sealing it
    rewrites the group's head alone (`transitions.reseal` on an absent key)."""
    return group.to_bytes(2, "big")


class ResealStore(Protocol):
    """What the pass reads of etcd (vault_node.store.EtcdStore, MemoryRecordStore)."""

    async def scan_records(self, start: bytes, limit: int) -> list[tuple[bytes, StoredValue]]: ...

    async def read_heads(self) -> list[tuple[int, StoredValue]]: ...


@dataclass
class PassReport:
    """What one pass found and did (logged; counts only, no ids)."""

    records: int = 0  # rewritten under the seal epoch's key
    heads: int = 0  # group heads rewritten alone
    placeholders: int = 0  # old placeholders erased
    deferred: int = 0  # old placeholders left for a later pass (a registration may use them)
    tampered: int = 0  # values that do not open: left as they are (refused, audited)
    failed: int = 0  # rewrites etcd or the witnesses did not confirm: tried again later
    stale_left: bool = field(default=False)  # an older key may still be named somewhere

    @property
    def wrote(self) -> int:
        return self.records + self.heads + self.placeholders


class Resealer:
    """The background pass of one node (started by the server; `wake` it at every reload)."""

    def __init__(
        self,
        service: VaultService,
        store: ResealStore,
        *,
        rate_per_s: float,
        placeholder_delay_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if rate_per_s <= 0 or placeholder_delay_s < 0:
            raise ValueError("rate_per_s must be > 0 and placeholder_delay_s >= 0")
        self._service = service
        self._store = store
        self._interval = 1.0 / rate_per_s
        self._placeholder_delay = placeholder_delay_s
        self._now = monotonic
        self._sleep = sleep
        self._rng = rng
        self._switched_at = monotonic()  # when this node took its current seal epoch
        self._seal = service.keyring.seal
        self._refused: set[bytes] = set()  # tampered ids of this epoch: not tried again
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    def keyring_changed(self, keyring: Keyring) -> None:
        """A reload took `keyring`: a new seal epoch restarts the placeholder clock."""
        if keyring.seal != self._seal:
            self._seal = keyring.seal
            self._switched_at = self._now()
            self._refused.clear()
        self._wake.set()

    async def run_once(self) -> PassReport:
        """One pass over every record and every group head."""
        report = PassReport()
        keyring = self._service.keyring
        stale = keyring.stale_record_labels
        if not stale:
            return report
        erase = self._now() - self._switched_at >= self._placeholder_delay
        await self._records(stale, erase, report)
        for group, stored in await self._store.read_heads():
            if sealed_key_name(stored.value) in stale:
                await self._one(head_only_id(group), False, report, is_head=True)
        self.passes += 1
        return report

    async def _records(self, stale: frozenset[str], erase: bool, report: PassReport) -> None:
        # From a random place to the end, then from the start to it: nodes spread their work.
        origin = self._rng(32)
        for start, stop in ((origin, None), (b"", origin)):
            cursor = start
            while True:
                page = await self._store.scan_records(cursor, PAGE)
                for record_id, stored in page:
                    if stop is not None and record_id.hex() >= stop.hex():
                        return
                    if sealed_key_name(stored.value) not in stale:
                        continue
                    if stored.meta.version == 1 and not erase:
                        report.deferred += 1  # a placeholder a registration may still use
                        report.stale_left = True
                        continue
                    await self._one(record_id, erase, report, placeholder=stored.meta.version == 1)
                last = page[-1][0] if page else b""
                if len(page) < PAGE or last == b"\xff" * len(last):
                    break
                cursor = (int.from_bytes(last, "big") + 1).to_bytes(len(last), "big")

    async def _one(
        self,
        record_id: bytes,
        erase: bool,
        report: PassReport,
        *,
        is_head: bool = False,
        placeholder: bool = False,
    ) -> None:
        if record_id in self._refused:
            report.tampered += 1
            return
        try:
            wrote = await self._service.reseal(record_id, erase_placeholder=erase)
        except RecordTampered:
            # Audited by the service; it stays refused (and named by its old key) until its
            # owner registers again or deletes it.
            self._refused.add(record_id)
            report.tampered += 1
            return
        except Unavailable:
            report.failed += 1
            report.stale_left = True
            await self._sleep(BACKOFF_S)
            return
        if wrote:
            if is_head:
                report.heads += 1
            elif placeholder:
                report.placeholders += 1
            else:
                report.records += 1
            await self._sleep(self._interval)

    async def run(self) -> None:
        """Pass after pass while an older epoch is accepted; idle otherwise until woken."""
        while True:
            self._wake.clear()
            if not self._service.keyring.stale_record_labels:
                await self._wake.wait()
                continue
            try:
                report = await self.run_once()
            except StoreRefused:
                log.error("re-seal pass stopped: the store guard refuses to serve")
                report = PassReport(stale_left=True)
            except Unavailable as exc:
                log.info("re-seal pass interrupted: %s", exc)
                report = PassReport(stale_left=True)
            if report.wrote or report.tampered or report.deferred or report.failed:
                log.info(
                    "re-seal pass %d (seal epoch %d): %d records, %d heads rewritten, %d old "
                    "placeholders erased; %d placeholders waiting; %d values refused as "
                    "tampered; %d to try again",
                    self.passes, self._seal, report.records, report.heads, report.placeholders,
                    report.deferred, report.tampered, report.failed,
                )  # fmt: skip
            if report.wrote and not report.failed:
                continue  # at once: a pass that wrote may have raced other writers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_RECHECK_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="reseal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
