"""The vault node's request logic: open the envelope, run the server side of OPAQUE, keep records.

Pure over injected parts (no gRPC, no sockets): a `TokenOps` (the HSM), a `RecordStore` (etcd),
a millisecond clock, randomness and an audit sink. `handle` returns the sealed response or raises
one of the `ServiceError` subclasses, which `server.py` maps to a gRPC status in one place.
Protocol outcomes (wrong password, locked, not registered) are not errors: they travel inside the
sealed response, which the frontend cannot read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from bkv.v1 import envelope_pb2, sealed_pb2
from vault_node.audit import AuditSink
from vault_node.config import MAX_ATTEMPTS_LIMIT
from vault_node.lru import Lru
from vault_node.records import (
    CREDENTIAL_ACCOUNT_GENERATION,
    TokenOps,
    credential_identifier,
    open_record,
    open_registration_ticket,
    open_ticket,
    seal_record,
    seal_registration_ticket,
    seal_ticket,
)
from vault_node.store import RecordStore, StoreUnavailable
from vault_protocol import opaque, ristretto
from vault_protocol.backup_key import WRAPPED_KEY_LEN, seal_transport
from vault_protocol.envelope import FleetKey, open_request, seal_response
from vault_protocol.errors import AuthenticationError, DecryptError, InvalidInput
from vault_protocol.ksf import from_params as ksf_from_params

log = logging.getLogger(__name__)

Outcome = envelope_pb2.Outcome
Rng = Callable[[int], bytes]

GENERATION_LEN = 16
MAX_ACCOUNT_ID_BYTES = 256
CAS_RETRIES = 16
MAX_CLOCK_SKEW_MS = 5_000  # between the node that issues a ticket and the one that redeems it
ID_CACHE_SIZE = 65_536
RECORD_CACHE_SIZE = 16_384

Entry = tuple[sealed_pb2.Record, int]  # an opened record and the etcd mod_revision it had


class ServiceError(Exception):
    """Base of the errors `handle` raises; messages hold no secret and may reach the caller."""


class BadRequest(ServiceError):
    """Malformed or unopenable input (INVALID_ARGUMENT). Nothing was changed."""


class Precondition(ServiceError):
    """A ticket that is expired, stale or already used, or a registration whose record changed
    since its start (FAILED_PRECONDITION). Nothing changed."""


class Unavailable(ServiceError):
    """etcd has no quorum, the node is not serving, or contention (UNAVAILABLE): retry.

    Raised as such only when this request wrote nothing (no attempt was counted), so the
    caller may retry it freely; a write whose outcome is unknown is `WriteUnconfirmed`.
    """


class WriteUnconfirmed(Unavailable):
    """etcd failed while a write of this request was in flight: it may have been applied."""


class RecordCorrupt(ServiceError):
    """A record in etcd failed to open under the fleet's record key (DATA_LOSS)."""


