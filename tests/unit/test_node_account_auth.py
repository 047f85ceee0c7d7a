"""vault_node.service checks the account itself (issue 17): every step 1 is signed by the
account key the record is bound to, or refused with nothing written and nothing evaluated."""

from __future__ import annotations

import os

import grpc
import pytest
from account_keys import account_signer, signed
from test_node_service import ACCOUNT, LOCKED, NOT_REGISTERED, OK, OPAQUE_CONFIG, Harness, run

from bkv.v1 import envelope_pb2
from vault_common.wire import parse_account_refusal
from vault_node.server import NOT_APPLIED, outcome_for, status_for, trailers_for
from vault_node.service import AccountRefused
from vault_protocol import opaque
from vault_protocol.backup_key import wrap_key
from vault_protocol.continuation import StepKeys
from vault_protocol.envelope import open_response, seal_request

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

PASSWORD = b"correct horse"
MALLORY = account_signer(ACCOUNT, "a frontend's own key")
NEW = account_signer(ACCOUNT, "the new device")


def _refusals(h: Harness) -> int:
    return h.log.count("auth_refused")


async def _as(h: Harness, signer_label: str, call: object) -> AccountRefused:
    """Run `call` (a coroutine) signed by the key `signer_label` names; its refusal."""
    h.signers[ACCOUNT] = {"mallory": MALLORY, "new": NEW}[signer_label]
    try:
        with pytest.raises(AccountRefused) as info:
            await call  # type: ignore[misc]
    finally:
        h.signers.pop(ACCOUNT)
    return info.value


def test_another_key_can_neither_guess_delete_read_nor_reregister() -> None:
    async def go() -> None:
        h = Harness()
        key = await h.register(PASSWORD)
        await h.wrong_guess()
        before = h.record()
        evaluations = h.evaluations()
        state, req = opaque.registration_start(b"mallory's", os.urandom)
        register_start = envelope_pb2.VaultRequest(
            register_start=envelope_pb2.RegisterStart(registration_request=req)
        )
        attacks = [
            h.start(b"a guess"),
            h.delete(),
            h.status(),
            h.call(register_start),
        ]
        for attack in attacks:
            refusal = await _as(h, "mallory", attack)
            assert refusal.reason == "key"
        del state
        after = h.record()
        assert after == before and h.evaluations() == evaluations  # nothing written or run
        assert _refusals(h) == 4
        assert (await h.status()).guesses_left == 9
        assert await h.recover(PASSWORD) == key  # the owner still recovers

    run(go())


def test_an_unsigned_or_badly_signed_step_1_is_refused() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(PASSWORD)
        baseline = h.evaluations()  # the registration's (register start evaluates its OPRF)
        _, ke1 = opaque.login_start(PASSWORD, os.urandom)
        for damage in ("unsigned", "altered"):
            request = envelope_pb2.VaultRequest(
                response_key=os.urandom(32), recover_start=envelope_pb2.RecoverStart(ke1=ke1)
            )
            if damage == "altered":
                signed(request, h.fleet.fleet_id, ACCOUNT, ts_ms=next(h.timestamps))
                request.response_key = os.urandom(32)
            sealed = seal_request(h.fleet, ACCOUNT, request)
            with pytest.raises(AccountRefused) as info:
                await h.service.handle(ACCOUNT, sealed)
            assert info.value.reason == "signature"
        assert h.evaluations() == baseline and h.record().attempts == 0

    run(go())


def test_a_relayed_recover_start_counts_once() -> None:
    """A frontend relaying a user's genuine signed recover start again gets refusals."""

    async def go() -> None:
        h = Harness()
        await h.register(PASSWORD)
        baseline = h.evaluations()
        _, ke1 = opaque.login_start(b"a wrong one", os.urandom)
        request = envelope_pb2.VaultRequest(
            response_key=os.urandom(32), recover_start=envelope_pb2.RecoverStart(ke1=ke1)
        )
        ts = next(h.timestamps)
        signed(request, h.fleet.fleet_id, ACCOUNT, ts_ms=ts)
        sealed = seal_request(h.fleet, ACCOUNT, request)
        keys = StepKeys.derive(request.response_key)
        first = open_response(keys.answer1, await h.service.handle(ACCOUNT, sealed))
        assert first.outcome == OK and first.guesses_left == 9
        for _ in range(5):
            with pytest.raises(AccountRefused) as info:
                await h.service.handle(ACCOUNT, sealed)
            assert info.value.reason == "stale" and info.value.floor_ms == ts
        assert h.evaluations() == baseline + 1 and h.record().attempts == 1
        # A fresh signature of the same request (what the client library does) counts anew.
        signed(request, h.fleet.fleet_id, ACCOUNT, ts_ms=next(h.timestamps))
        again = seal_request(h.fleet, ACCOUNT, request)
        assert open_response(keys.answer1, await h.service.handle(ACCOUNT, again)).outcome == OK
        assert h.evaluations() == baseline + 2

    run(go())


def test_a_timestamp_far_ahead_of_the_node_clock_is_refused() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(PASSWORD)
        baseline = h.evaluations()
        ahead = h.clock.now + h.service_config.auth_max_future_ms + 1
        h.timestamps = iter([ahead])  # type: ignore[assignment]
        with pytest.raises(AccountRefused) as info:
            await h.start(PASSWORD)
        assert info.value.reason == "clock" and h.evaluations() == baseline
        assert h.record().last_auth_ms < ahead  # nothing stored that would refuse the owner

    run(go())


