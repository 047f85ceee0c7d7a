"""vault_node.service: every flow and error, over a software token and an in-memory store."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import protocol2_tickets
import pytest
from account_keys import account_signer, signed

from bkv.store.v1 import sealed_pb2
from bkv.v1 import envelope_pb2
from vault_common.audit_line import AuditEntry
from vault_node import records, tickets
from vault_node.audit import MemoryAudit
from vault_node.heads import group_of, next_head, open_head
from vault_node.key_meta import KeyMeta, StoredValue
from vault_node.records import open_record, seal_record
from vault_node.server import NOT_APPLIED, status_for, trailers_for
from vault_node.service import (
    BadRequest,
    Precondition,
    RecordTampered,
    ServiceConfig,
    StoreRefused,
    TokenServerKeys,
    Unavailable,
    UnsupportedProtocol,
    VaultService,
    WriteUnconfirmed,
)
from vault_node.soft_token import SoftToken
from vault_node.store import MemoryRecordStore, Snapshot, StoreUnavailable, WriteResult
from vault_node.witness_core import Ref
from vault_node.witnessing import LocalWitnesses
from vault_protocol import opaque
from vault_protocol.account_auth import AccountSigner
from vault_protocol.backup_key import BackupKey, open_transport, unwrap_key, wrap_key
from vault_protocol.continuation import StepKeys, seal_continued
from vault_protocol.envelope import FleetKey, open_response, seal_request
from vault_protocol.errors import AuthenticationError, DecryptError
from vault_protocol.ksf import IdentityKsf
from vault_protocol.opaque import hazmat

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

T = TypeVar("T")
OK = envelope_pb2.OUTCOME_OK
INVALID_PASSWORD = envelope_pb2.OUTCOME_INVALID_PASSWORD
LOCKED = envelope_pb2.OUTCOME_LOCKED
NOT_REGISTERED = envelope_pb2.OUTCOME_NOT_REGISTERED
ACCOUNT = "alice@example"
OPAQUE_CONFIG = opaque.OpaqueConfig(context=b"BKV-v1", ksf=IdentityKsf())


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class SpyKeys:
    """ServerKeys that log every OPRF-key derivation (= every OPRF evaluation) into `log`."""

    def __init__(self, inner: TokenServerKeys, log: list[str]) -> None:
        self._inner = inner
        self.log = log
        self.server_private_key = inner.server_private_key
        self.server_public_key = inner.server_public_key

    def oprf_seed_hmac(self, data: bytes) -> bytes:
        self.log.append("oprf")
        return self._inner.oprf_seed_hmac(data)


class OrderedAudit(MemoryAudit):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def record(self, entry: AuditEntry) -> None:
        self.log.append(entry.event)
        super().record(entry)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


STEP1_OPS = frozenset({"register_start", "recover_start", "begin"})
BEGIN_FOR = {"status": envelope_pb2.Begin.Op.OP_STATUS, "delete": envelope_pb2.Begin.Op.OP_DELETE}


@dataclass
class Step2:
    """A second step as a client would send it: its request, the ticket of its step 1 and the
    step keys (a test may swap the ticket: the keys stay the client's)."""

    request: envelope_pb2.VaultRequest
    ticket: bytes
    keys: StepKeys

    def seal(self, fleet: FleetKey, account: str) -> bytes:
        ticket = self.ticket or b"\x00"  # an empty one only as a frontend could send it
        sealed = seal_continued(
            fleet.fleet_id, account, ticket, self.keys.request2, self.request, os.urandom
        )
        if self.ticket:
            return sealed
        envelope = envelope_pb2.ContinuedEnvelope.FromString(sealed)
        envelope.ticket = b""
        return bytes(envelope.SerializeToString(deterministic=True))


class Harness:
    def __init__(self, store: Any = None, *, max_attempts: int = 10) -> None:
        self.token = SoftToken()
        self.store = store if store is not None else MemoryRecordStore()
        self.log: list[str] = []
        self.keys = SpyKeys(TokenServerKeys.derive(self.token), self.log)
        self.audit = OrderedAudit(self.log)
        self.clock = Clock()
        self.serving = True
        self.service_config = ServiceConfig(
            node_name="n1", default_max_attempts=max_attempts, ticket_ttl_ms=60_000
        )
        # Three witnesses of the fleet, in this process (vault_node.witnessing.LocalWitnesses);
        # w1 is the node's own (the one `note` tells).
        self.witnesses = LocalWitnesses(
            ["w1", "w2", "w3"], self.service_config.record_groups, local="w1"
        )
        self.service = self.node()
        self.fleet = FleetKey(self.token.kem_public_key())
        self.step_keys: dict[bytes, StepKeys] = {}  # by the ticket each step 1 answered
        # The client's ts_ms of signed requests: strictly increasing, behind the node's clock.
        self.timestamps = itertools.count(self.clock.now - 86_400_000)
        # Who signs each account's first steps (default: the account's own test key).
        self.signers: dict[str, AccountSigner] = {}

    def node(self, **overrides: Any) -> VaultService:
        """Another vault node of the same fleet, on the same store and witnesses (caches of its
        own); `overrides` replace its constructor arguments."""
        arguments: dict[str, Any] = {
            "token": self.token, "store": self.store, "keys": self.keys,
            "config": self.service_config, "clock_ms": self.clock, "rng": os.urandom,
            "audit": self.audit, "serving": lambda: self.serving, "witnesses": self.witnesses,
        }  # fmt: skip
        arguments.update(overrides)
        return VaultService(**arguments)

    def group(self, account: str = ACCOUNT) -> int:
        return group_of(self.record_id(account), self.service_config.record_groups)

    async def write_as_node(self, rid: bytes, record: sealed_pb2.Record) -> int:
        """Write `record` as a vault node would (sealed for the key's next version, its group's
        head advanced), bypassing the request logic; the commit revision."""
        group = group_of(rid, self.service_config.record_groups)
        snapshot = await self.store.read(rid, group)
        head = open_head(self.token, group, snapshot.head)
        stored = snapshot.record
        meta = stored.meta if stored is not None else KeyMeta(0, 0, 0)
        at = meta.successor() if meta.exists else KeyMeta(0, 0, 1)
        sealed = seal_record(self.token, rid, record, at, os.urandom)
        sealed_head, new_head = next_head(self.token, head, rid, sealed, os.urandom)
        revision, _ = await self.store.write(rid, sealed, meta, group, sealed_head, head.meta)
        assert revision
        for state in self.witnesses.states.values():  # as a witnessed write would leave them
            state.capture(Ref.of(head.ref), head.prev, Ref.of(new_head.ref))
        return revision

    def record_id(self, account: str = ACCOUNT) -> bytes:
        return self.token.hmac_sha256("id_mac", account.encode())

    def record(self, account: str = ACCOUNT) -> sealed_pb2.Record:
        stored = self.store.data[self.record_id(account)]
        keys = self.service.keyring.seal_keys  # any epoch the node accepts (fleet rotation)
        return open_record(self.token, self.record_id(account), stored, keys)

    def evaluations(self) -> int:
        return self.log.count("oprf")

    def signer(self, account: str = ACCOUNT) -> AccountSigner:
        return self.signers.get(account) or account_signer(account)

    async def first(
        self, request: envelope_pb2.VaultRequest, account: str = ACCOUNT, as_account: str = ""
    ) -> envelope_pb2.VaultResponse:
        """Step 1 (signed by the account's signer, HPKE); its answer's ticket and keys are kept
        for the step 2 that follows."""
        request.response_key = os.urandom(32)
        keys = StepKeys.derive(request.response_key)
        signed(request, self.fleet.fleet_id, account, self.signer(account), next(self.timestamps))
        sealed = seal_request(self.fleet, account, request)
        reply = open_response(
            keys.answer1, await self.service.handle(as_account or account, sealed)
        )
        assert reply.ticket, "every step-1 answer carries a ticket"
        self.step_keys[bytes(reply.ticket)] = keys
        return reply

    def step2(self, request: envelope_pb2.VaultRequest, ticket: bytes) -> Step2:
        """`request` continued under `ticket` (an unknown ticket: keys of no step 1)."""
        keys = self.step_keys.get(ticket) or StepKeys.derive(os.urandom(32))
        return Step2(request, ticket, keys)

    async def second(
        self, step: Step2, account: str = ACCOUNT, as_account: str = ""
    ) -> envelope_pb2.VaultResponse:
        reply = await self.service.handle(as_account or account, step.seal(self.fleet, account))
        return open_response(step.keys.answer2, reply)

    async def call(
        self,
        request: envelope_pb2.VaultRequest | Step2,
        account: str = ACCOUNT,
        as_account: str = "",
    ) -> envelope_pb2.VaultResponse:
        """One step as a client sends it. A status or a delete as a request alone runs its
        Begin first; another second step without a ticket goes out with a forged one."""
        if isinstance(request, Step2):
            return await self.second(request, account, as_account)
        op = request.WhichOneof("op") or ""
        if op in STEP1_OPS:
            return await self.first(request, account, as_account)
        if op in BEGIN_FOR:
            begin = envelope_pb2.VaultRequest(begin=envelope_pb2.Begin(op=BEGIN_FOR[op]))
            ticket = (await self.first(begin, account, as_account)).ticket
        else:
            ticket = os.urandom(418)
        return await self.second(self.step2(request, ticket), account, as_account)

    async def prepare_registration(
        self, password: bytes, account: str = ACCOUNT, max_attempts: int = 0
    ) -> tuple[BackupKey, Step2]:
        """Register start done; returns the key and the finish step, not yet sent."""
        state, req = opaque.registration_start(password, os.urandom)
        r1 = await self.call(
            envelope_pb2.VaultRequest(
                register_start=envelope_pb2.RegisterStart(registration_request=req)
            ),
            account,
        )
        assert r1.outcome == OK and r1.ticket
        record, export_key = opaque.registration_finish(
            state, r1.register_start.registration_response, OPAQUE_CONFIG, os.urandom
        )
        key = BackupKey.generate(os.urandom)
        wrapped = wrap_key(key, export_key, account, os.urandom)
        finish = envelope_pb2.VaultRequest(
            register_finish=envelope_pb2.RegisterFinish(
                registration_record=record,
                wrapped_key=wrapped,
                max_attempts=max_attempts,
            )
        )
        return key, self.step2(finish, r1.ticket)

    async def register(
        self, password: bytes, account: str = ACCOUNT, max_attempts: int = 0
    ) -> BackupKey:
        key, finish = await self.prepare_registration(password, account, max_attempts)
        r2 = await self.call(finish, account)
        assert r2.outcome == OK
        return key

    async def register_keeping_finish(self, password: bytes) -> tuple[BackupKey, bytes, bytes]:
        """Register, and return the key with the sealed finish envelope as relayed (the bytes a
        frontend could keep to replay) and its response key."""
        key, finish = await self.prepare_registration(password)
        sealed = finish.seal(self.fleet, ACCOUNT)
        answer = open_response(finish.keys.answer2, await self.service.handle(ACCOUNT, sealed))
        assert answer.outcome == OK
        return key, sealed, finish.keys.answer2

    async def start(
        self, password: bytes, account: str = ACCOUNT
    ) -> tuple[opaque.ClientLoginState, envelope_pb2.VaultResponse]:
        state, ke1 = opaque.login_start(password, os.urandom)
        reply = await self.call(
            envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1)), account
        )
        return state, reply

    async def finish(
        self, ke3: bytes, ticket: bytes, account: str = ACCOUNT
    ) -> envelope_pb2.VaultResponse:
        request = envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3))
        return await self.call(self.step2(request, ticket), account)

    async def recover(self, password: bytes, account: str = ACCOUNT) -> BackupKey:
        state, r1 = await self.start(password, account)
        assert r1.outcome == OK
        ke3, session_key, export_key = opaque.login_finish(
            state, r1.recover_start.ke2, OPAQUE_CONFIG
        )
        r2 = await self.finish(ke3, r1.ticket, account)
        assert r2.outcome == OK
        wrapped = open_transport(session_key, r2.recover_finish.transported_key)
        return unwrap_key(wrapped, export_key, account)

    async def wrong_guess(self, account: str = ACCOUNT) -> envelope_pb2.VaultResponse:
        """A wrong password as the client sends it: step 1, then its dummy finish."""
        state, r1 = await self.start(b"wrong password", account)
        if r1.outcome == OK:
            with pytest.raises(AuthenticationError):
                opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        r2 = await self.finish(os.urandom(opaque.KE3_BYTES), r1.ticket, account)
        assert r2.outcome == (INVALID_PASSWORD if r1.outcome == OK else r1.outcome)
        return r1

    async def status(self, account: str = ACCOUNT) -> envelope_pb2.VaultResponse:
        return await self.call(
            envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest()), account
        )

    async def delete(self, account: str = ACCOUNT) -> envelope_pb2.VaultResponse:
        return await self.call(
            envelope_pb2.VaultRequest(delete=envelope_pb2.DeleteRequest()), account
        )


