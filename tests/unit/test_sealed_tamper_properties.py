"""Property: any single-byte change to a sealed ticket or record is rejected with the one error."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.store.v1 import sealed_pb2
from vault_node import records, tickets
from vault_node.key_meta import KeyMeta, StoredValue
from vault_node.soft_token import SoftToken
from vault_protocol.errors import DecryptError

pytestmark = pytest.mark.unit

TOKEN = SoftToken()
WRITTEN_AT = KeyMeta(create_revision=41, mod_revision=57, version=6)
RECORD_ID = os.urandom(32)
TICKET = tickets.seal(
    TOKEN,
    sealed_pb2.Ticket(
        record_id=RECORD_ID,
        generation=os.urandom(16),
        evaluation=3,
        expected_client_mac=os.urandom(64),
        session_key=os.urandom(64),
        expires_at_ms=1_700_000_000_000,
        op=sealed_pb2.Ticket.Op.OP_RECOVER,
        request_key=os.urandom(32),
        answer_key=os.urandom(32),
    ),
    os.urandom,
)
RECORD = records.seal_record(
    TOKEN,
    RECORD_ID,
    sealed_pb2.Record(
        state=sealed_pb2.RECORD_STATE_ACTIVE,
        opaque_record=os.urandom(192),
        wrapped_key=os.urandom(60),
        attempts=2,
        max_attempts=10,
        generation=os.urandom(16),
    ),
    WRITTEN_AT,
    os.urandom,
)


def _flip(blob: bytes, index: int, delta: int) -> bytes:
    out = bytearray(blob)
    out[index % len(out)] ^= delta
    return bytes(out)


@given(index=st.integers(min_value=0), delta=st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_to_a_ticket_is_rejected(index: int, delta: int) -> None:
    with pytest.raises(DecryptError):
        tickets.open_(TOKEN, _flip(TICKET, index, delta))


@given(index=st.integers(min_value=0), delta=st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_to_a_record_is_rejected(index: int, delta: int) -> None:
    with pytest.raises(DecryptError):
        records.open_record(TOKEN, RECORD_ID, StoredValue(_flip(RECORD, index, delta), WRITTEN_AT))


@given(
    create_revision=st.integers(min_value=0, max_value=2**62),
    version=st.integers(min_value=1, max_value=2**62),
    mod_revision=st.integers(min_value=0, max_value=2**62),
)
def test_a_record_opens_at_no_other_key_metadata(
    create_revision: int, version: int, mod_revision: int
) -> None:
    """Wherever etcd puts the value back (another version or incarnation of the key), it fails;
    only the mod_revision is free (etcd names it after the write)."""
    meta = KeyMeta(create_revision, mod_revision, version)
    same = (create_revision, version) == (WRITTEN_AT.create_revision, WRITTEN_AT.version)
    if same:
        assert records.open_record(TOKEN, RECORD_ID, StoredValue(RECORD, meta)).attempts == 2
    else:
        with pytest.raises(DecryptError):
            records.open_record(TOKEN, RECORD_ID, StoredValue(RECORD, meta))


def test_untampered_ticket_and_record_open() -> None:
    assert tickets.open_(TOKEN, TICKET).evaluation == 3
    assert records.open_record(TOKEN, RECORD_ID, StoredValue(RECORD, WRITTEN_AT)).attempts == 2
