"""vault_node.fleet_keys and the epoch labels: the token's fleet state and a node's keyring."""

from __future__ import annotations

import pytest

from vault_node.fleet_keys import (
    FLEET_STATE_LABEL,
    FleetKeysMissing,
    FleetState,
    FleetStateError,
    first_epoch_keyring,
    load_keyring,
    read_fleet_state,
    write_fleet_state,
)
from vault_node.records import FIRST_KEYS
from vault_node.soft_token import SoftToken
from vault_node.token_api import HsmInputError, check_gcm, epoch_label, label_epoch

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_epoch_labels_keep_the_first_epochs_names_and_suffix_the_later_ones() -> None:
    assert [epoch_label(b, 1) for b in ("kem", "record", "ticket")] == ["kem", "record", "ticket"]
    assert epoch_label("ticket", 12) == "ticket.12"
    parsed = {"kem.2": ("kem", 2), "record": ("record", 1), "id_mac": ("id_mac", 1)}
    for label, expected in parsed.items():
        assert label_epoch(label) == expected
    # One label per key: no alias of the first epoch, no padded digits, no rotated seeds.
    for bad in ("record.1", "record.02", "record.", "record.x", "oprf_seed.2", "kem.65536"):
        with pytest.raises(HsmInputError):
            label_epoch(bad)
    for base, epoch in (("oprf_seed", 2), ("record", 0), ("kem", 65_536)):
        with pytest.raises(HsmInputError):
            epoch_label(base, epoch)
    check_gcm("record.7", bytes(12))
    with pytest.raises(HsmInputError):
        check_gcm("kem.7", bytes(12))  # key separation holds across epochs


def test_fleet_state_validates_every_problem_at_once() -> None:
    assert FleetState().validate() == FleetState(accepted=(1,), seal=1)
    with pytest.raises(FleetStateError) as raised:
        FleetState(accepted=(2, 1, 1), seal=3, retired_fleet_ids=(b"short",)).validate()
    message = str(raised.value)
    for fragment in ("increasing order", "seal epoch 3", "16 bytes"):
        assert fragment in message
    with pytest.raises(FleetStateError):
        FleetState(accepted=(), seal=1).validate()
    with pytest.raises(FleetStateError):
        FleetState(accepted=(1, 2, 3, 4, 5), seal=1).validate()


def test_fleet_state_steps_of_a_rotation() -> None:
    old_id = bytes(range(16))
    installed = FleetState().accepting(2)
    assert installed.accepted == (1, 2) and installed.seal == 1
    switched = installed.sealing(2)
    assert switched.seal == 2
    with pytest.raises(FleetStateError, match="switch sealing first"):
        installed.retiring(1, old_id)
    with pytest.raises(FleetStateError, match="not an accepted epoch"):
        FleetState().sealing(2)  # never seal with a key the node would not open
    retired = switched.retiring(1, old_id)
    assert retired.accepted == (2,) and retired.retired_fleet_ids == (old_id,)
    assert FleetState.from_bytes(retired.to_bytes()) == retired


def test_the_token_keeps_the_state_with_the_highest_sequence() -> None:
    token = SoftToken()
    assert read_fleet_state(token) == FleetState()
    first = write_fleet_state(token, FleetState().accepting(2))
    second = write_fleet_state(token, first.sealing(2))
    assert (first.sequence, second.sequence) == (1, 2)
    # A crash between writing the new object and destroying the old one leaves both.
    token.data[FLEET_STATE_LABEL] = [second.to_bytes(), first.to_bytes()]
    assert read_fleet_state(token) == second
    token.data[FLEET_STATE_LABEL] = [b"\x08\x01\x10"]  # truncated
    with pytest.raises(FleetStateError):
        read_fleet_state(token)
    token.data[FLEET_STATE_LABEL] = [FleetState(accepted=(1,), seal=2).to_bytes()]
    with pytest.raises(FleetStateError):
        read_fleet_state(token)  # a stored state that would seal with an unaccepted epoch


def test_a_keyring_names_each_epochs_keys_and_refuses_keys_the_token_lacks() -> None:
    token = SoftToken()
    first = first_epoch_keyring(token)
    assert first.seal_keys == FIRST_KEYS
    assert load_keyring(token, FleetState()) == first
    with pytest.raises(FleetKeysMissing) as missing:
        load_keyring(token, FleetState().accepting(2))
    assert missing.value.labels == ["kem.2", "record.2", "ticket.2"]
    token.install(token.material.with_epoch(2))
    # Installed, not switched: nothing is stale (a node still sealing with epoch 1 must not
    # re-seal back what a switched node sealed with epoch 2).
    assert load_keyring(token, FleetState().accepting(2)).stale_record_labels == frozenset()
    both = load_keyring(token, FleetState().accepting(2).sealing(2))
    old_id = first.sealing.fleet.fleet_id
    new_id = both.sealing.fleet.fleet_id
    assert both.by_fleet_id(old_id) is not None and both.by_fleet_id(new_id) is not None
    assert both.seal_keys.record == "record.2" and both.seal_keys.ticket == "ticket.2"
    assert both.seal_keys.record_opens == {"record", "record.2"}
    assert both.stale_record_labels == {"record"}
    retired = load_keyring(token, FleetState().accepting(2).sealing(2).retiring(1, old_id))
    assert retired.by_fleet_id(old_id) is None and retired.knows(old_id)
    assert not retired.knows(bytes(16)) and not retired.stale_record_labels
    assert retired.describe() == {"accepted": [2], "seal": 2, "fleet_ids": {"2": new_id.hex()}}
