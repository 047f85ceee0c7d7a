"""The vault node's request logic: open the envelope, run the server side of OPAQUE, keep records.

Pure over injected parts (no gRPC, no sockets): a `token_api.TokenOps` (the HSM, or the software
token), a `RecordStore` (etcd), a millisecond clock, randomness and an audit sink. `handle`
returns the sealed response or raises one of the `ServiceError` subclasses, which `server.py`
maps to a gRPC status in one place.
Protocol outcomes (wrong password, locked, not registered) are not errors: they travel inside the
sealed response, which the frontend cannot read.

Every change of a record is one pure transition (`vault_node.transitions`) run by the one
compare-and-swap loop `_apply`: decide from the key as stored, seal the new record for the key's
next etcd version, write it if the key is still at the revision decided on, and on a conflict
decide again from what the failed write read. Nothing is evaluated unless its guess committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Protocol, TypeVar

from bkv.store.v1 import sealed_pb2
from bkv.v1 import envelope_pb2
from vault_node import tickets, transitions
from vault_node.audit import AuditSink
from vault_node.config import DEFAULT_MAX_ATTEMPTS_CAP, MAX_ATTEMPTS_LIMIT
from vault_node.fleet_keys import Keyring, first_epoch_keyring
from vault_node.heads import Head, group_of, next_head, open_head
from vault_node.key_meta import ABSENT, KeyMeta
from vault_node.lru import Lru
from vault_node.metrics import NodeMetrics, RequestMeter
from vault_node.records import (
    CREDENTIAL_ACCOUNT_GENERATION,
    credential_identifier,
    open_record,
    seal_record,
    sealed_key_name,
)
from vault_node.store import RecordStore, Snapshot, StoreUnavailable
from vault_node.store_guard import StoreRolledBack
from vault_node.token_api import TokenOps
from vault_node.transitions import Current, Kind, Signer, Step
from vault_node.witnessing import CaptureResult, Witnessing
from vault_protocol import account_auth, opaque
from vault_protocol.backup_key import WRAPPED_KEY_LEN, seal_transport
from vault_protocol.continuation import StepKeys, open_continued, parse_continued
from vault_protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    UnsupportedVersion,
    check_header,
    open_request,
    route,
    seal_response,
)
from vault_protocol.errors import AuthenticationError, DecryptError, InvalidInput, SignatureError
from vault_protocol.ksf import from_params as ksf_from_params

log = logging.getLogger(__name__)

Outcome = envelope_pb2.Outcome
Rng = Callable[[int], bytes]
T = TypeVar("T")

GENERATION_LEN = 16
TicketOp = sealed_pb2.Ticket.Op
# The second step each ticket's operation takes (anything else is refused, nothing applied).
_TICKET_OPS = {
    "register_finish": TicketOp.OP_REGISTER,
    "recover_finish": TicketOp.OP_RECOVER,
    "status": TicketOp.OP_STATUS,
    "delete": TicketOp.OP_DELETE,
}
_BEGIN_OPS = {
    envelope_pb2.Begin.Op.OP_STATUS: TicketOp.OP_STATUS,
    envelope_pb2.Begin.Op.OP_DELETE: TicketOp.OP_DELETE,
    envelope_pb2.Begin.Op.OP_REBIND: TicketOp.OP_STATUS,  # step 2 shows the pending rebind
}
_CLOSED = frozenset({envelope_pb2.OUTCOME_LOCKED, envelope_pb2.OUTCOME_NOT_REGISTERED})
MAX_ACCOUNT_ID_BYTES = 256
CAS_RETRIES = 16
MAX_CLOCK_SKEW_MS = 5_000  # between the node that issues a ticket and the one that redeems it
ID_CACHE_SIZE = 65_536
RECORD_CACHE_SIZE = 16_384


class ServiceError(Exception):
    """Base of the errors `handle` raises; messages hold no secret and may reach the caller."""


class BadRequest(ServiceError):
    """Malformed or unopenable input (INVALID_ARGUMENT). Nothing was changed."""


class UnsupportedProtocol(BadRequest):
    """An envelope of another protocol version (INVALID_ARGUMENT, nothing changed). Its message
    names both versions; it is safe to pass on: the version travels in the clear anyway."""


class Precondition(ServiceError):
    """A ticket that is expired, stale or already used, or a registration whose record changed
    since its start (FAILED_PRECONDITION). Nothing changed."""


class UnknownFleet(Precondition):
    """An envelope names a fleet key this node does not hold: retired by a fleet rotation, or
    never this fleet's (FAILED_PRECONDITION with details the client recognises,
    vault_common.wire.UNKNOWN_FLEET_DETAILS). Nothing was opened or changed: the client fetches
    the fleet's signed announcement and sends its first step again, once."""


class Unavailable(ServiceError):
    """etcd has no quorum, the node is not serving, or contention (UNAVAILABLE): retry.

    Raised as such only when this request wrote nothing (no attempt was counted), so the
    caller may retry it freely; a write whose outcome is unknown is `WriteUnconfirmed`.
    """


class AccountRefused(ServiceError):
    """The request's account signature does not admit it (UNAUTHENTICATED, issue 17): nothing
    was written and nothing evaluated; audited `auth_refused`.

    `reason`: "key" (the record is bound to another account key: a retry cannot help),
    "stale" (its ts_ms is not after the last signed request that wrote the record, `floor_ms`:
    a replay, or a client whose clock is behind; a fresh signature past it may pass),
    "clock" (ts_ms too far ahead of this node's clock), "signature" (missing or invalid).
    """

    REASONS = ("key", "stale", "clock", "signature")

    def __init__(self, reason: str, floor_ms: int = 0) -> None:
        assert reason in self.REASONS
        super().__init__(f"account signature refused ({reason})")
        self.reason = reason
        self.floor_ms = floor_ms


class WriteUnconfirmed(Unavailable):
    """etcd failed while a write of this request was in flight: it may have been applied."""


class RecordCorrupt(ServiceError):
    """A record that opened holds something a vault node cannot use (DATA_LOSS)."""


class StoreRefused(RecordCorrupt):
    """etcd answered below the revisions this node has seen, or as another cluster: the store
    was rolled back or replaced (DATA_LOSS). The node's guard latched its alarm; every request
    is refused until an operator clears it with the token.

    Security: DATA_LOSS, not UNAVAILABLE: a frontend fails an UNAVAILABLE node over to another
    (and marks it suspect), which may never have seen this account's revisions; an account's
    requests keep going to the node that knows them, and that node keeps refusing."""


class RecordTampered(RecordCorrupt):
    """The stored record does not open at the etcd metadata it was read with (DATA_LOSS): storage
    holds a value no vault node wrote there (written back, copied, recreated or damaged). No
    password was evaluated and no counter changed; the node logged and audited it."""