# -- register and recover -----------------------------------------------------------------------


def test_register_then_recover_returns_the_key_and_resets_attempts() -> None:
    async def go() -> None:
        h = Harness()
        key = await h.register(b"correct horse")
        assert h.record().attempts == 0 and h.record().max_attempts == 10
        await h.wrong_guess()
        assert h.record().attempts == 1
        assert (await h.recover(b"correct horse")).display() == key.display()
        record = h.record()
        assert record.attempts == 0 and record.last_redeemed == record.evaluations == 2
        assert "success" in h.audit.events() and "register" in h.audit.events()

    run(go())


def test_record_id_is_the_hmac_of_the_account_and_reveals_nothing() -> None:
    async def go() -> None:
        h = Harness()
        # Long enough that a chance match inside random ciphertext is out of the question
        # (a 2-byte password turned up in a 300-byte blob about once in 200 runs).
        password = b"a password long enough to never occur by chance"
        await h.register(password)
        (record_id,) = h.store.data
        assert record_id == h.record_id() and ACCOUNT.encode() not in record_id
        blob = h.store.data[record_id].value
        assert password not in blob and ACCOUNT.encode() not in blob

    run(go())


def test_wrong_password_decrements_guesses_left() -> None:
    async def go() -> None:
        h = Harness(max_attempts=5)
        await h.register(b"pw")
        lefts = [(await h.wrong_guess()).guesses_left for _ in range(3)]
        assert lefts == [4, 3, 2]
        assert (await h.status()).guesses_left == 2

    run(go())


def test_bad_client_mac_answers_invalid_password_and_rewrites_the_record_unchanged() -> None:
    """Protocol 3: a wrong finish (a wrong password's dummy) does a right one's storage work,
    one compare-and-swap of the record written back unchanged; it forgives nothing."""

    async def go() -> None:
        h = Harness(max_attempts=5)
        await h.register(b"pw")
        _, r1 = await h.start(b"pw")
        before = h.record()
        revision = h.store.revision
        r2 = await h.finish(bytes(64), r1.ticket)
        assert r2.outcome == INVALID_PASSWORD and r2.guesses_left == 4
        assert h.store.revision == revision + 1  # one commit, as a right finish makes
        after = h.record()
        assert after.version == before.version + 1
        after.version = before.version
        assert after == before  # nothing else changed: the guess stays counted
        assert "bad_mac" in h.audit.events()
        index = h.audit.events().index("bad_mac")
        assert h.audit.entries[index][2] == 1  # attempts: still counted
        assert h.audit.details[index]["revision"] == revision + 1
        # The ticket is still good for the right KE3 afterwards (nothing redeemed).
        assert (await h.recover(b"pw")) is not None

    run(go())


def test_max_attempts_from_registration_and_bounds() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw", max_attempts=3)
        assert h.record().max_attempts == 3
        await h.register(b"pw", max_attempts=20)  # the default cap
        assert h.record().max_attempts == 20
        with pytest.raises(BadRequest):
            await h.register(b"pw", max_attempts=101)
        wide = Harness()
        wide.service = wide.node(
            config=ServiceConfig(node_name="n1", max_attempts_cap=100, ticket_ttl_ms=60_000)
        )
        await wide.register(b"pw", max_attempts=100)
        assert wide.record().max_attempts == 100

    run(go())


