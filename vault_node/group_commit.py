"""Group commit: the record writes that arrive within a short window go to etcd as one transaction.

`GroupCommitStore` is a `RecordStore` whose `write` waits at most `window_s` (about a
millisecond) for other writes, then sends every write gathered (at most `max_batch`) with the
underlying store's `write_many`: one transaction with each write's two compares (its record and
its group's head, as `write` compares them), all of their puts, and a failure branch that reads
every key. etcd spends far less per key in one transaction of several keys than in one
transaction per key (docs/performance.md), and the node makes one etcd call instead of several.

The rules of a single write hold for every write of a batch, exactly:

* **Commit.** Every write of a committed batch committed at the batch's revision, as if alone:
  its record and head keys each written once (etcd refuses a key twice in one transaction, and
  two writes of one group would both name the same head), so the metadata each caller derives
  (`KeyMeta.after_write`) is the key's.
* **Conflict.** When any compare fails, nothing of the batch was written. The failure branch
  read every key in the same transaction, so each write whose compares failed gets its keys as
  read there (current, as a failed single write's are); each write whose compares held is sent
  again as a single transaction, so that no request pays for another's conflict.
* **Unknown outcome.** An etcd failure while the batch was in flight reaches every caller of the
  batch as the same exception a single write raises (`StoreUnavailable`: the write may have
  applied), and each treats it as its own write's. A caller cancelled before its batch left is
  taken out of it (its write never leaves); one cancelled later may have been written, as a
  cancelled single write may.
* **Groups.** A batch holds at most one write per record group (and so per record): a second
  write of a group that is already in the open batch goes as a single transaction at once (it
  was decided on the same head as the first, so at most one of the two can commit anyway).

Nothing here decides anything about a record: the node's compare-and-swap loop, the witness
capture before any evaluation and the not-applied rules (vault_node.service) run as before on
what each write returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vault_node.config import MAX_GROUP_COMMIT_BATCH
from vault_node.key_meta import ABSENT, KeyMeta, StoredValue
from vault_node.store import ManyResult, RecordStore, Snapshot, Write, WriteResult

log = logging.getLogger(__name__)

MAX_BATCH = MAX_GROUP_COMMIT_BATCH  # writes per transaction: 2 compares, 2 puts, 2 reads each
MAX_BATCH_BYTES = 512 * 1024  # well under etcd's 1.5 MiB request limit


class BatchStore(RecordStore, Protocol):
    """A `RecordStore` that can also write several records and heads in one transaction."""

    async def write_many(self, writes: Sequence[Write]) -> ManyResult: ...


@dataclass
class _Batch:
    items: list[tuple[Write, asyncio.Future[WriteResult]]] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)
    size: int = 0


def _meta(stored: StoredValue | None) -> KeyMeta:
    return ABSENT if stored is None else stored.meta


def compares_hold(write: Write, snapshot: Snapshot) -> bool:
    """Whether `write`'s two compares hold for the keys as `snapshot` read them."""
    return (
        _meta(snapshot.record).mod_revision == write.expected.mod_revision
        and _meta(snapshot.head).mod_revision == write.expected_head.mod_revision
    )


class GroupCommitStore:
    """`store` with its writes gathered into batches (see the module's docstring)."""

    def __init__(self, store: BatchStore, *, window_s: float, max_batch: int = 16) -> None:
        if not 0 < window_s <= 0.1 or not 2 <= max_batch <= MAX_BATCH:
            raise ValueError(f"group commit: window in (0, 0.1] s, batch in 2..{MAX_BATCH}")
        self._store = store
        self._window_s = window_s
        self._max_batch = max_batch
        self._open: _Batch | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self.writes = 0  # writes asked for
        self.batches = 0  # transactions of more than one write (for tests and logs)
        self.batched = 0  # writes they carried

    async def read(self, record_id: bytes, group: int) -> Snapshot:
        return await self._store.read(record_id, group)

    async def compact(self, revision: int) -> None:
        await self._store.compact(revision)

    async def write(
        self,
        record_id: bytes,
        value: bytes | None,
        expected: KeyMeta,
        group: int,
        head: bytes,
        expected_head: KeyMeta,
    ) -> WriteResult:
        self.writes += 1
        write = Write(record_id, value, expected, group, head, expected_head)
        batch = self._open
        if batch is not None and group in batch.groups:
            return await self._single(write)  # one write per group and batch (module doc)
        if batch is None:
            batch = self._open = _Batch()
            asyncio.get_running_loop().call_later(self._window_s, self._close, batch)
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        batch.items.append((write, future))
        batch.groups.add(group)
        batch.size += len(head) + len(value or b"")
        if len(batch.items) >= self._max_batch or batch.size >= MAX_BATCH_BYTES:
            self._close(batch)
        return await future

    def _close(self, batch: _Batch) -> None:
        """Send `batch` (its window ended or it is full); a later call for it does nothing."""
        if self._open is not batch:
            return
        self._open = None
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _single(self, write: Write) -> WriteResult:
        return await self._store.write(
            write.record_id, write.value, write.expected, write.group, write.head,
            write.expected_head,
        )  # fmt: skip

    async def _flush(self, batch: _Batch) -> None:
        # A caller cancelled before its batch left (its deadline passed) is taken out: its
        # write never leaves this node.
        items = [(w, f) for w, f in batch.items if not f.done()]
        if not items:
            return
        if len(items) == 1:
            write, future = items[0]
            await self._settle(future, self._single(write))
            return
        writes = [w for w, _ in items]
        try:
            revision, snapshots = await self._store.write_many(writes)
        except asyncio.CancelledError:
            for _, future in items:
                future.cancel()  # the node is stopping: the outcome is unknown, as cancelled
            raise
        except Exception as exc:  # noqa: BLE001 - every caller gets what a single write raises
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.batched += len(items)
        if revision:
            for _, future in items:
                if not future.done():
                    future.set_result((revision, None))
            return
        retries = []
        for (write, future), snapshot in zip(items, snapshots, strict=True):
            if compares_hold(write, snapshot):
                # Another write's compare failed, not this one's: it goes again alone.
                retries.append(self._settle(future, self._single(write)))
            elif not future.done():
                future.set_result((0, snapshot))  # its own conflict, read by that transaction
        await asyncio.gather(*retries)

    @staticmethod
    async def _settle(future: asyncio.Future[WriteResult], work: Awaitable[WriteResult]) -> None:
        try:
            result = await work
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the caller, as its own write's
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def close(self) -> None:
        """Wait for the batches in flight (a stopping node's last writes)."""
        if self._open is not None:
            self._close(self._open)
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        log.info(
            "group commit: %d writes, %d of them in %d shared transactions",
            self.writes, self.batched, self.batches,
        )  # fmt: skip
