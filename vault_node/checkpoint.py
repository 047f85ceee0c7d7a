"""The store guard's state, kept in the node's own token so that a restart remembers it.

Two kinds of data object live in the token (never in etcd, which is what they check):

* `etcd_cluster`: the etcd cluster id the key ceremony pinned (8 bytes, big-endian), made once,
  not modifiable;
* `store_checkpoint`: a `sealed_pb2.StoreCheckpoint` (high-water mark, alarm, cluster id if the
  ceremony pinned none). SoftHSM cannot modify a data object's value, so each checkpoint is a
  new object with a higher sequence number, and the older ones are destroyed after it exists:
  a crash in between leaves two, and the highest sequence wins (about 4 ms per checkpoint).

At start the high-water mark is the larger of the checkpoint's and the last commit revision in
the node's audit log: the node writes (and flushes) that line before every evaluation, so a
node killed right after a guess still knows the guess's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError

from bkv.store.v1 import sealed_pb2
from vault_common.tasks import cancel_and_wait
from vault_node.store_guard import GuardState, StoreGuard, StoreRolledBack
from vault_node.token_api import DataObjects as DataObjects  # re-exported (witness_server)

log = logging.getLogger(__name__)

CHECKPOINT_LABEL = "store_checkpoint"
CLUSTER_PIN_LABEL = "etcd_cluster"
CLUSTER_ID_BYTES = 8
MAX_CHECKPOINT_BYTES = 4096


class CheckpointError(Exception):
    """The token's checkpoint objects are unreadable or contradictory."""


def encode_cluster_id(cluster_id: int) -> bytes:
    if not 0 < cluster_id < 1 << 64:
        raise ValueError("an etcd cluster id is a non-zero unsigned 64-bit number")
    return cluster_id.to_bytes(CLUSTER_ID_BYTES, "big")


def pinned_cluster_id(token: DataObjects) -> int:
    """The cluster id the ceremony pinned in this token, or 0 when none was."""
    values = token.read_data(CLUSTER_PIN_LABEL)
    if not values:
        return 0
    if len(values) > 1 or len(values[0]) != CLUSTER_ID_BYTES:
        raise CheckpointError("the token's etcd cluster pin is malformed (or there are several)")
    return int.from_bytes(values[0], "big")


def latest_checkpoint(token: DataObjects) -> sealed_pb2.StoreCheckpoint:
    """The checkpoint with the highest sequence (an empty one when there is none)."""
    best = sealed_pb2.StoreCheckpoint()
    for value in token.read_data(CHECKPOINT_LABEL):
        if len(value) > MAX_CHECKPOINT_BYTES:
            raise CheckpointError("a store checkpoint in the token is oversized")
        try:
            checkpoint = sealed_pb2.StoreCheckpoint.FromString(value)
        except DecodeError:
            raise CheckpointError("a store checkpoint in the token does not parse") from None
        if checkpoint.sequence >= best.sequence:
            best = checkpoint
    return best


def load_state(token: DataObjects, audit_high_water: int) -> tuple[GuardState, int]:
    """The guard's state at start, and the sequence of the checkpoint it came from."""
    checkpoint = latest_checkpoint(token)
    pin = pinned_cluster_id(token)
    if pin and checkpoint.cluster_id and pin != checkpoint.cluster_id:
        raise CheckpointError("the token's checkpoint names another etcd cluster than its pin")
    state = GuardState(
        cluster_id=pin or checkpoint.cluster_id,
        high_water=max(checkpoint.high_water, audit_high_water),
        alarm=checkpoint.alarm,
        alarm_revision=checkpoint.alarm_revision,
        alarmed_groups=frozenset(checkpoint.alarmed_groups),
        accepted_at_ms=checkpoint.accepted_at_ms,
    )
    return state, checkpoint.sequence


def write_state(token: DataObjects, state: GuardState, sequence: int) -> None:
    """Store `state` as checkpoint number `sequence`."""
    checkpoint = sealed_pb2.StoreCheckpoint(
        sequence=sequence,
        cluster_id=state.cluster_id,
        high_water=state.high_water,
        alarm=state.alarm,
        alarm_revision=state.alarm_revision,
        alarmed_groups=sorted(state.alarmed_groups),
        accepted_at_ms=state.accepted_at_ms,
    )
    token.replace_data(CHECKPOINT_LABEL, checkpoint.SerializeToString())


class Checkpointer:
    """Keeps the token's checkpoint up to date with the guard, and probes etcd while idle.

    Every `interval_s` (and at once after an alarm): one linearizable read through `probe`, so
    that a rollback is seen even when no request comes (before later writes could carry the
    store past the mark again), then a checkpoint if the state changed since the last one.
    """

    def __init__(
        self,
        token: DataObjects,
        guard: StoreGuard,
        sequence: int,
        *,
        interval_s: float,
        probe: Callable[[], Awaitable[None]],
    ) -> None:
        self._token = token
        self._guard = guard
        self._sequence = sequence
        self._saved: GuardState | None = None  # the first save always writes
        self._interval_s = interval_s
        self._probe = probe
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Checkpoint as soon as possible (after an alarm)."""
        self._wake.set()

    def save(self) -> bool:
        """Write a checkpoint if the guard changed since the last one; True when written."""
        state = self._guard.state()
        if state == self._saved:
            return False
        write_state(self._token, state, self._sequence + 1)
        self._sequence += 1
        self._saved = state
        return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if not self._guard.alarm:
                try:
                    await self._probe()
                except StoreRolledBack:
                    pass  # the guard holds the alarm now; it is saved below
                except Exception as exc:  # noqa: BLE001 - etcd down: nothing to learn this time
                    log.debug("store probe failed: %s", type(exc).__name__)
            try:
                self.save()
            except Exception:
                # The checkpoint is a second line (the audit log has the revisions too): log
                # it loudly and try again next time rather than take the node down.
                log.exception("could not write the store checkpoint to the token")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="checkpoint")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.save()
