"""vault_protocol.fleet: the signed fleet announcement; client.fleet: which key a client takes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bkv.v1 import fleet_pb2
from client.errors import ConfigError, FleetAnnouncementRefused
from client.fleet import FleetView
from vault_protocol.envelope import FleetKey
from vault_protocol.errors import InvalidInput
from vault_protocol.fleet import (
    MAX_CONTEXT_BYTES,
    SIGNING_PREFIX,
    AnnouncementRefused,
    FleetAnnouncement,
    FleetRootKey,
    parse_announcement,
    sign_announcement,
    signing_input,
)
from vault_protocol.opaque import DEFAULT_CONTEXT

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def point() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def root() -> tuple[ed25519.Ed25519PrivateKey, FleetRootKey]:
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, FleetRootKey(raw)


def test_a_signed_announcement_verifies_under_its_root_key_only() -> None:
    private, pinned = root()
    _, other = root()
    announcement = FleetAnnouncement(3, point(), b"", issued_at_ms=1_800_000_000_000)
    signed = sign_announcement(announcement, private.sign)
    assert pinned.verify(signed) == announcement
    assert pinned.verify(signed).fleet_id == FleetKey(announcement.kem_public_key).fleet_id
    with pytest.raises(AnnouncementRefused, match="does not verify"):
        other.verify(signed)
    # The signature covers the exact bytes, under a prefix of its own.
    outer = fleet_pb2.SignedFleetAnnouncement.FromString(signed)
    private.public_key().verify(outer.signature, SIGNING_PREFIX + outer.announcement)
    assert signing_input(b"x") == SIGNING_PREFIX + b"x"


def test_unsigned_altered_and_malformed_announcements_are_refused() -> None:
    private, pinned = root()
    signed = sign_announcement(FleetAnnouncement(2, point(), b"ctx"), private.sign)
    outer = fleet_pb2.SignedFleetAnnouncement.FromString(signed)
    unsigned = fleet_pb2.SignedFleetAnnouncement(announcement=outer.announcement)
    altered = fleet_pb2.FleetAnnouncement.FromString(outer.announcement)
    altered.epoch = 9  # a frontend raising the epoch of a genuine announcement
    cases = {
        "unsigned": unsigned.SerializeToString(),
        "altered": fleet_pb2.SignedFleetAnnouncement(
            announcement=altered.SerializeToString(), signature=outer.signature
        ).SerializeToString(),
        "garbage": b"\xff" * 40,
        "empty": b"",
        "oversized": b"\x0a" + b"\x00" * 5000,
        "signature of a prefix-less message": fleet_pb2.SignedFleetAnnouncement(
            announcement=outer.announcement, signature=private.sign(outer.announcement)
        ).SerializeToString(),
    }
    for name, blob in cases.items():
        with pytest.raises(AnnouncementRefused):
            pinned.verify(blob)
            pytest.fail(name)
    # Signed, but inconsistent (the root key signed a bug): refused all the same.
    inconsistent = fleet_pb2.FleetAnnouncement(
        epoch=2, kem_public_key=point(), fleet_id=bytes(16), opaque_context=b""
    ).SerializeToString()
    bad = fleet_pb2.SignedFleetAnnouncement(
        announcement=inconsistent, signature=private.sign(SIGNING_PREFIX + inconsistent)
    ).SerializeToString()
    with pytest.raises(AnnouncementRefused, match="another fleet id"):
        pinned.verify(bad)


def test_announcement_fields_are_validated() -> None:
    for bad in (
        lambda: FleetAnnouncement(0, point(), b""),
        lambda: FleetAnnouncement(2, b"\x04" + bytes(64), b""),
        lambda: FleetAnnouncement(2, point(), b"x" * (MAX_CONTEXT_BYTES + 1)),
        lambda: FleetAnnouncement(2, point(), b"", issued_at_ms=-1),
        lambda: FleetRootKey(b"short"),
        lambda: FleetRootKey.from_pem(b"not a pem"),
        lambda: parse_announcement(b"\xff\xff"),
    ):
        with pytest.raises(InvalidInput):
            bad()
    _, pinned = root()
    assert FleetRootKey.from_pem(pinned.to_pem()) == pinned
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = p256.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidInput, match="Ed25519"):
        FleetRootKey.from_pem(pem)
    assert "root_id" in repr(pinned) and len(pinned.root_id) == 16


# -- client.fleet.FleetView: the epoch choice ----------------------------------------------------


def test_a_client_takes_only_a_higher_epoch_signed_by_its_root_key() -> None:
    private, pinned = root()
    first = FleetKey(point())
    view = FleetView(first, 1, pinned, None)
    assert view.opaque_context() == DEFAULT_CONTEXT  # nothing announced, nothing configured
    same = sign_announcement(FleetAnnouncement(1, first.public_key_bytes, b""), private.sign)
    assert view.learn(same) is False and view.key == first
    assert view.opaque_context() == b""  # the fleet's, from its signed announcement
    second = FleetAnnouncement(2, point(), b"")
    assert view.learn(sign_announcement(second, private.sign)) is True
    assert (view.epoch, view.key) == (2, second.fleet_key)
    with pytest.raises(FleetAnnouncementRefused, match="older"):
        view.learn(same)  # a validly signed replay of epoch 1
    other_key = sign_announcement(FleetAnnouncement(2, point(), b""), private.sign)
    with pytest.raises(FleetAnnouncementRefused, match="another key for epoch 2"):
        view.learn(other_key)
    impostor, _ = root()
    with pytest.raises(FleetAnnouncementRefused, match="does not verify"):
        view.learn(sign_announcement(FleetAnnouncement(5, point(), b""), impostor.sign))
    assert (view.epoch, view.key) == (2, second.fleet_key)  # nothing refused was taken


def test_without_a_root_key_a_client_learns_nothing() -> None:
    private, _ = root()
    view = FleetView(FleetKey(point()), 1, None, b"BKV-v1")
    assert not view.can_learn
    with pytest.raises(FleetAnnouncementRefused, match="no fleet root key"):
        view.learn(sign_announcement(FleetAnnouncement(2, point(), b""), private.sign))
    assert view.opaque_context() == b"BKV-v1"


def test_a_configured_context_other_than_the_fleets_is_a_config_error() -> None:
    private, pinned = root()
    key = FleetKey(point())
    view = FleetView(key, 1, pinned, b"BKV-v1")
    assert view.opaque_context() == b"BKV-v1"  # nothing announced yet: the configured one
    view.learn(sign_announcement(FleetAnnouncement(1, key.public_key_bytes, b""), private.sign))
    with pytest.raises(ConfigError, match="opaque_context"):
        view.opaque_context()
    agreeing = FleetView(key, 1, pinned, b"")
    agreeing.learn(sign_announcement(FleetAnnouncement(1, key.public_key_bytes, b""), private.sign))
    assert agreeing.opaque_context() == b""