def test_a_registration_above_the_operator_cap_is_refused_and_stores_nothing() -> None:
    async def go() -> None:
        h = Harness()
        h.service = h.node(
            config=ServiceConfig(node_name="n1", max_attempts_cap=12, ticket_ttl_ms=60_000)
        )
        await h.register(b"old")
        revision, before = h.store.revision, h.record()
        _, finish = await h.prepare_registration(b"new", max_attempts=13)
        answer = await h.call(finish)
        assert answer.outcome == envelope_pb2.OUTCOME_REFUSED and answer.max_attempts_cap == 12
        # Register start's read found the key (no reservation); the finish wrote nothing.
        assert h.store.revision == revision and h.record() == before
        await h.register(b"new", max_attempts=12)
        assert h.record().max_attempts == 12

    with pytest.raises(ValueError, match="max_attempts_cap"):
        ServiceConfig(node_name="n", max_attempts_cap=101).validate()
    with pytest.raises(ValueError, match="default_max_attempts"):
        ServiceConfig(node_name="n", default_max_attempts=30, max_attempts_cap=20).validate()

    run(go())


def test_reregistration_replaces_the_record_and_voids_old_tickets() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"old")
        state, r1 = await h.start(b"old")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        new_key = await h.register(b"new")
        # The etcd key's version, which the record carries: reserved, registered, evaluated,
        # registered again (the second register start found the key and wrote nothing).
        assert h.record().version == 4
        with pytest.raises(Precondition):
            await h.finish(ke3, r1.ticket)
        assert (await h.recover(b"new")).display() == new_key.display()

    run(go())


# -- the guess limit ----------------------------------------------------------------------------


def test_attempt_is_committed_and_audited_before_the_oprf_evaluation() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        h.log.clear()
        await h.wrong_guess()
        # Step 1 commits and audits before the OPRF; the dummy finish then rewrites (bad_mac).
        assert h.log == ["evaluate", "oprf", "bad_mac"]

    run(go())


class FailingPuts(MemoryRecordStore):
    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"

    async def write(
        self, record_id: bytes, value: bytes | None, expected: KeyMeta, group: int,
        head: bytes, expected_head: KeyMeta,
    ) -> WriteResult:  # fmt: skip
        if self.mode == "raise":
            raise StoreUnavailable("etcd down")
        if self.mode == "conflict":
            return 0, Snapshot(self.data.get(record_id), self.heads.get(group))
        return await super().write(record_id, value, expected, group, head, expected_head)


@pytest.mark.parametrize(
    ("mode", "error"), [("raise", WriteUnconfirmed), ("conflict", Unavailable)]
)
def test_no_evaluation_when_the_attempt_cannot_be_committed(mode: str, error: type) -> None:
    async def go() -> None:
        store = FailingPuts()
        h = Harness(store)
        await h.register(b"pw")
        h.log.clear()
        store.mode = mode
        with pytest.raises(error) as info:
            await h.start(b"pw")
        # Only a write in flight may have applied; the client may retry the others freely.
        assert isinstance(info.value, WriteUnconfirmed) == (mode == "raise")
        assert trailers_for(info.value) == (() if mode == "raise" else NOT_APPLIED)
        assert h.evaluations() == 0 and "evaluate" not in h.log
        assert h.record().attempts == 0

    run(go())


def test_lock_after_max_attempts_erases_the_key_for_good() -> None:
    async def go() -> None:
        h = Harness(max_attempts=3)
        await h.register(b"pw")
        assert [(await h.wrong_guess()).guesses_left for _ in range(3)] == [2, 1, 0]
        evaluations = h.evaluations()
        r = await h.wrong_guess()
        assert r.outcome == LOCKED and r.guesses_left == 0
        record = h.record()
        assert record.state == sealed_pb2.RECORD_STATE_LOCKED
        assert record.opaque_record == b"" and record.wrapped_key == b""
        # The right password no longer helps, and no OPRF runs for a locked record.
        _, r = await h.start(b"pw")
        assert r.outcome == LOCKED
        assert h.evaluations() == evaluations
        status = await h.status()
        assert status.status.locked and status.status.registered and status.guesses_left == 0
        assert h.audit.events().count("lock") == 1 and "locked" in h.audit.events()

    run(go())


def test_ticket_issued_before_the_lock_cannot_release_the_key() -> None:
    async def go() -> None:
        h = Harness(max_attempts=2)
        await h.register(b"pw")
        state, r1 = await h.start(b"pw")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        await h.wrong_guess()
        assert (await h.wrong_guess()).outcome == LOCKED
        r2 = await h.finish(ke3, r1.ticket)
        assert r2.outcome == LOCKED and not r2.HasField("recover_finish")

    run(go())


def test_concurrent_recoveries_never_exceed_max_attempts_evaluations() -> None:
    async def go() -> None:
        h = Harness(max_attempts=5)
        await h.register(b"pw")
        h.log.clear()
        results = await asyncio.gather(
            *(h.start(b"wrong") for _ in range(40)), return_exceptions=True
        )
        outcomes = [r[1].outcome for r in results if isinstance(r, tuple)]
        for r in results:
            assert isinstance(r, tuple) or isinstance(r, Unavailable)
        assert h.evaluations() <= 5
        assert outcomes.count(OK) == h.evaluations() == h.log.count("evaluate")
        assert h.record().attempts == h.evaluations()
        assert h.evaluations() == 5  # the CAS retries let every guess be used, never one more
        assert outcomes.count(LOCKED) >= 1

    run(go())


# -- tickets ------------------------------------------------------------------------------------


def test_expired_ticket_is_a_failed_precondition() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        state, r1 = await h.start(b"pw")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        h.clock.now += 60_000
        with pytest.raises(Precondition):
            await h.finish(ke3, r1.ticket)
        assert h.record().attempts == 1

    run(go())


def test_replayed_ticket_is_a_failed_precondition() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        state, r1 = await h.start(b"pw")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        assert (await h.finish(ke3, r1.ticket)).outcome == OK
        with pytest.raises(Precondition):
            await h.finish(ke3, r1.ticket)
        assert "stale_ticket" in h.audit.events()

    run(go())


def test_older_ticket_after_a_newer_one_was_redeemed_is_stale() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        s1, a = await h.start(b"pw")
        s2, b = await h.start(b"pw")
        ke3_a, _, _ = opaque.login_finish(s1, a.recover_start.ke2, OPAQUE_CONFIG)
        ke3_b, _, _ = opaque.login_finish(s2, b.recover_start.ke2, OPAQUE_CONFIG)
        assert (await h.finish(ke3_b, b.ticket)).outcome == OK
        with pytest.raises(Precondition):
            await h.finish(ke3_a, a.ticket)

    run(go())


def test_ticket_of_another_account_or_garbage_is_a_bad_request() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        await h.register(b"pw", account="bob")
        state, r1 = await h.start(b"pw")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        with pytest.raises(BadRequest):
            await h.finish(ke3, r1.ticket, account="bob")
        with pytest.raises(BadRequest):
            await h.finish(ke3, b"\x00" * 80)
        other = Harness()  # another fleet's ticket key
        await other.register(b"pw")
        _, r_other = await other.start(b"pw")
        with pytest.raises(BadRequest):
            await h.finish(ke3, r_other.ticket)
        assert h.record("bob").attempts == 0

    run(go())


# -- bad input, no state change -----------------------------------------------------------------


def test_account_swap_by_the_frontend_is_a_bad_request() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        with pytest.raises(BadRequest):
            await h.call(
                envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest()),
                ACCOUNT,
                as_account="mallory",
            )

    run(go())


def test_malformed_inputs_are_bad_requests_and_change_nothing() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        revision = h.store.revision
        _, good_ke1 = opaque.login_start(b"pw", os.urandom)
        bad_requests = [
            envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=b"short")),
            envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=bytes(96))),
            envelope_pb2.VaultRequest(  # a valid blinded element, the identity as key share
                recover_start=envelope_pb2.RecoverStart(ke1=good_ke1[:64] + bytes(32))
            ),
            envelope_pb2.VaultRequest(
                register_start=envelope_pb2.RegisterStart(registration_request=bytes(32))
            ),
            envelope_pb2.VaultRequest(
                register_finish=envelope_pb2.RegisterFinish(
                    registration_record=bytes(192), wrapped_key=bytes(60)
                )
            ),
            envelope_pb2.VaultRequest(
                register_finish=envelope_pb2.RegisterFinish(
                    registration_record=bytes(100), wrapped_key=bytes(60)
                )
            ),
        ]
        for request in bad_requests:
            with pytest.raises(BadRequest):
                await h.call(request)
        for junk in (b"", b"\x00" * 100, os.urandom(600)):
            with pytest.raises(BadRequest):
                await h.service.handle(ACCOUNT, junk)
        with pytest.raises(BadRequest):
            await h.service.handle("", b"x")
        assert h.store.revision == revision and "evaluate" not in h.audit.events()

    run(go())


