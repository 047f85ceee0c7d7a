"""RFC 9807 appendix C test vectors for OPAQUE-3DH ristretto255-SHA512, byte for byte.

The vector file holds 9 entries; only the ristretto255 ones (two real, one fake record) concern
this suite. curve25519 and P-256 entries are skipped explicitly by their configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from rfc_vectors import load_vectors

from vault_protocol import opaque, oprf
from vault_protocol.opaque import hazmat

pytestmark = pytest.mark.unit

OPAQUE_FILE = "rfc9807-opaque-vectors.json"
OUR_CONFIG = {
    "Group": "ristretto255",
    "OPRF": "ristretto255-SHA512",
    "Name": "3DH",
    "KDF": "HKDF-SHA512",
    "MAC": "HMAC-SHA512",
    "Hash": "SHA512",
    "KSF": "Identity",
}


def _is_ours(config: dict[str, str]) -> bool:
    return all(config[key] == value for key, value in OUR_CONFIG.items())


ALL_VECTORS: list[dict[str, Any]] = load_vectors(OPAQUE_FILE)
OURS = [v for v in ALL_VECTORS if _is_ours(v["config"])]
REAL = [v for v in OURS if v["config"]["Fake"] == "False"]
FAKE = [v for v in OURS if v["config"]["Fake"] == "True"]


def _vector_id(vector: dict[str, Any]) -> str:
    kind = "fake" if vector["config"]["Fake"] == "True" else "real"
    identities = "with-identities" if "client_identity" in vector["inputs"] else "no-identities"
    return f"ristretto255-3DH-{kind}-{identities}"


def _hex(section: dict[str, str]) -> dict[str, bytes]:
    return {name: bytes.fromhex(value) for name, value in section.items()}


def _queue_rng(*items: bytes) -> Callable[[int], bytes]:
    """An rng that returns the vector's inputs in the RFC's draw order, and checks sizes."""
    pending = list(items)

    def rng(n: int) -> bytes:
        assert pending, "protocol drew more randomness than the vector provides"
        item = pending.pop(0)
        assert len(item) == n, f"drew {n} bytes where the vector has {len(item)}"
        return item

    return rng


@dataclass
class Run:
    inputs: dict[str, bytes]
    intermediates: dict[str, bytes]
    outputs: dict[str, bytes]
    config: opaque.OpaqueConfig
    keys: opaque.SoftwareServerKeys
    produced: dict[str, bytes]


def _run_real(vector: dict[str, Any]) -> Run:
    inputs, outputs = _hex(vector["inputs"]), _hex(vector["outputs"])
    config = opaque.OpaqueConfig(bytes.fromhex(vector["config"]["Context"]), opaque.IdentityKsf())
    keys = opaque.SoftwareServerKeys(
        inputs["oprf_seed"], inputs["server_private_key"], inputs["server_public_key"]
    )
    sid, cid = inputs.get("server_identity"), inputs.get("client_identity")
    cred_id, password = inputs["credential_identifier"], inputs["password"]

    reg_state, request = opaque.registration_start(
        password, _queue_rng(inputs["blind_registration"])
    )
    response = opaque.server_registration_response(request, cred_id, keys)
    record, export_key = opaque.registration_finish(
        reg_state, response, config, _queue_rng(inputs["envelope_nonce"]), sid, cid
    )
    login_state, ke1 = opaque.login_start(
        password,
        _queue_rng(inputs["blind_login"], inputs["client_nonce"], inputs["client_keyshare_seed"]),
    )
    ke2, server_state = opaque.server_login_start(
        record,
        cred_id,
        ke1,
        keys,
        config,
        _queue_rng(inputs["masking_nonce"], inputs["server_nonce"], inputs["server_keyshare_seed"]),
        sid,
        cid,
    )
    ke3, session_key, login_export_key = opaque.login_finish(login_state, ke2, config, sid, cid)
    opaque.server_login_finish(server_state.expected_client_mac, ke3)
    produced = {
        "registration_request": request,
        "registration_response": response,
        "registration_upload": record,
        "export_key": export_key,
        "login_export_key": login_export_key,
        "KE1": ke1,
        "KE2": ke2,
        "KE3": ke3,
        "session_key": session_key,
        "server_session_key": server_state.session_key,
    }
    return Run(inputs, _hex(vector["intermediates"]), outputs, config, keys, produced)


RUNS = {_vector_id(v): _run_real(v) for v in REAL}
REAL_IDS = sorted(RUNS)


def test_vector_file_selection() -> None:
    assert len(ALL_VECTORS) == 9
    skipped = [v["config"]["Group"] for v in ALL_VECTORS if not _is_ours(v["config"])]
    assert sorted(set(skipped)) == ["P256_XMD:SHA-256_SSWU_RO_", "curve25519"]
    assert sorted(map(_vector_id, OURS)) == [
        "ristretto255-3DH-fake-with-identities",
        "ristretto255-3DH-real-no-identities",
        "ristretto255-3DH-real-with-identities",
    ]
    assert all(v["config"]["Nh"] == "64" and v["config"]["Npk"] == "32" for v in OURS)


@pytest.mark.parametrize("vector_id", REAL_IDS)
@pytest.mark.parametrize(
    "name",
    [
        "registration_request",
        "registration_response",
        "registration_upload",
        "KE1",
        "KE2",
        "KE3",
        "export_key",
        "session_key",
    ],
)
def test_output(vector_id: str, name: str) -> None:
    run = RUNS[vector_id]
    assert run.produced[name].hex() == run.outputs[name].hex()


@pytest.mark.parametrize("vector_id", REAL_IDS)
def test_both_sides_agree(vector_id: str) -> None:
    run = RUNS[vector_id]
    assert run.produced["server_session_key"] == run.produced["session_key"]
    assert run.produced["login_export_key"] == run.outputs["export_key"]


@pytest.mark.parametrize("vector_id", REAL_IDS)
def test_intermediates_registration(vector_id: str) -> None:
    run = RUNS[vector_id]
    inputs, expected = run.inputs, run.intermediates
    oprf_key = hazmat.derive_oprf_key(run.keys.oprf_seed_hmac, inputs["credential_identifier"])
    assert oprf_key.hex() == expected["oprf_key"].hex()

    evaluated = run.produced["registration_response"][:32]
    oprf_output = oprf.finalize(inputs["password"], inputs["blind_registration"], evaluated)
    rwd = hazmat.randomized_password(oprf_output, run.config.ksf)
    assert rwd.hex() == expected["randomized_password"].hex()

    env_keys = hazmat.derive_envelope_keys(rwd, inputs["envelope_nonce"])
    assert env_keys.masking_key.hex() == expected["masking_key"].hex()
    assert env_keys.auth_key.hex() == expected["auth_key"].hex()

    stored = hazmat.store(
        rwd,
        inputs["server_public_key"],
        inputs["envelope_nonce"],
        inputs.get("server_identity"),
        inputs.get("client_identity"),
    )
    assert stored.client_public_key.hex() == expected["client_public_key"].hex()
    assert stored.envelope.hex() == expected["envelope"].hex()
    assert stored.export_key.hex() == run.outputs["export_key"].hex()


@pytest.mark.parametrize("vector_id", REAL_IDS)
def test_intermediates_key_exchange(vector_id: str) -> None:
    run = RUNS[vector_id]
    inputs, expected = run.inputs, run.intermediates
    ke1, ke2 = run.produced["KE1"], run.produced["KE2"]
    credential_response = ke2[:192]
    server_nonce, server_keyshare = ke2[192:224], ke2[224:256]

    rwd = expected["randomized_password"]
    creds = hazmat.recover(
        rwd,
        inputs["server_public_key"],
        expected["envelope"],
        inputs.get("server_identity"),
        inputs.get("client_identity"),
    )
    client_secret, _ = hazmat.derive_dh_key_pair(inputs["client_keyshare_seed"])
    ikm = hazmat.client_ikm(
        client_secret, creds.client_private_key, server_keyshare, inputs["server_public_key"]
    )
    server_secret, _ = hazmat.derive_dh_key_pair(inputs["server_keyshare_seed"])
    assert ikm == hazmat.server_ikm(
        server_secret, inputs["server_private_key"], ke1[64:96], creds.client_public_key
    )
    preamble = hazmat.build_preamble(
        run.config.context,
        inputs.get("client_identity", creds.client_public_key),
        ke1,
        inputs.get("server_identity", inputs["server_public_key"]),
        credential_response,
        server_nonce,
        server_keyshare,
    )
    keys = hazmat.derive_keys(ikm, preamble)
    assert keys.handshake_secret.hex() == expected["handshake_secret"].hex()
    assert keys.server_mac_key.hex() == expected["server_mac_key"].hex()
    assert keys.client_mac_key.hex() == expected["client_mac_key"].hex()
    assert keys.session_key.hex() == run.outputs["session_key"].hex()


@pytest.mark.parametrize("vector", FAKE, ids=[_vector_id(v) for v in FAKE])
def test_fake_record_ke2(vector: dict[str, Any]) -> None:
    inputs, outputs = _hex(vector["inputs"]), _hex(vector["outputs"])
    config = opaque.OpaqueConfig(bytes.fromhex(vector["config"]["Context"]), opaque.IdentityKsf())
    keys = opaque.SoftwareServerKeys(
        inputs["oprf_seed"], inputs["server_private_key"], inputs["server_public_key"]
    )
    # The fake client key pair in the vector is a real DH key pair (RFC 9807 section 10.9).
    record = hazmat.build_fake_record(inputs["client_public_key"], inputs["masking_key"])
    ke2, _ = opaque.server_login_start(
        record,
        inputs["credential_identifier"],
        inputs["KE1"],
        keys,
        config,
        _queue_rng(inputs["masking_nonce"], inputs["server_nonce"], inputs["server_keyshare_seed"]),
        inputs.get("server_identity"),
        inputs.get("client_identity"),
    )
    assert ke2.hex() == outputs["KE2"].hex()
