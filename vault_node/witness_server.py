"""A witness: the `bkv.v1.Witness` service one vault node per data centre runs for the fleet.

It keeps every record group's recent chain of heads (`witness_core.WitnessState`) and answers
capture requests with a MAC under the fleet's `witness` key. What it has captured survives a
restart twice over: each head it captures is appended to its journal file and flushed before the
answer leaves (as the audit log is before an evaluation), and the latest heads are checkpointed
as a data object in its token. After a start it answers nothing but NOT_READY until it has
caught up from a majority of the witnesses (itself included): per group the latest head any of
them holds. The checkpoint trails the journal by at most `checkpoint_interval_ms` or
`CHECKPOINT_CAPTURES` heads (what that window means: beside the constant). The latest head
every write was answered on is held by a majority, and any two
majorities share a witness, so that one brings it back. The documented limit: a majority of
witnesses that lost both their journal and their checkpoint at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from bkv.store.v1 import sealed_pb2
from bkv.v1 import witness_pb2, witness_pb2_grpc
from vault_common.tasks import cancel_and_wait
from vault_node.checkpoint import DataObjects
from vault_node.heads import HASH_LEN, RECENT
from vault_node.witness_core import (
    MAX_TOLD,
    NONCE_LEN,
    Ref,
    Verdict,
    WitnessState,
    capture_mac_input,
    heads_mac_input,
    majority,
    session_key_input,
    session_mac,
)
from vault_node.witnessing import RemoteWitnesses, verify_heads

log = logging.getLogger(__name__)

HEADS_LABEL = "witness_heads"
CATCH_UP_RETRY_S = 0.5
JOURNAL_COMPACT_BYTES = 4 << 20
# A token checkpoint goes out every `checkpoint_interval_ms` (5 s by default) or after this many
# newly captured heads, whichever comes first, and at a clean stop. It is the second copy: the
# journal, flushed before every answer, is the first. What the bound opens: a witness restarted
# with its journal deleted but its token intact starts from heads at most that old, then catches
# up from a majority before it answers anything, so with the other witnesses intact it loses
# nothing. Only when a majority of witnesses lose their journals at once does the fleet forget the
# heads of that last window; a store restored to a snapshot taken inside it then looks new (its
# heads extend the checkpointed chains), so at most the guesses of that window come back; older
# snapshots are refused as rollbacks as before (docs/architecture.md, the restart limits).
CHECKPOINT_CAPTURES = 2048


def read_journal(path: Path) -> list[Ref]:
    """Every head the journal holds (the latest per group wins when loaded); a torn line is
    skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out: list[Ref] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            out.append(Ref(int(entry["g"]), int(entry["v"]), bytes.fromhex(entry["h"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def read_checkpoint(token: DataObjects) -> tuple[list[Ref], int, bool]:
    """The heads of the token's newest witness checkpoint, its sequence, and whether an
    operator's `witness-reset` asked for the store's heads to be adopted."""
    best = sealed_pb2.WitnessCheckpoint()
    for value in token.read_data(HEADS_LABEL):
        try:
            checkpoint = sealed_pb2.WitnessCheckpoint.FromString(value)
        except DecodeError:
            continue
        if checkpoint.sequence >= best.sequence:
            best = checkpoint
    refs: list[Ref] = []
    for raw in best.heads:
        try:
            refs.append(Ref.of(witness_pb2.HeadRef.FromString(raw)))
        except DecodeError:
            continue
    return refs, best.sequence, best.adopt_store


class WitnessServer(witness_pb2_grpc.WitnessServicer):  # type: ignore[misc]
    """The witness's state, its persistence and its gRPC answers (also called in-process by
    its own node: `name`, `capture`, `heads` make it a `witnessing.CaptureEndpoint`)."""

    def __init__(
        self,
        name: str,
        groups: int,
        witnesses: int,
        token: Any,
        journal: Path,
        *,
        checkpoint_interval_s: float,
        rng: Callable[[int], bytes] = os.urandom,
        on_verdict: Callable[[Verdict, bool], None] = lambda verdict, told: None,
    ) -> None:
        self.name = name
        self._rng = rng
        self._on_verdict = on_verdict  # metrics: each judgement, and whether it was only told
        self._token = token
        self._journal_path = journal
        self._witnesses = witnesses
        self._interval = checkpoint_interval_s
        loaded, self._sequence, self.adopt_store = read_checkpoint(token)
        if self.adopt_store:
            # The operator accepted the store as it is (`witness-reset`): what this witness
            # held before, journal included, is forgotten; the store's heads replace it.
            loaded = []
            journal.unlink(missing_ok=True)
        loaded += read_journal(journal)
        self.state = WitnessState(groups, loaded, ready=witnesses == 1 and not self.adopt_store)
        self._saved = self._table()
        journal.parent.mkdir(parents=True, exist_ok=True)
        self._compact_journal()
        self._journal = open(journal, "a", encoding="utf-8", buffering=1)
        self._tasks: list[asyncio.Task[Any]] = []
        self._peers: RemoteWitnesses | None = None
        self._behind_task: asyncio.Task[bool] | None = None
        self._behind_after = 0.0
        self._unsaved = 0  # heads journalled since the last token checkpoint
        self._due = asyncio.Event()  # set once `_unsaved` reaches CHECKPOINT_CAPTURES
        self._streams: set[asyncio.Task[Any]] = set()  # the open Captures calls' tasks
        self._closing: set[asyncio.Task[Any]] = set()  # those `close_streams` ended

    def _mac(self, data: bytes) -> bytes:
        return bytes(self._token.hmac_sha256("witness", data))

    def _table(self) -> dict[int, Ref]:
        return {ref.group: ref for ref in self.state.heads()}

    # -- persistence --

    def _record(self, refs: list[Ref]) -> None:
        """Append `refs` to the journal and flush: before the answer that depends on them."""
        for ref in refs:
            self._journal.write(
                json.dumps({"g": ref.group, "v": ref.version, "h": ref.hash.hex()}) + "\n"
            )
        self._journal.flush()
        self._unsaved += len(refs)
        if self._unsaved >= CHECKPOINT_CAPTURES:
            self._due.set()

    def _compact_journal(self) -> None:
        tmp = self._journal_path.with_name(self._journal_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for ref in self.state.heads():
                f.write(json.dumps({"g": ref.group, "v": ref.version, "h": ref.hash.hex()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._journal_path)

    def adopt(self, heads: list[Ref]) -> None:
        """Take `heads` (every group's head in the accepted store) as this witness's own, and
        checkpoint them: the reset is done once the token holds them."""
        self.state = WitnessState(self.state.groups, heads, ready=self.state.ready)
        self._record(self.state.heads())
        self.checkpoint(force=True)
        self.adopt_store = False
        log.warning("witness adopted %d group heads from the accepted store", len(heads))

    def checkpoint(self, *, force: bool = False) -> bool:
        """The latest heads into the token when they changed (and a compact journal)."""
        table = self._table()
        if table == self._saved and not force:
            return False
        self._sequence += 1
        message = sealed_pb2.WitnessCheckpoint(
            sequence=self._sequence,
            heads=[ref.message().SerializeToString() for ref in table.values()],
        )
        self._token.replace_data(HEADS_LABEL, message.SerializeToString())
        self._saved = table
        self._unsaved = 0
        self._due.clear()
        if self._journal_path.stat().st_size > JOURNAL_COMPACT_BYTES:
            self._journal.close()
            self._compact_journal()
            self._journal = open(self._journal_path, "a", encoding="utf-8", buffering=1)
        return True

    # -- answers --

    async def capture(self, request: witness_pb2.CaptureRequest) -> witness_pb2.CaptureReply:
        """Judge a capture (`judge`) and answer MAC'd: the gRPC answer to a peer."""
        return self.answer(request, self._mac)

    def answer(
        self, request: witness_pb2.CaptureRequest, mac: Callable[[bytes], bytes]
    ) -> witness_pb2.CaptureReply:
        """Judge a capture (`judge`) and answer it MAC'd with `mac` (the token's witness key,
        or a capture stream's session key)."""
        verdict, held = self.judge(request)
        head = Ref.of(request.head)
        tag = mac(capture_mac_input(self.name, request.nonce, int(verdict), head, held))
        return witness_pb2.CaptureReply(
            witness=self.name, verdict=int(verdict), held=held.message(), mac=tag
        )

    def judge(
        self, request: witness_pb2.CaptureRequest, *, told: bool = False
    ) -> tuple[Verdict, Ref]:
        """Judge a capture (witness_core.WitnessState.capture) and journal it; `told`: a
        capture a majority took without this witness, answered to no one."""
        base, head = Ref.of(request.base), Ref.of(request.head)
        groups = self.state.groups
        recent = [bytes(h) for h in request.base_recent]
        if (
            not (base.valid(groups) and head.valid(groups))
            or len(request.base_prev) != HASH_LEN
            or len(recent) > RECENT
            or any(len(h) != HASH_LEN for h in recent)
        ):
            verdict, held = Verdict.ROLLBACK, self.state.latest(base.group % groups)
        else:
            before = self.state.latest(base.group)
            verdict, held = self.state.capture(base, bytes(request.base_prev), head, recent)
            if verdict is Verdict.CAPTURED and held != before:
                self._record([held])
        self._on_verdict(verdict, told)
        if verdict is Verdict.BEHIND:
            self._catch_up_soon()
        if verdict is Verdict.ROLLBACK:
            log.error(
                "witness: group %d capture refused as a rollback: base version %d, held %d",
                base.group, base.version, held.version,
            )  # fmt: skip
        return verdict, held

    async def heads(self, request: witness_pb2.HeadsRequest) -> witness_pb2.HeadsReply:
        refs = self.state.heads()
        ready = self.state.ready
        mac = self._mac(heads_mac_input(self.name, request.nonce, ready, refs))
        return witness_pb2.HeadsReply(
            witness=self.name, heads=[r.message() for r in refs], mac=mac, ready=ready
        )

    async def Capture(self, request: Any, context: Any) -> Any:
        return await self.capture(request)

    async def Heads(self, request: Any, context: Any) -> Any:
        return await self.heads(request)

    async def Captures(self, frames: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """A writer's long-lived capture stream: one capture at a time, each judged and
        journalled exactly as a unary `Capture`, its answer MAC'd under the stream's session
        key (witness.proto). Ended by `close_streams` when the witness stops."""
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            key = b""
            mac: Callable[[bytes], bytes] = self._mac  # replaced by the session's at once
            async for frame in frames:
                opening = not key
                if len(frame.session_nonce) != (NONCE_LEN if opening else 0):
                    # Only a vault node reaches this port (mTLS); one that sends what ours never
                    # send is cut off, and nothing of the frame is logged.
                    log.warning("capture stream: a malformed frame, stream closed")
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed frame")
                own_nonce = b""
                if opening:
                    own_nonce = self._rng(NONCE_LEN)
                    # Security: the session key is the token's HMAC over both fresh nonces: no
                    # one without the fleet's witness key can MAC an answer on this stream, and
                    # no answer of another stream (another key) is taken for one of this.
                    key = self._mac(session_key_input(self.name, frame.session_nonce, own_nonce))
                    mac = functools.partial(session_mac, key)
                for told in frame.told[:MAX_TOLD]:
                    self.judge(told, told=True)  # answered to no one; `judge` logs a ROLLBACK
                if not frame.HasField("capture"):
                    yield witness_pb2.CaptureFrameReply(id=frame.id, session_nonce=own_nonce)
                    continue
                reply = self.answer(frame.capture, mac)
                yield witness_pb2.CaptureFrameReply(
                    id=frame.id, reply=reply, session_nonce=own_nonce
                )
        except asyncio.CancelledError:
            if task not in self._closing:
                raise  # the writer went away: gRPC cancelled the call
            # `close_streams`: end the call with a status (OK) rather than leave it open, which
            # a graceful server stop would wait for.
            self._closing.discard(task)
        finally:
            if task is not None:
                self._streams.discard(task)

    def close_streams(self) -> None:
        """End every open capture stream (at a stop: a graceful server stop would otherwise
        wait its whole grace period for the writers' idle streams). Their writers ask again
        over a new stream or a unary call, as after any broken stream."""
        for task in list(self._streams):
            self._closing.add(task)
            task.cancel()

    # -- catch-up and the background loop --

    async def catch_up(self, peers: RemoteWitnesses) -> bool:
        """One round: ask every other witness for its heads; ready once a majority (this one
        included) answered, with every group's latest head among them merged in."""
        replies = await peers.heads_from_peers(self.name, verify_heads(self._mac))
        if len(replies) + 1 < majority(self._witnesses):
            return False
        moved: list[Ref] = []
        for reply in replies:
            moved += self.state.merge(Ref.of(h) for h in reply.heads)
        if moved:
            self._record(moved)
        self.state.ready = True
        log.info(
            "witness ready: caught up from %d of %d witnesses (%d groups moved)",
            len(replies) + 1, self._witnesses, len(moved),
        )  # fmt: skip
        return True

    def _catch_up_soon(self) -> None:
        """A running witness that answered BEHIND (it missed captures while cut off, more than
        a head's ancestor list bridges) pulls the other witnesses' heads in the background, at
        most one round per CATCH_UP_RETRY_S: it only ever moves forward, to heads they hold."""
        if self._peers is None or not self.state.ready or self._behind_task is not None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._behind_after:
            return
        self._behind_after = loop.time() + CATCH_UP_RETRY_S
        task = loop.create_task(self.catch_up(self._peers), name="witness-behind-catch-up")
        self._behind_task = task

        def done(t: asyncio.Task[bool]) -> None:
            self._behind_task = None
            if not t.cancelled() and t.exception() is not None:
                log.warning("witness catch-up failed: %s", type(t.exception()).__name__)

        task.add_done_callback(done)

    def start(
        self,
        peers: RemoteWitnesses,
        on_ready: Callable[[], None] = lambda: None,
        store_heads: Callable[[], Awaitable[list[Ref]]] | None = None,
    ) -> None:
        """Catch up (after adopting `store_heads()` if an operator reset this witness) and
        checkpoint in the background."""
        self._peers = peers
        loop = asyncio.get_running_loop()
        catch_up = self._catch_up_loop(peers, on_ready, store_heads)
        self._tasks.append(loop.create_task(catch_up, name="catch-up"))
        self._tasks.append(loop.create_task(self._checkpoint_loop(), name="witness-checkpoint"))

    async def _catch_up_loop(
        self,
        peers: RemoteWitnesses,
        on_ready: Callable[[], None],
        store_heads: Callable[[], Awaitable[list[Ref]]] | None,
    ) -> None:
        while self.adopt_store:
            if store_heads is None:
                log.error("witness reset by an operator, but no store to adopt heads from")
                return
            try:
                heads = await store_heads()
            except Exception as exc:  # noqa: BLE001 (etcd not reachable yet: retried)
                log.warning("witness: cannot read the store's heads yet: %s", type(exc).__name__)
                await asyncio.sleep(CATCH_UP_RETRY_S)
                continue
            self.adopt(heads)
            self.state.ready = self._witnesses == 1
        if self.state.ready:
            log.info("witness ready: the only witness of the fleet")
            on_ready()
            return
        while not await self.catch_up(peers):
            await asyncio.sleep(CATCH_UP_RETRY_S)
        on_ready()

    async def _checkpoint_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval)
            try:
                self.checkpoint()
            except Exception:
                log.exception("could not checkpoint the witness's heads")

    def close(self) -> None:
        """Close the journal (idempotent); `stop` does it after a last checkpoint."""
        if not self._journal.closed:
            self._journal.close()

    async def stop(self) -> None:
        if self._behind_task is not None:
            self._tasks.append(self._behind_task)
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        try:
            self.checkpoint()
        finally:
            self.close()
