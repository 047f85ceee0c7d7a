"""One sequence of token operations, run against any token, for comparing implementations.

`run_sequence(call)` drives a token through `call(op, **kwargs)` (a `TokenProbe.call` for the
real SoftHSM token, `soft_call(token)` for the software one) and returns every step's outcome:
`("ok", value)` or `("error", exception type name, message)`. Everything in it is
deterministic given the key material (fixed nonces, fixed peer points), so two tokens holding
the same keys must give equal lists, errors and their messages included.

    tests/unit/test_soft_token.py               the software token alone (unit tier)
    tests/integration/test_token_parity.py      the same list from both, compared (SoftHSM)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

Call = Callable[..., Any]
Outcome = tuple[Any, ...]


def error_kind(exc: BaseException) -> tuple[str, str]:
    """What a probe reports of an exception: its type name and its text."""
    return type(exc).__name__, str(exc)


def soft_call(token: Any) -> Call:
    """`call(op, **kwargs)` on an in-process token, raising what the token raises."""

    def call(op: str, **kwargs: Any) -> Any:
        return getattr(token, op)(**kwargs)

    return call


def _peer(seed: int) -> bytes:
    key = ec.derive_private_key(seed, ec.SECP256R1())
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


NONCE = bytes(range(12))
OTHER_NONCE = bytes(range(1, 13))
AAD = b"bkv-v2 record " + hashlib.sha256(b"alice").digest()
BAD_POINTS = (
    b"",
    b"\x04" + b"\x01" * 63,  # 64 bytes
    b"\x02" + b"\x01" * 32,  # compressed
    b"\x04" + b"\x00" * 63 + b"\x01",  # off the curve
    b"\x05" + b"\x01" * 64,  # wrong prefix
)


def missing_key_steps() -> list[tuple[str, dict[str, Any]]]:
    """Steps on a token without fleet keys: each names the key it lacks."""
    return [
        ("missing_fleet_keys", {}),
        ("hmac_sha256", {"label": "id_mac", "data": b"x"}),
        ("hmac_sha512", {"label": "oprf_seed", "data": b"x"}),
        ("ecdh", {"peer_point": _peer(7)}),
        ("ecdh", {"peer_point": BAD_POINTS[2]}),  # input checked before the key is looked up
        ("kem_public_key", {}),
        ("aes_gcm_open", {"label": "ticket", "nonce": NONCE, "ciphertext": bytes(16), "aad": b""}),
        ("aes_gcm_seal", {"label": "record", "nonce": b"short", "plaintext": b"", "aad": b""}),
    ]


def provisioned_steps(sealed: dict[str, bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Steps on a provisioned, read-write token; `sealed` holds earlier seals by name (filled
    in by `run_sequence` as it goes, so that opens see what this token sealed)."""
    record = sealed.get("record", b"")
    return [
        ("missing_fleet_keys", {}),
        ("kem_public_key", {}),
        *[("ecdh", {"peer_point": _peer(seed)}) for seed in (1, 2, 2**200 + 3)],
        *[("ecdh", {"peer_point": point}) for point in BAD_POINTS],
        ("aes_gcm_seal", {"label": "ticket", "nonce": NONCE, "plaintext": b"", "aad": b""}),
        ("aes_gcm_seal", {"label": "ticket", "nonce": NONCE, "plaintext": b"t" * 70, "aad": AAD}),
        # AES-GCM open: the good case, then each way to fail (one error, one message, for all).
        ("aes_gcm_open", {"label": "record", "nonce": NONCE, "ciphertext": record, "aad": AAD}),
        (
            "aes_gcm_open",
            {
                "label": "record",
                "nonce": NONCE,
                "ciphertext": bytes([record[0] ^ 1]) + record[1:],
                "aad": AAD,
            },
        ),
        ("aes_gcm_open", {"label": "record", "nonce": NONCE, "ciphertext": record, "aad": b"x"}),
        (
            "aes_gcm_open",
            {"label": "record", "nonce": OTHER_NONCE, "ciphertext": record, "aad": AAD},
        ),
        ("aes_gcm_open", {"label": "ticket", "nonce": NONCE, "ciphertext": record, "aad": AAD}),
        (
            "aes_gcm_open",
            {"label": "record", "nonce": NONCE, "ciphertext": record[:10], "aad": AAD},
        ),
        ("aes_gcm_open", {"label": "record", "nonce": NONCE, "ciphertext": b"", "aad": AAD}),
        ("aes_gcm_seal", {"label": "record", "nonce": NONCE[:11], "plaintext": b"x", "aad": b""}),
        ("aes_gcm_seal", {"label": "id_mac", "nonce": NONCE, "plaintext": b"x", "aad": b""}),
        ("aes_gcm_seal", {"label": "kem", "nonce": NONCE, "plaintext": b"x", "aad": b""}),
        ("aes_gcm_open", {"label": "oprf_seed", "nonce": NONCE, "ciphertext": record, "aad": b""}),
        # HMAC under each key, and key separation.
        ("hmac_sha512", {"label": "oprf_seed", "data": b"alice" + b"OprfKey" + b"\x01"}),
        ("hmac_sha512", {"label": "ake_seed", "data": b"OPAQUE-DeriveDiffieHellmanKeyPair"}),
        ("hmac_sha256", {"label": "id_mac", "data": b"alice"}),
        ("hmac_sha256", {"label": "witness", "data": b""}),
        ("hmac_sha512", {"label": "id_mac", "data": b"x"}),
        ("hmac_sha256", {"label": "oprf_seed", "data": b"x"}),
        ("hmac_sha256", {"label": "record", "data": b"x"}),
        # Data objects: empty, written, replaced; labels outside the node's set refused.
        ("read_data", {"label": "store_checkpoint"}),
        ("replace_data", {"label": "store_checkpoint", "value": b"first"}),
        ("replace_data", {"label": "store_checkpoint", "value": b"second"}),
        ("read_data", {"label": "store_checkpoint"}),
        ("read_data", {"label": "witness_heads"}),
        ("read_data", {"label": "record"}),
        ("replace_data", {"label": "kem", "value": b"x"}),
        ("missing_fleet_keys", {}),
    ]


