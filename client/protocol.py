"""The register / recover / delete / status flows, without I/O.

Each flow is a generator: it yields an `Outbound` (which step, the sealed envelope bytes), is
sent back the frontend's `sealed_response` bytes, and finally returns its result or raises a
`client.errors` error. `run(flow, send)` drives one with a synchronous `send(outbound) ->
sealed_response`; `client.aio` drives the same generators asynchronously. Nothing here knows
about gRPC, sessions or retries (those belong to `client.vault` / `client.aio` / `client.retry`).

>>> def flow():  # a toy flow: one exchange, returns the answer's length
...     answer = yield Outbound(Step.STATUS, b"sealed")
...     return len(answer)
>>> run(flow(), lambda outbound: b"12345")
5

Security: the password, the export key, the session key and K stay inside these generator frames;
`Outbound` shows only the step and the size of the envelope.

Protocol 3: every flow is exactly two envelopes of the same sizes, whatever the operation and
whatever the outcome, so the frontend learns neither. Step 1 is HPKE to the fleet key; step 2 is
continued under a key derived from step 1's response key (vault_protocol.continuation) and
carries step 1's ticket. After a wrong password, or a closed step 1 (locked, not registered),
the recovery still sends a finish: a dummy one (random KE3-sized bytes) that the vault counts as
no redemption; the flow then raises what step 1 told it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import unicodedata
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bkv.v1 import envelope_pb2
from client.errors import (
    BadInput,
    InvalidPassword,
    Locked,
    NotRegistered,
    ProtocolError,
    StaleRequest,
    VaultError,
    error_from_outcome,
)
from client.session import AUTH_CLOCK
from vault_protocol import backup_key, ksf, opaque
from vault_protocol import errors as vp_errors
from vault_protocol.account_auth import PUBLIC_KEY_LEN, AccountSigner, sign_request
from vault_protocol.backup_key import BackupKey
from vault_protocol.continuation import StepKeys, seal_continued
from vault_protocol.envelope import FleetKey, open_response, seal_request

T = TypeVar("T")
RESPONSE_KEY_BYTES = 32
# A sanity bound only: each vault has its operator's own cap (node.max_attempts_cap, at most this)
# and refuses a registration above it (BadInput). vault_node.config keeps the same number.
MAX_ATTEMPTS_LIMIT = 100


class Step(enum.Enum):
    """One envelope exchange of a flow."""

    REGISTER_START = "register_start"
    REGISTER_FINISH = "register_finish"
    RECOVER_START = "recover_start"
    RECOVER_FINISH = "recover_finish"
    BEGIN = "begin"  # step 1 of a delete or a status question (the operation is inside)
    DELETE = "delete"
    STATUS = "status"

    @property
    def counts_guess(self) -> bool:
        """True for the step that makes the vault count a password guess (retry at most once)."""
        return self is Step.RECOVER_START

    @property
    def finishes(self) -> bool:
        """True for the second step of a flow: it waits out RateLimited (see client.retry)."""
        return self in (Step.RECOVER_FINISH, Step.REGISTER_FINISH, Step.DELETE, Step.STATUS)

    @property
    def signed(self) -> bool:
        """True for a first step: signed by the account key, and sealed afresh (a new ts_ms and
        signature) when the vault refused it as stale (see client.retry)."""
        return self in (Step.REGISTER_START, Step.RECOVER_START, Step.BEGIN)

    @property
    def runs_ksf_next(self) -> bool:
        """True when the flow runs the KSF on this step's answer (keep that off an event loop)."""
        return self in (Step.RECOVER_START, Step.REGISTER_START)


