"""vault_node.soft_token: the software token does the real token's crypto, checks and errors.

The same sequence (tests/token_sequence.py) runs against SoftHSM in
tests/integration/test_token_parity.py, which compares the two outcome lists entry by entry.
"""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from token_sequence import (
    AAD,
    NONCE,
    closed_steps,
    missing_key_steps,
    read_only_steps,
    run_provisioned,
    run_steps,
    soft_call,
)

from vault_node.hsm import HsmDecryptError, HsmInputError, HsmKeyMissing
from vault_node.soft_token import FleetMaterial, SoftToken
from vault_node.token_api import FLEET_LABELS, HsmError

pytestmark = pytest.mark.unit


def seeded(seed: int) -> FleetMaterial:
    rng = random.Random(seed)
    return FleetMaterial.generate(rng.randbytes)


def kinds(outcomes: list[tuple[object, ...]]) -> list[str]:
    return [str(o[1]) if o[0] == "error" else "ok" for o in outcomes]


def test_a_token_without_keys_names_each_missing_key() -> None:
    outcomes = run_steps(soft_call(SoftToken(FleetMaterial())), missing_key_steps())
    assert outcomes[0] == ("ok", list(FLEET_LABELS))
    assert kinds(outcomes[1:]) == ["HsmKeyMissing"] * 3 + ["HsmInputError"] + [
        "HsmKeyMissing"
    ] * 2 + ["HsmInputError"]
    assert outcomes[1][2] == "token key 'id_mac': no such key"
    assert outcomes[3][2] == "token key 'kem': no such key"


def test_operations_equal_the_reference_crypto_on_the_same_keys() -> None:
    material = seeded(1)
    token = SoftToken(material)
    assert token.missing_fleet_keys() == []
    kem = ec.derive_private_key(int.from_bytes(material.kem_private or b"", "big"), ec.SECP256R1())
    peer = ec.generate_private_key(ec.SECP256R1())
    point = peer.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert token.ecdh(point) == kem.exchange(ec.ECDH(), peer.public_key())
    assert token.ecdh(point) == peer.exchange(ec.ECDH(), kem.public_key())
    assert token.kem_public_key() == kem.public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )
    sealed = token.aes_gcm_seal("record", NONCE, b"pt", AAD)
    assert sealed == AESGCM(material.secrets["record"]).encrypt(NONCE, b"pt", AAD)
    assert token.aes_gcm_open("record", NONCE, sealed, AAD) == b"pt"
    assert (
        token.hmac_sha512("oprf_seed", b"d")
        == hmac.new(material.secrets["oprf_seed"], b"d", hashlib.sha512).digest()
    )
    assert (
        token.hmac_sha256("witness", b"d")
        == hmac.new(material.secrets["witness"], b"d", hashlib.sha256).digest()
    )


def test_the_provisioned_sequence_has_the_real_tokens_errors() -> None:
    outcomes = run_provisioned(soft_call(SoftToken(seeded(2))))
    assert kinds(outcomes) == [
        "ok",  # seal
        "ok", "ok",  # missing_fleet_keys, kem_public_key
        "ok", "ok", "ok",  # three ECDHs
        *["HsmInputError"] * 5,  # bad points
        "ok", "ok",  # two seals
        "ok", *["HsmDecryptError"] * 6,  # an open, then six ways to fail
        *["HsmInputError"] * 4,  # short nonce, an HMAC key, the kem key, an HMAC key to open
        "ok", "ok", "ok", "ok",  # four HMACs
        *["HsmInputError"] * 3,  # key separation
        "ok", "ok", "ok", "ok", "ok",  # data objects
        "HsmInputError", "HsmInputError",  # labels that are not data objects
        "ok",
    ]  # fmt: skip
    assert outcomes[1] == ("ok", [])
    assert outcomes[13] == ("ok", b"a sealed record")
    # One message for every failed open under a key: it names the key, never the cause.
    assert {o[2] for o in outcomes[14:20]} == {
        "AES-GCM open failed with key 'record'",
        "AES-GCM open failed with key 'ticket'",
    }
    assert outcomes[31] == ("ok", []) and outcomes[34] == ("ok", [b"second"])


def test_a_closed_token_refuses_all_but_the_public_key_it_read() -> None:
    token = SoftToken(seeded(3), label="n1")
    public = token.kem_public_key()
    token.close()
    token.close()  # idempotent
    outcomes = run_steps(soft_call(token), closed_steps())
    assert outcomes[0] == ("ok", public)
    assert kinds(outcomes[1:]) == ["HsmError", "HsmError", "HsmInputError"] + ["HsmError"] * 4
    assert outcomes[1][2] == "token 'n1' is closed"


def test_a_read_only_token_refuses_data_writes() -> None:
    outcomes = run_steps(soft_call(SoftToken(seeded(4), read_write=False)), read_only_steps())
    assert kinds(outcomes) == ["ok", "HsmError", "ok"]
    assert outcomes[0] == ("ok", [])


def test_tokens_of_one_fleet_share_keys_not_data() -> None:
    a = SoftToken()
    b = a.same_fleet("n2")
    other = SoftToken()
    assert b.label == "n2" and b.kem_public_key() == a.kem_public_key()
    sealed = a.aes_gcm_seal("ticket", NONCE, b"t", b"")
    assert b.aes_gcm_open("ticket", NONCE, sealed, b"") == b"t"
    with pytest.raises(HsmDecryptError):
        other.aes_gcm_open("ticket", NONCE, sealed, b"")
    a.replace_data("witness_heads", b"h")
    assert b.read_data("witness_heads") == [] and a.data_writes == 1


def test_material_is_deterministic_under_a_seeded_rng_and_validated() -> None:
    assert seeded(5) == seeded(5) and seeded(5) != seeded(6)
    assert SoftToken(seeded(5)).kem_public_key() == SoftToken(seeded(5)).kem_public_key()
    with pytest.raises(ValueError) as raised:
        SoftToken(FleetMaterial(kem_private=b"\x00" * 32, secrets={"record": b"ab", "nope": b"x"}))
    message = str(raised.value)
    for fragment in ("kem_private", "'record'", "'nope'"):
        assert fragment in message


def test_errors_are_the_real_tokens_types() -> None:
    token = SoftToken(FleetMaterial(secrets={"id_mac": bytes(32)}))
    with pytest.raises(HsmKeyMissing) as missing:
        token.hmac_sha256("witness", b"x")
    assert missing.value.label == "witness"
    with pytest.raises(HsmInputError):
        token.ecdh(b"\x04")
    assert issubclass(HsmInputError, ValueError) and issubclass(HsmDecryptError, HsmError)


def test_repr_shows_no_key() -> None:
    material = seeded(7)
    token = SoftToken(material)
    for text in (repr(token), repr(material)):
        assert material.secrets["record"].hex() not in text
        assert "secrets" not in text or "{" not in text