def test_bad_wrapped_key_length_is_a_bad_request() -> None:
    async def go() -> None:
        h = Harness()
        state, req = opaque.registration_start(b"pw", os.urandom)
        r1 = await h.call(
            envelope_pb2.VaultRequest(
                register_start=envelope_pb2.RegisterStart(registration_request=req)
            )
        )
        record, _ = opaque.registration_finish(
            state, r1.register_start.registration_response, OPAQUE_CONFIG, os.urandom
        )
        # Register start reserved the key (a secret-free placeholder); the finish writes nothing.
        assert h.record().state == sealed_pb2.RECORD_STATE_RESERVED
        revision = h.store.revision
        finish = envelope_pb2.VaultRequest(
            register_finish=envelope_pb2.RegisterFinish(
                registration_record=record, wrapped_key=bytes(59)
            )
        )
        with pytest.raises(BadRequest):
            await h.call(h.step2(finish, r1.ticket))
        assert h.store.revision == revision
        assert h.record().state == sealed_pb2.RECORD_STATE_RESERVED

    run(go())


# -- delete, status, fail closed, corruption ----------------------------------------------------


def test_delete_and_status() -> None:
    async def go() -> None:
        h = Harness()
        status = await h.status()
        assert status.outcome == OK and not status.status.registered
        _, r = await h.start(b"pw")
        assert r.outcome == NOT_REGISTERED
        await h.register(b"pw", max_attempts=7)
        status = await h.status()
        assert status.status.registered and not status.status.locked
        assert status.status.max_attempts == 7 and status.guesses_left == 7
        assert (await h.delete()).delete.existed
        assert not (await h.delete()).delete.existed
        assert not (await h.status()).status.registered
        assert h.audit.events().count("delete") == 1
        # Removed at once: no ticket can be bound to an absent key (register start reserves it).
        assert h.record_id() not in h.store.data
        h.log.clear()
        _, r = await h.start(b"pw")
        assert r.outcome == NOT_REGISTERED and h.evaluations() == 0
        key = await h.register(b"again")
        assert await h.recover(b"again") == key

    run(go())


def test_a_corrupt_record_can_be_deleted() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        rid = h.record_id()
        h.store.put_back(rid, b"garbage")
        assert (await h.delete()).delete.existed
        assert rid not in h.store.data

    run(go())


def test_a_first_register_finish_replayed_after_a_delete_changes_nothing() -> None:
    """The second review's attack: keep a first registration's finish (ticket issued while the
    account had no record), guess until locked, delete, replay: the key came back with 0 tries."""

    async def go() -> None:
        h = Harness(max_attempts=2)
        _, sealed, _ = await h.register_keeping_finish(b"pw")
        for _ in range(3):
            await h.wrong_guess()
        assert (await h.delete()).delete.existed
        revision = h.store.revision
        with pytest.raises(Precondition):
            await h.service.handle(ACCOUNT, sealed)
        assert h.store.revision == revision and h.record_id() not in h.store.data
        _, r = await h.start(b"pw")
        assert r.outcome == NOT_REGISTERED
        # Nor once the key exists again: its new create_revision matches no old ticket.
        await h.register(b"new")
        revision = h.store.revision
        with pytest.raises(Precondition):
            await h.service.handle(ACCOUNT, sealed)
        assert h.store.revision == revision

    run(go())


def test_not_serving_answers_unavailable() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        h.log.clear()
        h.serving = False
        with pytest.raises(Unavailable):
            await h.status()
        with pytest.raises(Unavailable) as info:
            await h.start(b"pw")
        assert trailers_for(info.value) == NOT_APPLIED  # nothing written: the client may retry
        assert h.evaluations() == 0

    run(go())


def test_store_unavailable_on_read_is_unavailable() -> None:
    class DownStore(MemoryRecordStore):
        async def read(self, record_id: bytes, group: int) -> Snapshot:
            raise StoreUnavailable("down")

    async def go() -> None:
        h = Harness(DownStore())
        with pytest.raises(Unavailable):
            await h.status()

    run(go())


def test_corrupt_or_moved_record_is_record_corrupt() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        await h.register(b"pw", account="bob")
        # etcd moves bob's record under alice's key: the AAD binds the record id, so it fails.
        # (A move is a write, so the key's mod_revision changes and the node's cached copy of
        # alice's record fails the CAS compare; the failed CAS returns what etcd holds.)
        h.store.put_back(h.record_id(), h.store.data[h.record_id("bob")].value)
        h.log.clear()
        with pytest.raises(RecordTampered):
            await h.start(b"pw")
        assert h.evaluations() == 0
        # A node that never saw alice's record reads it and fails the same way.
        h.service = h.node()
        with pytest.raises(RecordTampered):
            await h.start(b"pw")
        assert h.evaluations() == 0
        assert h.audit.events().count("tampered") == 2

    run(go())


# -- the node's caches (record ids, records for an optimistic CAS) ------------------------------


class CountingStore(MemoryRecordStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def read(self, record_id: bytes, group: int) -> Snapshot:
        self.gets += 1
        return await super().read(record_id, group)


def test_a_recovery_on_the_node_that_wrote_the_record_needs_no_read() -> None:
    async def go() -> None:
        store = CountingStore()
        h = Harness(store)
        key = await h.register(b"pw")
        store.gets = 0
        h.log.clear()
        for _ in range(3):
            assert (await h.recover(b"pw")).display() == key.display()
        await h.wrong_guess()
        assert store.gets == 0 and h.record().attempts == 1
        assert h.evaluations() == 4

    run(go())


def test_record_id_hmac_runs_once_per_account() -> None:
    async def go() -> None:
        h = Harness()
        calls: list[bytes] = []
        inner = h.token.hmac_sha256

        def counting(label: str, data: bytes) -> bytes:
            calls.append(data)
            return inner(label, data)

        h.token.hmac_sha256 = counting  # type: ignore[method-assign]
        await h.register(b"pw")
        await h.recover(b"pw")
        await h.register(b"pw", account="bob")
        assert calls == [ACCOUNT.encode(), b"bob"]

    run(go())


def test_guesses_counted_on_another_node_are_not_lost_by_a_stale_cache() -> None:
    async def go() -> None:
        h = Harness(max_attempts=3)
        await h.register(b"pw")
        h.log.clear()
        await h.wrong_guess()  # node A caches the record at attempts=1
        node_a, node_b = h.service, h.node()
        h.service = node_b
        await h.wrong_guess()  # attempts=2, written by node B
        h.service = node_a
        r1 = await h.wrong_guess()  # A's cached compare fails; the failed CAS returns attempts=2
        assert r1.outcome == OK and r1.guesses_left == 0 and h.record().attempts == 3
        assert (await h.wrong_guess()).outcome == LOCKED
        assert h.evaluations() == 3
        h.service = node_b
        assert (await h.start(b"pw"))[1].outcome == LOCKED
        assert h.evaluations() == 3

    run(go())


def test_a_stale_cache_never_redeems_a_used_ticket_or_answers_for_a_deleted_record() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        h.log.clear()
        state, r1 = await h.start(b"pw")  # node A caches the counted record
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        node_a, node_b = h.service, h.node()
        h.service = node_b
        assert (await h.finish(ke3, r1.ticket)).outcome == OK
        h.service = node_a  # its cache still holds the record from before the redemption
        with pytest.raises(Precondition):
            await h.finish(ke3, r1.ticket)
        h.service = node_b
        assert (await h.delete()).delete.existed
        h.service = node_a
        assert (await h.start(b"pw"))[1].outcome == NOT_REGISTERED
        assert h.evaluations() == 1

    run(go())


def test_cache_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="cache sizes"):
        ServiceConfig(node_name="n", record_cache_size=-1).validate()