@dataclass(frozen=True)
class ServiceConfig:
    node_name: str
    default_max_attempts: int = 10
    ticket_ttl_ms: int = 120_000
    opaque_context: bytes = opaque.DEFAULT_CONTEXT
    id_cache_size: int = ID_CACHE_SIZE  # accounts whose record id is kept (0: none)
    record_cache_size: int = RECORD_CACHE_SIZE  # records kept for optimistic CAS (0: none)

    def validate(self) -> None:
        problems = []
        if self.id_cache_size < 0 or self.record_cache_size < 0:
            problems.append("cache sizes must be >= 0")
        if not self.node_name:
            problems.append("node_name must be non-empty")
        if not 1 <= self.default_max_attempts <= MAX_ATTEMPTS_LIMIT:
            problems.append(f"default_max_attempts must be in 1..{MAX_ATTEMPTS_LIMIT}")
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
    ) -> None:
        config.validate()
        self._token = token
        self._store = store
        self._keys = keys
        self._config = config
        self._clock_ms = clock_ms
        self._rng = rng
        self._audit = audit
        self._serving = serving
        self._fleet = FleetKey(token.kem_public_key())
        self._opaque = opaque.OpaqueConfig(context=config.opaque_context, ksf=_KsfUnused())
        # record_id = HMAC(id_mac, account) is deterministic and no secret from the node (it is
        # the etcd key): caching it saves one token call per request.
        self._ids: Lru[bytes, bytes] = Lru(config.id_cache_size)
        # Records this node last read or wrote, with their mod_revision, used only as the
        # *compare* of an optimistic CAS (see `_cached`). They stay inside the node process, the
        # HSM boundary, which opens every record it serves anyway.
        self._records: Lru[bytes, Entry] = Lru(config.record_cache_size)

    @property
    def fleet_id(self) -> bytes:
        return self._fleet.fleet_id

    async def handle(self, account_id: str, envelope: bytes) -> bytes:
        """Open `envelope` for `account_id`, run the operation, return the sealed response."""
        # Fail closed: without a fresh etcd round trip no request is served at all.
        if not self._serving():
            raise Unavailable("vault node is not serving (no etcd quorum or not registered)")
        account = _account_bytes(account_id)
        try:
            request = open_request(
                envelope,
                account_id,
                self._fleet.fleet_id,
                self._token.ecdh,
                self._fleet.public_key_bytes,
            )
        except (InvalidInput, DecryptError) as exc:
            # One answer for every cause: the frontend learns nothing about why it failed.
            raise BadRequest("envelope could not be opened") from exc
        if len(request.response_key) != 32:
            raise BadRequest("envelope could not be opened")
        record_id = self._record_id(account)
        try:
            response = await self._dispatch(request, account, record_id)
        except StoreUnavailable as exc:
            # Writes turn their own failures into WriteUnconfirmed: this one came from a read.
            raise Unavailable("etcd is unavailable; nothing was written") from exc
        return seal_response(request.response_key, response, self._rng)

    async def _dispatch(
        self, request: envelope_pb2.VaultRequest, account: bytes, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
        op = request.WhichOneof("op")
        if op == "register_start":
            return await self._register_start(request.register_start, account, record_id)
        if op == "register_finish":
            return await self._register_finish(request.register_finish, record_id)
        if op == "recover_start":
            return await self._recover_start(request.recover_start, account, record_id)
        if op == "recover_finish":
            return await self._recover_finish(request.recover_finish, record_id)
        if op == "delete":
            return await self._delete(record_id)
        if op == "status":
            return await self._status(record_id)
        raise BadRequest("request carries no operation")

    # -- records --

    def _record_id(self, account: bytes) -> bytes:
        record_id = self._ids.get(account)
        if record_id is None:
            record_id = self._token.hmac_sha256("id_mac", account)
            self._ids.put(account, record_id)
        return record_id

    def _cached(self, record_id: bytes) -> Entry | None:
        """The last record this node saw for `record_id`, if it is active with guesses left.

        Used only as the compare of a CAS, never to answer: etcd changes a key's mod_revision
        with every write, so a stale entry can only make the CAS fail (and the failure returns
        the current record), never succeed. A CAS that commits proves the entry was current.
        Locked, exhausted or absent records always take a linearizable read instead.
        """
        entry = self._records.get(record_id)
        if entry is None:
            return None
        record = entry[0]
        if record.state != sealed_pb2.RECORD_STATE_ACTIVE or record.attempts >= record.max_attempts:
            return None
        return entry

    def _remember(self, record_id: bytes, entry: Entry | None) -> Entry | None:
        if entry is None:
            self._records.pop(record_id)
        else:
            known = self._records.get(record_id)
            if known is None or entry[1] >= known[1]:
                self._records.put(record_id, entry)
        return entry

    def _open(self, record_id: bytes, stored: tuple[bytes, int] | None) -> Entry | None:
        if stored is None:
            return self._remember(record_id, None)
        blob, mod_revision = stored
        try:
            record = open_record(self._token, record_id, blob)
        except DecryptError as exc:
            self._records.pop(record_id)
            raise RecordCorrupt("stored record failed to open") from exc
        return self._remember(record_id, (record, mod_revision))

    async def _read(self, record_id: bytes) -> Entry | None:
        """A linearizable read of the record (and the cache refreshed with it)."""
        try:
            stored = await self._store.get(record_id)
        except BaseException:
            self._records.pop(record_id)
            raise
        return self._open(record_id, stored)

    async def _write(
        self, record_id: bytes, record: sealed_pb2.Record, mod_revision: int
    ) -> tuple[int, tuple[bytes, int] | None]:
        """CAS-write the sealed record: `(commit revision, None)`, or on a conflict
        `(0, current stored entry)` as read by the same etcd transaction."""
        sealed = seal_record(self._token, record_id, record, self._rng)
        try:
            revision, current = await self._store.swap(record_id, sealed, mod_revision)
        except StoreUnavailable as exc:
            self._records.pop(record_id)  # the outcome is unknown
            raise WriteUnconfirmed("etcd did not confirm the write") from exc
        except BaseException:
            self._records.pop(record_id)  # the outcome is unknown
            raise
        if revision > 0:
            self._remember(record_id, (record, revision))  # a put sets mod_revision to it
        elif revision:
            self._records.pop(record_id)  # committed at a revision etcd did not report
        return revision, current

    def _check_expiry(self, expires_at_ms: int, what: str, *, strict: bool) -> None:
        now = self._clock_ms()
        if now >= expires_at_ms:
            raise Precondition(f"{what} expired")
        if expires_at_ms - now <= self._ticket_life_ms():
            return
        # The issuing node's clock runs ahead of ours (or ours behind). A registration ticket is
        # refused: tombstone removal relies on its lifetime (`_delete`), and a refusal costs only
        # a new registration. A login ticket is accepted: its guess is already counted, refusing
        # it would burn guesses of a user with the right password, and a late redemption cannot
        # forgive later guesses (see `redeemed.attempts` in `_recover_finish`).
        log.warning("%s expires %d ms after our clock's TTL: clock skew between nodes?",
                    what, expires_at_ms - now - self._config.ticket_ttl_ms)  # fmt: skip
        if strict:
            raise Precondition(f"{what} expires too far in the future (clock skew)")

    def _closed_answer(
        self, record_id: bytes, current: Entry | None, *, evaluation: int | None = None
    ) -> envelope_pb2.VaultResponse:
        """NOT_REGISTERED for an absent or deleted record, LOCKED for a locked one; audited, no
        write."""
        if current is None or _unregistered(current):
            self._audit.write("not_registered", record_id)
            return envelope_pb2.VaultResponse(outcome=Outcome.OUTCOME_NOT_REGISTERED)
        record = current[0]
        self._audit.write(
            "locked", record_id, record.attempts, record.max_attempts,
            generation=record.generation, evaluation=evaluation,
        )  # fmt: skip
        return _locked()

    # -- register --

    async def _register_start(
        self, msg: envelope_pb2.RegisterStart, account: bytes, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
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
        # The finish may replace only the record as it is now: a replayed or late finish fails.
        stored = await self._store.get(record_id)
        ticket = sealed_pb2.RegistrationTicket(
            record_id=record_id,
            generation=generation,
            base_revision=0 if stored is None else stored[1],
            expires_at_ms=self._clock_ms() + self._config.ticket_ttl_ms,
        )
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            register_start=envelope_pb2.RegisterStartReply(
                registration_response=reply,
                ticket=seal_registration_ticket(self._token, ticket, self._rng),
            ),
        )

    async def _register_finish(
        self, msg: envelope_pb2.RegisterFinish, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
        _check_registration_record(msg.registration_record)
        if len(msg.wrapped_key) != WRAPPED_KEY_LEN:
            raise BadRequest(f"wrapped key must be {WRAPPED_KEY_LEN} bytes")
        if msg.max_attempts > MAX_ATTEMPTS_LIMIT:
            raise BadRequest(f"max_attempts must be in 0..{MAX_ATTEMPTS_LIMIT}")
        if msg.HasField("ksf"):
            try:  # bounded: a record must not make its recovering client spend without limit
                ksf_from_params(msg.ksf)
            except InvalidInput as exc:
                raise BadRequest("KSF parameters out of range") from exc
        try:
            ticket = open_registration_ticket(self._token, msg.ticket)
        except DecryptError as exc:
            raise BadRequest("registration ticket could not be opened") from exc
        if ticket.record_id != record_id or len(ticket.generation) != GENERATION_LEN:
            raise BadRequest("registration ticket does not belong to this account")
        self._check_expiry(ticket.expires_at_ms, "registration ticket", strict=True)
        max_attempts = msg.max_attempts or self._config.default_max_attempts
        current = await self._store.get(record_id)
        if (0 if current is None else current[1]) != ticket.base_revision:
            return self._register_again(record_id, current, msg, ticket)
        old_version = 0
        created_at_ms = self._clock_ms()  # the key goes from absent to present now
        if current is not None:
            try:
                old = open_record(self._token, record_id, current[0])
                old_version, created_at_ms = old.version, old.created_at_ms  # key kept existing
            except DecryptError:
                old_version = 0  # re-registering replaces a corrupt record too
        record = sealed_pb2.Record(
            state=sealed_pb2.RECORD_STATE_ACTIVE,
            opaque_record=msg.registration_record,
            wrapped_key=msg.wrapped_key,
            attempts=0,
            max_attempts=max_attempts,
            generation=ticket.generation,
            evaluations=0,
            last_redeemed=0,
            version=old_version + 1,
            credential_scheme=CREDENTIAL_ACCOUNT_GENERATION,
            created_at_ms=created_at_ms,
            ksf_params=msg.ksf.SerializeToString() if msg.HasField("ksf") else b"",
        )
        # Security: the CAS compares the revision the ticket was issued at. Re-registering
        # replaces the record (a locked one included) only once per ticket: a replayed finish,
        # or one whose record changed since the start, fails and changes nothing.
        revision, current = await self._write(record_id, record, ticket.base_revision)
        if not revision:
            return self._register_again(record_id, current, msg, ticket)
        self._audit.write(
            "register", record_id, 0, max_attempts,
            revision=revision, generation=ticket.generation,
        )  # fmt: skip
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            guesses_left=max_attempts,
            register_finish=envelope_pb2.RegisterFinishReply(),
        )

    def _register_again(
        self,
        record_id: bytes,
        current: tuple[bytes, int] | None,
        msg: envelope_pb2.RegisterFinish,
        ticket: sealed_pb2.RegistrationTicket,
    ) -> envelope_pb2.VaultResponse:
        """A finish whose record is no longer the one its ticket was issued against: the same
        answer as before, without a write, when this very registration is the one stored (a
        client's retry of an unconfirmed write); FAILED_PRECONDITION otherwise."""
        try:
            entry = self._open(record_id, current)
        except RecordCorrupt:
            entry = None
        record = None if entry is None else entry[0]
        if (
            record is not None
            and record.state == sealed_pb2.RECORD_STATE_ACTIVE
            and record.generation == ticket.generation
            and record.opaque_record == msg.registration_record
            and record.wrapped_key == msg.wrapped_key
        ):
            return envelope_pb2.VaultResponse(
                outcome=Outcome.OUTCOME_OK,
                guesses_left=_guesses_left(record),
                register_finish=envelope_pb2.RegisterFinishReply(),
            )
        raise Precondition("the record changed since the registration started; start again")

    # -- recover --

    async def _recover_start(
        self, msg: envelope_pb2.RecoverStart, account: bytes, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
        _check_ke1(msg.ke1)  # before any write: malformed input must not cost a guess
        current = self._cached(record_id) or await self._read(record_id)
        for _ in range(CAS_RETRIES):
            if current is None or _erased(current[0]):
                return self._closed_answer(record_id, current)
            record, mod_revision = current
            if record.attempts >= record.max_attempts:
                # Out of guesses: erase the record's secrets for good (permanent lockout).
                tombstone = _tombstone(record)
                revision, stored = await self._write(record_id, tombstone, mod_revision)
                if revision:
                    self._audit.write(
                        "lock", record_id, record.attempts, record.max_attempts,
                        revision=revision, generation=record.generation,
                        evaluation=record.evaluations, read_revision=mod_revision,
                    )  # fmt: skip
                    return _locked()
                current = self._open(record_id, stored)
                continue
            try:  # before the write: a record we cannot evaluate must not cost a guess
                identifier = credential_identifier(
                    account, record.generation, record.credential_scheme
                )
            except ValueError as exc:
                raise RecordCorrupt("stored record has an unknown credential scheme") from exc
            counted = sealed_pb2.Record()
            counted.CopyFrom(record)
            counted.attempts = record.attempts + 1
            counted.evaluations = record.evaluations + 1
            counted.version = record.version + 1
            # The guess is committed to etcd BEFORE the OPRF runs: a crash or a lost answer
            # after this point costs the client a guess, never the attacker a free one.
            revision, stored = await self._write(record_id, counted, mod_revision)
            if revision:
                break
            current = self._open(record_id, stored)  # read by the failed CAS itself
        else:
            raise Unavailable("too much contention on this record; retry")
        # Written (and flushed) after the commit and before the OPRF: the checker's count.
        self._audit.write(
            "evaluate", record_id, counted.attempts, counted.max_attempts,
            revision=revision, generation=counted.generation, evaluation=counted.evaluations,
            read_revision=mod_revision,
        )  # fmt: skip
        try:
            ke2, state = opaque.server_login_start(
                counted.opaque_record, identifier, msg.ke1, self._keys, self._opaque, self._rng
            )
        except InvalidInput as exc:
            # KE1 was checked before the write: only the stored record can be malformed here.
            raise RecordCorrupt("stored record holds a malformed OPAQUE record") from exc
        ticket = sealed_pb2.Ticket(
            record_id=record_id,
            generation=counted.generation,
            evaluation=counted.evaluations,
            expected_client_mac=state.expected_client_mac,
            session_key=state.session_key,
            expires_at_ms=self._clock_ms() + self._config.ticket_ttl_ms,
        )
        reply = envelope_pb2.RecoverStartReply(
            ke2=ke2, ticket=seal_ticket(self._token, ticket, self._rng)
        )
        if counted.ksf_params:
            reply.ksf.ParseFromString(counted.ksf_params)  # as registered: see KsfParams
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            guesses_left=counted.max_attempts - counted.attempts,
            recover_start=reply,
        )

    async def _recover_finish(
        self, msg: envelope_pb2.RecoverFinish, record_id: bytes
    ) -> envelope_pb2.VaultResponse:
        try:
            ticket = open_ticket(self._token, msg.ticket)
        except DecryptError as exc:
            raise BadRequest("ticket could not be opened") from exc
        # A ticket is bound to the record it was issued for: another account's is refused.
        if ticket.record_id != record_id:
            raise BadRequest("ticket does not belong to this account")
        self._check_expiry(ticket.expires_at_ms, "ticket", strict=False)
        try:
            opaque.server_login_finish(ticket.expected_client_mac, msg.ke3)
            good_mac = True
        except AuthenticationError:
            good_mac = False
        except InvalidInput as exc:
            raise BadRequest("malformed KE3") from exc
        if not good_mac:
            # The guess was counted at step 1; a wrong MAC writes nothing more.
            current = await self._read(record_id)
            if current is None or _unregistered(current):
                return envelope_pb2.VaultResponse(outcome=Outcome.OUTCOME_NOT_REGISTERED)
            record = current[0]
            self._audit.write(
                "bad_mac", record_id, record.attempts, record.max_attempts,
                generation=record.generation, evaluation=ticket.evaluation,
            )  # fmt: skip
            if record.state == sealed_pb2.RECORD_STATE_LOCKED:
                return _locked()
            return envelope_pb2.VaultResponse(
                outcome=Outcome.OUTCOME_INVALID_PASSWORD,
                guesses_left=_guesses_left(record),
            )
        current = self._cached(record_id)
        if current is None or not _redeemable(current[0], ticket):
            current = await self._read(record_id)  # answers other than success need a read
        for _ in range(CAS_RETRIES):
            if current is None or _erased(current[0]):
                return self._closed_answer(record_id, current, evaluation=ticket.evaluation)
            record, mod_revision = current
            # Single use: a ticket of an older registration, or one already redeemed (or older
            # than one redeemed), cannot release the key again.
            if not _redeemable(record, ticket):
                self._audit.write(
                    "stale_ticket", record_id, record.attempts, record.max_attempts,
                    generation=record.generation, evaluation=ticket.evaluation,
                )  # fmt: skip
                raise Precondition("ticket is stale or was already used")
            redeemed = sealed_pb2.Record()
            redeemed.CopyFrom(record)
            # Security: only the guesses up to this ticket's evaluation are forgiven. Wrong ones
            # evaluated after it (say, while its finish was held back) stay counted.
            redeemed.attempts = min(record.attempts, record.evaluations - ticket.evaluation)
            redeemed.last_redeemed = ticket.evaluation
            redeemed.version = record.version + 1
            revision, stored = await self._write(record_id, redeemed, mod_revision)
            if revision:
                break
            current = self._open(record_id, stored)
        else:
            raise Unavailable("too much contention on this record; retry")
        self._audit.write(
            "success", record_id, redeemed.attempts, redeemed.max_attempts,
            revision=revision, generation=redeemed.generation, evaluation=ticket.evaluation,
            read_revision=mod_revision,
        )  # fmt: skip
        transported = seal_transport(ticket.session_key, redeemed.wrapped_key, self._rng)
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            guesses_left=_guesses_left(redeemed),
            recover_finish=envelope_pb2.RecoverFinishReply(transported_key=transported),
        )

    # -- delete, status --

    async def _delete(self, record_id: bytes) -> envelope_pb2.VaultResponse:
        stored = await self._store.get(record_id)
        for _ in range(CAS_RETRIES):
            if stored is None:
                return _deleted(existed=False)
            blob, mod_revision = stored
            try:
                record = open_record(self._token, record_id, blob)
            except DecryptError:
                # A corrupt record is erased all the same; its age is unknown, so count it new.
                record = sealed_pb2.Record(created_at_ms=self._clock_ms())
            existed = record.state != sealed_pb2.RECORD_STATE_DELETED
            # Security: the etcd key may become absent again only when no registration ticket
            # issued while it was absent (base revision 0) can still be redeemed: its finish
            # would match the absent key again. Such tickets are older than the key, and
            # registration tickets never live longer than a TTL plus the clock skew.
            if self._clock_ms() > record.created_at_ms + self._ticket_life_ms():
                try:
                    revision = await self._store.delete(record_id, mod_revision)
                except StoreUnavailable as exc:
                    raise WriteUnconfirmed("etcd did not confirm the delete") from exc
                finally:
                    self._records.pop(record_id)
                if revision:
                    if existed:
                        self._audit.write("delete", record_id, revision=revision)
                    return _deleted(existed=existed)
                stored = await self._store.get(record_id)
                continue
            if not existed:
                return _deleted(existed=False)
            # Too young to remove: erase it in place with a secret-free tombstone.
            deleted = _tombstone(record, sealed_pb2.RECORD_STATE_DELETED)
            revision, stored = await self._write(record_id, deleted, mod_revision)
            if revision:
                self._audit.write("delete", record_id, revision=revision)
                return _deleted(existed=True)
        raise Unavailable("too much contention on this record; retry")

    def _ticket_life_ms(self) -> int:
        return self._config.ticket_ttl_ms + MAX_CLOCK_SKEW_MS

    async def _status(self, record_id: bytes) -> envelope_pb2.VaultResponse:
        current = await self._read(record_id)
        if current is None or _unregistered(current):
            return envelope_pb2.VaultResponse(
                outcome=Outcome.OUTCOME_OK, status=envelope_pb2.StatusReply(registered=False)
            )
        record = current[0]
        locked = record.state == sealed_pb2.RECORD_STATE_LOCKED
        return envelope_pb2.VaultResponse(
            outcome=Outcome.OUTCOME_OK,
            guesses_left=_guesses_left(record),
            status=envelope_pb2.StatusReply(
                registered=True, locked=locked, max_attempts=record.max_attempts
            ),
        )