@dataclass(frozen=True)
class Outbound:
    """An envelope a flow wants relayed to the vault.

    `resign(floor_ms)`, on a first step: the same request signed again with a fresh ts_ms past
    `floor_ms` and sealed again (same response key, so the flow's step keys stay valid); None on
    a second step, which carries no signature. `reseal(fleet)` (first steps only) signs and
    seals the same request to another fleet key: the relay sends it once when the vault answers
    that it no longer holds the key of `envelope` (a rotated fleet, nothing applied) and the
    client learnt the new one (client.core); a later `resign` keeps that key."""

    step: Step
    envelope: bytes = field(repr=False)
    resign: Callable[[int], bytes] | None = field(default=None, repr=False, compare=False)
    reseal: Callable[[FleetKey], bytes] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Outbound(step={self.step.value}, {len(self.envelope)} bytes)"


Flow = Generator[Outbound, bytes, T]


@dataclass(frozen=True)
class Status:
    """What the vault holds for the account.

    registered: a key is escrowed (False also when it was locked: nothing can be recovered).
    guesses_left: wrong passwords left before the key is erased (0 when locked or unregistered).
    locked: the key was erased after too many wrong passwords.
    max_attempts: the record's guess limit (0 when unknown).
    rebind_pending, rebind_key, rebind_matures_at_ms (key loss): another account key (raw
        public key `rebind_key`) asked to replace this account's; from `rebind_matures_at_ms`
        (ms since the epoch, the vault's clock) it may sign like the bound key, unless the
        bound key signs any request first, which cancels it.
    rebind_cancelled_key: a rebind to this key was pending, and this very request (signed by
        the bound key) cancelled it: someone asked to take the account over.
    """

    registered: bool
    guesses_left: int
    locked: bool
    max_attempts: int = 0
    rebind_pending: bool = False
    rebind_matures_at_ms: int = 0
    rebind_key: bytes = b""
    rebind_cancelled_key: bytes = b""


@dataclass(frozen=True)
class FlowContext:
    """What every flow needs: the pinned fleet key, the account and the signer of its account
    key, OPAQUE settings, randomness, and the clock of signed requests (`AuthClock.next`:
    strictly increasing, past a floor)."""

    fleet: FleetKey
    account_id: str
    signer: AccountSigner
    opaque: opaque.OpaqueConfig = field(default_factory=opaque.OpaqueConfig)
    rng: Callable[[int], bytes] = os.urandom
    auth_clock: Callable[[int], int] = AUTH_CLOCK.next


def encode_password(password: str | bytes) -> bytes:
    """UTF-8 of the NFC form, so the same password typed on two devices gives the same bytes.

    >>> encode_password("e\\u0301") == "\\u00e9".encode()
    True
    """
    if isinstance(password, bytes):
        return password
    return unicodedata.normalize("NFC", password).encode("utf-8")


@dataclass(frozen=True)
class _Continuation:
    """What step 1 leaves for step 2: the ticket and the step-2 keys (never shown)."""

    ticket: bytes = field(repr=False)
    keys: StepKeys = field(repr=False)


def _open(key: bytes, sealed: bytes) -> envelope_pb2.VaultResponse:
    try:
        return open_response(key, sealed)
    except vp_errors.ProtocolError:
        # Security: one error for every cause; the frontend could have forged or cut it.
        raise ProtocolError("the vault's answer failed to open") from None


def _checked(
    response: envelope_pb2.VaultResponse, step: Step, reply: str
) -> envelope_pb2.VaultResponse:
    """Map the answer's outcome to an error, or check it carries the expected reply."""
    if response.outcome == envelope_pb2.OUTCOME_REFUSED:
        cap = int(response.max_attempts_cap)
        raise BadInput(f"the vault allows at most {cap} guesses (max_attempts); nothing stored")
    error = error_from_outcome(response.outcome, response.guesses_left)
    if error is not None:
        raise error
    if response.WhichOneof("reply") != reply:
        raise ProtocolError(f"the vault answered {step.value} with the wrong reply")
    return response