def test_records_and_tickets_fail_with_one_error() -> None:
    token = SoftToken()
    rid = os.urandom(32)
    at = KeyMeta(create_revision=7, mod_revision=9, version=3)
    blob = seal_record(token, rid, sealed_pb2.Record(attempts=3), at, os.urandom)
    assert open_record(token, rid, StoredValue(blob, at)).attempts == 3
    ticket = tickets.seal(token, sealed_pb2.Ticket(evaluation=7), os.urandom)
    assert tickets.open_(token, ticket).evaluation == 7
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    for bad in (bytes(tampered), b"", b"\xff\xff", ticket):
        with pytest.raises(DecryptError):
            open_record(token, rid, StoredValue(bad, at))
    with pytest.raises(DecryptError):
        open_record(token, os.urandom(32), StoredValue(blob, at))
    with pytest.raises(DecryptError):
        tickets.open_(token, blob)


def test_a_sealed_record_opens_only_at_the_etcd_metadata_it_was_written_at() -> None:
    """A put-back raises the key's version, a delete-and-recreate changes its create_revision;
    the mod_revision alone may differ (etcd names it only once the write commits)."""
    token = SoftToken()
    rid = os.urandom(32)
    at = KeyMeta(create_revision=7, mod_revision=0, version=3)
    blob = seal_record(token, rid, sealed_pb2.Record(attempts=1), at, os.urandom)
    assert open_record(token, rid, StoredValue(blob, KeyMeta(7, 12, 3))).attempts == 1
    for elsewhere in (KeyMeta(7, 15, 4), KeyMeta(7, 15, 2), KeyMeta(8, 15, 3), KeyMeta(20, 20, 3)):
        with pytest.raises(DecryptError):
            open_record(token, rid, StoredValue(blob, elsewhere))
    # Only the secret-free placeholder is ever a key's first value, and it opens only there.
    with pytest.raises(ValueError, match="placeholder"):
        seal_record(token, rid, sealed_pb2.Record(attempts=1), KeyMeta(0, 0, 1), os.urandom)
    reserved = sealed_pb2.Record(state=sealed_pb2.RECORD_STATE_RESERVED)
    with pytest.raises(ValueError, match="placeholder"):
        seal_record(token, rid, reserved, KeyMeta(7, 0, 2), os.urandom)
    placeholder = seal_record(token, rid, reserved, KeyMeta(0, 0, 1), os.urandom)
    assert open_record(token, rid, StoredValue(placeholder, KeyMeta(30, 30, 1))).state == (
        sealed_pb2.RECORD_STATE_RESERVED
    )
    with pytest.raises(DecryptError):  # written back onto a key that moved on
        open_record(token, rid, StoredValue(placeholder, KeyMeta(30, 31, 2)))


# -- registration: no free OPRF oracle, no replay ------------------------------------------------


def _unmasks(password: bytes, ke2: bytes, registration_response: bytes, blind: bytes) -> bool:
    """True when the OPRF output of a registration response unmasks a login's KE2, i.e. when the
    registration evaluated the same OPRF key as the login (an offline password check)."""
    from vault_protocol import oprf
    from vault_protocol.opaque.hazmat import ENVELOPE_BYTES, NH, NN, NOE, NPK, hkdf_expand

    evaluated, server_public_key = registration_response[:NOE], registration_response[NOE:]
    rwd = hazmat.randomized_password(oprf.finalize(password, blind, evaluated), IdentityKsf())
    masking_key = hkdf_expand(rwd, b"MaskingKey", NH)
    nonce, masked = ke2[NOE : NOE + NN], ke2[NOE + NN : NOE + NN + NPK + ENVELOPE_BYTES]
    pad = hkdf_expand(masking_key, nonce + b"CredentialResponsePad", NPK + ENVELOPE_BYTES)
    return bytes(a ^ b for a, b in zip(pad, masked, strict=True))[:NPK] == server_public_key


def test_register_start_is_no_password_oracle_for_the_live_record() -> None:
    """The review's attack: one counted recovery start yields KE2; uncounted register starts
    then tested passwords against it. Each registration now has an OPRF key of its own."""

    async def go() -> None:
        h = Harness(max_attempts=3)
        await h.register(b"hunter2")
        _, r = await h.start(b"a first guess")  # counted
        ke2 = r.recover_start.ke2
        state, req = opaque.registration_start(b"hunter2", os.urandom)  # the right password
        reply = await h.call(
            envelope_pb2.VaultRequest(
                register_start=envelope_pb2.RegisterStart(registration_request=req)
            )
        )
        response = reply.register_start.registration_response
        assert not _unmasks(b"hunter2", ke2, response, state.blind)
        assert h.record().attempts == 1
        # The check itself works: a response under the live record's own OPRF key (what register
        # start computed before each registration had its own key) does unmask it.
        record = h.record()
        live = records.credential_identifier(
            ACCOUNT.encode(), record.generation, record.credential_scheme
        )
        state, req = opaque.registration_start(b"hunter2", os.urandom)
        response = opaque.server_registration_response(req, live, h.keys)
        assert _unmasks(b"hunter2", ke2, response, state.blind)

    run(go())


def test_a_replayed_register_finish_cannot_undo_a_lockout() -> None:
    async def go() -> None:
        h = Harness(max_attempts=2)
        _, sealed, _ = await h.register_keeping_finish(b"pw")  # the bytes a frontend could keep
        for _ in range(3):
            await h.wrong_guess()
        assert h.record().state == sealed_pb2.RECORD_STATE_LOCKED
        revision = h.store.revision
        with pytest.raises(Precondition):
            await h.service.handle(ACCOUNT, sealed)
        h.clock.now += 10 * 60_000  # and once its ticket has expired
        with pytest.raises(Precondition):
            await h.service.handle(ACCOUNT, sealed)
        assert h.store.revision == revision
        assert h.record().state == sealed_pb2.RECORD_STATE_LOCKED and not h.record().wrapped_key

    run(go())


def test_register_finish_is_single_use_and_a_retry_of_the_same_one_is_answered() -> None:
    async def go() -> None:
        h = Harness()
        key, sealed, response_key = await h.register_keeping_finish(b"pw")
        revision = h.store.revision
        # A client's retry of an unconfirmed finish: the same answer, nothing written.
        again = open_response(response_key, await h.service.handle(ACCOUNT, sealed))
        assert again.outcome == OK and again.WhichOneof("reply") == "register_finish"
        assert h.store.revision == revision
        assert await h.recover(b"pw") == key
        # Once the record changed (a re-registration), the old finish is refused.
        new_key = await h.register(b"new")
        revision = h.store.revision
        with pytest.raises(Precondition):
            await h.service.handle(ACCOUNT, sealed)
        assert h.store.revision == revision and await h.recover(b"new") == new_key

    run(go())


def test_register_finish_refuses_a_record_that_changed_since_its_start() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"old")
        _, finish = await h.prepare_registration(b"new")
        await h.wrong_guess()  # a write between the two steps
        revision = h.store.revision
        with pytest.raises(Precondition):
            await h.call(finish)
        assert h.store.revision == revision and await h.recover(b"old")

    run(go())


def test_registration_tickets_are_checked() -> None:
    async def go() -> None:
        h = Harness()
        _, finish = await h.prepare_registration(b"pw")
        good = finish.ticket
        _, bob_finish = await h.prepare_registration(b"pw", account="bob")
        _, r = await h.start(b"pw")  # NOT_REGISTERED: a void login ticket
        # A protocol-3 login ticket of this very account, with the finish's own keys: the
        # wrong operation for a register finish.
        login_ticket = tickets.seal(
            h.token,
            sealed_pb2.Ticket(
                op=sealed_pb2.Ticket.Op.OP_RECOVER,
                record_id=h.record_id(),
                request_key=finish.keys.request2,
                answer_key=finish.keys.answer2,
                expires_at_ms=h.clock.now + 60_000,
            ),
            os.urandom,
        )
        # Protocol-2 tickets (other AADs) never open.
        v2_login = protocol2_tickets.seal_login_ticket(h.token, sealed_pb2.Ticket(), os.urandom)
        v2_registration = protocol2_tickets.seal_registration_ticket(
            h.token, sealed_pb2.RegistrationTicket(record_id=h.record_id()), os.urandom
        )
        bob_ticket = bob_finish.ticket
        for bad in (b"", os.urandom(80), login_ticket, v2_login, v2_registration, bob_ticket):
            finish.ticket = bad
            with pytest.raises(BadRequest):
                await h.call(finish)
        finish.ticket = good
        h.clock.now += 60_000  # the ticket's TTL
        with pytest.raises(Precondition, match="expired"):
            await h.call(finish)
        # Nothing but the two register starts' secret-free reservations was ever written.
        assert r.outcome == NOT_REGISTERED and len(h.store.data) == 2
        assert {h.record(a).state for a in (ACCOUNT, "bob")} == {sealed_pb2.RECORD_STATE_RESERVED}

    run(go())


