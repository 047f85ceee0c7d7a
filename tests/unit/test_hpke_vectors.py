"""RFC 9180 test vectors and interoperability with cryptography's HPKE for `vault_protocol.hpke`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from vault_protocol import hpke
from vault_protocol.errors import DecryptError, InvalidInput

pytestmark = pytest.mark.unit

VECTOR_FILE = "rfc9180-hpke-p256-vectors.json"
OUR_SUITE = (0, 16, 1, 2)  # mode base, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM


def _vectors_dir() -> Path:
    # shared/ lives beside the repository (/work/shared; CI clones it next to the checkout).
    path = Path(__file__).resolve().parents[3] / "shared" / "vectors"
    if not (path / VECTOR_FILE).is_file():
        pytest.fail(
            f"RFC 9180 vectors not found at {path / VECTOR_FILE}: clone shared/ beside the repo"
        )
    return path


def _our_vectors() -> list[dict[str, Any]]:
    with open(_vectors_dir() / VECTOR_FILE, encoding="utf-8") as f:
        everything = json.load(f)
    ours = []
    for vector in everything:
        suite = tuple(int(vector[k]) for k in ("mode", "kem_id", "kdf_id", "aead_id"))
        if suite != OUR_SUITE:
            continue  # other modes / suites are out of scope for this module: skip explicitly
        ours.append(vector)
    return ours


VECTORS = _our_vectors()


def _h(vector: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(vector[name])


def _software_ecdh(sk: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def ecdh(enc_point: bytes) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc_point)
        return sk.exchange(ec.ECDH(), peer)

    return ecdh


def _vector_ecdh(vector: dict[str, Any]) -> Callable[[bytes], bytes]:
    sk = ec.derive_private_key(int.from_bytes(_h(vector, "skRm"), "big"), ec.SECP256R1())
    return _software_ecdh(sk)


def _uncompressed(pk: ec.EllipticCurvePublicKey) -> bytes:
    return pk.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def test_vector_file_has_our_suite() -> None:
    assert VECTORS, "no mode-0 P-256/HKDF-SHA256/AES-256-GCM vector in the file"


@pytest.mark.parametrize("vector", VECTORS)
def test_receiver_key_schedule_matches_vector(vector: dict[str, Any]) -> None:
    ctx = hpke.setup_base_r(
        _h(vector, "enc"), _h(vector, "info"), _vector_ecdh(vector), _h(vector, "pkRm")
    )
    ks = ctx.key_schedule
    assert ks.shared_secret == _h(vector, "shared_secret")
    assert ks.key_schedule_context == _h(vector, "key_schedule_context")
    assert ks.secret == _h(vector, "secret")
    assert ks.key == _h(vector, "key")
    assert ks.base_nonce == _h(vector, "base_nonce")
    assert ks.exporter_secret == _h(vector, "exporter_secret")
    for export in vector["exports"]:
        got = ctx.export(bytes.fromhex(export["exporter_context"]), export["L"])
        assert got == bytes.fromhex(export["exported_value"])


@pytest.mark.parametrize("vector", VECTORS)
def test_receiver_opens_every_vector_encryption_in_sequence(vector: dict[str, Any]) -> None:
    ctx = hpke.setup_base_r(
        _h(vector, "enc"), _h(vector, "info"), _vector_ecdh(vector), _h(vector, "pkRm")
    )
    base_nonce = _h(vector, "base_nonce")
    encryptions = vector["encryptions"]
    assert len(encryptions) > 1
    for encryption in encryptions:
        nonce = bytes.fromhex(encryption["nonce"])
        seq = int.from_bytes(bytes(a ^ b for a, b in zip(nonce, base_nonce, strict=True)), "big")
        # The vector lists sequence numbers in order with no gap: our counter must match its nonce.
        assert seq == ctx.seq
        plaintext = ctx.open(bytes.fromhex(encryption["aad"]), bytes.fromhex(encryption["ct"]))
        assert plaintext == bytes.fromhex(encryption["pt"])


@pytest.mark.parametrize("vector", VECTORS)
def test_failed_open_keeps_sequence_and_raises_decrypt_error(vector: dict[str, Any]) -> None:
    ctx = hpke.setup_base_r(
        _h(vector, "enc"), _h(vector, "info"), _vector_ecdh(vector), _h(vector, "pkRm")
    )
    first = vector["encryptions"][0]
    with pytest.raises(DecryptError):
        ctx.open(b"wrong aad", bytes.fromhex(first["ct"]))
    assert ctx.seq == 0
    assert ctx.open(bytes.fromhex(first["aad"]), bytes.fromhex(first["ct"])) == bytes.fromhex(
        first["pt"]
    )


@pytest.mark.parametrize("vector", VECTORS)
def test_derive_key_pair_matches_vector(vector: dict[str, Any]) -> None:
    for ikm, sk, pk in (("ikmR", "skRm", "pkRm"), ("ikmE", "skEm", "pkEm")):
        key = hpke.derive_key_pair(_h(vector, ikm))
        assert key.private_numbers().private_value.to_bytes(32, "big") == _h(vector, sk)
        assert _uncompressed(key.public_key()) == _h(vector, pk)


@pytest.mark.parametrize("vector", VECTORS)
def test_sender_with_vector_ephemeral_key_reproduces_vector(vector: dict[str, Any]) -> None:
    # The sender's ephemeral key is DeriveKeyPair(rng(32)): injecting ikmE yields skEm.
    ikm_e = _h(vector, "ikmE")

    def rng(n: int) -> bytes:
        assert n == len(ikm_e)
        return ikm_e

    first = vector["encryptions"][0]
    enc, ct = hpke.seal_base(
        _h(vector, "pkRm"),
        _h(vector, "info"),
        bytes.fromhex(first["aad"]),
        bytes.fromhex(first["pt"]),
        rng,
    )
    assert enc == _h(vector, "enc")
    assert ct == bytes.fromhex(first["ct"])

    enc2, sender = hpke.setup_base_s(_h(vector, "pkRm"), _h(vector, "info"), rng)
    assert enc2 == enc
    for encryption in vector["encryptions"][:8]:
        sealed = sender.seal(bytes.fromhex(encryption["aad"]), bytes.fromhex(encryption["pt"]))
        assert sealed == bytes.fromhex(encryption["ct"])


def test_cryptography_hpke_ciphertexts_open_with_our_receiver() -> None:
    suite = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    sk = ec.generate_private_key(ec.SECP256R1())
    pk_r = _uncompressed(sk.public_key())
    ecdh = _software_ecdh(sk)
    for size in (0, 1, 100, 4096):
        plaintext = os.urandom(size)
        info = os.urandom(size % 40)
        sealed = suite.encrypt(plaintext, sk.public_key(), info)
        enc, ct = sealed[: hpke.N_ENC], sealed[hpke.N_ENC :]
        assert hpke.open_base(enc, ct, info, b"", ecdh, pk_r) == plaintext
        with pytest.raises(DecryptError):
            hpke.open_base(enc, ct, info + b"x", b"", ecdh, pk_r)


def test_our_sender_opens_with_cryptography_hpke() -> None:
    suite = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    sk = ec.generate_private_key(ec.SECP256R1())
    enc, ct = hpke.seal_base(_uncompressed(sk.public_key()), b"info", b"", b"hello", os.urandom)
    assert suite.decrypt(enc + ct, sk, b"info") == b"hello"


def test_bad_enc_is_invalid_input_and_never_reaches_ecdh() -> None:
    sk = ec.generate_private_key(ec.SECP256R1())
    pk_r = _uncompressed(sk.public_key())
    good_enc = _uncompressed(ec.generate_private_key(ec.SECP256R1()).public_key())

    def ecdh(_: bytes) -> bytes:
        raise AssertionError("ecdh must not run on an invalid point")

    off_curve = good_enc[:-1] + bytes([good_enc[-1] ^ 1])
    compressed = sk.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    for bad in (
        b"",
        good_enc[:-1],
        good_enc + b"\x00",
        b"\x05" + good_enc[1:],
        off_curve,
        compressed,
    ):
        with pytest.raises(InvalidInput):
            hpke.setup_base_r(bad, b"", ecdh, pk_r)
    with pytest.raises(InvalidInput):
        hpke.setup_base_r(good_enc, b"", ecdh, off_curve)


def test_key_schedule_repr_hides_secrets() -> None:
    ks = hpke.key_schedule(bytes(range(32)), b"info")
    assert ks.key.hex() not in repr(ks)
    assert "secret" in repr(ks)
