"""A fleet rotation on the request logic: both epochs open during the overlap, new values are
sealed with the seal epoch, the re-seal pass rewrites the rest without touching a counter, and a
retired fleet key is refused by name with nothing applied (software token, memory store)."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from test_node_service import ACCOUNT, OPAQUE_CONFIG, Harness, run

from bkv.v1 import envelope_pb2
from vault_common.wire import UNKNOWN_FLEET_DETAILS
from vault_node.fleet_keys import (
    FleetState,
    epoch_labels,
    load_keyring,
    read_fleet_state,
    write_fleet_state,
)
from vault_node.records import sealed_key_name
from vault_node.reseal import Resealer, head_only_id
from vault_node.server import status_for
from vault_node.service import UnknownFleet
from vault_node.soft_token import SoftToken
from vault_protocol import opaque
from vault_protocol.envelope import FleetKey

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def apply_state(h: Harness, change: str) -> None:
    """What `rotate-fleet` does to the token (ceremony_cli) and then to the node (SIGHUP)."""
    token = h.token
    state = read_fleet_state(token)
    if change == "install":
        token.install(token.material.with_epoch(2))
        state = state.accepting(2)
    elif change == "switch":
        state = state.sealing(2)
    elif change == "retire":
        old = FleetKey(token.kem_public_key("kem"))
        state = state.retiring(1, old.fleet_id)
    write_fleet_state(token, state)
    if change == "retire":
        token.destroy(epoch_labels(1))  # after the nodes stopped accepting them
    h.service.use_keyring(load_keyring(token, read_fleet_state(token)))


def stored_keys(h: Harness) -> set[str]:
    names = {sealed_key_name(v.value) for v in h.store.data.values()}
    names |= {sealed_key_name(v.value) for v in h.store.heads.values()}
    return {n for n in names if n is not None}


def resealer(h: Harness, placeholder_delay_s: float = 0.0) -> Resealer:
    async def no_wait(_seconds: float) -> None:
        return None

    return Resealer(
        h.service, h.store, rate_per_s=1000, placeholder_delay_s=placeholder_delay_s,
        sleep=no_wait,
    )  # fmt: skip


def test_a_whole_rotation_keeps_every_record_and_counter() -> None:
    async def go() -> None:
        h = Harness()
        old_fleet = h.fleet
        key = await h.register(b"alice pw")
        bob_key = await h.register(b"bob pw", "bob")
        await h.wrong_guess("bob")  # bob has one guess counted: the rotation must keep it
        await h.register(b"dave pw", "dave")
        await h.delete("dave")  # dave's group keeps a head with no record
        # Carol's registration started and never finished: a placeholder of epoch 1.
        _, _unfinished = await h.prepare_registration(b"carol pw", "carol")
        assert stored_keys(h) == {"record"}

        apply_state(h, "install")
        new_fleet = FleetKey(h.token.kem_public_key("kem.2"))
        # Overlap: step 1 to either fleet key opens; nothing is sealed with epoch 2 yet.
        assert (await h.recover(b"alice pw")).display() == key.display()
        h.fleet = new_fleet
        assert (await h.recover(b"alice pw")).display() == key.display()
        assert stored_keys(h) == {"record"}

        apply_state(h, "switch")
        h.fleet = old_fleet  # a client that has not learnt the new key yet
        assert (await h.recover(b"alice pw")).display() == key.display()
        alice = h.store.data[h.record_id()]
        assert sealed_key_name(alice.value) == "record.2"  # re-sealed on its next write
        _, r1 = await h.start(b"alice pw")
        assert sealed_key_name(r1.ticket) == "ticket.2"
        evaluations, attempts = h.evaluations(), h.record("bob").attempts

        pass_ = resealer(h, placeholder_delay_s=3600.0)
        report = await pass_.run_once()
        assert report.deferred == 1 and report.placeholders == 0  # carol's may still be in use
        assert report.heads >= 1 and report.records >= 1 and report.tampered == 0
        later = await resealer(h).run_once()
        assert later.placeholders == 1 and later.deferred == 0
        assert stored_keys(h) == {"record.2"}
        assert (await resealer(h).run_once()).wrote == 0  # nothing left: a pass writes nothing
        # The guess counter and the evaluations are exactly as they were.
        assert h.evaluations() == evaluations and h.record("bob").attempts == attempts == 1
        assert h.audit.events().count("reseal") == report.wrote + later.wrote

        apply_state(h, "retire")
        assert set(h.token.held_labels()).isdisjoint(epoch_labels(1))
        h.fleet = new_fleet
        assert (await h.recover(b"bob pw", "bob")).display() == bob_key.display()
        assert (await h.status("carol")).status.registered is False

    run(go())


def test_an_envelope_to_a_retired_fleet_key_is_refused_by_name_with_nothing_applied() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"alice pw")
        old_fleet = h.fleet
        _, before_retire = await h.start(b"alice pw")  # step 1 under epoch 1, then retire
        for change in ("install", "switch"):
            apply_state(h, change)
        await resealer(h).run_once()
        _, switched = await h.start(b"alice pw")  # its ticket is epoch 2's
        apply_state(h, "retire")
        attempts, events, evaluations = h.record().attempts, len(h.log), h.evaluations()
        state, ke1 = opaque.login_start(b"alice pw", os.urandom)
        request = envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1))
        with pytest.raises(UnknownFleet) as refused:
            await h.first(request)
        assert status_for(refused.value) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            UNKNOWN_FLEET_DETAILS,
        )
        assert (h.record().attempts, len(h.log), h.evaluations()) == (attempts, events, evaluations)
        # A step 2 still names the old fleet id: its ticket decides. One sealed with epoch 2's
        # ticket key finishes (a recovery begun just before the retirement)...
        finish = await h.finish(os.urandom(opaque.KE3_BYTES), switched.ticket)
        assert finish.outcome == envelope_pb2.OUTCOME_INVALID_PASSWORD
        # ...one sealed before the switch no longer opens (tickets wait out their life first).
        with pytest.raises(Exception, match="ticket could not be opened"):
            await h.finish(os.urandom(opaque.KE3_BYTES), before_retire.ticket)
        # A fleet id no epoch ever had is refused like a retired one, at either step.
        stranger = FleetKey(SoftToken().kem_public_key())
        h.fleet = stranger
        with pytest.raises(UnknownFleet):
            await h.first(request)
        with pytest.raises(UnknownFleet):
            await h.finish(os.urandom(opaque.KE3_BYTES), switched.ticket)
        h.fleet = FleetKey(h.token.kem_public_key("kem.2"))  # the live key works on
        assert (await h.status()).status.registered
        assert old_fleet != h.fleet and state is not None

    run(go())


def test_a_node_that_missed_a_switch_refuses_what_it_cannot_open_and_evaluates_nothing() -> None:
    """Why `switch` waits until every node accepts the new epoch: a node that does not would
    refuse re-sealed records as tampered (DATA_LOSS, no guess), never misread them."""

    async def go() -> None:
        h = Harness()
        await h.register(b"alice pw")
        lagging = h.node()  # took epoch 1 alone and was never reloaded
        apply_state(h, "install")
        apply_state(h, "switch")
        await h.recover(b"alice pw")  # re-seals alice's record under epoch 2
        h.service, evaluations = lagging, h.evaluations()
        with pytest.raises(Exception, match="was not written by the vault"):
            await h.start(b"alice pw")
        assert h.evaluations() == evaluations and "tampered" in h.audit.events()

    run(go())


def test_the_head_alone_is_rewritten_for_a_group_without_records() -> None:
    async def go() -> None:
        h = Harness()
        await h.register(b"dave pw", "dave")
        group = h.group("dave")
        await h.delete("dave")
        for change in ("install", "switch"):
            apply_state(h, change)
        before = h.store.heads[group]
        assert sealed_key_name(before.value) == "record"
        assert await h.service.reseal(head_only_id(group))
        after = h.store.heads[group]
        assert sealed_key_name(after.value) == "record.2"
        assert after.meta.version == before.meta.version + 1  # one more head in its chain
        assert not await h.service.reseal(head_only_id(group))  # nothing left to do
        assert head_only_id(group) not in h.store.data

    run(go())


def test_a_reload_that_names_a_missing_key_is_not_taken() -> None:
    h = Harness()
    write_fleet_state(h.token, FleetState().accepting(2))
    with pytest.raises(Exception, match="missing"):
        load_keyring(h.token, read_fleet_state(h.token))
    assert h.service.keyring.accepted == (1,)
    assert asyncio.run(h.status()).outcome == envelope_pb2.OUTCOME_OK
    assert OPAQUE_CONFIG.context == b"BKV-v1" and ACCOUNT
