"""The software token is a faithful model of the SoftHSM token: one operation sequence
(tests/token_sequence.py) on both, holding the same imported key material, gives equal results
and equal errors (type and message), step by step.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hsm_fixtures import ProbeError, TokenProbe
from token_sequence import (
    closed_steps,
    error_kind,
    missing_key_steps,
    read_only_steps,
    run_provisioned,
    run_steps,
    soft_call,
)

from vault_node.soft_token import FleetMaterial, SoftToken
from vault_node.softhsm import TokenSpec, create_token
from vault_node.token_api import AES_LABELS, FLEET_LABELS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LABEL = "parity"


def probe_kind(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ProbeError):
        return exc.kind, exc.message
    return error_kind(exc)


@pytest.fixture()
def fresh_token() -> Iterator[TokenSpec]:
    base = Path(tempfile.mkdtemp(prefix="bkv-test-parity-"))
    try:
        yield create_token(base / "tok", LABEL)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def material() -> FleetMaterial:
    return FleetMaterial.generate(random.Random(18).randbytes)


def provision(probe: TokenProbe, keys: FleetMaterial) -> None:
    """Import `keys` into the real token as the fleet keys (sensitive, not extractable)."""
    assert keys.kem_private is not None
    scalar = int.from_bytes(keys.kem_private, "big")
    public = (
        ec.derive_private_key(scalar, ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    probe.call("import_ec_private", label="kem", value=keys.kem_private, public_point=public)
    for label in FLEET_LABELS[1:]:
        op = "import_aes" if label in AES_LABELS else "import_secret"
        probe.call(op, label=label, value=keys.secrets[label])


def compare(real: list[Any], soft: list[Any]) -> None:
    assert len(real) == len(soft)
    for step, (r, s) in enumerate(zip(real, soft, strict=True)):
        assert r == s, f"step {step}: SoftHSM {r!r} != software {s!r}"


def test_unprovisioned_tokens_fail_alike(fresh_token: TokenSpec) -> None:
    with TokenProbe(fresh_token) as probe:
        real = run_steps(probe.call, missing_key_steps(), probe_kind)
    soft = run_steps(soft_call(SoftToken(FleetMaterial(), label=LABEL)), missing_key_steps())
    compare(real, soft)


def test_provisioned_tokens_agree_step_by_step(fresh_token: TokenSpec) -> None:
    keys = material()
    soft_token = SoftToken(keys, label=LABEL)
    with TokenProbe(fresh_token, read_write=True) as probe:
        provision(probe, keys)
        real = run_provisioned(probe.call, probe_kind)
        soft = run_provisioned(soft_call(soft_token))
        compare(real, soft)
        # Each opens what the other sealed under a fresh nonce (not only equal outputs).
        nonce, aad = bytes(range(12, 24)), b"cross"
        by_real = probe.call("aes_gcm_seal", label="record", nonce=nonce, plaintext=b"r", aad=aad)
        assert soft_token.aes_gcm_open("record", nonce, by_real, aad) == b"r"
        by_soft = soft_token.aes_gcm_seal("ticket", nonce, b"s", aad)
        assert probe.call("aes_gcm_open", label="ticket", nonce=nonce, ciphertext=by_soft,
                          aad=aad) == b"s"  # fmt: skip
        probe.call("close")
        soft_token.close()
        compare(run_steps(probe.call, closed_steps(), probe_kind),
                run_steps(soft_call(soft_token), closed_steps()))  # fmt: skip


def test_read_only_sessions_refuse_data_writes_alike(fresh_token: TokenSpec) -> None:
    keys = material()
    with TokenProbe(fresh_token, read_write=True) as probe:
        provision(probe, keys)
    with TokenProbe(fresh_token) as probe:
        real = run_steps(probe.call, read_only_steps(), probe_kind)
    soft = run_steps(soft_call(SoftToken(keys, label=LABEL, read_write=False)), read_only_steps())
    compare(real, soft)