def closed_steps() -> list[tuple[str, dict[str, Any]]]:
    """Steps after `close()`: the kem public key was read before and stays known; the rest fail."""
    return [
        ("kem_public_key", {}),
        ("hmac_sha256", {"label": "id_mac", "data": b"x"}),
        ("ecdh", {"peer_point": _peer(1)}),
        ("ecdh", {"peer_point": b""}),
        ("aes_gcm_open", {"label": "record", "nonce": NONCE, "ciphertext": bytes(16), "aad": b""}),
        ("read_data", {"label": "store_checkpoint"}),
        ("replace_data", {"label": "store_checkpoint", "value": b"x"}),
        ("missing_fleet_keys", {}),
    ]


def read_only_steps() -> list[tuple[str, dict[str, Any]]]:
    """Steps on a read-only session: reads work, a data-object write fails as `HsmError`."""
    return [
        ("read_data", {"label": "etcd_cluster"}),
        ("replace_data", {"label": "etcd_cluster", "value": b"\x00" * 8}),
        ("hmac_sha256", {"label": "id_mac", "data": b"x"}),
    ]


def outcome(call: Call, op: str, kwargs: dict[str, Any], kind_of: Callable[[Exception], Any]
            ) -> Outcome:  # fmt: skip
    try:
        return ("ok", call(op, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return ("error", *kind_of(exc))


def run_steps(
    call: Call,
    steps: list[tuple[str, dict[str, Any]]],
    kind_of: Callable[[Exception], Any] = error_kind,
) -> list[Outcome]:
    return [outcome(call, op, kwargs, kind_of) for op, kwargs in steps]


def run_provisioned(call: Call, kind_of: Callable[[Exception], Any] = error_kind) -> list[Outcome]:
    """The provisioned steps, after a first seal whose output the opens then use."""
    first = outcome(
        call,
        "aes_gcm_seal",
        {"label": "record", "nonce": NONCE, "plaintext": b"a sealed record", "aad": AAD},
        kind_of,
    )
    assert first[0] == "ok", first
    return [first, *run_steps(call, provisioned_steps({"record": first[1]}), kind_of)]
