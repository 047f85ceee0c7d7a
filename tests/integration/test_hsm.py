"""`vault_node.hsm.Token` on real SoftHSM tokens provisioned by the key ceremony.

Every token is driven through `TokenProbe` (a child process per token): python-pkcs11 binds a
process to one SOFTHSM2_CONF, and this pytest process must stay free of any.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hsm_fixtures import ProbeError, TokenProbe, provision_tokens, spec_json

from vault_node.ceremony import FleetPublic
from vault_node.hsm import FLEET_LABELS
from vault_node.softhsm import TokenSpec, TokenSpecError, create_token
from vault_protocol import hpke
from vault_protocol.oprf import derive_key_pair

pytestmark = pytest.mark.integration

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@pytest.fixture(scope="module")
def fleet_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="bkv-test-hsm-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def provisioned(fleet_dir: Path) -> tuple[list[TokenSpec], FleetPublic]:
    return provision_tokens(fleet_dir, ["node-a", "node-b"])


@pytest.fixture(scope="module")
def probes(provisioned: tuple[list[TokenSpec], FleetPublic]) -> Iterator[list[TokenProbe]]:
    specs, _ = provisioned
    opened: list[TokenProbe] = []
    try:
        for spec in specs:
            opened.append(TokenProbe(spec))
        yield opened
    finally:
        for probe in opened:
            probe.close()


@pytest.fixture()
def fresh_token() -> Iterator[TokenSpec]:
    """An initialised token without fleet keys."""
    base = Path(tempfile.mkdtemp(prefix="bkv-test-fresh-"))
    try:
        yield create_token(base / "tok", "fresh")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the provisioned fleet -----------------------------------------------------------------


@pytest.mark.parametrize("label", FLEET_LABELS)
def test_fleet_keys_are_sensitive_and_never_leave(probes: list[TokenProbe], label: str) -> None:
    for probe in probes:
        attributes = probe.call("key_attributes", label=label)
        assert attributes["SENSITIVE"] is True
        assert attributes["EXTRACTABLE"] is False
        # Frozen, and only the kem key derives (ECDH): a key whose DERIVE could be switched on
        # could be fed to a derivation that leaks its bytes on tokens that offer one.
        assert attributes["MODIFIABLE"] is False
        assert attributes["DERIVE"] is (label == "kem")
        # NEVER_EXTRACTABLE / ALWAYS_SENSITIVE are False on unwrapped keys (PKCS#11: the key once
        # existed outside this token, wrapped); EXTRACTABLE=False is what keeps it in now.
        with pytest.raises(ProbeError) as raised:
            probe.call("read_value", label=label)
        assert raised.value.kind == "AttributeSensitive"


@pytest.mark.timeout(120)
def test_readers_in_another_process_survive_a_node_rewriting_its_data_objects(
    tmp_path: Path,
) -> None:
    """A running node replaces its checkpoint objects while the key ceremony (another process)
    reads them or lists the token's keys (`fleet-status`, `store-status`): a handle the search
    found may be destroyed before it is read. CI saw `ObjectHandleInvalid` end a fleet
    rotation that way. Every read still finds a value, every listing every fleet key."""
    specs, _ = provision_tokens(tmp_path, ["churned"])  # its own: the data object stays
    label, rounds = "store_checkpoint", 300
    with (
        TokenProbe(specs[0], read_write=True) as writer,
        TokenProbe(specs[0]) as reader,
    ):
        writer.call("replace_data", label=label, value=b"first")
        churned: list[int] = []
        thread = threading.Thread(
            target=lambda: churned.append(writer.call("churn", label=label, count=rounds))
        )
        thread.start()
        try:
            counts = reader.call("read_many", label=label, count=rounds)
            listings = reader.call("held_many", count=rounds // 10)
        finally:
            thread.join(timeout=100)
    assert churned == [rounds]
    assert min(counts) >= 1  # the newer object is made before the older is destroyed
    assert all(set(FLEET_LABELS) <= set(listed) for listed in listings)


@pytest.mark.parametrize("label", ["record", "ticket", "oprf_seed"])
def test_fleet_keys_cannot_be_turned_to_derive(
    provisioned: tuple[list[TokenSpec], FleetPublic], label: str
) -> None:
    """Even with the PIN and a read-write session, no attribute of a fleet key changes."""
    specs, _ = provisioned
    with TokenProbe(specs[0], read_write=True) as probe:
        outcome = probe.call("tamper", label=label)
        assert outcome["set"] != "allowed", outcome
        assert outcome["copy"] != "allowed", outcome
        assert probe.call("key_attributes", label=label)["DERIVE"] is False


def test_tokens_hold_only_fleet_keys(probes: list[TokenProbe]) -> None:
    expected = sorted(
        [f"SECRET_KEY:{label}" for label in FLEET_LABELS if label != "kem"]
        + ["PRIVATE_KEY:kem", "PUBLIC_KEY:kem"]
    )
    for probe in probes:
        assert probe.call("labels") == expected  # transport keys destroyed
        assert probe.call("missing_fleet_keys") == []


def test_kem_public_key_is_the_fleet_key(
    probes: list[TokenProbe], provisioned: tuple[list[TokenSpec], FleetPublic]
) -> None:
    _, fleet = provisioned
    for probe in probes:
        assert probe.call("kem_public_key") == fleet.public_key
    assert fleet.fleet_id == hashlib.sha256(fleet.public_key).digest()[:16]


def test_ecdh_equals_cryptography_on_every_token(
    probes: list[TokenProbe], provisioned: tuple[list[TokenSpec], FleetPublic]
) -> None:
    _, fleet = provisioned
    fleet_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), fleet.public_key)
    for _ in range(3):
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        expected = ephemeral.exchange(ec.ECDH(), fleet_key)
        outputs = [probe.call("ecdh", peer_point=_point(ephemeral)) for probe in probes]
        assert outputs == [expected] * len(probes)


def test_async_and_threaded_calls_share_one_pkcs11_thread(
    probes: list[TokenProbe], provisioned: tuple[list[TokenSpec], FleetPublic]
) -> None:
    _, fleet = provisioned
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    fleet_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), fleet.public_key)
    probe = probes[0]
    burst = probe.call("async_burst", peer=_point(ephemeral), data=b"x", count=40)
    assert burst == {
        "ecdh_distinct": 1,
        "mac_distinct": 1,
        "ecdh": ephemeral.exchange(ec.ECDH(), fleet_key),
    }
    assert probe.call("threads_burst", peer=_point(ephemeral), count=64) == 1


_ADOPT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    from pathlib import Path
    from vault_node.hsm import HsmError, Token, TokenSpec, adopt_calling_thread

    raw = json.loads(sys.argv[1])
    spec = TokenSpec(
        module=raw["module"], softhsm_conf=Path(raw["softhsm_conf"]),
        token_label=raw["token_label"], pin_file=Path(raw["pin_file"]),
    )
    adopt_calling_thread()
    adopt_calling_thread()  # idempotent on the adopted thread
    token = Token.open(spec)
    inline = token.hmac_sha256("id_mac", b"x")

    async def in_a_loop() -> bytes:
        return token.hmac_sha256("id_mac", b"x")  # an event loop's call, as the node makes it

    awaited = asyncio.run(in_a_loop())
    refused = []

    def other() -> None:
        try:
            token.hmac_sha256("id_mac", b"x")
        except HsmError:
            refused.append("sync")
        try:
            asyncio.run(in_a_loop())  # an event loop of another thread
        except HsmError:
            refused.append("async")

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    token.close()
    names = [t.name for t in threading.enumerate()]
    print(json.dumps({
        "same": inline == awaited, "refused": refused,
        "pkcs11_threads": [n for n in names if n.startswith("pkcs11")],
    }))
    """
)


