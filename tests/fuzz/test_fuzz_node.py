"""Fuzz a vault node directly: VaultNode.Open over mTLS with a frontend's client certificate, as a
compromised or buggy frontend could call it — random account ids, mutated envelopes, undecodable
request bytes — on every node in turn.

Every answer must be documented (OK only for a genuine envelope sealed for the account it is sent
for, else INVALID_ARGUMENT); afterwards every process still runs (same pid, healthy), no log holds
a traceback, and the fuzzed account still has all its guesses and recovers.
"""

from __future__ import annotations

import pytest
from bad_input_wire import (
    INVALID_ARGUMENT,
    OK,
    OPEN_METHOD,
    Account,
    Watch,
    Wire,
    assert_account_intact,
    call_raw,
    open_on_node,
)
from fuzz_cases import Case, envelope_case, mutate
from fuzz_tally import Tally, check_sealed_ok, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from bkv.v1 import node_pb2

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]

MAX_ACCOUNT_ID_BYTES = 256  # the node's documented bound on account ids
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)


def valid_account(account_id: str) -> bool:
    return 1 <= len(account_id.encode()) <= MAX_ACCOUNT_ID_BYTES


@st.composite
def open_case(draw: st.DrawFn, wire: Wire, account: Account) -> tuple[str, str, Case, str]:
    """(account id sent, account sealed for, envelope case, node): the envelope is sealed for
    the fuzz account or for the id sent."""
    target = draw(
        st.one_of(
            st.just(account.id),
            TEXT,
            st.text(min_size=MAX_ACCOUNT_ID_BYTES - 2, max_size=MAX_ACCOUNT_ID_BYTES + 4),
        )
    )
    sealed_for = target if draw(st.booleans()) and valid_account(target) else account.id
    case = draw(envelope_case(wire.fleet, sealed_for, account.key.signer))
    node = draw(st.sampled_from(wire.node_names))
    return target, sealed_for, case, node


def test_open_envelopes_over_mtls(wire: Wire, account: Account) -> None:
    watch = Watch(wire)
    tally = Tally()

    @fuzz_settings(300)
    @given(drawn=open_case(wire, account))
    def run(drawn: tuple[str, str, Case, str]) -> None:
        target, sealed_for, case, node = drawn
        if case.skip:
            return
        # HPKE's info binds the account: only an envelope sealed for the id sent may open.
        if valid_account(target) and sealed_for == target:
            allowed = case.expect
        else:
            allowed = frozenset({INVALID_ARGUMENT})
        answer = open_on_node(wire.node(node), target, case.envelope)
        tally.record(case.label, answer, allowed, f"account={target[:30]!r} node={node}")
        check_sealed_ok(tally, case, answer, node_level=True)

    run()
    watch.assert_unharmed()
    assert_account_intact(account)
    assert tally.violation_count == 0, tally.report()
    assert tally.sent >= 200, tally.report()
    assert tally.codes[OK.name] > 0 and tally.codes[INVALID_ARGUMENT.name] > 100, tally.report()


@st.composite
def raw_open(draw: st.DrawFn, wire: Wire, account: Account) -> tuple[str, bytes]:
    node = draw(st.sampled_from(wire.node_names))
    if draw(st.booleans()):
        return node, draw(st.binary(max_size=300))
    genuine = node_pb2.OpenRequest(account_id=account.id, envelope=bytes(600)).SerializeToString()
    return node, draw(mutate(genuine))[1]


def test_undecodable_open_requests(wire: Wire, account: Account) -> None:
    """Mutated serialized OpenRequests: those that parse are bad envelopes (INVALID_ARGUMENT),
    those that don't must get INVALID_ARGUMENT too (currently UNKNOWN: the known grpc.aio bug)."""
    watch = Watch(wire)
    tally = Tally()

    @fuzz_settings(150)
    @given(drawn=raw_open(wire, account))
    def run(drawn: tuple[str, bytes]) -> None:
        node, payload = drawn
        answer = call_raw(wire.node(node), OPEN_METHOD, payload)
        tally.record("open-raw", answer, frozenset({INVALID_ARGUMENT}))

    run()
    watch.assert_processes_unharmed()
    assert_account_intact(account)
    assert tally.violation_count == 0, tally.report()
    assert not watch.alarms()