def _first(
    ctx: FlowContext, step: Step, request: envelope_pb2.VaultRequest
) -> Generator[Outbound, bytes, tuple[envelope_pb2.VaultResponse, _Continuation]]:
    """Sign step 1 with the account key, seal it (HPKE), yield it, open the answer; its outcome
    is the caller's to check."""
    response_key = ctx.rng(RESPONSE_KEY_BYTES)
    request.response_key = response_key
    keys = StepKeys.derive(response_key)

    sealed_to = [ctx.fleet]  # the fleet key step 1 goes to (a rotation may change it once)

    def signed(floor_ms: int = 0) -> bytes:
        # The signature covers the whole request, its response key included, and the fleet id
        # it is sealed to: step 2, sealed under keys derived from it, needs none of its own.
        fleet = sealed_to[0]
        ts_ms = ctx.auth_clock(floor_ms)
        sign_request(request, fleet.fleet_id, ctx.account_id, ctx.signer, ts_ms)
        return seal_request(fleet, ctx.account_id, request)

    def resealed(fleet: FleetKey) -> bytes:
        sealed_to[0] = fleet
        return signed()

    # The step 2 that follows names ctx's fleet id even when step 1 went out resealed to a
    # newer key: a vault takes a step 2 naming any fleet id it accepts or retired.
    sealed = yield Outbound(step, signed(), resign=signed, reseal=resealed)
    response = _open(keys.answer1, sealed)
    if not response.ticket:
        # Every step-1 answer carries one, whatever its outcome (protocol 3).
        raise ProtocolError(f"the vault's {step.value} answer carries no ticket")
    return response, _Continuation(bytes(response.ticket), keys)


def _second(
    ctx: FlowContext, step: Step, cont: _Continuation, request: envelope_pb2.VaultRequest
) -> Generator[Outbound, bytes, envelope_pb2.VaultResponse]:
    """Seal step 2 under the continuation key with step 1's ticket, yield it, open the answer."""
    envelope = seal_continued(
        ctx.fleet.fleet_id, ctx.account_id, cont.ticket, cont.keys.request2, request, ctx.rng
    )
    sealed = yield Outbound(step, envelope)
    return _open(cont.keys.answer2, sealed)


def _dummy_finish(ctx: FlowContext, cont: _Continuation) -> Generator[Outbound, bytes, None]:
    """The finish a recovery sends when it has nothing to redeem: random KE3-sized bytes, which
    the vault cannot tell from a wrong password's MAC (and counts as no redemption). Its answer
    and its errors change nothing: the outcome is already known from step 1."""
    request = envelope_pb2.VaultRequest(
        recover_finish=envelope_pb2.RecoverFinish(ke3=ctx.rng(opaque.KE3_BYTES))
    )
    try:
        yield from _second(ctx, Step.RECOVER_FINISH, cont, request)
    except (VaultError, vp_errors.ProtocolError):
        # Only for the frontend's view of the pattern; a failure here hides no answer.
        pass


def _guarded(flow: Flow[T]) -> Flow[T]:
    """Turn any `vault_protocol` error escaping a flow into the client's `ProtocolError`."""
    try:
        return (yield from flow)
    except vp_errors.ProtocolError as err:
        raise ProtocolError(f"protocol failure: {type(err).__name__}") from None


def register_flow(
    ctx: FlowContext,
    password: str | bytes,
    key: BackupKey | None = None,
    max_attempts: int | None = None,
    new_account_key: bytes = b"",
) -> Flow[BackupKey]:
    """Escrow `key` (a fresh one when None) behind `password`; returns the key.

    `max_attempts`: wrong guesses allowed before the key is erased (None: the vault's default).
    `new_account_key` (key change): the raw Ed25519 public key the new registration binds,
    signed for by `ctx.signer` (the key bound now); empty: the signer's own key.
    """
    if max_attempts is not None and not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
    if new_account_key and len(new_account_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"new_account_key must be a raw {PUBLIC_KEY_LEN}-byte Ed25519 key")
    return _guarded(
        _register(ctx, encode_password(password), key, max_attempts or 0, new_account_key)
    )