def test_an_adopted_thread_is_the_only_pkcs11_thread(
    provisioned: tuple[list[TokenSpec], FleetPublic],
) -> None:
    specs, _ = provisioned
    done = subprocess.run(
        [sys.executable, "-c", _ADOPT_SCRIPT, json.dumps(spec_json(specs[0]))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Calls run inline on the adopted thread; another thread is refused, never served.
    assert result == {"same": True, "refused": ["sync", "async"], "pkcs11_threads": []}


@pytest.mark.parametrize(
    "bad_point",
    [
        b"",
        b"\x04" + b"\x01" * 63,  # 64 bytes
        b"\x02" + b"\x01" * 32,  # compressed
        b"\x04" + b"\x00" * 63 + b"\x01",  # off the curve
        b"\x05" + b"\x01" * 64,  # wrong prefix
    ],
)
def test_ecdh_rejects_bad_points(probes: list[TokenProbe], bad_point: bytes) -> None:
    with pytest.raises(ProbeError) as raised:
        probes[0].call("ecdh", peer_point=bad_point)
    assert raised.value.kind == "HsmInputError"


@pytest.mark.parametrize("label", ["record", "ticket"])
def test_aes_gcm_crosses_tokens(probes: list[TokenProbe], label: str) -> None:
    a, b = probes
    nonce, aad, plaintext = os.urandom(12), b"bkv-v1 record " + os.urandom(32), os.urandom(100)
    sealed = a.call("aes_gcm_seal", label=label, nonce=nonce, plaintext=plaintext, aad=aad)
    assert len(sealed) == len(plaintext) + 16
    assert b.call("aes_gcm_open", label=label, nonce=nonce, ciphertext=sealed, aad=aad) == plaintext
    assert b.call("aes_gcm_seal", label=label, nonce=nonce, plaintext=plaintext, aad=aad) == sealed


def test_aes_gcm_empty_aad_and_plaintext(probes: list[TokenProbe]) -> None:
    a, b = probes
    nonce = os.urandom(12)
    sealed = a.call("aes_gcm_seal", label="ticket", nonce=nonce, plaintext=b"", aad=b"")
    assert len(sealed) == 16
    assert b.call("aes_gcm_open", label="ticket", nonce=nonce, ciphertext=sealed, aad=b"") == b""


def test_aes_gcm_open_fails_closed(probes: list[TokenProbe]) -> None:
    a, b = probes
    nonce, aad = os.urandom(12), b"aad"
    sealed = a.call("aes_gcm_seal", label="record", nonce=nonce, plaintext=b"secret", aad=aad)
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    attempts: list[dict[str, Any]] = [
        {"label": "record", "nonce": nonce, "ciphertext": flipped, "aad": aad},
        {"label": "record", "nonce": nonce, "ciphertext": sealed, "aad": b"other"},
        {"label": "record", "nonce": os.urandom(12), "ciphertext": sealed, "aad": aad},
        {"label": "ticket", "nonce": nonce, "ciphertext": sealed, "aad": aad},  # other key
        {"label": "record", "nonce": nonce, "ciphertext": sealed[:10], "aad": aad},  # truncated
    ]
    for attempt in attempts:
        with pytest.raises(ProbeError) as raised:
            b.call("aes_gcm_open", **attempt)
        assert raised.value.kind == "HsmDecryptError"
        assert "secret" not in raised.value.message


def test_aes_gcm_rejects_wrong_nonce_and_label(probes: list[TokenProbe]) -> None:
    for kwargs in (
        {"label": "record", "nonce": b"\x00" * 11},
        {"label": "id_mac", "nonce": b"\x00" * 12},
        {"label": "kem", "nonce": b"\x00" * 12},
    ):
        with pytest.raises(ProbeError) as raised:
            probes[0].call("aes_gcm_seal", plaintext=b"x", aad=b"", **kwargs)
        assert raised.value.kind == "HsmInputError"


@pytest.mark.parametrize(
    ("op", "label", "size"),
    [
        ("hmac_sha512", "oprf_seed", 64),
        ("hmac_sha512", "ake_seed", 64),
        ("hmac_sha256", "id_mac", 32),
    ],
)
def test_hmac_equal_across_tokens(probes: list[TokenProbe], op: str, label: str, size: int) -> None:
    data = os.urandom(40)
    outputs = [probe.call(op, label=label, data=data) for probe in probes]
    assert len(outputs[0]) == size
    assert outputs == [outputs[0]] * len(probes)
    assert probes[0].call(op, label=label, data=data + b"!") != outputs[0]


def test_hmac_keys_are_separated(probes: list[TokenProbe]) -> None:
    a = probes[0]
    assert a.call("hmac_sha512", label="oprf_seed", data=b"x") != a.call(
        "hmac_sha512", label="ake_seed", data=b"x"
    )
    for op, label in (
        ("hmac_sha512", "id_mac"),
        ("hmac_sha256", "oprf_seed"),
        ("hmac_sha256", "record"),
    ):
        with pytest.raises(ProbeError) as raised:
            a.call(op, label=label, data=b"x")
        assert raised.value.kind == "HsmInputError"


def test_one_process_one_softhsm_conf(probes: list[TokenProbe], provisioned: Any) -> None:
    specs, _ = provisioned
    other = specs[1]
    with pytest.raises(ProbeError) as raised:
        probes[0].call("open_other", spec=spec_json(other))
    assert raised.value.kind == "HsmLibraryConflict"


# --- unprovisioned tokens, specs, logins ----------------------------------------------------


def test_missing_keys_are_named(fresh_token: TokenSpec) -> None:
    with TokenProbe(fresh_token) as probe:
        assert probe.call("missing_fleet_keys") == list(FLEET_LABELS)
        for op, kwargs, label in (
            ("hmac_sha256", {"label": "id_mac", "data": b"x"}, "id_mac"),
            ("ecdh", {"peer_point": _point(ec.generate_private_key(ec.SECP256R1()))}, "kem"),
            ("kem_public_key", {}, "kem"),
            (
                "aes_gcm_open",
                {"label": "ticket", "nonce": b"\0" * 12, "ciphertext": b"\0" * 16, "aad": b""},
                "ticket",
            ),
        ):
            with pytest.raises(ProbeError) as raised:
                probe.call(op, **kwargs)
            assert raised.value.kind == "HsmKeyMissing"
            assert repr(label) in raised.value.message


def test_wrong_pin_is_a_login_error(fresh_token: TokenSpec) -> None:
    fresh_token.pin_file.write_text("not-the-pin\n")
    with pytest.raises(ProbeError) as raised:
        TokenProbe(fresh_token)
    assert raised.value.kind == "HsmLoginError"
    assert "not-the-pin" not in raised.value.message


def test_unknown_token_label(fresh_token: TokenSpec) -> None:
    spec = TokenSpec(
        module=fresh_token.module,
        softhsm_conf=fresh_token.softhsm_conf,
        token_label="nobody",
        pin_file=fresh_token.pin_file,
    )
    with pytest.raises(ProbeError) as raised:
        TokenProbe(spec)
    assert raised.value.kind == "HsmLoginError"
    assert "nobody" in raised.value.message


def test_token_spec_reports_every_problem(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o644)
    spec = TokenSpec(
        module="libsofthsm2.so",
        softhsm_conf=tmp_path / "missing.conf",
        token_label="x" * 40,
        pin_file=pin,
    )
    with pytest.raises(TokenSpecError) as raised:
        spec.validate()
    message = str(raised.value)
    for fragment in ("module", "softhsm_conf", "token_label", "group or others"):
        assert fragment in message
    assert "1234" not in message


def test_create_token_layout_and_refuses_reuse(fresh_token: TokenSpec) -> None:
    fresh_token.validate()
    assert fresh_token.pin_file.stat().st_mode & 0o777 == 0o600
    conf = fresh_token.softhsm_conf.read_text()
    assert "objectstore.backend = file" in conf
    assert "slots.removable = false" in conf
    pin = fresh_token.read_pin()
    assert len(pin) >= 16 and pin not in conf
    from vault_node.softhsm import SoftHsmError

    with pytest.raises(SoftHsmError, match="already holds"):
        create_token(fresh_token.softhsm_conf.parent, "again")


# --- RFC vectors through a token ---------------------------------------------------------------


def _load(name: str) -> Any:
    path = VECTORS / name
    if not path.is_file():
        pytest.fail(f"test vectors not found at {path}")
    return json.loads(path.read_text())


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def test_rfc9180_p256_decapsulation_in_token(fresh_token: TokenSpec) -> None:
    vector = next(
        v
        for v in _load("rfc9180-hpke-p256-vectors.json")
        if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) == (0, 16, 1, 2)
    )
    sk_r, pk_r, enc = (bytes.fromhex(vector[k]) for k in ("skRm", "pkRm", "enc"))
    with TokenProbe(fresh_token, read_write=True) as probe:
        probe.call("import_ec_private", label="kem", value=sk_r, public_point=pk_r)
        assert probe.call("kem_public_key") == pk_r
        dh = probe.call("ecdh", peer_point=enc)
        attributes = probe.call("key_attributes", label="kem")
    # RFC 9180 4.1 ExtractAndExpand for DHKEM(P-256, HKDF-SHA256).
    suite_id = b"KEM" + (16).to_bytes(2, "big")
    eae_prk = _labeled_extract(suite_id, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(suite_id, eae_prk, b"shared_secret", enc + pk_r, 32)
    assert shared_secret.hex() == vector["shared_secret"]
    assert attributes["SENSITIVE"] is True and attributes["EXTRACTABLE"] is False


def test_rfc9180_open_base_with_token_ecdh(fresh_token: TokenSpec) -> None:
    vector = next(
        v
        for v in _load("rfc9180-hpke-p256-vectors.json")
        if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) == (0, 16, 1, 2)
    )
    sk_r, pk_r, enc = (bytes.fromhex(vector[k]) for k in ("skRm", "pkRm", "enc"))
    first = vector["encryptions"][0]
    with TokenProbe(fresh_token, read_write=True) as probe:
        probe.call("import_ec_private", label="kem", value=sk_r, public_point=pk_r)
        plaintext = hpke.open_base(
            enc,
            bytes.fromhex(first["ct"]),
            bytes.fromhex(vector["info"]),
            bytes.fromhex(first["aad"]),
            lambda peer: probe.call("ecdh", peer_point=peer),
            pk_r,
        )
    assert plaintext.hex() == first["pt"]


def test_rfc9807_oprf_seed_expand_in_token(fresh_token: TokenSpec) -> None:
    vector = next(
        v
        for v in _load("rfc9807-opaque-vectors.json")
        if v["config"]["Group"] == "ristretto255" and v["config"]["Fake"] == "False"
    )
    seed = bytes.fromhex(vector["inputs"]["oprf_seed"])
    credential_identifier = bytes.fromhex(vector["inputs"]["credential_identifier"])
    with TokenProbe(fresh_token, read_write=True) as probe:
        probe.call("import_secret", label="oprf_seed", value=seed)
        mac = probe.call(
            "hmac_sha512", label="oprf_seed", data=credential_identifier + b"OprfKey" + b"\x01"
        )
    expanded = HKDFExpand(hashes.SHA512(), 32, credential_identifier + b"OprfKey").derive(seed)
    assert mac[:32] == expanded
    sk, _ = derive_key_pair(mac[:32], b"OPAQUE-DeriveKeyPair")
    assert bytes(sk).hex() == vector["intermediates"]["oprf_key"]