def _account_bytes(account_id: str) -> bytes:
    account = account_id.encode("utf-8")
    if not account or len(account) > MAX_ACCOUNT_ID_BYTES:
        raise BadRequest(f"account id must be 1..{MAX_ACCOUNT_ID_BYTES} bytes")
    return account


def _check_registration_record(record: bytes) -> None:
    if len(record) != opaque.RECORD_BYTES:
        raise BadRequest(f"registration record must be {opaque.RECORD_BYTES} bytes")
    try:
        ristretto.decode_element(record[: opaque.NPK])
    except InvalidInput as exc:
        raise BadRequest("registration record holds an invalid client public key") from exc


def _check_ke1(ke1: bytes) -> None:
    if len(ke1) != opaque.KE1_BYTES:
        raise BadRequest(f"KE1 must be {opaque.KE1_BYTES} bytes")
    try:
        ristretto.decode_element(ke1[: opaque.NOE])
        ristretto.decode_element(ke1[opaque.NOE + opaque.NN :])
    except InvalidInput as exc:
        raise BadRequest("KE1 holds an invalid group element") from exc


def _redeemable(record: sealed_pb2.Record, ticket: sealed_pb2.Ticket) -> bool:
    """Single use: a ticket of an older registration, or one already redeemed (or older than
    one redeemed), cannot release the key again."""
    return bool(
        record.generation == ticket.generation
        and record.last_redeemed < ticket.evaluation <= record.evaluations
    )


