"""The writer's side of witnessing: have a majority of the fleet's witnesses capture a new head.

`VaultService` calls `capture(base, head)` after every committed record write: `base` is the head
the write was decided on (read from etcd), `head` its successor, committed in the same etcd
transaction. The answer says whether a majority of witnesses captured it (then, and only then, a
guess may be evaluated), or whether one of them showed etcd rolled back or forked for this group
(then the node latches an alarm for the group). `lazy` captures (the finish step's write, which
only forgives guesses) are sent without waiting: the next write of the group extends them.

Implementations: `LocalWitnesses` (in-process witness states: unit tests) and
`RemoteWitnesses` (the fleet's witnesses over node-to-node mTLS, answers MAC-verified in the
token; the node may itself be one of them).

Asking only as many as needed: a capture goes first to this node's own witness and to as many
peers as a majority still needs, taking turns among peers that answer; the others are asked
too when those fail or have not answered within HEDGE_S. A peer that was not asked is told the
capture on its next stream frame (`PeerWitness.tell`; at the latest after TELL_FLUSH_S), so its
chains stay current and it can bridge the group's next capture if it is asked then. Only peers
with capture streams are left out this way; without streams every witness is asked.

`confirm(head)` has a majority capture a head read from etcd (as the successor of its
predecessor, from the hashes it lists): a node that may have left a head in etcd unwitnessed
(a capture without majority, an etcd write of unknown outcome, a failed lazy capture) confirms the
head it is about to write on first, so that while witnesses are out of reach it writes nothing,
and no user loses a guess to an answer that cannot be given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from bkv.v1 import witness_pb2, witness_pb2_grpc
from vault_common.channels import reconnect_backoff
from vault_node.heads import ZERO_HASH, Head
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

log = logging.getLogger(__name__)

Rng = Callable[[int], bytes]
CAPTURE_TIMEOUT_S = 2.0
CAPTURE_RETRIES = 3
RETRY_BACKOFF_S = (0.02, 0.06, 0.15)
CAPTURE_STREAMS = 4  # capture streams per peer witness by default (witness.capture_streams)
UNARY_ONLY_S = 60.0  # a witness without the Captures stream is asked again after this long
HEDGE_S = 0.1  # the peers not asked first are asked too when no majority answered by then
SUSPECT_S = 5.0  # a peer that failed or was slow is not asked first for this long
TELL_FLUSH_S = 0.2  # captures waiting to be told to a peer go alone after this long


@dataclass(frozen=True)
class CaptureResult:
    """`captured`: a majority captured the head. `rollback`: a witness showed the base behind
    its chain or forked from it (evidence, MAC-verified); empty otherwise."""

    captured: bool
    rollback: str = ""
    answers: tuple[str, ...] = ()  # "<witness>:<verdict>", for logs and tests


class Witnessing(Protocol):
    async def capture(self, base: Head, head: Head, *, lazy: bool = False) -> CaptureResult:
        """Have a majority of witnesses capture `head` (the successor of `base`)."""
        ...

    async def confirm(self, head: Head) -> CaptureResult:
        """Have a majority of witnesses capture `head` as read from etcd (idempotent): the
        check before writing on a head that may sit in etcd unwitnessed."""
        ...

    def take_missed(self) -> bool:
        """Whether a lazy capture failed since the last call (its head may be unwitnessed)."""
        ...

    def note(self, base: Head, head: Head) -> None:
        """Tell only this node's own witness, in process, that `head` follows `base`: no peer
        is asked and nothing is awaited (`VaultService._witness`: a finish on a head this node
        saw witnessed; the group's next capture carries it to the others)."""
        ...


def predecessor(head: Head) -> Head:
    """`head`'s predecessor as far as a capture needs it (ref and its own ancestors), from the
    hashes `head` lists; `head.version` must be at least 1."""
    prev_prev = head.recent[0] if head.recent else ZERO_HASH
    return Head(
        head.group, head.version - 1, prev_prev, head.prev, head.meta, recent=head.recent[1:]
    )


def _tally(answers: Mapping[str, tuple[Verdict, Ref]], witnesses: int, base: Head) -> CaptureResult:
    captured = [name for name, (verdict, _) in answers.items() if verdict is Verdict.CAPTURED]
    rollbacks = [
        f"{name} holds version {held.version} (base {base.version})"
        for name, (verdict, held) in answers.items()
        if verdict is Verdict.ROLLBACK
    ]
    shown = tuple(f"{name}:{verdict.name.lower()}" for name, (verdict, _) in answers.items())
    return CaptureResult(
        captured=len(captured) >= majority(witnesses) and not rollbacks,
        rollback="; ".join(rollbacks),
        answers=shown,
    )


class LocalWitnesses:
    """Witness states in this process (unit tests; the fleet's logic without its network)."""

    def __init__(self, names: Sequence[str], groups: int, *, local: str | None = None) -> None:
        self.states = {name: WitnessState(groups, ready=True) for name in names}
        self.down: set[str] = set()  # witnesses that do not answer
        self.local = local  # the witness `note` tells (None: nobody, a node with no witness)
        self.calls = 0
        self.noted = 0
        self.missed = False

    async def capture(self, base: Head, head: Head, *, lazy: bool = False) -> CaptureResult:
        self.calls += 1
        await asyncio.sleep(0)
        answers = {
            name: state.capture(Ref.of(base.ref), base.prev, Ref.of(head.ref), base.recent)
            for name, state in self.states.items()
            if name not in self.down
        }
        result = _tally(answers, len(self.states), base)
        self.missed |= lazy and not result.captured
        return result

    async def confirm(self, head: Head) -> CaptureResult:
        if head.version == 0:
            return CaptureResult(captured=True, answers=("empty",))
        return await self.capture(predecessor(head), head)

    def take_missed(self) -> bool:
        missed, self.missed = self.missed, False
        return missed

    def note(self, base: Head, head: Head) -> None:
        self.noted += 1
        if self.local is not None and self.local not in self.down:
            self.states[self.local].capture(
                Ref.of(base.ref), base.prev, Ref.of(head.ref), base.recent
            )


class CaptureEndpoint(Protocol):
    """A witness this node can reach: its own (in-process) or a peer's (gRPC). A `PeerWitness`
    also has `ask`, whose answers may be MAC'd under a capture stream's session key."""

    name: str

    async def capture(self, request: witness_pb2.CaptureRequest) -> witness_pb2.CaptureReply: ...

    async def heads(self, request: witness_pb2.HeadsRequest) -> witness_pb2.HeadsReply: ...


@dataclass(frozen=True)
class Answer:
    """A witness's capture answer and the session key its MAC is under (None: the fleet's
    witness key, checked in the token)."""

    reply: witness_pb2.CaptureReply
    session_key: bytes | None = None


class _Stream:
    """One long-lived Captures call and its session (the key once the first answer came)."""

    __slots__ = ("call", "key", "nonce")

    def __init__(self, call: Any, nonce: bytes) -> None:
        self.call = call
        self.nonce = nonce
        self.key = b""


class PeerWitness:
    """A peer witness over node-to-node mTLS (this node's node-client certificate).

    Captures go over a pool of up to `streams` long-lived `Captures` streams (one capture at a
    time on each, like the frontend's pool of OpenStream streams: about half the CPU per message
    of a unary call), each answered under the stream's session key, which both sides derive in
    their token once per stream (`session`: the token's HMAC under the witness key). When every
    stream is busy, or `streams` is 0, a capture is a unary `Capture` (token MAC per answer).
    The rules are the unary call's: a capture not answered within CAPTURE_TIMEOUT_S raises
    TimeoutError and counts as no answer; a stream that breaks is dropped and the capture asked
    once more as a unary call (a capture is idempotent at a witness: a head it holds is
    CAPTURED again); a witness without the stream (UNIMPLEMENTED) gets unary calls for a while.
    """

    def __init__(
        self,
        name: str,
        address: str,
        credentials: grpc.ChannelCredentials,
        *,
        streams: int = 0,
        session: Callable[[bytes], bytes] | None = None,
        rng: Rng = os.urandom,
        clock: Callable[[], float] = time.monotonic,
        on_ask: Callable[[str], None] = lambda how: None,
    ) -> None:
        """`on_ask(how)`: called for every frame or call sent, `how` "stream", "unary" or
        "told" (a frame that only tells; metrics)."""
        self.name = name
        self.address = address
        self._on_ask = on_ask
        self._channel = grpc.aio.secure_channel(
            address,
            credentials,
            options=reconnect_backoff(initial_ms=100, max_ms=1000),
        )
        self._stub = witness_pb2_grpc.WitnessStub(self._channel)
        self._size = streams if session is not None else 0
        self._session = session
        self._rng = rng
        self._clock = clock
        self._idle: list[_Stream] = []
        self._open = 0
        self._ids = itertools.count(1)
        self.unary_until = 0.0
        self.suspect_until = 0.0  # RemoteWitnesses: not asked first until then
        self._told: deque[witness_pb2.CaptureRequest] = deque(maxlen=MAX_TOLD)
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    @property
    def tells(self) -> bool:
        """Whether captures it was not asked can reach it on its streams (`tell`)."""
        return bool(self._size) and self.unary_until <= self._clock()

    def tell(self, request: witness_pb2.CaptureRequest) -> None:
        """Queue a capture a majority took without this peer: it rides on the next frame sent
        to it, or goes alone after TELL_FLUSH_S. The oldest are dropped past MAX_TOLD (the
        witness then bridges what it can and catches up on the rest, as after a restart)."""
        self._told.append(request)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(TELL_FLUSH_S, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush = None
        if self._told:
            task = asyncio.get_running_loop().create_task(self._send_told())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _send_told(self) -> None:
        stream = self._checkout()
        if stream is None:
            if self._told and self.tells:  # every stream busy: their next frames carry them
                self._flush = asyncio.get_running_loop().call_later(TELL_FLUSH_S, self._flush_soon)
            return
        self._on_ask("told")
        try:
            await self._use(stream, None)
        except (TimeoutError, grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError) as exc:
            log.debug("witness %s was not told: %s", self.name, type(exc).__name__)

    async def capture(self, request: witness_pb2.CaptureRequest) -> witness_pb2.CaptureReply:
        """A unary Capture (its answer MAC'd under the fleet's witness key)."""
        self._on_ask("unary")
        reply: witness_pb2.CaptureReply = await self._stub.Capture(
            request, timeout=CAPTURE_TIMEOUT_S
        )
        return reply

    async def ask(self, request: witness_pb2.CaptureRequest) -> Answer:
        """A capture over an idle or new stream of the pool, else a unary call."""
        stream = self._checkout()
        if stream is None:
            return Answer(await self.capture(request))
        self._on_ask("stream")
        try:
            reply = await self._use(stream, request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError) as exc:
            if isinstance(exc, grpc.aio.AioRpcError) and (
                exc.code() == grpc.StatusCode.UNIMPLEMENTED
            ):
                log.info("witness %s has no capture stream: unary calls", self.name)
                self.unary_until = self._clock() + UNARY_ONLY_S
            # A capture is idempotent at a witness, so asking again cannot count anything
            # twice; a witness that is really gone fails this call too (no answer).
            return Answer(await self.capture(request))
        return Answer(reply, stream.key)

    async def _use(
        self, stream: _Stream, request: witness_pb2.CaptureRequest | None
    ) -> witness_pb2.CaptureReply:
        """One exchange on a checked-out stream, bounded by CAPTURE_TIMEOUT_S: the stream goes
        back to the idle list after it, and is dropped on any failure (a timeout: it may be
        stuck, so nothing queues behind it; a cancellation by our caller), which is raised."""
        try:
            reply = await asyncio.wait_for(self._exchange(stream, request), CAPTURE_TIMEOUT_S)
        except BaseException:
            self._drop(stream)
            raise
        self._idle.append(stream)
        return reply

    def _checkout(self) -> _Stream | None:
        if not self._size or self.unary_until > self._clock():
            return None
        while self._idle:
            stream = self._idle.pop()
            if not stream.call.done():
                return stream
            self._open -= 1  # ended while idle (the witness stopped or the connection closed)
        if self._open >= self._size:
            return None
        self._open += 1
        return _Stream(self._stub.Captures(), self._rng(NONCE_LEN))

    def _drop(self, stream: _Stream) -> None:
        self._open -= 1
        stream.call.cancel()

    async def _exchange(
        self, stream: _Stream, request: witness_pb2.CaptureRequest | None
    ) -> witness_pb2.CaptureReply:
        """One frame and its reply: `request` (None: the frame only tells) and what waits to be
        told (lost with the frame if the stream breaks: the witness bridges or catches up)."""
        opening = not stream.key
        told = list(self._told)
        self._told.clear()
        frame = witness_pb2.CaptureFrame(
            id=next(self._ids),
            capture=request,
            session_nonce=stream.nonce if opening else b"",
            told=told,
        )
        await stream.call.write(frame)
        reply = await stream.call.read()
        if reply is grpc.aio.EOF or reply.id != frame.id:
            raise ConnectionError("capture stream ended or answered out of turn")
        if len(reply.session_nonce) != (NONCE_LEN if opening else 0):
            raise ConnectionError("capture stream: a malformed session nonce")
        if opening:
            assert self._session is not None
            # Security: the stream's key comes from our own token over both nonces; an answer
            # MAC'd under anything else fails the check in RemoteWitnesses._verify.
            stream.key = self._session(
                session_key_input(self.name, stream.nonce, reply.session_nonce)
            )
        result: witness_pb2.CaptureReply = reply.reply
        return result

    async def heads(self, request: witness_pb2.HeadsRequest) -> witness_pb2.HeadsReply:
        reply: witness_pb2.HeadsReply = await self._stub.Heads(request, timeout=CAPTURE_TIMEOUT_S)
        return reply

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        for task in list(self._flushing):
            task.cancel()
        for stream in self._idle:
            stream.call.cancel()
        self._idle.clear()
        await self._channel.close()


class RemoteWitnesses:
    """The fleet's witnesses: every configured one (this node's own among them, in-process,
    when it is one), answers MAC-verified with the token's `witness` key."""

    def __init__(
        self,
        endpoints: Sequence[CaptureEndpoint],
        witnesses: int,
        mac: Callable[[bytes], bytes],
        rng: Rng,
        *,
        clock: Callable[[], float] = time.monotonic,
        local: str | None = None,
    ) -> None:
        """`local`: the name of this node's own witness when it is one, an in-process endpoint
        whose answers need no MAC (`WitnessServer.judge`: no network between them)."""
        if witnesses < 1 or len(endpoints) != witnesses:
            raise ValueError("every configured witness needs an endpoint")
        self._endpoints = list(endpoints)
        self._witnesses = witnesses
        self._mac = mac
        self._rng = rng
        self._clock = clock
        self._local = local
        # This node's own witness (at most one endpoint) and the peers: whom a capture asks first.
        self._own = [e for e in self._endpoints if e.name == local]
        self._peers = [e for e in self._endpoints if e.name != local]
        # The own witness's in-process judgement (asked by `_ask`, told by `note`), if any.
        self._judge: Callable[..., tuple[Verdict, Ref]] | None = (
            getattr(self._own[0], "judge", None) if self._own else None
        )
        self._lazy: set[asyncio.Task[CaptureResult]] = set()
        self._missed = False
        self._turn = itertools.count()

    def _verify(
        self,
        endpoint: CaptureEndpoint,
        nonce: bytes,
        head: Ref,
        reply: Any,
        session_key: bytes | None = None,
    ) -> bool:
        if reply.witness != endpoint.name:
            return False
        held = Ref.of(reply.held)
        data = capture_mac_input(reply.witness, nonce, reply.verdict, head, held)
        expected = session_mac(session_key, data) if session_key else self._mac(data)
        # Security: a frontend, the network or etcd cannot make a witness's answer: the MAC
        # needs the fleet's witness key, inside the tokens.
        return bool(len(reply.mac) == len(expected) and _equal(reply.mac, expected))

    async def _ask(
        self,
        endpoint: CaptureEndpoint,
        request: witness_pb2.CaptureRequest,
        head: Ref,
        round_: _Round | None = None,
    ) -> tuple[Verdict, Ref] | None:
        if self._judge is not None and endpoint.name == self._local:
            # This node's own witness, in this process: no network between them, no MAC needed.
            verdict, held = self._judge(request)
            return verdict, held
        asker = getattr(endpoint, "ask", None)
        try:
            answer = (
                await asker(request)
                if asker is not None
                else Answer(await endpoint.capture(request))
            )
        except (grpc.aio.AioRpcError, TimeoutError, ConnectionError) as exc:
            log.debug("witness %s did not answer: %s", endpoint.name, type(exc).__name__)
            return None
        reply, key = answer.reply, answer.session_key
        if round_ is not None and round_.settled:
            # The round was already decided (a majority captured, or a verified rollback) and
            # its result returned: nothing reads this answer any more, so it can neither grant
            # nor deny anything. A claimed CAPTURED only says the witness is up to date: its MAC
            # is not worth a token operation. Any other verdict is evidence someone may act on
            # (an operator reading the log), so it is verified first, exactly as in time: a
            # forged answer can neither raise an alarm nor, being ignored, hide one.
            if reply.verdict == Verdict.CAPTURED:
                return None
            if not self._verify(endpoint, request.nonce, head, reply, key):
                log.error("witness %s answered late with a bad MAC: ignored", endpoint.name)
                return None
            if reply.verdict == Verdict.ROLLBACK:
                log.error(
                    "witness %s answered ROLLBACK after the capture was decided: group %d "
                    "holds version %d", endpoint.name, head.group, reply.held.version,
                )  # fmt: skip
            return None
        if not self._verify(endpoint, request.nonce, head, reply, key):
            log.error("witness %s answered with a bad MAC: ignored", endpoint.name)
            return None
        try:
            verdict = Verdict(reply.verdict)
        except ValueError:
            return None
        return verdict, Ref.of(reply.held)

    async def capture(self, base: Head, head: Head, *, lazy: bool = False) -> CaptureResult:
        if lazy:
            task = asyncio.get_running_loop().create_task(self._capture(base, head))
            self._lazy.add(task)
            task.add_done_callback(self._lazy_done)
            return CaptureResult(captured=True, answers=("lazy",))
        return await self._capture(base, head)

    async def confirm(self, head: Head) -> CaptureResult:
        if head.version == 0:
            # No head yet: nothing to vouch for; the write's own capture judges the group.
            return CaptureResult(captured=True, answers=("empty",))
        return await self._capture(predecessor(head), head)

    def take_missed(self) -> bool:
        missed, self._missed = self._missed, False
        return missed

    def note(self, base: Head, head: Head) -> None:
        if self._judge is None:
            return
        # In process: no answer is MAC'd, so the request needs no fresh nonce.
        verdict, _ = self._judge(_request(bytes(NONCE_LEN), base, head))
        if verdict is not Verdict.CAPTURED:
            self._missed = True  # as a lazy capture that failed: the next write confirms first

    def _lazy_done(self, task: asyncio.Task[CaptureResult]) -> None:
        self._lazy.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._missed = True
            log.warning("a lazy capture failed: %s", type(error).__name__)
        elif not task.result().captured:
            self._missed = True
            if task.result().rollback:
                log.error("a lazy capture met a rollback: %s", task.result().rollback)

    async def _capture(self, base: Head, head: Head) -> CaptureResult:
        new = Ref.of(head.ref)
        request = _request(self._rng(NONCE_LEN), base, head)
        answers: dict[str, tuple[Verdict, Ref]] = {}
        need = majority(self._witnesses)
        deadline = self._clock() + CAPTURE_TIMEOUT_S
        first, rest = self._first_asked()
        for attempt in range(CAPTURE_RETRIES):
            round_ = _Round()
            results, unasked = await _first_enough(
                first,
                rest,
                functools.partial(self._ask, request=request, head=new, round_=round_),
                lambda got: _enough(got, answers, need, self._witnesses),
                HEDGE_S,
                self._suspect,
            )
            round_.settled = True  # answers still in flight are read by nobody from now on
            for endpoint, answer in results.items():
                if answer is not None:
                    answers[endpoint.name] = answer
            tally = _tally(answers, self._witnesses, base)
            if tally.captured:
                for endpoint in unasked:
                    # Security: nothing counts on a told capture (its answer goes to no one);
                    # the majority above holds the head, this keeps the peer's chain current.
                    getattr(endpoint, "tell", lambda request: None)(request)
            if tally.captured or tally.rollback:
                return tally
            # A witness one capture behind (a lazy capture still in flight) or still catching
            # up after a restart: ask those again, briefly. Never past the deadline.
            first = [
                e
                for e in self._endpoints
                if answers.get(e.name, (Verdict.BEHIND, new))[0]
                in (Verdict.BEHIND, Verdict.NOT_READY)
            ]
            rest = list[CaptureEndpoint]()
            if not first or self._clock() >= deadline or attempt + 1 == CAPTURE_RETRIES:
                return tally
            await asyncio.sleep(RETRY_BACKOFF_S[attempt])
        return _tally(answers, self._witnesses, base)

    def _first_asked(self) -> tuple[list[CaptureEndpoint], list[CaptureEndpoint]]:
        """Whom a capture asks at once (this node's own witness and as many peers as a majority
        still needs, taking turns, peers that failed lately last) and whom only if those do
        not make a majority in time (peers that can be told what they missed; any other peer
        is asked at once, as it could not catch up otherwise)."""
        local, peers = self._own, self._peers
        if not peers:
            return list(local), []
        turn = next(self._turn) % len(peers)
        now = self._clock()
        order = sorted(
            peers[turn:] + peers[:turn], key=lambda e: getattr(e, "suspect_until", 0.0) > now
        )
        need = max(0, majority(self._witnesses) - len(local))
        first, rest = local + order[:need], list[CaptureEndpoint]()
        for endpoint in order[need:]:
            (rest if getattr(endpoint, "tells", False) else first).append(endpoint)
        return first, rest

    def _suspect(self, endpoints: Sequence[CaptureEndpoint]) -> None:
        """Peers that failed or did not answer in time: asked first by no capture for a while."""
        until = self._clock() + SUSPECT_S
        for endpoint in endpoints:
            if hasattr(endpoint, "suspect_until"):
                endpoint.suspect_until = until

    async def heads_from_peers(
        self, exclude: str, verify: Callable[[witness_pb2.HeadsReply, bytes], bool]
    ) -> list[witness_pb2.HeadsReply]:
        """Every other ready witness's heads (catch-up), MAC-verified by `verify`."""
        nonce = self._rng(NONCE_LEN)
        request = witness_pb2.HeadsRequest(nonce=nonce)
        others = [e for e in self._endpoints if e.name != exclude]

        async def one(endpoint: CaptureEndpoint) -> witness_pb2.HeadsReply | None:
            try:
                reply = await endpoint.heads(request)
            except (grpc.aio.AioRpcError, TimeoutError, ConnectionError):
                return None
            if reply.witness != endpoint.name or not verify(reply, nonce):
                return None
            return reply

        replies = await asyncio.gather(*(one(e) for e in others))
        return [r for r in replies if r is not None]

    async def close(self) -> None:
        for task in list(self._lazy):
            task.cancel()
        for endpoint in self._endpoints:
            closer = getattr(endpoint, "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


def _request(nonce: bytes, base: Head, head: Head) -> witness_pb2.CaptureRequest:
    return witness_pb2.CaptureRequest(
        nonce=nonce, base=base.ref, base_prev=base.prev, head=head.ref, base_recent=base.recent
    )


class _Round:
    """One round of asks of a capture: `settled` once its outcome was taken (late answers
    arrive after it and only their non-CAPTURED verdicts are verified, for the log)."""

    __slots__ = ("settled",)

    def __init__(self) -> None:
        self.settled = False


def _equal(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


def _enough(
    got: Mapping[Any, tuple[Verdict, Ref] | None],
    before: Mapping[str, tuple[Verdict, Ref]],
    need: int,
    witnesses: int,
) -> bool:
    """Stop waiting once a majority captured or someone showed a rollback."""
    answers = dict(before)
    answers.update({e.name: a for e, a in got.items() if a is not None})
    verdicts = [v for v, _ in answers.values()]
    return verdicts.count(Verdict.CAPTURED) >= need or Verdict.ROLLBACK in verdicts


async def _first_enough(
    first: Sequence[CaptureEndpoint],
    rest: Sequence[CaptureEndpoint],
    ask: Callable[[CaptureEndpoint], Awaitable[tuple[Verdict, Ref] | None]],
    enough: Callable[[Mapping[CaptureEndpoint, tuple[Verdict, Ref] | None]], bool],
    hedge_s: float,
    suspect: Callable[[Sequence[CaptureEndpoint]], None],
) -> tuple[dict[CaptureEndpoint, tuple[Verdict, Ref] | None], list[CaptureEndpoint]]:
    """Ask `first` concurrently, and `rest` as well as soon as one of `first` failed or did not
    capture, all of them answered, or `hedge_s` passed (those still silent, or failed, are
    `suspect`); return once `enough` says so (the rest finish in the background and still
    update their witnesses) or all asked have answered: the answers, and whom it never asked."""
    loop = asyncio.get_running_loop()
    tasks = {asyncio.ensure_future(ask(e)): e for e in first}
    got: dict[CaptureEndpoint, tuple[Verdict, Ref] | None] = {}
    pending = set(tasks)
    waiting = list(rest)
    hedge_at = loop.time() + hedge_s
    while pending or waiting:
        short = [e for e, a in got.items() if a is None or a[0] is not Verdict.CAPTURED]
        late = loop.time() >= hedge_at
        if waiting and (not pending or short or late):
            silent = [tasks[t] for t in pending] if late else []
            suspect([e for e, a in got.items() if a is None] + silent)
            for endpoint in waiting:
                task = asyncio.ensure_future(ask(endpoint))
                tasks[task] = endpoint
                pending.add(task)
            waiting = []
        timeout = max(0.0, hedge_at - loop.time()) if waiting else None
        done, pending = await asyncio.wait(
            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            got[tasks[task]] = task.result()
        if enough(got):
            break
    return got, waiting


def verify_heads(mac: Callable[[bytes], bytes]) -> Callable[[witness_pb2.HeadsReply, bytes], bool]:
    """A checker of a peer's heads answer against its MAC."""

    def check(reply: witness_pb2.HeadsReply, nonce: bytes) -> bool:
        refs = [Ref.of(h) for h in reply.heads]
        expected = mac(heads_mac_input(reply.witness, nonce, reply.ready, refs))
        return len(reply.mac) == len(expected) and _equal(reply.mac, expected)

    return check