def test_a_locked_tombstone_stays_bound_to_its_key() -> None:
    async def go() -> None:
        h = Harness(max_attempts=1)
        await h.register(PASSWORD)
        await h.wrong_guess()
        r1 = await h.wrong_guess()
        assert r1.outcome == LOCKED
        _, req = opaque.registration_start(PASSWORD, os.urandom)
        start = envelope_pb2.VaultRequest(
            register_start=envelope_pb2.RegisterStart(registration_request=req)
        )
        refusal = await _as(h, "mallory", h.call(start))
        assert refusal.reason == "key"
        assert h.record().account_key == account_signer(ACCOUNT).public_key
        await h.register(PASSWORD)  # its owner may register again

    run(go())


def test_a_key_change_binds_the_new_key_signed_by_the_old() -> None:
    async def go() -> None:
        h = Harness()
        key = await h.register(PASSWORD)
        state, req = opaque.registration_start(PASSWORD, os.urandom)
        start = envelope_pb2.VaultRequest(
            register_start=envelope_pb2.RegisterStart(
                registration_request=req, new_account_key=NEW.public_key
            )
        )
        # The new key cannot sign for the change itself: only the bound key consents.
        assert (await _as(h, "new", h.call(start))).reason == "key"
        h.signers[ACCOUNT] = account_signer(ACCOUNT)
        r1 = await h.call(start)
        assert r1.outcome == OK
        record, export_key = opaque.registration_finish(
            state, r1.register_start.registration_response, OPAQUE_CONFIG, os.urandom
        )
        finish_request = envelope_pb2.VaultRequest(
            register_finish=envelope_pb2.RegisterFinish(
                registration_record=record,
                wrapped_key=wrap_key(key, export_key, ACCOUNT, os.urandom),
            )
        )
        assert (await h.call(h.step2(finish_request, r1.ticket))).outcome == OK
        assert h.record().account_key == NEW.public_key
        assert (await _as(h, "mallory", h.status())).reason == "key"
        assert (await _as_owner_refused(h)).reason == "key"  # the old key no longer signs
        h.signers[ACCOUNT] = NEW
        assert await h.recover(PASSWORD) == key

    run(go())


async def _as_owner_refused(h: Harness) -> AccountRefused:
    with pytest.raises(AccountRefused) as info:
        await h.status()
    return info.value


def test_a_record_without_a_key_binds_the_first_that_recovers_it() -> None:
    async def go() -> None:
        h = Harness()
        key = await h.register(PASSWORD)
        record = h.record()
        record.ClearField("account_key")  # as written before account keys
        await h.write_as_node(h.record_id(), record)
        h.signers[ACCOUNT] = NEW
        assert (await h.status()).status.registered  # any valid signature is accepted
        assert await h.recover(PASSWORD) == key
        assert h.record().account_key == NEW.public_key
        h.signers.pop(ACCOUNT)
        assert (await _as_owner_refused(h)).reason == "key"

    run(go())


def test_key_loss_rebind_matures_after_the_delay_and_binds_at_the_first_recovery() -> None:
    async def go() -> None:
        h = Harness()
        key = await h.register(PASSWORD)
        baseline = h.evaluations()
        delay = h.service_config.rebind_delay_ms
        begin_rebind = envelope_pb2.VaultRequest(
            begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_REBIND)
        )
        h.signers[ACCOUNT] = NEW
        r1 = await h.first(begin_rebind)
        status = await h.second(
            h.step2(envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest()), r1.ticket)
        )
        assert status.status.rebind_pending and status.status.rebind_key == NEW.public_key
        assert status.status.rebind_matures_at_ms == h.clock.now + delay
        assert "rebind" in h.log and h.evaluations() == baseline and h.record().attempts == 0
        with pytest.raises(AccountRefused):  # not yet
            await h.start(PASSWORD)
        h.clock.now += delay
        assert await h.recover(PASSWORD) == key
        assert h.record().account_key == NEW.public_key and not h.record().pending_key

    run(go())


def test_the_bound_key_cancels_a_pending_rebind_by_signing_anything() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(PASSWORD)
        baseline = h.evaluations()
        h.signers[ACCOUNT] = MALLORY  # a frontend starts a rebind to its own key
        await h.first(
            envelope_pb2.VaultRequest(begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_REBIND))
        )
        h.signers.pop(ACCOUNT)
        assert h.record().pending_key == MALLORY.public_key
        status = await h.status()  # the owner asks, which cancels it, and is told so
        assert status.status.rebind_cancelled_key == MALLORY.public_key
        assert not status.status.rebind_pending and "rebind_cancel" in h.log
        assert not h.record().pending_key
        h.clock.now += h.service_config.rebind_delay_ms
        assert (await _as(h, "mallory", h.start(b"a guess"))).reason == "key"
        assert h.evaluations() == baseline

    run(go())


def test_the_refusal_maps_to_unauthenticated_with_nothing_applied() -> None:
    for reason, floor in (("key", 0), ("stale", 42), ("clock", 0), ("signature", 0)):
        refusal = AccountRefused(reason, floor)
        code, details = status_for(refusal)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert parse_account_refusal(details) == (reason, floor)
        assert trailers_for(refusal) == NOT_APPLIED
        assert outcome_for(refusal) == ("auth_stale" if reason == "stale" else "auth_refused")


def test_not_registered_is_answered_to_any_signer() -> None:
    async def go() -> None:
        h = Harness()
        h.signers[ACCOUNT] = MALLORY
        _, r1 = await h.start(PASSWORD)
        assert r1.outcome == NOT_REGISTERED

    run(go())