def _register(
    ctx: FlowContext,
    password: bytes,
    key: BackupKey | None,
    max_attempts: int,
    new_account_key: bytes,
) -> Flow[BackupKey]:
    k = key if key is not None else BackupKey.generate(ctx.rng)
    params = ksf.to_params(ctx.opaque.ksf)  # stored with the record: later clients stretch alike
    for attempt in range(2):
        state, request = opaque.registration_start(password, ctx.rng)
        start = envelope_pb2.VaultRequest(
            register_start=envelope_pb2.RegisterStart(
                registration_request=request, new_account_key=new_account_key
            )
        )
        answer, cont = yield from _first(ctx, Step.REGISTER_START, start)
        reply = _checked(answer, Step.REGISTER_START, "register_start")
        record, export_key = opaque.registration_finish(
            state, reply.register_start.registration_response, ctx.opaque, ctx.rng
        )
        # The vault gets K only locked under the password's export key: it never holds K.
        wrapped = backup_key.wrap_key(k, export_key, ctx.account_id, ctx.rng)
        finish = envelope_pb2.VaultRequest(
            register_finish=envelope_pb2.RegisterFinish(
                registration_record=record,
                wrapped_key=wrapped,
                max_attempts=max_attempts,
                ksf=params,
            )
        )
        try:
            second = yield from _second(ctx, Step.REGISTER_FINISH, cont, finish)
            _checked(second, Step.REGISTER_FINISH, "register_finish")
        except StaleRequest:
            # The record changed between the two steps (e.g. a recovery ran): the vault wrote
            # nothing. One fresh registration; it counts no guess.
            if attempt:
                raise
            continue
        return k
    raise AssertionError("unreachable")


def recover_flow(ctx: FlowContext, password: str | bytes) -> Flow[BackupKey]:
    """Get the key back with `password`.

    Raises InvalidPassword(guesses_left), Locked or NotRegistered from the vault's answer.
    """
    return _guarded(_recover(ctx, encode_password(password)))


def _recover(ctx: FlowContext, password: bytes) -> Flow[BackupKey]:
    state, ke1 = opaque.login_start(password, ctx.rng)
    start = envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1))
    answer, cont = yield from _first(ctx, Step.RECOVER_START, start)
    try:
        first = _checked(answer, Step.RECOVER_START, "recover_start")
    except (Locked, NotRegistered):
        # Closed: the void ticket still takes a finish, so the frontend sees the same pattern.
        yield from _dummy_finish(ctx, cont)
        raise
    guesses_left = int(first.guesses_left)
    config = ctx.opaque
    if first.recover_start.HasField("ksf"):
        # The KSF the key was registered with, whatever this client is configured with: a
        # mismatch would make the right password count as a wrong guess. Bounded (InvalidInput).
        config = dataclasses.replace(ctx.opaque, ksf=ksf.from_params(first.recover_start.ksf))
    try:
        ke3, session_key, export_key = opaque.login_finish(state, first.recover_start.ke2, config)
    except vp_errors.AuthenticationError:
        # The vault counted this guess before answering KE2. A dummy finish all the same: a
        # wrong password must look like a right one to the frontend (two steps, same sizes).
        yield from _dummy_finish(ctx, cont)
        raise InvalidPassword(guesses_left) from None
    finish = envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3))
    answer2 = yield from _second(ctx, Step.RECOVER_FINISH, cont, finish)
    second = _checked(answer2, Step.RECOVER_FINISH, "recover_finish")
    try:
        wrapped = backup_key.open_transport(session_key, second.recover_finish.transported_key)
        return backup_key.unwrap_key(wrapped, export_key, ctx.account_id)
    except vp_errors.ProtocolError:
        raise ProtocolError("the recovered key failed to open") from None


def delete_flow(ctx: FlowContext) -> Flow[bool]:
    """Erase the account's record; returns whether there was one."""
    return _guarded(_delete(ctx))