def test_a_record_of_the_account_only_scheme_still_recovers() -> None:
    """Records written before credential schemes (scheme 0) keep their OPRF key."""

    async def go() -> None:
        h = Harness()
        key = await h.register(b"pw")
        record = h.record()
        assert record.credential_scheme == records.CREDENTIAL_ACCOUNT_GENERATION
        # Rebuild it as a scheme-0 registration would have stored it.
        identifier = ACCOUNT.encode()
        state, req = opaque.registration_start(b"legacy", os.urandom)
        response = opaque.server_registration_response(req, identifier, h.keys)
        opaque_record, export_key = opaque.registration_finish(
            state, response, OPAQUE_CONFIG, os.urandom
        )
        record.opaque_record = opaque_record
        record.wrapped_key = wrap_key(key, export_key, ACCOUNT, os.urandom)
        record.credential_scheme = records.CREDENTIAL_ACCOUNT
        rid = h.record_id()
        await h.write_as_node(rid, record)  # as a node writes it
        h.service = h.node()  # no cached copy of the old record
        assert await h.recover(b"legacy") == key

    run(go())


def test_every_answer_has_one_size() -> None:
    """The frontend must not tell a recovery from a registration (or anything else) by size."""

    async def go() -> None:
        h = Harness()
        sizes: set[int] = set()
        original = h.service.handle

        async def measured(account_id: str, envelope: bytes) -> bytes:
            answer = await original(account_id, envelope)
            sizes.add(len(answer))
            return answer

        h.service.handle = measured  # type: ignore[method-assign]
        await h.register(b"pw")
        await h.recover(b"pw")
        await h.wrong_guess()
        await h.status()
        await h.delete()
        await h.start(b"pw")  # NOT_REGISTERED
        assert len(sizes) == 1, sizes

    run(go())


def test_tickets_from_a_clock_far_ahead() -> None:
    """A node whose clock runs ahead stretches its tickets' life on the others. A registration
    ticket is then refused (tombstone removal relies on its lifetime); a login ticket is still
    redeemed: its guess is counted already, and refusing it would burn a right password's
    guesses (a late redemption forgives nothing after it, see the test below)."""

    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        h.clock.now += 3_600_000  # the issuing node's clock, an hour ahead
        state, r = await h.start(b"pw")
        _, finish = await h.prepare_registration(b"new")
        h.clock.now -= 3_600_000
        with pytest.raises(Precondition, match="clock skew"):
            await h.call(finish)
        ke3, _, _ = opaque.login_finish(state, r.recover_start.ke2, OPAQUE_CONFIG)
        assert (await h.finish(ke3, r.ticket)).outcome == OK

    run(go())


def test_a_late_redeemed_ticket_forgives_only_the_guesses_before_it() -> None:
    """A frontend holds back a user's right-password finish, guesses 9 times, then lets it
    through: those 9 wrong guesses stay counted (a third review's finding)."""

    async def go() -> None:
        h = Harness(max_attempts=10)
        key = await h.register(b"pw")
        state, r = await h.start(b"pw")  # the user's attempt, evaluation 1
        ke3, session_key, export_key = opaque.login_finish(
            state, r.recover_start.ke2, OPAQUE_CONFIG
        )
        for _ in range(9):
            await h.wrong_guess()
        assert h.record().attempts == 10
        late = await h.finish(ke3, r.ticket)
        assert late.outcome == OK and late.guesses_left == 1
        wrapped = open_transport(session_key, late.recover_finish.transported_key)
        assert unwrap_key(wrapped, export_key, ACCOUNT) == key  # the user still gets K
        assert h.record().attempts == 9
        assert (await h.wrong_guess()).outcome == OK  # the 10th wrong guess in a row
        assert (await h.wrong_guess()).outcome == LOCKED
        assert h.audit.events().count("evaluate") == 11

    run(go())


def test_the_registration_ksf_is_kept_and_given_back_bounded() -> None:
    async def go() -> None:
        h = Harness()
        _, finish = await h.prepare_registration(b"pw")
        params = envelope_pb2.KsfParams(
            argon2id_time_cost=3, argon2id_lanes=4, argon2id_memory_kib=65536
        )
        finish.request.register_finish.ksf.CopyFrom(params)
        assert (await h.call(finish)).outcome == OK
        _, r = await h.start(b"pw")
        assert r.recover_start.ksf == params
        _, finish = await h.prepare_registration(b"pw")
        finish.request.register_finish.ksf.CopyFrom(
            envelope_pb2.KsfParams(
                argon2id_time_cost=1, argon2id_lanes=1, argon2id_memory_kib=2**30
            )
        )
        revision = h.store.revision
        with pytest.raises(BadRequest, match="KSF"):
            await h.call(finish)
        assert h.store.revision == revision
        await h.register(b"plain")  # no KSF sent (IdentityKsf): none given back
        _, r = await h.start(b"plain")
        assert not r.recover_start.HasField("ksf")

    run(go())


# -- storage cannot cheat: an etcd insider's writes gain no evaluation --------------------------


def test_a_saved_record_written_back_gains_no_guess() -> None:
    """The insider's first attack: save the record, guess, write the saved value back, guess
    again, three times over. Every written-back value is refused (audited `tampered`), nothing
    is evaluated on it, and only the first cycle's guesses ever run: storage denied service
    (the record stays refused until its owner registers again), it granted no guess."""

    async def go() -> None:
        h = Harness(max_attempts=10)
        await h.register(b"right")
        rid = h.record_id()
        saved = [h.store.data[rid].value]
        h.log.clear()  # count recovery evaluations only (a register start evaluates too)
        for _ in range(5):
            await h.wrong_guess()
            saved.append(h.store.data[rid].value)
        for value in [saved[0], saved[2], saved[-1]]:  # three put-backs, the latest value too
            h.store.put_back(rid, value)
            for node in (h.service, h.node()):  # warm cache or a node that never saw it
                h.service = node
                for _ in range(5):
                    with pytest.raises(RecordTampered):
                        await h.start(b"wrong password")
                with pytest.raises(RecordTampered):
                    await h.start(b"right")
        assert h.evaluations() == 5
        assert h.audit.events().count("tampered") == 3 * 2 * 6
        assert h.audit.events().count("evaluate") == 5

    run(go())


def test_a_pre_lock_value_from_history_never_brings_the_key_back() -> None:
    async def go() -> None:
        h = Harness(max_attempts=3)
        await h.register(b"right")
        rid = h.record_id()
        saved = h.store.data[rid].value  # as `etcdctl get KEY --rev=N` shows it
        for _ in range(4):
            await h.wrong_guess()
        assert h.record().state == sealed_pb2.RECORD_STATE_LOCKED
        erased = []
        h.service = h.node(on_erased=erased.append)
        h.store.put_back(rid, saved)
        before = h.evaluations()
        with pytest.raises(RecordTampered):
            await h.start(b"right")
        # And deleted, recreated, bumped to the saved version: another incarnation of the key.
        h.store.remove(rid)
        for _ in range(2):
            h.store.put_back(rid, saved)
        assert h.store.data[rid].meta.version == 2
        with pytest.raises(RecordTampered):
            await h.start(b"right")
        assert h.evaluations() == before and not erased

    run(go())


def test_a_lock_and_a_delete_have_their_history_compacted() -> None:
    async def go() -> None:
        h = Harness(max_attempts=1)
        erased: list[int] = []
        h.service = h.node(on_erased=erased.append)
        await h.register(b"right")
        await h.wrong_guess()
        r = await h.wrong_guess()
        assert r.outcome == LOCKED and erased == [h.store.data[h.record_id()].meta.mod_revision]
        assert (await h.delete()).delete.existed
        assert erased[-1] == h.store.revision and len(erased) == 2

    run(go())