def _guesses_left(record: sealed_pb2.Record) -> int:
    if record.state == sealed_pb2.RECORD_STATE_LOCKED:
        return 0
    return max(0, int(record.max_attempts) - int(record.attempts))


def _deleted(*, existed: bool) -> envelope_pb2.VaultResponse:
    return envelope_pb2.VaultResponse(
        outcome=Outcome.OUTCOME_OK, delete=envelope_pb2.DeleteReply(existed=existed)
    )


def _unregistered(entry: Entry) -> bool:
    """Answered as "not registered", as an absent record is: a deleted one."""
    return bool(entry[0].state == sealed_pb2.RECORD_STATE_DELETED)


def _erased(record: sealed_pb2.Record) -> bool:
    """No password can be evaluated for it: locked or deleted (its secrets are gone)."""
    return record.state in (sealed_pb2.RECORD_STATE_LOCKED, sealed_pb2.RECORD_STATE_DELETED)


def _tombstone(
    record: sealed_pb2.Record,
    state: sealed_pb2.RecordState.ValueType = sealed_pb2.RECORD_STATE_LOCKED,
) -> sealed_pb2.Record:
    """The record with its secrets erased (LOCKED after the last guess, or DELETED)."""
    return sealed_pb2.Record(
        state=state,
        opaque_record=b"",
        wrapped_key=b"",
        attempts=record.attempts,
        max_attempts=record.max_attempts,
        generation=record.generation,
        evaluations=record.evaluations,
        last_redeemed=record.last_redeemed,
        version=record.version + 1,
        credential_scheme=record.credential_scheme,
        created_at_ms=record.created_at_ms,
    )


def _locked() -> envelope_pb2.VaultResponse:
    return envelope_pb2.VaultResponse(outcome=Outcome.OUTCOME_LOCKED, guesses_left=0)