def _begun(
    ctx: FlowContext, op: envelope_pb2.Begin.Op.ValueType
) -> Generator[Outbound, bytes, _Continuation]:
    """Step 1 of a delete or a status question: the operation stays inside the envelope."""
    begin = envelope_pb2.VaultRequest(begin=envelope_pb2.Begin(op=op))
    answer, cont = yield from _first(ctx, Step.BEGIN, begin)
    _checked(answer, Step.BEGIN, "begin")
    return cont


def _delete(ctx: FlowContext) -> Flow[bool]:
    for attempt in range(2):
        cont = yield from _begun(ctx, envelope_pb2.Begin.Op.OP_DELETE)
        request = envelope_pb2.VaultRequest(delete=envelope_pb2.DeleteRequest())
        try:
            answer = yield from _second(ctx, Step.DELETE, cont, request)
        except StaleRequest:
            # The account's registration changed between the two steps (the ticket binds the
            # one the delete began on): nothing was erased. Once more, on the record as it is.
            if attempt:
                raise
            continue
        return bool(_checked(answer, Step.DELETE, "delete").delete.existed)
    raise AssertionError("unreachable")


def status_flow(ctx: FlowContext) -> Flow[Status]:
    """Ask whether a key is registered, locked, and how many guesses are left."""
    return _guarded(_status(ctx))


def rebind_flow(ctx: FlowContext) -> Flow[Status]:
    """Key loss: ask the vault to let `ctx.signer`'s key replace the account's bound key after
    the operator's delay (no guess is counted). Returns the status, which shows the pending
    rebind and when it matures; asking again keeps the first request's date."""
    return _guarded(_status(ctx, envelope_pb2.Begin.Op.OP_REBIND))


def _status(
    ctx: FlowContext, begin: envelope_pb2.Begin.Op.ValueType = envelope_pb2.Begin.Op.OP_STATUS
) -> Flow[Status]:
    cont = yield from _begun(ctx, begin)
    request = envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest())
    try:
        answer = yield from _second(ctx, Step.STATUS, cont, request)
        reply = _checked(answer, Step.STATUS, "status")
    except (NotRegistered, Locked) as err:
        # A status question is answered, not refused, whatever the account's state.
        locked = err.code == "locked"
        return Status(registered=False, guesses_left=0, locked=locked)
    s = reply.status
    locked = bool(s.locked)
    return Status(
        registered=bool(s.registered) and not locked,
        guesses_left=0 if locked or not s.registered else int(reply.guesses_left),
        locked=locked,
        max_attempts=int(s.max_attempts),
        rebind_pending=bool(s.rebind_pending),
        rebind_matures_at_ms=int(s.rebind_matures_at_ms),
        rebind_key=bytes(s.rebind_key),
        rebind_cancelled_key=bytes(s.rebind_cancelled_key),
    )


@dataclass(frozen=True)
class Done(Generic[T]):
    """A flow's result (what `advance` returns once the flow has finished)."""

    value: T

    def __repr__(self) -> str:
        return "Done(...)"  # the value may be a key


def advance(
    flow: Flow[T], answer: bytes | None = None, error: BaseException | None = None
) -> Outbound | Done[T]:
    """Run `flow` to its next yield: start it (no argument), send it `answer`, or throw `error`.

    Returns the next `Outbound` or `Done(result)`; errors of the flow propagate. Safe to call from
    a worker thread (the asyncio client does so: the KSF may take a fraction of a second).
    """
    try:
        if error is not None:
            return flow.throw(error)
        if answer is None:
            return next(flow)
        return flow.send(answer)
    except StopIteration as stop:
        return Done(stop.value)


def run(flow: Flow[T], send: Callable[[Outbound], bytes]) -> T:
    """Drive `flow` to its end with a synchronous `send(outbound) -> sealed_response`.

    Errors from `send` are thrown into the flow and propagate unchanged.
    """
    step = advance(flow)
    while not isinstance(step, Done):
        try:
            answer = send(step)
        except BaseException as err:  # noqa: BLE001 - thrown into the flow, which re-raises it
            step = advance(flow, error=err)
            continue
        step = advance(flow, answer)
    return step.value