def test_another_accounts_record_or_a_recreated_key_is_refused() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"alice")
        await h.register(b"bob", account="bob")
        h.store.put_back(h.record_id(), h.store.data[h.record_id("bob")].value)
        with pytest.raises(RecordTampered):
            await h.start(b"bob")
        # A delete-and-recreate with the key's own first value (the reservation) is a delete.
        h.store.remove(h.record_id())
        await h.prepare_registration(b"x")  # reserves the key again
        placeholder = h.store.data[h.record_id()].value
        h.store.remove(h.record_id())
        h.store.put_back(h.record_id(), placeholder)
        h.log.clear()
        _, r = await h.start(b"alice")
        assert r.outcome == NOT_REGISTERED and h.evaluations() == 0
        # Written back onto a key that moved on, the placeholder is refused too.
        await h.register(b"alice")
        h.store.put_back(h.record_id(), placeholder)
        with pytest.raises(RecordTampered):
            await h.status()

    run(go())


def test_a_tampered_record_can_be_deleted_or_registered_over_by_its_owner() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        h.store.put_back(h.record_id(), b"garbage")
        key = await h.register(b"new")
        assert await h.recover(b"new") == key
        h.store.put_back(h.record_id(), b"garbage")
        assert (await h.delete()).delete.existed and h.record_id() not in h.store.data

    run(go())


def test_a_login_ticket_does_not_apply_to_a_recreated_key() -> None:
    """Bound to the key's create_revision: a ticket stays dead when etcd later holds a record of
    the same generation under a new incarnation of the key (only a restore could make that)."""

    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        state, r1 = await h.start(b"pw")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        rid = h.record_id()
        record = h.record()
        h.store.remove(rid)
        await h.write_as_node(rid, sealed_pb2.Record(state=sealed_pb2.RECORD_STATE_RESERVED))
        await h.write_as_node(rid, record)  # the very record again, on a new incarnation
        h.service = h.node()
        with pytest.raises(Precondition):
            await h.finish(ke3, r1.ticket)

    run(go())


def test_a_latched_store_alarm_refuses_with_data_loss_before_the_serving_gate() -> None:
    """After a restore a node both fails closed (etcd was down) and holds an alarm: it must say
    DATA_LOSS, never UNAVAILABLE "not applied", which a frontend would fail over."""
    from vault_node.server import status_for
    from vault_node.service import StoreRefused

    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        alarm = ["etcd answered below the mark"]
        h.service = h.node(serving=lambda: False, store_alarm=lambda: alarm[0])
        h.log.clear()
        with pytest.raises(StoreRefused) as info:
            await h.start(b"pw")
        assert status_for(info.value)[0].name == "DATA_LOSS" and trailers_for(info.value) == ()
        assert h.evaluations() == 0
        alarm[0] = ""
        with pytest.raises(Unavailable) as unavailable:
            await h.start(b"pw")
        assert trailers_for(unavailable.value) == NOT_APPLIED

    run(go())


# -- the witnessed record log: a restored, bumped or forked store gains nothing -----------------


def test_a_bumped_restore_gains_no_guess() -> None:
    """The attack issue 14 left open: snapshot, guess, restore the snapshot with its revisions
    raised past every mark. The records open (their metadata is the one they were sealed for),
    but the group's head is older than the one the witnesses captured: refused, alarmed."""

    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        snapshot = h.store.copy()
        for _ in range(4):
            await h.wrong_guess()
        h.store.restore(snapshot, bump=1000)
        h.log.clear()
        for node in (h.service, h.node()):  # a warm cache, or a node that never saw it
            h.service = node
            with pytest.raises(StoreRefused):
                await h.start(b"wrong password")
            with pytest.raises(StoreRefused):  # the group stays refused on this node
                await h.start(b"right")
        assert h.evaluations() == 0
        assert h.audit.events().count("rollback") == 2

    run(go())


def test_a_fork_serving_an_old_history_gains_no_guess() -> None:
    """Two views of etcd at once (one member restored alone): a node on the old view writes on
    an old head; the witnesses hold the new one."""

    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        old = MemoryRecordStore()
        old.restore(h.store.copy(), bump=5)
        for _ in range(3):
            await h.wrong_guess()
        h.service = h.node(store=old)
        h.log.clear()
        with pytest.raises(StoreRefused):
            await h.start(b"wrong password")
        assert h.evaluations() == 0
        # The first view's nodes go on: the fork's write was never captured.
        h.service = h.node()
        assert (await h.wrong_guess()).guesses_left == 6

    run(go())


def test_no_evaluation_without_a_majority_of_witnesses() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        h.witnesses.down = {"w2", "w3"}
        h.log.clear()
        with pytest.raises(WriteUnconfirmed) as info:
            await h.start(b"right")
        assert trailers_for(info.value) == ()  # the write is in etcd: it may count
        assert h.evaluations() == 0
        h.witnesses.down = {"w3"}  # two of three: a majority
        assert (await h.recover(b"right")) is not None

    run(go())


def test_witnesses_out_of_reach_cost_a_user_one_guess_per_node_at_most() -> None:
    """While no majority answers, the first write of a node commits unwitnessed (it may count);
    every later one is refused before anything is written, with the not-applied trailer, so a
    user retrying the right password cannot lock their own key. Back in reach: served."""

    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        h.witnesses.down = {"w2", "w3"}
        h.log.clear()
        with pytest.raises(WriteUnconfirmed):
            await h.start(b"right")
        for _ in range(12):  # more than max_attempts retries
            with pytest.raises(Unavailable) as info:
                await h.start(b"right")
            assert not isinstance(info.value, WriteUnconfirmed)
            assert trailers_for(info.value) == NOT_APPLIED
        assert h.record().attempts == 1 and h.evaluations() == 0
        h.witnesses.down = set()
        assert (await h.recover(b"right")) is not None
        assert h.record().attempts == 0

    run(go())


def test_heads_left_unwitnessed_by_several_nodes_are_bridged() -> None:
    """Three nodes each commit one write while the witnesses are out of reach: etcd holds three
    heads no witness saw. A fourth node's capture names them through the head's ancestor list;
    the witnesses take the gap in and the group is served again."""

    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        h.witnesses.down = {"w1", "w2", "w3"}
        for _ in range(3):
            h.service = h.node()
            with pytest.raises(WriteUnconfirmed):
                await h.start(b"wrong password")
        h.witnesses.down = set()
        h.service = h.node()
        assert (await h.wrong_guess()).guesses_left == 6
        versions = {n: state.latest(h.group()).version for n, state in h.witnesses.states.items()}
        # reserve, register, three unwitnessed and this one (6), then its dummy finish's
        # rewrite on a head this node saw witnessed: told to its own witness only (7)
        assert versions == {"w1": 7, "w2": 6, "w3": 6}

    run(go())


def test_every_write_is_witnessed_and_a_finish_on_a_witnessed_head_by_this_node_only() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"right")  # reserve + register: two captures
        assert h.witnesses.calls == 2
        await h.recover(b"right")  # evaluate (captured), release (noted: no peer asked)
        assert (h.witnesses.calls, h.witnesses.noted) == (3, 1)
        latest = {n: s.latest(h.group()).version for n, s in h.witnesses.states.items()}
        assert latest == {"w1": 4, "w2": 3, "w3": 3}
        await h.delete()  # captured: its base is the release's head, which w2 and w3 bridge
        assert (h.witnesses.calls, h.witnesses.noted) == (4, 1)
        latest = {state.latest(h.group()).version for state in h.witnesses.states.values()}
        assert latest == {5}

    run(go())


def test_a_finish_on_a_head_this_node_did_not_see_witnessed_is_captured_lazily() -> None:
    """Another node (a fresh service: it saw nothing witnessed) finishes the recovery: the
    release goes to every witness (lazily), so unwitnessed heads never pile up."""

    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        state, r1 = await h.start(b"right")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        h.service = h.node()
        assert (await h.finish(ke3, r1.ticket)).outcome == OK
        assert (h.witnesses.calls, h.witnesses.noted) == (4, 0)
        latest = {state.latest(h.group()).version for state in h.witnesses.states.values()}
        assert latest == {4}

    run(go())


def test_finishes_noted_on_their_own_witness_keep_every_group_writable() -> None:
    """Recoveries and wrong guesses one after another, each finish told to this node's own
    witness only: the peers bridge the one head they missed at every next capture, so every
    counting write is witnessed (a guess is answered) and none is ever BEHIND."""

    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        for i in range(20):
            if i % 3:
                await h.recover(b"right")
            else:
                await h.wrong_guess()  # its dummy finish rewrites the record unchanged
        assert h.witnesses.noted == 20 and not h.witnesses.take_missed()
        latest = {n: s.latest(h.group()).version for n, s in h.witnesses.states.items()}
        assert latest == {"w1": 42, "w2": 41, "w3": 41}  # 2 + 20 x (evaluate, finish)

    run(go())