@dataclass(frozen=True)
class ServiceConfig:
    node_name: str
    default_max_attempts: int = 10
    max_attempts_cap: int = DEFAULT_MAX_ATTEMPTS_CAP  # a registration asking more: REFUSED
    ticket_ttl_ms: int = 120_000
    opaque_context: bytes = opaque.DEFAULT_CONTEXT
    id_cache_size: int = ID_CACHE_SIZE  # accounts whose record id is kept (0: none)
    record_cache_size: int = RECORD_CACHE_SIZE  # records kept for optimistic CAS (0: none)
    record_groups: int = 256  # groups of records, one witnessed head each (same on every node)
    # Key loss: how long a pending rebind waits before its key may sign like the bound one.
    rebind_delay_ms: int = 7 * 86_400_000
    # A signed request whose ts_ms is further ahead of this node's clock is refused (so that a
    # signature made under a wrong clock cannot push last_auth_ms, and lock its owner out, far
    # into the future).
    auth_max_future_ms: int = 600_000

    def validate(self) -> None:
        problems = []
        if self.rebind_delay_ms < 0:
            problems.append("rebind_delay_ms must be >= 0")
        if self.auth_max_future_ms <= 0:
            problems.append("auth_max_future_ms must be positive")
        if not 1 <= self.record_groups <= 65_536:
            problems.append("record_groups must be in 1..65536")
        if self.id_cache_size < 0 or self.record_cache_size < 0:
            problems.append("cache sizes must be >= 0")
        if not self.node_name:
            problems.append("node_name must be non-empty")
        if not 1 <= self.max_attempts_cap <= MAX_ATTEMPTS_LIMIT:
            problems.append(f"max_attempts_cap must be in 1..{MAX_ATTEMPTS_LIMIT}")
        if not 1 <= self.default_max_attempts <= self.max_attempts_cap:
            problems.append("default_max_attempts must be in 1..max_attempts_cap")
        if self.ticket_ttl_ms <= 0:
            problems.append("ticket_ttl_ms must be positive")
        if problems:
            raise ValueError("invalid service config: " + "; ".join(problems))


@dataclass(frozen=True)
class TokenServerKeys:
    """OPAQUE `ServerKeys` whose OPRF seed stays in the token; the AKE pair is derived once."""

    token: TokenOps = field(repr=False)
    server_private_key: bytes = field(repr=False)
    server_public_key: bytes

    @classmethod
    def derive(cls, token: TokenOps) -> TokenServerKeys:
        sk, pk = opaque.derive_ake_key_pair(lambda data: token.hmac_sha512("ake_seed", data))
        return cls(token=token, server_private_key=sk, server_public_key=pk)

    def oprf_seed_hmac(self, data: bytes) -> bytes:
        return self.token.hmac_sha512("oprf_seed", data)


class _KsfUnused:
    """The server never stretches: OPAQUE's KSF runs only on the client."""

    def stretch(self, data: bytes) -> bytes:
        raise AssertionError("the server side of OPAQUE never calls the KSF")


class GroupAlarms(Protocol):
    """The record groups a witness showed rolled back (store_guard.StoreGuard keeps them)."""

    def group_alarmed(self, group: int) -> bool: ...

    def alarm_group(self, group: int) -> bool: ...


class MemoryGroupAlarms:
    """Group alarms in memory only (unit tests)."""

    def __init__(self) -> None:
        self.groups: set[int] = set()

    def group_alarmed(self, group: int) -> bool:
        return group in self.groups

    def alarm_group(self, group: int) -> bool:
        new = group not in self.groups
        self.groups.add(group)
        return new


@dataclass(frozen=True)
class Applied:
    """What `_apply` did: the step decided last, the key it was decided on, and the revision
    of the commit it made (0 when it wrote nothing)."""

    step: Step
    current: Current
    revision: int


