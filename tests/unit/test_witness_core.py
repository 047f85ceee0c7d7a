"""vault_node.witness_core and vault_node.heads: the capture rules and the group heads, no I/O."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.store.v1 import sealed_pb2
from vault_node import heads
from vault_node.key_meta import KeyMeta, StoredValue
from vault_node.records import RECORD_KEY, seal_sealed
from vault_node.soft_token import SoftToken
from vault_node.witness_core import (
    MAX_DELAY_VERSIONS,
    Ref,
    Verdict,
    WitnessState,
    capture_mac_input,
    majority,
)
from vault_protocol.errors import DecryptError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ZERO = heads.ZERO_HASH


def h(n: int, branch: str = "") -> bytes:
    return hashlib.sha256(f"{branch}{n}".encode()).digest()


def chain(state: WitnessState, upto: int, branch: str = "", group: int = 0) -> None:
    """Capture versions 1..upto of one branch, one write after the other."""
    for v in range(1, upto + 1):
        base = Ref(group, v - 1, ZERO if v == 1 else h(v - 1, branch))
        verdict, _ = state.capture(base, ZERO, Ref(group, v, h(v, branch)))
        assert verdict is Verdict.CAPTURED


def test_a_chain_grows_one_head_at_a_time() -> None:
    state = WitnessState(4, ready=True)
    chain(state, 5)
    assert state.latest(0) == Ref(0, 5, h(5))
    assert state.latest(1) == Ref(1, 0, ZERO)


def test_a_gap_of_unwitnessed_heads_is_bridged_by_the_ancestor_list() -> None:
    state = WitnessState(4, ready=True)
    chain(state, 3)
    # etcd committed 4 and 5 while no majority answered; 6 -> 7 names 5 (prev), 4 and 3.
    verdict, held = state.capture(Ref(0, 6, h(6)), h(5), Ref(0, 7, h(7)), [h(4), h(3), h(2)])
    assert verdict is Verdict.CAPTURED and held == Ref(0, 7, h(7))
    # The gap is in the chain: a late capture of 4 -> 5 is recognised, a fork at 5 is not.
    assert state.capture(Ref(0, 4, h(4)), h(3), Ref(0, 5, h(5)))[0] is Verdict.CAPTURED
    assert state.capture(Ref(0, 4, h(4)), h(3), Ref(0, 5, h(5, "x")))[0] is Verdict.ROLLBACK


def test_an_ancestor_list_from_another_history_is_a_fork() -> None:
    state = WitnessState(4, ready=True)
    chain(state, 3)
    fork = [h(4, "x"), h(3, "x"), h(2)]
    verdict, _ = state.capture(Ref(0, 6, h(6, "x")), h(5, "x"), Ref(0, 7, h(7, "x")), fork)
    assert verdict is Verdict.ROLLBACK
    assert state.latest(0) == Ref(0, 3, h(3))


def test_a_gap_wider_than_the_ancestor_list_is_behind() -> None:
    state = WitnessState(4, ready=True)
    chain(state, 3)
    verdict, held = state.capture(Ref(0, 9, h(9)), h(8), Ref(0, 10, h(10)), [h(7), h(6)])
    assert verdict is Verdict.BEHIND and held == Ref(0, 3, h(3))


def test_a_head_lists_its_ancestors_up_to_recent() -> None:
    token = SoftToken()
    head = heads.empty_head(2)
    sealed_heads = []
    for n in range(heads.RECENT + 5):
        sealed, head = heads.next_head(token, head, bytes([n]) * 32, b"record", os.urandom)
        sealed_heads.append(sealed)
        stored = StoredValue(sealed, KeyMeta(1, n + 2, n + 1))
        opened = heads.open_head(token, 2, stored)
        assert opened.recent == head.recent and opened.prev == head.prev
    hashes = [heads.ZERO_HASH] + [heads.head_hash(s) for s in sealed_heads]  # by version
    assert len(head.recent) == heads.RECENT
    for version in range(head.version - 1 - heads.RECENT, head.version):
        assert head.ancestor(version) == hashes[version]
    assert head.ancestor(head.version - 2 - heads.RECENT) is None


def test_a_witness_one_capture_behind_still_extends() -> None:
    state = WitnessState(4, ready=True)
    chain(state, 3)
    # Version 4's capture is still in flight; version 5's arrives first, naming 4's prev.
    verdict, held = state.capture(Ref(0, 4, h(4)), h(3), Ref(0, 5, h(5)))
    assert verdict is Verdict.CAPTURED and held == Ref(0, 5, h(5))
    # ... and then 4's own capture: already in the chain.
    assert state.capture(Ref(0, 3, h(3)), h(2), Ref(0, 4, h(4)))[0] is Verdict.CAPTURED


def test_a_base_behind_the_chain_is_a_rollback() -> None:
    """etcd served version 2 after the witnesses had captured 5 (a restore, bumped or not)."""
    state = WitnessState(4, ready=True)
    chain(state, 5)
    verdict, held = state.capture(Ref(0, 2, h(2)), h(1), Ref(0, 3, h(3, "other")))
    assert verdict is Verdict.ROLLBACK and held.version == 5


def test_a_fork_is_a_rollback() -> None:
    state = WitnessState(4, ready=True)
    chain(state, 5)
    fork = Ref(0, 5, h(5, "fork"))
    assert state.capture(fork, h(4), Ref(0, 6, h(6, "fork")))[0] is Verdict.ROLLBACK
    # A base one past our latest that does not descend from it: another history.
    assert state.capture(Ref(0, 6, h(6, "x")), h(5, "x"), Ref(0, 7, h(7)))[0] is Verdict.ROLLBACK
    # Not a successor of its base at all.
    assert state.capture(Ref(0, 5, h(5)), h(4), Ref(0, 9, h(9)))[0] is Verdict.ROLLBACK


def test_too_far_ahead_is_behind_and_a_restart_remembers_only_the_latest() -> None:
    state = WitnessState(4, ready=True)
    chain(state, 3)
    assert state.capture(Ref(0, 9, h(9)), h(8), Ref(0, 10, h(10)))[0] is Verdict.BEHIND
    restarted = WitnessState(4, [Ref(0, 100, h(100))], ready=True)
    # A capture delayed across the restart, a little older than what it remembers: no verdict.
    assert restarted.capture(Ref(0, 98, h(98)), h(97), Ref(0, 99, h(99)))[0] is Verdict.BEHIND
    # Far older than anything in flight: a rollback.
    old = 100 - MAX_DELAY_VERSIONS - 1
    assert (
        restarted.capture(Ref(0, old, h(old)), h(old - 1), Ref(0, old + 1, h(old + 1)))[0]
        is Verdict.ROLLBACK
    )


def test_a_witness_that_has_not_caught_up_judges_nothing() -> None:
    state = WitnessState(4)
    assert state.capture(Ref(0, 0, ZERO), ZERO, Ref(0, 1, h(1)))[0] is Verdict.NOT_READY


def test_catch_up_takes_every_groups_latest_head() -> None:
    state = WitnessState(4, [Ref(0, 3, h(3)), Ref(1, 9, h(9))])
    moved = state.merge([Ref(0, 5, h(5)), Ref(1, 2, h(2)), Ref(2, 1, h(1)), Ref(7, 1, h(1))])
    assert moved == [Ref(0, 5, h(5)), Ref(2, 1, h(1))]  # group 7 does not exist here
    assert [r.version for r in state.heads()] == [5, 9, 1]


@given(st.integers(min_value=1, max_value=15))
def test_two_majorities_always_share_a_witness(witnesses: int) -> None:
    assert 2 * majority(witnesses) > witnesses


def test_the_mac_input_binds_witness_nonce_verdict_and_both_heads() -> None:
    base = capture_mac_input("w1", b"n" * 16, 1, Ref(0, 5, h(5)), Ref(0, 5, h(5)))
    others = [
        capture_mac_input("w2", b"n" * 16, 1, Ref(0, 5, h(5)), Ref(0, 5, h(5))),
        capture_mac_input("w1", b"m" * 16, 1, Ref(0, 5, h(5)), Ref(0, 5, h(5))),
        capture_mac_input("w1", b"n" * 16, 3, Ref(0, 5, h(5)), Ref(0, 5, h(5))),
        capture_mac_input("w1", b"n" * 16, 1, Ref(1, 5, h(5)), Ref(0, 5, h(5))),
        capture_mac_input("w1", b"n" * 16, 1, Ref(0, 5, h(5)), Ref(0, 6, h(6))),
    ]
    assert len({base, *others}) == 6


# -- group heads ----------------------------------------------------------------------------------


def test_a_head_vouches_for_exactly_the_records_of_its_page() -> None:
    token = SoftToken()
    rid, other = os.urandom(32), os.urandom(32)
    empty = heads.empty_head(7)
    sealed1, head1 = heads.next_head(token, empty, rid, b"value one", os.urandom)
    opened = heads.open_head(token, 7, StoredValue(sealed1, KeyMeta(3, 3, 1)))
    assert (opened.version, opened.prev, opened.hash) == (1, heads.ZERO_HASH, head1.hash)
    assert opened.holds(rid, StoredValue(b"value one", KeyMeta(2, 3, 2)))
    assert not opened.holds(rid, StoredValue(b"value two", KeyMeta(2, 3, 2)))
    assert not opened.holds(rid, None) and opened.holds(other, None)
    _, head2 = heads.next_head(token, opened, rid, None, os.urandom)
    assert head2.prev == head1.hash and head2.version == 2 and rid not in head2.entries
    with pytest.raises(DecryptError):  # another group's head put in this group's place
        heads.open_head(token, 8, StoredValue(sealed1, KeyMeta(3, 3, 1)))
    forged = seal_sealed(
        token, RECORD_KEY, sealed_pb2.GroupHead(group=7, version=0).SerializeToString(),
        heads.head_aad(7), os.urandom,
    )  # fmt: skip
    with pytest.raises(DecryptError):  # malformed: version 0 is "no head"
        heads.open_head(token, 7, StoredValue(forged, KeyMeta(3, 3, 1)))
    assert heads.group_of(b"\x01\x02" + bytes(30), 256) == 2