def test_a_head_put_back_from_earlier_is_refused() -> None:
    """The head alone written back (its seal opens anywhere in its group): the page no longer
    matches the record, or, when it does, the next write's base is behind the witnesses'."""

    async def go() -> None:
        h = Harness()
        await h.register(b"right")
        old_head = h.store.heads[h.group()].value
        await h.wrong_guess()
        h.store.put_head_back(h.group(), old_head)
        h.service = h.node()
        h.log.clear()
        with pytest.raises(RecordTampered):  # the page holds the record's older digest
            await h.start(b"right")
        assert h.evaluations() == 0

    run(go())


# -- protocol 3: continued second steps, one pattern whatever the outcome -----------------------


def test_a_replayed_second_step_is_refused_with_nothing_applied() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        await h.wrong_guess()
        state, r1 = await h.start(b"pw")
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
        finish = h.step2(
            envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3)),
            r1.ticket,
        )
        relayed = finish.seal(h.fleet, ACCOUNT)  # the bytes a frontend could keep
        assert (
            open_response(finish.keys.answer2, await h.service.handle(ACCOUNT, relayed)).outcome
            == OK
        )
        revision, record = h.store.revision, h.record()
        await h.wrong_guess()  # a guess counted after the redemption
        revision, record = h.store.revision, h.record()
        with pytest.raises(Precondition):
            await h.service.handle(ACCOUNT, relayed)
        assert h.store.revision == revision and h.record() == record and record.attempts == 1

    run(go())


def test_a_swapped_ticket_or_account_fails_to_open_and_applies_nothing() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        await h.register(b"pw", account="bob")
        state, mine = await h.start(b"pw")
        _, other = await h.start(b"pw")  # another recovery of the same account
        _, bobs = await h.start(b"pw", account="bob")
        ke3, _, _ = opaque.login_finish(state, mine.recover_start.ke2, OPAQUE_CONFIG)
        request = envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3))
        good = h.step2(request, mine.ticket)
        revision = h.store.revision
        for swapped in (other.ticket, bobs.ticket):
            with pytest.raises(BadRequest):  # sealed under my keys, relayed with another ticket
                await h.service.handle(
                    ACCOUNT, Step2(request, swapped, good.keys).seal(h.fleet, ACCOUNT)
                )
        with pytest.raises(BadRequest):  # relayed for another account
            await h.service.handle("bob", good.seal(h.fleet, ACCOUNT))
        with pytest.raises(BadRequest):  # the ticket's keys, but sealed for bob's name
            await h.service.handle(ACCOUNT, good.seal(h.fleet, "bob"))
        assert h.store.revision == revision
        assert (await h.call(good)).outcome == OK  # the genuine one still works

    run(go())


def test_a_version_2_envelope_is_refused_by_name_with_nothing_applied() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"pw")
        _, ke1 = opaque.login_start(b"pw", os.urandom)
        request = envelope_pb2.VaultRequest(
            response_key=os.urandom(32), recover_start=envelope_pb2.RecoverStart(ke1=ke1)
        )
        v2 = envelope_pb2.SealedEnvelope.FromString(seal_request(h.fleet, ACCOUNT, request))
        v2.version = 2
        revision = h.store.revision
        with pytest.raises(UnsupportedProtocol) as caught:
            await h.service.handle(ACCOUNT, v2.SerializeToString(deterministic=True))
        assert "this vault speaks protocol 3; envelope is version 2 - upgrade the client" in str(
            caught.value
        )
        code, details = status_for(caught.value)
        assert code.name == "INVALID_ARGUMENT" and "envelope is version 2" in details
        assert h.store.revision == revision and "evaluate" not in h.audit.events()

    run(go())


def test_closed_step_ones_carry_a_void_ticket_and_the_dummy_finish_answers_the_same() -> None:
    async def go() -> None:
        h = Harness(max_attempts=1)
        _, unregistered = await h.start(b"pw", account="nobody")
        assert unregistered.outcome == NOT_REGISTERED and unregistered.ticket
        await h.register(b"pw")
        await h.wrong_guess()
        _, locked = await h.start(b"pw")  # out of guesses: locks now
        assert locked.outcome == LOCKED and locked.ticket
        revision, evaluations = h.store.revision, h.evaluations()
        for account, first in (("nobody", unregistered), (ACCOUNT, locked)):
            answer = await h.finish(os.urandom(opaque.KE3_BYTES), first.ticket, account)
            assert answer.outcome == first.outcome
        assert h.store.revision == revision and h.evaluations() == evaluations

    run(go())


def test_status_and_delete_take_two_steps_and_a_delete_is_bound_to_its_registration() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"old")
        begin = envelope_pb2.VaultRequest(
            begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_DELETE)
        )
        r1 = await h.call(begin)
        assert r1.outcome == OK and r1.WhichOneof("reply") == "begin" and r1.ticket
        delete = h.step2(envelope_pb2.VaultRequest(delete=envelope_pb2.DeleteRequest()), r1.ticket)
        relayed = delete.seal(h.fleet, ACCOUNT)
        # A status step 2 under a delete's ticket is refused (the ticket names its operation).
        with pytest.raises(BadRequest):
            await h.call(
                h.step2(envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest()), r1.ticket)
            )
        new_key = await h.register(b"new")  # a new registration between the two steps
        revision = h.store.revision
        with pytest.raises(Precondition):
            await h.service.handle(ACCOUNT, relayed)
        assert h.store.revision == revision and await h.recover(b"new") == new_key
        assert (await h.delete()).delete.existed  # begun on the registration as it is
        revision = h.store.revision
        await h.register(b"again")
        with pytest.raises(Precondition):  # the old delete replayed onto the next registration
            await h.service.handle(ACCOUNT, relayed)
        assert (await h.status()).status.registered

    run(go())


def test_the_node_answers_one_pattern_whatever_the_operation_and_outcome() -> None:
    """At the node's boundary (what a frontend relays): every step 1, every step 2 and every
    answer of a kind has one size, for register, right, wrong, locked and unregistered
    recoveries, status and delete."""

    async def go() -> None:
        h = Harness(max_attempts=1)
        sizes: dict[str, set[int]] = {
            "step1": set(),
            "answer1": set(),
            "step2": set(),
            "answer2": set(),
        }
        inner = h.service.handle

        async def recording(account: str, envelope: bytes) -> bytes:
            step = (
                "step2" if envelope_pb2.SealedEnvelope.FromString(envelope).enc == b"" else "step1"
            )
            answer = await inner(account, envelope)
            sizes[step].add(len(envelope))
            sizes["answer" + step[-1]].add(len(answer))
            return answer

        h.service.handle = recording  # type: ignore[method-assign]
        await h.register(b"pw")
        await h.recover(b"pw")
        await h.wrong_guess()  # the last guess
        await h.wrong_guess()  # locked at step 1
        await h.wrong_guess(account="nobody")
        await h.status()
        await h.delete()
        assert all(len(s) == 1 for s in sizes.values()), sizes

    run(go())


def test_tickets_have_one_size_and_protocol_2_tickets_never_open() -> None:
    token = SoftToken()
    small = tickets.seal(token, sealed_pb2.Ticket(op=sealed_pb2.Ticket.Op.OP_STATUS), os.urandom)
    big = tickets.seal(
        token,
        sealed_pb2.Ticket(
            op=sealed_pb2.Ticket.Op.OP_RECOVER, record_id=os.urandom(32),
            generation=os.urandom(16), evaluation=2**63, expected_client_mac=os.urandom(64),
            session_key=os.urandom(64), expires_at_ms=2**62, create_revision=2**62,
            version=2**62, request_key=os.urandom(32), answer_key=os.urandom(32),
        ),
        os.urandom,
    )  # fmt: skip
    assert len(small) == len(big)
    assert tickets.open_(token, big).evaluation == 2**63
    for bad in (
        protocol2_tickets.seal_login_ticket(token, sealed_pb2.Ticket(evaluation=1), os.urandom),
        protocol2_tickets.seal_registration_ticket(
            token, sealed_pb2.RegistrationTicket(), os.urandom
        ),
        big[:-1],
        b"",
    ):
        with pytest.raises(DecryptError):
            tickets.open_(token, bad)