class VaultService:
    """Handles one sealed request for an account (as authenticated by the frontend)."""

    def __init__(
        self,
        *,
        token: TokenOps,
        store: RecordStore,
        keys: opaque.ServerKeys,
        config: ServiceConfig,
        clock_ms: Callable[[], int],
        rng: Rng,
        audit: AuditSink,
        serving: Callable[[], bool] = lambda: True,
        on_erased: Callable[[int], None] = lambda revision: None,
        store_alarm: Callable[[], str] = lambda: "",
        witnesses: Witnessing,
        group_alarms: GroupAlarms | None = None,
        metrics: NodeMetrics | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        config.validate()
        self._metrics = metrics or NodeMetrics(process_collectors=False)
        self._token = token
        self._store = store
        self._keys = keys
        self._config = config
        self._clock_ms = clock_ms
        self._rng = rng
        # Counted as written: the metrics' evaluations and lockouts are the audit log's.
        self._audit = self._metrics.audited(audit)
        self._serving = serving
        self._store_alarm = store_alarm
        self._witnesses = witnesses
        # A write of this node may sit in etcd unwitnessed (`_confirm`): check before writing.
        self._unwitnessed = False
        # Per group, the hash of the newest head this node itself saw a majority of witnesses
        # capture (`_witness`: a finish written on it needs no peer's capture). At most one
        # entry per group.
        self._witnessed: dict[int, bytes] = {}
        # Groups a witness showed rolled back: refused (latched; in the store guard's checkpoint).
        self._groups: GroupAlarms = group_alarms or MemoryGroupAlarms()
        # A lock or delete committed at this revision: etcd's history before it still holds
        # the erased record, so the node has it compacted (vault_node.compactor).
        self._on_erased = on_erased
        # The fleet's key epochs (vault_node.fleet_keys): which kem key a fleet id names, which
        # record and ticket keys open and which seal. Replaced whole at a reload (`use_keyring`).
        self._keyring = keyring or first_epoch_keyring(token)
        self._opaque = opaque.OpaqueConfig(context=config.opaque_context, ksf=_KsfUnused())
        # record_id = HMAC(id_mac, account) is deterministic and no secret from the node (it is
        # the etcd key): caching it saves one token call per request.
        self._ids: Lru[bytes, bytes] = Lru(config.id_cache_size)
        # Records this node last read or wrote, with their etcd metadata, used only as the
        # *compare* of an optimistic CAS (see `_cached`). They stay inside the node process, the
        # HSM boundary, which opens every record it serves anyway.
        self._records: Lru[bytes, Current] = Lru(config.record_cache_size)
        # The newest head this node has seen of each group (read or written): a cached record's
        # own head goes stale whenever another record of its group is written, here or on
        # another node, and a write on a stale head only meets a conflict (one more etcd round
        # trip). Used like the record cache, only as a CAS compare and the base of the next head.
        self._heads: dict[int, Head] = {}

    @property
    def fleet_id(self) -> bytes:
        """The fleet id of the epoch this node seals with (what new clients are given)."""
        return self._keyring.sealing.fleet.fleet_id

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def use_keyring(self, keyring: Keyring) -> None:
        """Take `keyring` for every request from now on (a reload after the operator changed
        the token's fleet state). Requests in flight finish on whichever keys they reach: the
        rotation's steps make sure every node opens what any node seals at each point."""
        self._keyring = keyring

    async def handle(
        self, account_id: str, envelope: bytes, meter: RequestMeter | None = None
    ) -> bytes:
        """Open `envelope` for `account_id`, run the operation, return the sealed response
        (`meter`, if given, learns the operation and the protocol outcome).

        Protocol 3: a step 1 (`SealedEnvelope`, one HPKE open with the token's ECDH) or a
        step 2 (`ContinuedEnvelope`: its ticket opened in the token, its request in software
        with the key the ticket holds).
        """
        self._check_serving()
        account = _account_bytes(account_id)
        try:
            # Size first: nothing larger than any legitimate envelope is parsed.
            if not isinstance(envelope, bytes) or len(envelope) > MAX_ENVELOPE_BYTES:
                raise InvalidInput("envelope too large")
            check_header(envelope)  # the version before anything else, refused by name
            continued, fleet_id = route(envelope)  # one parse: the kind and the fleet named
        except UnsupportedVersion as exc:
            raise UnsupportedProtocol(str(exc)) from exc
        except InvalidInput as exc:
            raise BadRequest("envelope could not be opened") from exc
        keyring = self._keyring
        if continued:
            # Step 2 uses no kem key (its ticket decides): a retired epoch's id is still taken,
            # so a recovery that began just before a retirement still finishes.
            if not keyring.knows(fleet_id):
                raise UnknownFleet(f"envelope names fleet {fleet_id.hex()}, not held here")
            return await self._handle_continued(account_id, account, envelope, fleet_id, meter)
        epoch = keyring.by_fleet_id(fleet_id)
        if epoch is None:
            # Refused by name before any token work: the client learns the new fleet key from
            # the signed announcement and seals step 1 again (nothing was applied).
            raise UnknownFleet(f"envelope names fleet {fleet_id.hex()}, not held here")
        try:
            request = open_request(
                envelope,
                account_id,
                fleet_id,
                lambda point: self._token.ecdh(point, epoch.kem),
                epoch.fleet.public_key_bytes,
            )
            keys = StepKeys.derive(request.response_key)
        except (InvalidInput, DecryptError) as exc:
            # One answer for every cause: the frontend learns nothing about why it failed.
            raise BadRequest("envelope could not be opened") from exc
        op = request.WhichOneof("op")
        if meter is not None:
            meter.opened(op)
        record_id = self._checked_record_id(account)
        signer = self._signer(request, account_id, fleet_id, record_id)
        response = await self._guarded(self._first_step(request, keys, account, record_id, signer))
        if meter is not None:
            meter.answered(op, response.outcome)
        return seal_response(keys.answer1, response, self._rng)

    async def _handle_continued(
        self,
        account_id: str,
        account: bytes,
        envelope: bytes,
        fleet_id: bytes,
        meter: RequestMeter | None,
    ) -> bytes:
        """Step 2: the ticket (token AES-GCM), then its checks, then the request (software)."""
        try:
            sealed = parse_continued(envelope, fleet_id)
        except InvalidInput as exc:
            raise BadRequest("envelope could not be opened") from exc
        try:
            ticket = tickets.open_(self._token, sealed.ticket, self._keyring.seal_keys)
        except DecryptError as exc:
            raise BadRequest("ticket could not be opened") from exc
        record_id = self._record_id(account)
        # A ticket is bound to the record it was issued for: another account's is refused.
        if ticket.record_id != record_id:
            raise BadRequest("ticket does not belong to this account")
        try:
            # The AAD binds the account and this very ticket: a frontend that swapped either
            # gets a failed open, and nothing is applied.
            request = open_continued(sealed, account_id, fleet_id, ticket.request_key)
        except (InvalidInput, DecryptError) as exc:
            raise BadRequest("envelope could not be opened") from exc
        op = request.WhichOneof("op")
        if meter is not None:
            meter.opened(op)
        if _TICKET_OPS.get(op or "") != ticket.op:
            raise BadRequest("the request is not the second step of its ticket's operation")
        if len(ticket.answer_key) != 32:
            raise BadRequest("ticket could not be opened")
        self._check_group(record_id)
        response = await self._guarded(self._second_step(request, ticket, record_id))
        if meter is not None:
            meter.answered(op, response.outcome)
        return seal_response(ticket.answer_key, response, self._rng)

    def _signer(
        self, request: envelope_pb2.VaultRequest, account_id: str, fleet_id: bytes, record_id: bytes
    ) -> Signer:
        """Who signed this step 1 (vault_protocol.account_auth), checked before anything is
        read, written or evaluated; `AccountRefused` otherwise. Step 2 carries no signature:
        it opens only under keys derived from this step's response key, which the signature
        covers and only the signer knew. The transcript names the fleet the envelope was sealed
        to (either key of a rotation's overlap), as the client signed it."""
        try:
            proof = account_auth.verify_request(request, fleet_id, account_id)
        except SignatureError:
            self._auth_refused(record_id, "signature")
        now = self._clock_ms()
        if proof.ts_ms > now + self._config.auth_max_future_ms:
            # Security: a ts_ms far ahead, once stored, would refuse its owner's later requests.
            self._auth_refused(record_id, "clock")
        return Signer(proof.public_key, proof.ts_ms, now, self._config.rebind_delay_ms)

    def _auth_refused(
        self, record_id: bytes, reason: str, current: Current | None = None
    ) -> NoReturn:
        """Refuse a step 1 its signature does not admit: audited, nothing written."""
        record = current.record if current is not None else None
        self._audit.write(
            "auth_refused", record_id,
            read_revision=current.meta.mod_revision if current is not None else None,
        )  # fmt: skip
        floor = int(record.last_auth_ms) if record is not None and reason == "stale" else 0
        raise AccountRefused(reason, floor_ms=floor)

    def _check_admitted(self, record_id: bytes, applied: Applied) -> None:
        """Raise `AccountRefused` when `applied` decided the signer may not act (no write)."""
        if applied.step.kind is Kind.AUTH_REFUSED:
            self._auth_refused(record_id, "key", applied.current)
        if applied.step.kind is Kind.AUTH_STALE:
            self._auth_refused(record_id, "stale", applied.current)

    async def _admitted(
        self, record_id: bytes, signer: Signer, current: Current
    ) -> tuple[Current, bytes]:
        """A step 1 other than a recover start: refused unless the signer may act on the key;
        when the bound key signs while a rebind is pending, that rebind is cancelled first (a
        write, audited `rebind_cancel`). Returns the key as it is then, and the pending key it
        cancelled (empty: none)."""
        if not transitions.cancels(current, signer):
            # No write to make: decided on this (linearizable) read; the operation's own
            # transition checks the signer again on every compare-and-swap.
            self._check_admitted(record_id, Applied(transitions.admit(current, signer), current, 0))
            return current, b""
        applied = await self._apply(record_id, lambda c: transitions.admit(c, signer), current)
        self._check_admitted(record_id, applied)
        return await self._cancelled(record_id, applied)

    async def _cancelled(self, record_id: bytes, applied: Applied) -> tuple[Current, bytes]:
        """After a write that cancelled a pending rebind (or found nothing to cancel any more):
        audited; the key as it is now, and the pending key cancelled."""
        if not applied.revision:
            return applied.current, b""
        record = applied.current.record
        self._audit.write(
            "rebind_cancel", record_id, revision=applied.revision,
            read_revision=applied.current.meta.mod_revision,
        )  # fmt: skip
        return await self._read(record_id), bytes(record.pending_key) if record else b""

    def _checked_record_id(self, account: bytes) -> bytes:
        record_id = self._record_id(account)
        self._check_group(record_id)
        return record_id

    def _check_group(self, record_id: bytes) -> None:
        if self._groups.group_alarmed(self._group(record_id)):
            raise StoreRefused("this record's group was rolled back; refused until cleared")

    def _check_serving(self) -> None:
        """Refuse before any work when this node may not serve."""
        # First: a latched store alarm refuses with DATA_LOSS even while the node also fails
        # closed for etcd (after a restore both hold), so no frontend fails the account over.
        if self._store_alarm():
            raise StoreRefused("the store was rolled back; this node refuses to serve")
        # Fail closed: without a fresh etcd round trip no request is served at all.
        if not self._serving():
            raise Unavailable("vault node is not serving (no etcd quorum or not registered)")

    async def _guarded(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            return await work
        except StoreRolledBack as exc:
            # The guard latched an alarm: this node serves nothing more (see StoreRefused).
            raise StoreRefused("the store was rolled back; this node refuses to serve") from exc
        except StoreUnavailable as exc:
            # Writes turn their own failures into WriteUnconfirmed: this one came from a read.
            raise Unavailable("etcd is unavailable; nothing was written") from exc

    async def _first_step(
        self,
        request: envelope_pb2.VaultRequest,
        keys: StepKeys,
        account: bytes,
        record_id: bytes,
        signer: Signer,
    ) -> envelope_pb2.VaultResponse:
        op = request.WhichOneof("op")
        if op == "register_start":
            return await self._register_start(
                request.register_start, keys, account, record_id, signer
            )
        if op == "recover_start":
            return await self._recover_start(
                request.recover_start, keys, account, record_id, signer
            )
        if op == "begin":
            return await self._begin(request.begin, keys, record_id, signer)
        raise BadRequest("request carries no first step")

    async def _second_step(
        self, request: envelope_pb2.VaultRequest, ticket: sealed_pb2.Ticket, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
        op = request.WhichOneof("op")
        if op == "register_finish":
            return await self._register_finish(request.register_finish, ticket, record_id)
        if op == "recover_finish":
            return await self._recover_finish(request.recover_finish, ticket, record_id)
        self._check_expiry(ticket.expires_at_ms, "ticket", strict=False)
        if op == "delete":
            return await self._delete(record_id, ticket)
        if op == "status":
            return await self._status(record_id, bytes(ticket.rebind_cancelled_key))
        raise BadRequest("request carries no second step")

    def _ticket(self, op: int, keys: StepKeys, record_id: bytes, **fields: Any) -> bytes:
        """The sealed ticket of a step-1 answer: the step-2 keys, the record, an expiry."""
        ticket = sealed_pb2.Ticket(
            op=op,
            record_id=record_id,
            request_key=keys.request2,
            answer_key=keys.answer2,
            expires_at_ms=self._clock_ms() + self._config.ticket_ttl_ms,
            **fields,
        )
        return tickets.seal(self._token, ticket, self._rng, self._keyring.seal_keys)

    # -- records --

    def _record_id(self, account: bytes) -> bytes:
        record_id = self._ids.get(account)
        if record_id is None:
            record_id = self._token.hmac_sha256("id_mac", account)
            self._ids.put(account, record_id)
        return record_id

    def _cached(self, record_id: bytes, usable: Callable[[Current], bool]) -> Current | None:
        """The last state this node saw for `record_id`, if `usable` says it may decide on it.

        Used only as the compare of a CAS, never to answer: etcd changes a key's mod_revision
        with every write, so a stale entry can only make the CAS fail (and the failure returns
        the current value), never succeed. A CAS that commits proves the entry was current.
        Answers without a write (locked, not registered, stale) always take a linearizable read.
        """
        current = self._records.get(record_id)
        if current is None or not usable(current):
            return None
        head = current.head
        newer = self._heads.get(head.group) if head is not None else None
        if (
            head is not None
            and newer is not None
            and newer.meta.mod_revision > head.meta.mod_revision
        ):
            # Security: as the record entry, only a compare: a head that is no longer etcd's
            # fails the CAS (which returns the current one), and a current one is etcd's content
            # as this node opened or wrote it, so the next head built on it lists what etcd holds.
            return replace(current, head=newer)
        return current

    def _note_head(self, head: Head) -> None:
        """Remember `head` as its group's newest known, if it is newer than the one kept."""
        known = self._heads.get(head.group)
        if known is None or head.meta.mod_revision > known.meta.mod_revision:
            self._heads[head.group] = head

    def _group(self, record_id: bytes) -> int:
        return group_of(record_id, self._config.record_groups)

    def _open(self, record_id: bytes, snapshot: Snapshot) -> Current:
        """The record and its group's head as etcd returned them, each opened and checked
        against the other: the record at the metadata it came with, the head's page against
        the record's digest."""
        group = self._group(record_id)
        stored = snapshot.record
        keys = self._keyring.seal_keys
        try:
            head = open_head(self._token, group, snapshot.head, keys)
        except DecryptError:
            self._records.pop(record_id)
            return Current(ABSENT if stored is None else stored.meta, None, tampered=True)
        if not head.holds(record_id, stored):
            # A record the head does not vouch for (an older or newer value than the page, or
            # one the page lists but etcd lost): storage's, not a vault node's.
            self._records.pop(record_id)
            meta = ABSENT if stored is None else stored.meta
            return Current(meta, None, tampered=True, head=head)
        self._note_head(head)
        if stored is None:
            self._records.pop(record_id)
            return Current(ABSENT, None, head=head)
        try:
            record = open_record(self._token, record_id, stored, keys)
        except DecryptError:
            # Not written here by a vault node (or damaged): never cached, never evaluated.
            self._records.pop(record_id)
            return Current(stored.meta, None, tampered=True, head=head)
        sealed_with = sealed_key_name(stored.value) or ""
        current = Current(stored.meta, record, head=head, sealed_with=sealed_with)
        known = self._records.get(record_id)
        if known is None or stored.meta.mod_revision >= known.meta.mod_revision:
            self._records.put(record_id, current)
        return current

    async def _read(self, record_id: bytes) -> Current:
        """A linearizable read of the record and its group's head (the cache refreshed)."""
        try:
            snapshot = await self._store.read(record_id, self._group(record_id))
        except BaseException:
            self._records.pop(record_id)
            raise
        return self._open(record_id, snapshot)

    async def _commit(
        self, record_id: bytes, current: Current, step: Step
    ) -> tuple[int, Current, Head]:
        """Write (or erase) what `step` says, with the group's next head, if the record and the
        head are still at `current`'s metadata: `(commit revision, the key after it, the new
        head)`, or `(0, the key as the failed CAS read it, the head it would have written)`."""
        head = current.head
        assert head is not None
        keys = self._keyring.seal_keys  # new values are sealed with the seal epoch's key
        sealed: bytes | None = None
        if not step.erase:
            assert step.write is not None
            # A key's first value is sealed for version 1 (only the placeholder: records.py).
            stored_at = current.meta.successor() if current.meta.exists else KeyMeta(0, 0, 1)
            record = step.write
            record.version = stored_at.version  # the etcd version it is sealed for
            sealed = seal_record(self._token, record_id, record, stored_at, self._rng, keys)
        sealed_head, new_head = next_head(self._token, head, record_id, sealed, self._rng, keys)
        try:
            revision, conflict = await self._store.write(
                record_id, sealed, current.meta, head.group, sealed_head, head.meta
            )
        except StoreUnavailable as exc:
            self._records.pop(record_id)  # the outcome is unknown
            self._unwitnessed = True  # it may commit later, with no witness told
            raise WriteUnconfirmed("etcd did not confirm the write") from exc
        except StoreRolledBack as exc:
            # The write may have landed in the rolled-back store; nothing is evaluated on it.
            self._records.pop(record_id)
            raise StoreRefused("the store was rolled back; this node refuses to serve") from exc
        except BaseException:
            self._records.pop(record_id)  # the outcome is unknown
            self._unwitnessed = True
            raise
        if not revision:
            assert conflict is not None
            return 0, self._open(record_id, conflict), new_head
        new_head = replace(new_head, meta=head.meta.after_write(revision))
        self._note_head(new_head)
        if step.erase:
            self._records.pop(record_id)
            return revision, Current(ABSENT, None, head=new_head), new_head
        after = Current(
            current.meta.after_write(revision), step.write, head=new_head, sealed_with=keys.record
        )
        self._records.put(record_id, after)
        return revision, after, new_head

    async def _apply(
        self, record_id: bytes, decide: Callable[[Current], Step], current: Current
    ) -> Applied:
        """The one compare-and-swap loop: decide, commit, and on a conflict decide again; then
        have a majority of witnesses capture the new head before anything is answered on it."""
        for attempt in range(CAS_RETRIES):
            if attempt:
                self._metrics.cas_retry()
            if current.head is None:
                self._tampered(record_id, current)  # the group's head itself is not ours
            step = decide(current)
            if step.kind is Kind.TAMPERED:
                self._tampered(record_id, current)
            if not step.writes:
                return Applied(step, current, 0)
            if self._unwitnessed or self._witnesses.take_missed():
                self._unwitnessed = True
                current = await self._confirm(record_id)
                continue  # decide again on the head just confirmed
            revision, after, new_head = await self._commit(record_id, current, step)
            if revision:
                assert current.head is not None
                await self._witness(record_id, current.head, new_head, step)
                return Applied(step, current, revision)
            self._metrics.cas_conflict()
            current = after  # read by the failed CAS itself
        self._metrics.cas_gave_up()
        raise Unavailable("too much contention on this record; retry")

    async def _confirm(self, record_id: bytes) -> Current:
        """Before writing again after a write of ours may have stayed unwitnessed: a fresh read,
        and a majority must capture its head (filling in any gap). Otherwise nothing is written.

        Security and fairness: every write commits to etcd before its capture, so while no
        majority of witnesses answers each attempt would count a guess nobody can be answered
        on, and a user retrying the right password could lock their own key; and heads stacked
        past what a witness can bridge (heads.RECENT) would leave the group unwritable. One
        unconfirmed write per node at a time, then `Unavailable` (nothing applied) until the
        witnesses vouch for the head again."""
        current = await self._read(record_id)
        if current.head is None:
            self._tampered(record_id, current)
        assert current.head is not None
        result = await self._witnesses.confirm(current.head)
        self._metrics.witness_capture("confirm")
        if result.rollback:
            self._rollback(record_id, current.head, result)
        if not result.captured:
            raise Unavailable("the witnesses cannot vouch for the group's head; nothing written")
        self._unwitnessed = False
        self._witnessed[current.head.group] = current.head.hash
        return current

    def _rollback(self, record_id: bytes, base: Head, result: CaptureResult) -> NoReturn:
        self._records.pop(record_id)
        group = base.group
        if self._groups.alarm_group(group):
            log.error(
                "GROUP ROLLBACK ALARM: group %d (record %s): %s. etcd holds a head older than "
                "the witnesses' (a restore, however its revisions were bumped) or another "
                "history (a fork); this node refuses the group until an operator clears it "
                "with its token (ceremony_cli store-alarm-clear)",
                group, record_id.hex(), result.rollback,
            )  # fmt: skip
        self._audit.write("rollback", record_id, read_revision=base.meta.mod_revision)
        raise StoreRefused("the group's head is behind the witnesses'")

    async def _witness(self, record_id: bytes, base: Head, head: Head, step: Step) -> None:
        """A majority of witnesses must capture `head` before a guess is evaluated, a lock or a
        delete is confirmed, or a registration acknowledged. The finish (RELEASE) only forgives
        guesses, so losing it to a rollback costs its user, never gains an attacker: written on
        a head this node saw a majority capture, only this node's own witness is told (no
        message), and the group's next write carries it to the others (its capture names the
        finish's head and, as `base_prev`, the witnessed one, which every witness bridges).
        Written on any other head, it is captured lazily (sent, not awaited), so that heads
        nobody captured never pile up past what a witness can bridge (heads.RECENT). A wrong
        finish's unchanged rewrite takes the same path as a release, so the two finishes look
        alike; a rotation's re-seal, which changes nothing either, is captured lazily."""
        if (
            step.kind in (Kind.RELEASE, Kind.REWRITE)
            and self._witnessed.get(base.group) == base.hash
        ):
            # Security: at most one head stands uncaptured on top of a witnessed one this way
            # (the next finish on it is captured lazily, the next counting write in full), and
            # a rollback of it can only undo a release, as a lost lazy capture can.
            self._witnesses.note(base, head)
            self._metrics.witness_capture("local")
            return
        lazy = step.kind in (Kind.RELEASE, Kind.REWRITE, Kind.RESEAL)
        self._metrics.witness_capture("lazy" if lazy else "majority")
        result = await self._witnesses.capture(base, head, lazy=lazy)
        if result.rollback:
            self._rollback(record_id, base, result)
        if not result.captured:
            self._records.pop(record_id)
            self._unwitnessed = True
            # The write is in etcd, unwitnessed: nothing is evaluated or answered on it.
            log.warning("write to group %d not witnessed: %s", base.group, result.answers)
            raise WriteUnconfirmed("the witnesses did not confirm the write")
        if not lazy:
            self._witnessed[head.group] = head.hash

    def _tampered(self, record_id: bytes, current: Current) -> None:
        """Refuse a record storage wrote: audit line, operator log line, DATA_LOSS."""
        meta = current.meta
        self._audit.write("tampered", record_id, read_revision=meta.mod_revision)
        log.error(
            "record %s does not open at its etcd metadata (create_revision=%d version=%d "
            "mod_revision=%d): etcd holds a value no vault node wrote there; refused, nothing "
            "evaluated",
            record_id.hex(), meta.create_revision, meta.version, meta.mod_revision,
        )  # fmt: skip
        raise RecordTampered("the stored record was not written by the vault")

    def _check_expiry(self, expires_at_ms: int, what: str, *, strict: bool) -> None:
        now = self._clock_ms()
        if now >= expires_at_ms:
            raise Precondition(f"{what} expired")
        if expires_at_ms - now <= self._ticket_life_ms():
            return
        # The issuing node's clock runs ahead of ours (or ours behind). A registration ticket is
        # refused: a refusal costs only a new registration. A login ticket is accepted: its
        # guess is already counted, refusing it would burn guesses of a user with the right
        # password, and a late redemption cannot forgive later guesses (`transitions.redeem`).
        log.warning("%s expires %d ms after our clock's TTL: clock skew between nodes?",
                    what, expires_at_ms - now - self._config.ticket_ttl_ms)  # fmt: skip
        if strict:
            raise Precondition(f"{what} expires too far in the future (clock skew)")

    def _ticket_life_ms(self) -> int:
        return self._config.ticket_ttl_ms + MAX_CLOCK_SKEW_MS

    def _closed_answer(
        self, record_id: bytes, applied: Applied, *, evaluation: int | None = None
    ) -> envelope_pb2.VaultResponse:
        """NOT_REGISTERED or LOCKED, as the step decided; audited, no write."""
        record = applied.current.record
        if applied.step.kind is Kind.NOT_REGISTERED or record is None:
            self._audit.write("not_registered", record_id)
            return envelope_pb2.VaultResponse(outcome=Outcome.OUTCOME_NOT_REGISTERED)
        self._audit.write(
            "locked", record_id, record.attempts, record.max_attempts,
            generation=record.generation, evaluation=evaluation,
        )  # fmt: skip
        return _locked()

    # -- register --

    async def _register_start(
        self,
        msg: envelope_pb2.RegisterStart,
        keys: StepKeys,
        account: bytes,
        record_id: bytes,
        signer: Signer,
    ) -> envelope_pb2.VaultResponse:
        new_key = bytes(msg.new_account_key)
        if new_key and len(new_key) != account_auth.PUBLIC_KEY_LEN:
            raise BadRequest("new_account_key must be a raw 32-byte Ed25519 key")
        # The signer first: a key the record is not bound to gets no evaluation at all.
        # A read, never the cache: the ticket's base must be the key as etcd holds it now.
        current, _ = await self._admitted(record_id, signer, await self._read(record_id))
        # Security: the new registration's generation salts its OPRF key (credential scheme 1),
        # so this uncounted evaluation never touches the key of the account's live record.
        generation = self._rng(GENERATION_LEN)
        identifier = credential_identifier(account, generation, CREDENTIAL_ACCOUNT_GENERATION)
        try:
            reply = opaque.server_registration_response(
                msg.registration_request, identifier, self._keys
            )
        except InvalidInput as exc:
            raise BadRequest("malformed registration request") from exc
        # Security: the finish may replace only the key as it is now, named by a real write: an
        # absent key is reserved first (a secret-free placeholder, witnessed like any write),
        # because a ticket bound to "absent" would match the key again after a delete.
        # The signer is checked again on every compare-and-swap (`transitions.reserve`).
        applied = await self._apply(record_id, lambda c: transitions.reserve(c, signer), current)
        self._check_admitted(record_id, applied)
        if applied.revision:
            self._audit.write("reserve", record_id, revision=applied.revision)
            meta = applied.current.meta.after_write(applied.revision)
        else:
            meta = applied.current.meta
        registration = sealed_pb2.RegistrationTicket(
            record_id=record_id,
            generation=generation,
            base_revision=meta.mod_revision,
            base_create_revision=meta.create_revision,
            base_version=meta.version,
            expires_at_ms=self._clock_ms() + self._config.ticket_ttl_ms,
            # The key the finish binds: the signer's, or the new one it names (key change).
            account_key=new_key or signer.key,
            auth_ms=signer.ts_ms,
        )
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            register_start=envelope_pb2.RegisterStartReply(registration_response=reply),
            ticket=self._ticket(TicketOp.OP_REGISTER, keys, record_id, registration=registration),
        )

    async def _register_finish(
        self, msg: envelope_pb2.RegisterFinish, outer: sealed_pb2.Ticket, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
        registration_record = _parse_registration_record(msg.registration_record)
        if len(msg.wrapped_key) != WRAPPED_KEY_LEN:
            raise BadRequest(f"wrapped key must be {WRAPPED_KEY_LEN} bytes")
        if msg.max_attempts > MAX_ATTEMPTS_LIMIT:
            raise BadRequest(f"max_attempts must be in 0..{MAX_ATTEMPTS_LIMIT}")
        if msg.HasField("ksf"):
            try:  # bounded: a record must not make its recovering client spend without limit
                ksf_from_params(msg.ksf)
            except InvalidInput as exc:
                raise BadRequest("KSF parameters out of range") from exc
        ticket = outer.registration
        if (
            not outer.HasField("registration")
            or ticket.record_id != record_id
            or len(ticket.generation) != GENERATION_LEN
            or ticket.base_version <= 0
            or len(ticket.account_key) != account_auth.PUBLIC_KEY_LEN
        ):
            raise BadRequest("registration ticket does not belong to this account")
        self._check_expiry(ticket.expires_at_ms, "registration ticket", strict=True)
        cap = self._config.max_attempts_cap
        if msg.max_attempts > cap:
            # Refused, not clamped (nothing stored): a client that asked for more guesses must
            # not believe it has them. Sealed, so the frontend cannot tell it from a success.
            log.info("registration refused: max_attempts %d above cap %d", msg.max_attempts, cap)
            return envelope_pb2.VaultResponse(
                outcome=Outcome.OUTCOME_REFUSED,
                max_attempts_cap=cap,
                register_finish=envelope_pb2.RegisterFinishReply(),
            )
        max_attempts = msg.max_attempts or self._config.default_max_attempts
        new = sealed_pb2.Record(
            state=transitions.ACTIVE,
            opaque_record=registration_record.to_bytes(),
            wrapped_key=msg.wrapped_key,
            attempts=0,
            max_attempts=max_attempts,
            generation=ticket.generation,
            evaluations=0,
            last_redeemed=0,
            credential_scheme=CREDENTIAL_ACCOUNT_GENERATION,
            ksf_params=msg.ksf.SerializeToString() if msg.HasField("ksf") else b"",
            # Bound to what the signed start proved (issue 17); checked again at every start.
            account_key=ticket.account_key,
            last_auth_ms=ticket.auth_ms,
        )
        # From the cache when it holds the key at the ticket's base: the CAS compares it.
        current = self._cached(
            record_id, lambda c: transitions.at_base(c, ticket)
        ) or await self._read(record_id)
        applied = await self._apply(
            record_id, lambda current: transitions.register(current, ticket, new), current
        )
        if applied.step.kind is Kind.STALE:
            raise Precondition("the record changed since the registration started; start again")
        if applied.revision:
            self._audit.write(
                "register", record_id, 0, max_attempts,
                revision=applied.revision, generation=ticket.generation,
                read_revision=applied.current.meta.mod_revision,
            )  # fmt: skip
        stored = applied.step.write or applied.current.record
        assert stored is not None
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            guesses_left=transitions.guesses_left(stored),
            register_finish=envelope_pb2.RegisterFinishReply(),
        )

    # -- recover --

    def _void(
        self, keys: StepKeys, record_id: bytes, response: envelope_pb2.VaultResponse
    ) -> envelope_pb2.VaultResponse:
        """A closed step-1 answer (LOCKED, NOT_REGISTERED) with a void ticket: the client still
        sends its (dummy) finish, so the frontend sees a recovery's two steps whatever the
        outcome; that finish redeems nothing and gets the same outcome again."""
        response.recover_start.SetInParent()
        response.ticket = self._ticket(
            TicketOp.OP_RECOVER, keys, record_id, void=True, closed_outcome=response.outcome
        )
        return response

    async def _recover_start(
        self,
        msg: envelope_pb2.RecoverStart,
        keys: StepKeys,
        account: bytes,
        record_id: bytes,
        signer: Signer,
    ) -> envelope_pb2.VaultResponse:
        ke1 = _parse_ke1(msg.ke1)  # before any write: malformed input must not cost a guess

        def count(current: Current) -> Step:
            return transitions.count_guess(current, signer)

        # From the cache only to count on it (the CAS compares it): a refusal takes a read.
        current = self._cached(
            record_id, lambda c: count(c).kind is Kind.EVALUATE
        ) or await self._read(record_id)
        if current.record is not None and current.record.state == transitions.LOCKED:
            # Nothing to count on a locked record, but the bound key still cancels a rebind.
            current, _ = await self._admitted(record_id, signer, current)
        # Security: decided (signer and replay checks included) again on every CAS retry, and
        # nothing is evaluated unless the guess it counts committed.
        applied = await self._apply(record_id, count, current)
        self._check_admitted(record_id, applied)
        step, before = applied.step, applied.current
        if step.kind in (Kind.NOT_REGISTERED, Kind.LOCKED):
            return self._void(keys, record_id, self._closed_answer(record_id, applied))
        record = before.record
        assert record is not None and step.write is not None
        if step.kind is Kind.LOCK:
            self._audit.write(
                "lock", record_id, record.attempts, record.max_attempts,
                revision=applied.revision, generation=record.generation,
                evaluation=record.evaluations, read_revision=before.meta.mod_revision,
            )  # fmt: skip
            self._on_erased(applied.revision)
            return self._void(keys, record_id, _locked())
        counted = step.write
        # Written (and flushed) after the commit and before the OPRF: the checker's count, and
        # the revision a restarted node takes its high-water mark from.
        self._audit.write(
            "evaluate", record_id, counted.attempts, counted.max_attempts,
            revision=applied.revision, generation=counted.generation,
            evaluation=counted.evaluations, read_revision=before.meta.mod_revision,
        )  # fmt: skip
        identifier = credential_identifier(account, counted.generation, counted.credential_scheme)
        try:  # KE1 was parsed before the write: only the stored record can be malformed here
            stored_record = opaque.parse_registration_record(counted.opaque_record)
        except InvalidInput as exc:
            raise RecordCorrupt("stored record holds a malformed OPAQUE record") from exc
        ke2, state = opaque.server_login_start(
            stored_record, identifier, ke1, self._keys, self._opaque, self._rng
        )
        committed = before.meta.after_write(applied.revision)
        ticket = self._ticket(
            TicketOp.OP_RECOVER, keys, record_id,
            generation=counted.generation,
            evaluation=counted.evaluations,
            expected_client_mac=state.expected_client_mac,
            session_key=state.session_key,
            create_revision=committed.create_revision,
            version=committed.version,
            signer_key=signer.key,
        )  # fmt: skip
        reply = envelope_pb2.RecoverStartReply(ke2=ke2)
        if counted.ksf_params:
            reply.ksf.ParseFromString(counted.ksf_params)  # as registered: see KsfParams
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            guesses_left=counted.max_attempts - counted.attempts,
            recover_start=reply,
            ticket=ticket,
        )

    async def _recover_finish(
        self, msg: envelope_pb2.RecoverFinish, ticket: sealed_pb2.Ticket, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
        self._check_expiry(ticket.expires_at_ms, "ticket", strict=False)
        if len(msg.ke3) != opaque.KE3_BYTES:
            raise BadRequest("malformed KE3")
        if ticket.void:
            # The client's dummy finish after a closed step 1: nothing to redeem; the same
            # outcome again (no storage work: see docs/architecture.md on timing).
            if ticket.closed_outcome not in _CLOSED:
                raise BadRequest("ticket could not be opened")
            return envelope_pb2.VaultResponse(
                outcome=ticket.closed_outcome, recover_finish=envelope_pb2.RecoverFinishReply()
            )
        try:
            opaque.server_login_finish(ticket.expected_client_mac, msg.ke3)
            good_mac = True
        except AuthenticationError:
            good_mac = False
        except InvalidInput as exc:
            raise BadRequest("malformed KE3") from exc
        # The right and the wrong finish read (or take from the cache) alike and commit once.
        current = self._cached(
            record_id, lambda c: transitions.redeemable(c, ticket)
        ) or await self._read(record_id)
        if not good_mac:
            return await self._bad_mac(record_id, ticket, current)
        applied = await self._apply(record_id, lambda c: transitions.redeem(c, ticket), current)
        step, before = applied.step, applied.current
        if step.kind in (Kind.NOT_REGISTERED, Kind.LOCKED):
            return self._closed_answer(record_id, applied, evaluation=ticket.evaluation)
        record = before.record
        assert record is not None
        if step.kind is Kind.STALE:
            self._audit.write(
                "stale_ticket", record_id, record.attempts, record.max_attempts,
                generation=record.generation, evaluation=ticket.evaluation,
            )  # fmt: skip
            raise Precondition("ticket is stale or was already used")
        redeemed = step.write
        assert redeemed is not None
        self._audit.write(
            "success", record_id, redeemed.attempts, redeemed.max_attempts,
            revision=applied.revision, generation=redeemed.generation,
            evaluation=ticket.evaluation, read_revision=before.meta.mod_revision,
        )  # fmt: skip
        transported = seal_transport(ticket.session_key, redeemed.wrapped_key, self._rng)
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            guesses_left=transitions.guesses_left(redeemed),
            recover_finish=envelope_pb2.RecoverFinishReply(transported_key=transported),
        )

    async def _bad_mac(
        self, record_id: bytes, ticket: sealed_pb2.Ticket, current: Current
    ) -> envelope_pb2.VaultResponse:
        """A wrong client MAC (a wrong password's dummy finish): the guess was counted at step
        1 and nothing is forgiven, but the record is written back unchanged through the same
        compare-and-swap and head as a right finish (`transitions.rewrite`), so both do the
        same storage work."""
        applied = await self._apply(record_id, transitions.rewrite, current)
        record = applied.current.record
        if applied.step.kind is Kind.NOT_REGISTERED or record is None:
            return envelope_pb2.VaultResponse(
                outcome=Outcome.OUTCOME_NOT_REGISTERED,
                recover_finish=envelope_pb2.RecoverFinishReply(),
            )
        self._audit.write(
            "bad_mac", record_id, record.attempts, record.max_attempts,
            revision=applied.revision, generation=record.generation,
            evaluation=ticket.evaluation,
            read_revision=applied.current.meta.mod_revision if applied.revision else None,
        )  # fmt: skip
        if applied.step.kind is Kind.LOCKED:
            return _locked()
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_INVALID_PASSWORD,
            guesses_left=transitions.guesses_left(record),
            recover_finish=envelope_pb2.RecoverFinishReply(),
        )

    # -- delete, status --

    async def _begin(
        self, msg: envelope_pb2.Begin, keys: StepKeys, record_id: bytes, signer: Signer
    ) -> envelope_pb2.VaultResponse:
        """Step 1 of a status question, a delete or a rebind request: one read (the signer
        checked against the record), and a ticket bound to the key as it is (for a delete:
        `transitions.as_begun`). Nothing else is written (but a rebind's pending key, or the
        cancellation of one) or answered yet."""
        op = _BEGIN_OPS.get(msg.op)
        if op is None:
            raise BadRequest("begin names no operation")
        current = await self._read(record_id)
        if msg.op == envelope_pb2.Begin.Op.OP_REBIND:
            current, cancelled = await self._rebind(record_id, signer, current)
        else:
            current, cancelled = await self._admitted(record_id, signer, current)
        # A tampered value is not refused here: a delete must still be able to erase it.
        create_revision, generation = transitions.as_begun(current)
        ticket = self._ticket(
            op, keys, record_id, create_revision=create_revision, generation=generation,
            rebind_cancelled_key=cancelled,
        )  # fmt: skip
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK, begin=envelope_pb2.BeginReply(), ticket=ticket
        )

    async def _rebind(
        self, record_id: bytes, signer: Signer, current: Current
    ) -> tuple[Current, bytes]:
        """Key loss (Begin OP_REBIND): the signer's key becomes the record's pending rebind
        (`transitions.request_rebind`), audited `rebind`; no guess is counted. (The bound key
        asking cancels a pending one instead, as any request it signs.)"""
        applied = await self._apply(
            record_id, lambda c: transitions.request_rebind(c, signer), current
        )
        self._check_admitted(record_id, applied)  # (a tampered value: refused by `_apply`)
        if applied.step.kind is not Kind.REBIND_STARTED:
            return await self._cancelled(record_id, applied)
        self._audit.write(
            "rebind", record_id, revision=applied.revision,
            read_revision=applied.current.meta.mod_revision,
        )  # fmt: skip
        log.warning(
            "record %s: a rebind to another account key was requested; it matures in %d s "
            "unless the bound key signs a request first",
            record_id.hex(), self._config.rebind_delay_ms // 1000,
        )  # fmt: skip
        return await self._read(record_id), b""

    async def _delete(
        self, record_id: bytes, ticket: sealed_pb2.Ticket
    ) -> envelope_pb2.VaultResponse:
        # A tampered value is erased all the same: deleting needs no record to open.
        applied = await self._apply(
            record_id,
            lambda c: transitions.delete_begun(c, ticket.create_revision, ticket.generation),
            await self._read(record_id),
        )
        if applied.step.kind is Kind.STALE:
            raise Precondition("the record changed since the delete began; start again")
        if applied.revision:
            self._audit.write(
                "delete", record_id, revision=applied.revision,
                read_revision=applied.current.meta.mod_revision,
            )  # fmt: skip
            self._on_erased(applied.revision)
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            delete=envelope_pb2.DeleteReply(existed=applied.step.existed),
        )

    async def _status(self, record_id: bytes, cancelled: bytes) -> envelope_pb2.VaultResponse:
        current = await self._read(record_id)
        if current.tampered:
            self._tampered(record_id, current)
        record = current.record
        if not current.registered or record is None:
            return envelope_pb2.VaultResponse(
                outcome=Outcome.OUTCOME_OK, status=envelope_pb2.StatusReply(registered=False)
            )
        reply = envelope_pb2.StatusReply(
            registered=True,
            locked=record.state == transitions.LOCKED,
            max_attempts=record.max_attempts,
            rebind_cancelled_key=cancelled,
        )
        if record.pending_key:
            reply.rebind_pending = True
            reply.rebind_key = record.pending_key
            reply.rebind_matures_at_ms = record.pending_since_ms + self._config.rebind_delay_ms
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK, guesses_left=transitions.guesses_left(record), status=reply
        )

    # -- fleet rotation: re-seal (vault_node.reseal runs the pass) --

    async def reseal(self, record_id: bytes, *, erase_placeholder: bool = False) -> bool:
        """Write `record_id`'s record back unchanged so that it and its group's head are sealed
        with the seal epoch's `record` key (`transitions.reseal`): through `_apply`, so the
        head, the witnesses and the guess counter stay as every other write keeps them.
        `record_id` may be `reseal.head_only_id(group)` (no account has it): the group's head
        alone. True when it wrote; raises what a request would (`RecordTampered`, ...)."""
        self._check_serving()
        self._check_group(record_id)
        label = self._keyring.sealing.record

        def decide(current: Current) -> Step:
            return transitions.reseal(current, label, erase_placeholder=erase_placeholder)

        async def rewrite() -> Applied:
            return await self._apply(record_id, decide, await self._read(record_id))

        applied = await self._guarded(rewrite())
        if not applied.revision:
            return False
        record = applied.current.record
        self._audit.write(
            "reseal", record_id,
            record.attempts if record is not None else None,
            record.max_attempts if record is not None else None,
            revision=applied.revision,
            generation=record.generation if record is not None else None,
            read_revision=applied.current.meta.mod_revision,
        )  # fmt: skip
        return True


def _account_bytes(account_id: str) -> bytes:
    account = account_id.encode("utf-8")
    if not account or len(account) > MAX_ACCOUNT_ID_BYTES:
        raise BadRequest(f"account id must be 1..{MAX_ACCOUNT_ID_BYTES} bytes")
    return account


def _parse_registration_record(record: bytes) -> opaque.RegistrationRecord:
    try:  # exact length and a valid client public key, before the finish writes anything
        return opaque.parse_registration_record(record)
    except InvalidInput as exc:
        raise BadRequest(f"malformed registration record: {exc}") from exc


def _parse_ke1(ke1: bytes) -> opaque.KE1:
    try:  # exact length and valid group elements, before the guess is counted
        return opaque.parse_ke1(ke1)
    except InvalidInput as exc:
        raise BadRequest(f"malformed KE1: {exc}") from exc


def _locked() -> envelope_pb2.VaultResponse:
    return envelope_pb2.VaultResponse(outcome=Outcome.OUTCOME_LOCKED, guesses_left=0)
