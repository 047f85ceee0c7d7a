"""One step of the key ceremony on one token: `python -m vault_node.ceremony_cli STEP ...`.

SoftHSM binds a process to one SOFTHSM2_CONF, so every step on a token runs in a process of its
own (as it would on separate machines); `vault_node.ceremony` drives the steps. Steps exchange
JSON files that hold public points and wrapped (encrypted) keys only, never a PIN or a key.

    fleet-generate --out F   ceremony token: fleet keys (EXTRACTABLE, SENSITIVE) + transport pair
    node-transport --out F   node token: a fresh transport pair; refuses a provisioned token
    fleet-wrap --in F        ceremony token: per node, KEK = ECDH(ceremony, node) and wrap every
                             fleet key into that node's blob file; then destroy every key
    node-unwrap --in F       node token: same KEK, unwrap every key as SENSITIVE, not EXTRACTABLE,
       [--etcd-cluster-id H] store the kem public key, check it, destroy the transport pair;
                             pin the etcd cluster id H (hex) the node will accept
    store-status             node token: print the store checkpoint (high-water mark, alarm, pin)
    witness-reset            witness token (node stopped): forget the witnessed heads it holds
                             (its journal too); at its next start it takes every group's head
                             from etcd (opened with the token) as its own, then catches up from
                             the other witnesses. For a store an operator accepts as it is
       [--forget-only]       (with it: forget only, as a witness whose state was lost would)
    record-id --account A    node token: print the record id (= etcd key) of account A, for
                             operators and attack tests; needs the token's PIN, as the id_mac
                             key hides which etcd key belongs to which account
    store-alarm-clear        node token (node stopped): clear a rollback alarm and forget the
       [--accept-cluster-id H] high-water mark; with H, pin that etcd cluster id instead.
                             Accepting a rolled-back store gives back the guesses spent since the
                             point it was rolled back to: only for a store known to be current.

A fleet rotation (`bkv-cluster rotate-fleet`; docs/architecture.md "Fleet key rotation") runs the
four ceremony steps above with `--epoch N` (N > 1): only the rotated keys `kem.N`, `record.N`,
`ticket.N` are made and carried; node-transport takes a provisioned token, node-unwrap adds the
keys and makes the token's fleet state accept epoch N (sealing stays as it was). Then, on every
node token, each followed by a reload of its node (SIGHUP):

    fleet-seal --epoch N     the node seals with epoch N (it must accept it)
    fleet-retire --epoch N   the node stops accepting epoch N (its fleet id is remembered)
    fleet-destroy --epoch N  destroy epoch N's keys; refused while the fleet state accepts it
    fleet-status             print the fleet state and the fleet key labels the token holds

and on the fleet root token (operators only):

    root-generate --out F    make the Ed25519 fleet root key (non-extractable); F: its public key
    root-sign --in F --out G sign the announcement in F (hex of a serialized FleetAnnouncement)

Exit status 0 on success; otherwise one line `error: ...` on stderr (no secrets) and status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import PKCS11Error

from bkv.store.v1 import sealed_pb2
from vault_node import fleet_steps
from vault_node.checkpoint import (
    CLUSTER_PIN_LABEL,
    CheckpointError,
    encode_cluster_id,
    load_state,
    pinned_cluster_id,
    write_state,
)
from vault_node.fleet_keys import FleetStateError, read_fleet_state, write_fleet_state
from vault_node.hsm import (
    FLEET_LABELS,
    KEM_LABEL,
    P256_EC_PARAMS,
    HsmError,
    Token,
    decode_ec_point,
    encode_ec_point,
    validate_p256_point,
)
from vault_node.softhsm import SoftHsmError, TokenSpec
from vault_node.store_guard import GuardState
from vault_node.token_api import FIRST_EPOCH, MAX_EPOCH, ROTATED_LABELS, epoch_label

WITNESS_HEADS_LABEL: Final = "witness_heads"  # vault_node.witness_server.HEADS_LABEL

BLOB_VERSION: Final = 1
CEREMONY_TRANSPORT: Final = "ceremony-transport"
NODE_TRANSPORT: Final = "node-transport"
WRAP_MECHANISM: Final = Mechanism.AES_KEY_WRAP_PAD  # RFC 5649: integrity-checked key wrap


class CeremonyStepError(Exception):
    """A ceremony step failed; the message names the reason, never a secret."""


@dataclass(frozen=True)
class FleetKeySpec:
    """How one fleet key is made in the ceremony token and unwrapped in a node token."""

    label: str
    object_class: ObjectClass
    key_type: KeyType
    bits: int
    capabilities: MechanismFlag


FLEET_KEYS: Final = (
    FleetKeySpec(KEM_LABEL, ObjectClass.PRIVATE_KEY, KeyType.EC, 256, MechanismFlag.DERIVE),
    FleetKeySpec(
        "record",
        ObjectClass.SECRET_KEY,
        KeyType.AES,
        256,
        MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
    ),
    FleetKeySpec(
        "ticket",
        ObjectClass.SECRET_KEY,
        KeyType.AES,
        256,
        MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
    ),
    FleetKeySpec(
        "oprf_seed",
        ObjectClass.SECRET_KEY,
        KeyType.GENERIC_SECRET,
        512,
        MechanismFlag.SIGN | MechanismFlag.VERIFY,
    ),
    FleetKeySpec(
        "ake_seed",
        ObjectClass.SECRET_KEY,
        KeyType.GENERIC_SECRET,
        512,
        MechanismFlag.SIGN | MechanismFlag.VERIFY,
    ),
    FleetKeySpec(
        "id_mac",
        ObjectClass.SECRET_KEY,
        KeyType.GENERIC_SECRET,
        256,
        MechanismFlag.SIGN | MechanismFlag.VERIFY,
    ),
    FleetKeySpec(
        "witness",
        ObjectClass.SECRET_KEY,
        KeyType.GENERIC_SECRET,
        256,
        MechanismFlag.SIGN | MechanismFlag.VERIFY,
    ),
)
assert tuple(k.label for k in FLEET_KEYS) == FLEET_LABELS


def keys_of_epoch(epoch: int) -> tuple[FleetKeySpec, ...]:
    """The keys a ceremony makes for fleet `epoch`: the whole fleet for epoch 1; for a
    rotation's epoch n > 1 only the rotated ones (`kem.n`, `record.n`, `ticket.n`), since
    `oprf_seed`, `ake_seed`, `id_mac` and `witness` are never rotated (vault_node.fleet_keys)."""
    if epoch == FIRST_EPOCH:
        return FLEET_KEYS
    return tuple(
        replace(spec, label=epoch_label(spec.label, epoch))
        for spec in FLEET_KEYS
        if spec.label in ROTATED_LABELS
    )


# EC private keys have no ENCRYPT/VERIFY/WRAP attributes; python-pkcs11's unwrap template sets
# every capability and SoftHSM then answers AttributeTypeInvalid. DEFAULT drops them.
_EC_PRIVATE_UNWRAP_FIX: Final = {
    Attribute.ENCRYPT: pkcs11.DEFAULT,
    Attribute.VERIFY: pkcs11.DEFAULT,
    Attribute.WRAP: pkcs11.DEFAULT,
}


# --- small helpers ----------------------------------------------------------------------------


def _objects_labelled(session: Any, label: str) -> list[Any]:
    return list(session.get_objects({Attribute.LABEL: label}))


def _p256_keypair(session: Any, label: str, *, extractable: bool) -> tuple[Any, Any]:
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: P256_EC_PARAMS}, local=True
    )
    public, private = params.generate_keypair(
        store=True,
        label=label,
        capabilities=MechanismFlag.DERIVE,
        public_template={Attribute.TOKEN: True},
        private_template={
            Attribute.TOKEN: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: extractable,
        },
    )
    return public, private


def _point_of(public: Any) -> bytes:
    return decode_ec_point(bytes(public[Attribute.EC_POINT]))


def _one(session: Any, label: str, object_class: ObjectClass) -> Any:
    found = [o for o in _objects_labelled(session, label) if o.object_class == object_class]
    if len(found) != 1:
        raise CeremonyStepError(f"expected one {object_class.name} {label!r}, found {len(found)}")
    return found[0]


def _derive_kek(private: Any, peer_point: bytes, capability: MechanismFlag) -> Any:
    validate_p256_point(peer_point)
    # SoftHSM accepts only KDF.NULL: the KEK is the raw ECDH x-coordinate of two single-use
    # transport keys, used for one wrap session and never stored (session object).
    return private.derive_key(
        KeyType.AES,
        256,
        mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(pkcs11.KDF.NULL, None, peer_point),
        capabilities=capability,
        template={Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
    )


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise CeremonyStepError(f"{path} does not hold a JSON object")
    return value


def _hex_field(value: dict[str, Any], name: str) -> bytes:
    field = value.get(name)
    if not isinstance(field, str):
        raise CeremonyStepError(f"field {name!r} missing")
    try:
        return bytes.fromhex(field)
    except ValueError:
        raise CeremonyStepError(f"field {name!r} is not hex") from None


# --- steps ------------------------------------------------------------------------------------


def fleet_generate(session: Any, epoch: int = FIRST_EPOCH) -> dict[str, Any]:
    """Ceremony token: make the fleet keys (of `epoch`: `keys_of_epoch`) and the ceremony
    transport key pair."""
    specs = keys_of_epoch(epoch)
    for label in (*(spec.label for spec in specs), CEREMONY_TRANSPORT):
        if _objects_labelled(session, label):
            raise CeremonyStepError(f"ceremony token already holds {label!r}: use a fresh token")
    kem_point = b""
    for spec in specs:
        # EXTRACTABLE only so that they can be wrapped for the nodes; SENSITIVE so that their
        # value can never be read in clear, even here.
        if spec.key_type == KeyType.EC:
            public, _ = _p256_keypair(session, spec.label, extractable=True)
            kem_point = _point_of(public)
            continue
        session.generate_key(
            spec.key_type,
            spec.bits,
            label=spec.label,
            store=True,
            capabilities=spec.capabilities,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
        )
    transport_public, _ = _p256_keypair(session, CEREMONY_TRANSPORT, extractable=False)
    return {
        "ceremony_point": _point_of(transport_public).hex(),
        "kem_point": kem_point.hex(),
        "epoch": epoch,
    }


def node_transport(session: Any, epoch: int = FIRST_EPOCH) -> dict[str, Any]:
    """Node token: refuse if provisioned (for a rotation's epoch: unless it holds a fleet and
    none of the epoch's keys); make a fresh transport key pair, return its point."""
    if epoch == FIRST_EPOCH:
        present = [label for label in FLEET_LABELS if _objects_labelled(session, label)]
        if present:
            raise CeremonyStepError(
                f"token is already provisioned (holds {', '.join(present)}); "
                "re-initialise it to join a new fleet"
            )
    else:
        if not _objects_labelled(session, "oprf_seed"):
            raise CeremonyStepError("token holds no fleet: a rotation adds to a provisioned one")
        labels = [spec.label for spec in keys_of_epoch(epoch)]
        present = [label for label in labels if _objects_labelled(session, label)]
        if present:
            raise CeremonyStepError(f"token already holds epoch {epoch}'s {', '.join(present)}")
    for stale in _objects_labelled(session, NODE_TRANSPORT):
        stale.destroy()  # left by an aborted ceremony; a transport key is single-use anyway
    public, _ = _p256_keypair(session, NODE_TRANSPORT, extractable=False)
    return {"transport_point": _point_of(public).hex()}


def fleet_wrap(
    session: Any, requests: Sequence[dict[str, Any]], kem_point: bytes, epoch: int = FIRST_EPOCH
) -> None:
    """Ceremony token: write one blob file per node, then destroy every key in the token."""
    ceremony_private = _one(session, CEREMONY_TRANSPORT, ObjectClass.PRIVATE_KEY)
    ceremony_point = _point_of(_one(session, CEREMONY_TRANSPORT, ObjectClass.PUBLIC_KEY))
    specs = keys_of_epoch(epoch)
    keys = [_one(session, spec.label, spec.object_class) for spec in specs]
    try:
        for request in requests:
            node_point = _hex_field(request, "transport_point")
            out = Path(str(request["out"]))
            kek = _derive_kek(ceremony_private, node_point, MechanismFlag.WRAP)
            try:
                blobs = {
                    spec.label: bytes(kek.wrap_key(key, mechanism=WRAP_MECHANISM)).hex()
                    for spec, key in zip(specs, keys, strict=True)
                }
            finally:
                kek.destroy()
            _write_json(
                out,
                {
                    "version": BLOB_VERSION,
                    "token_label": str(request["token_label"]),
                    "ceremony_point": ceremony_point.hex(),
                    "node_point": node_point.hex(),
                    "kem_point": kem_point.hex(),
                    "epoch": epoch,
                    "keys": blobs,
                },
            )
    finally:
        # The ceremony's copies exist in extractable form for as short a time as possible.
        for obj in list(session.get_objects()):
            obj.destroy()


def blob_epoch(blob: dict[str, Any]) -> int:
    """The fleet epoch a blob file carries keys of (files without one: epoch 1)."""
    epoch = blob.get("epoch", FIRST_EPOCH)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= MAX_EPOCH:
        raise CeremonyStepError("blob file names no valid fleet epoch")
    return epoch


def node_unwrap(session: Any, blob: dict[str, Any]) -> dict[str, Any]:
    """Node token: unwrap the fleet keys (of the blob's epoch) non-extractable, store the kem
    public key, check it. A rotation's blob whose keys the token already holds, with the same
    kem point, is done already (a resumed rotation): nothing changes."""
    if blob.get("version") != BLOB_VERSION:
        raise CeremonyStepError("unsupported blob file version")
    epoch = blob_epoch(blob)
    specs = keys_of_epoch(epoch)
    kem_label = specs[0].label
    kem_point = _hex_field(blob, "kem_point")
    if epoch != FIRST_EPOCH and _objects_labelled(session, kem_label):
        held = _point_of(_one(session, kem_label, ObjectClass.PUBLIC_KEY))
        if held != kem_point:
            raise CeremonyStepError(f"token holds another {kem_label!r}: a stale rotation")
        return {"kem_point": kem_point.hex(), "epoch": epoch, "already": True}
    node_private = _one(session, NODE_TRANSPORT, ObjectClass.PRIVATE_KEY)
    node_public = _one(session, NODE_TRANSPORT, ObjectClass.PUBLIC_KEY)
    if _point_of(node_public) != _hex_field(blob, "node_point"):
        raise CeremonyStepError(
            "blob file was made for another transport key (stale or wrong node)"
        )
    validate_p256_point(kem_point)
    wrapped = blob.get("keys")
    if not isinstance(wrapped, dict) or set(wrapped) != {spec.label for spec in specs}:
        raise CeremonyStepError("blob file does not hold exactly the fleet keys")
    created: list[Any] = []
    kek = _derive_kek(node_private, _hex_field(blob, "ceremony_point"), MechanismFlag.UNWRAP)
    try:
        for spec in specs:
            template: dict[Any, Any] = {
                # Non-extractable from birth: no later call can take the key out of this token.
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                # Frozen: no C_SetAttributeValue can later turn on DERIVE (or another use) to
                # leak key material, nor can C_CopyObject make a copy with other attributes
                # (tests/integration/test_hsm.py). SoftHSM refuses COPYABLE in this template.
                Attribute.MODIFIABLE: False,
            }
            if spec.key_type == KeyType.EC:
                template.update(_EC_PRIVATE_UNWRAP_FIX)
            created.append(
                kek.unwrap_key(
                    spec.object_class,
                    spec.key_type,
                    _hex_field(wrapped, spec.label),
                    label=spec.label,
                    mechanism=WRAP_MECHANISM,
                    store=True,
                    capabilities=spec.capabilities,
                    template=template,
                )
            )
        created.append(
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.EC_PARAMS: P256_EC_PARAMS,
                    Attribute.EC_POINT: encode_ec_point(kem_point),
                    Attribute.LABEL: kem_label,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                }
            )
        )
        _check_kem(created[0], kem_point)
    except BaseException:
        for obj in created:  # all or nothing: never leave a half-provisioned token behind
            obj.destroy()
        raise
    finally:
        kek.destroy()
    node_private.destroy()
    node_public.destroy()
    return {"kem_point": kem_point.hex(), "epoch": epoch}


def _check_kem(private: Any, kem_point: bytes) -> None:
    """The unwrapped kem key must match the published point: one ECDH with a throwaway key."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    eph_point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    secret = private.derive_key(
        KeyType.GENERIC_SECRET,
        256,
        mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(pkcs11.KDF.NULL, None, eph_point),
        capabilities=0,
        template={Attribute.TOKEN: False, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
    )
    try:
        got = bytes(secret[Attribute.VALUE])
    finally:
        secret.destroy()
    fleet = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), kem_point)
    if got != ephemeral.exchange(ec.ECDH(), fleet):
        raise CeremonyStepError("unwrapped kem key does not match the fleet public key")


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vault_node.ceremony_cli")
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--module", required=True)
    parser.add_argument("--conf", required=True, type=Path)
    parser.add_argument("--label", required=True)
    parser.add_argument("--pin-file", required=True, type=Path)
    parser.add_argument("--in", dest="in_file", type=Path)
    parser.add_argument("--out", dest="out_file", type=Path)
    parser.add_argument("--etcd-cluster-id", type=_cluster_id, default=0)
    parser.add_argument("--accept-cluster-id", type=_cluster_id, default=0)
    parser.add_argument("--account", default="")
    parser.add_argument("--epoch", type=int, default=FIRST_EPOCH)
    parser.add_argument(
        "--forget-only",
        action="store_true",
        help="witness-reset: forget without adopting the store's heads (a witness whose state "
        "was lost; for tests of the documented limit)",
    )
    return parser


STEPS: Final = (
    "fleet-generate",
    "node-transport",
    "fleet-wrap",
    "node-unwrap",
    "store-status",
    "store-alarm-clear",
    "witness-reset",
    "record-id",
    "fleet-seal",
    "fleet-retire",
    "fleet-destroy",
    "fleet-status",
    "root-generate",
    "root-sign",
)


def _cluster_id(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError("an etcd cluster id is hexadecimal") from None
    if not 0 < value < 1 << 64:
        raise argparse.ArgumentTypeError("an etcd cluster id is a non-zero 64-bit number")
    return value


def spec_args(spec: TokenSpec) -> list[str]:
    """The command-line arguments naming `spec` (paths only: the PIN stays in its file)."""
    return [
        "--module",
        spec.module,
        "--conf",
        str(spec.softhsm_conf),
        "--label",
        spec.token_label,
        "--pin-file",
        str(spec.pin_file),
    ]


def run_step(
    step: str,
    spec: TokenSpec,
    in_file: Path | None,
    out_file: Path | None,
    *,
    etcd_cluster_id: int = 0,
    accept_cluster_id: int = 0,
    account: str = "",
    forget_only: bool = False,
    epoch: int = FIRST_EPOCH,
) -> None:
    """Run one step on the token of `spec` in this process."""
    if not FIRST_EPOCH <= epoch <= MAX_EPOCH:
        raise CeremonyStepError(f"--epoch must be in {FIRST_EPOCH}..{MAX_EPOCH}")
    with Token.open(spec, read_write=True) as token:
        if step in FLEET_STEPS:
            _fleet_step(step, token, in_file, out_file, epoch)
        elif step == "fleet-generate":
            generated = token.run_in_session(lambda session: fleet_generate(session, epoch))
            _write_json(_need(out_file, "--out"), generated)
        elif step == "node-transport":
            point = token.run_in_session(lambda session: node_transport(session, epoch))
            _write_json(_need(out_file, "--out"), point)
        elif step == "fleet-wrap":
            request = _read_json(_need(in_file, "--in"))
            nodes = request.get("nodes")
            if not isinstance(nodes, list):
                raise CeremonyStepError("wrap request has no node list")
            kem_point = _hex_field(request, "kem_point")
            wrap_epoch = request.get("epoch", FIRST_EPOCH)
            if not isinstance(wrap_epoch, int) or isinstance(wrap_epoch, bool):
                raise CeremonyStepError("wrap request names no valid epoch")
            token.run_in_session(lambda session: fleet_wrap(session, nodes, kem_point, wrap_epoch))
        elif step == "node-unwrap":
            blob = _read_json(_need(in_file, "--in"))
            result = token.run_in_session(lambda session: node_unwrap(session, blob))
            if blob_epoch(blob) != FIRST_EPOCH:
                # The node accepts the new epoch from its next reload; it still seals with the
                # one it had (switching is a separate step, once every node holds the keys).
                state = read_fleet_state(token)
                if blob_epoch(blob) not in state.accepted:
                    state = write_fleet_state(token, state.accepting(blob_epoch(blob)))
                result["fleet_state"] = state.describe()
            if etcd_cluster_id:
                # The node refuses any other etcd cluster from its first start on.
                token.replace_data(CLUSTER_PIN_LABEL, encode_cluster_id(etcd_cluster_id))
                result["etcd_cluster_id"] = f"{etcd_cluster_id:016x}"
            if out_file is not None:
                _write_json(out_file, result)
        elif step == "store-status":
            print(json.dumps(store_status(token), sort_keys=True))
        elif step == "store-alarm-clear":
            print(json.dumps(store_alarm_clear(token, accept_cluster_id), sort_keys=True))
        elif step == "witness-reset":
            # The store is accepted as it is: at its next start the witness adopts its heads.
            reset = sealed_pb2.WitnessCheckpoint(adopt_store=not forget_only)
            token.replace_data(WITNESS_HEADS_LABEL, reset.SerializeToString())
            print(json.dumps({"witness_heads": "forgotten; the store's heads at the next start"}))
        elif step == "record-id":
            if not account:
                raise CeremonyStepError("record-id needs --account")
            print(token.hmac_sha256("id_mac", account.encode("utf-8")).hex())
        else:
            raise CeremonyStepError(f"unknown step {step!r}")


FLEET_STEPS: Final = frozenset(
    {"fleet-seal", "fleet-retire", "fleet-destroy", "fleet-status", "root-generate", "root-sign"}
)


def _fleet_step(
    step: str, token: Token, in_file: Path | None, out_file: Path | None, epoch: int
) -> None:
    """A rotation step on a node token, or a step on the fleet root token (fleet_steps)."""
    result: dict[str, Any]
    if step == "fleet-seal":
        result = fleet_steps.seal_with(token, epoch).describe()
    elif step == "fleet-retire":
        result = fleet_steps.retire(token, epoch).describe()
    elif step == "fleet-destroy":
        result = {"destroyed": fleet_steps.destroy(token, epoch), **fleet_steps.status(token)}
    elif step == "fleet-status":
        result = fleet_steps.status(token)
    elif step == "root-generate":
        result = token.run_in_session(fleet_steps.root_generate)
    else:  # root-sign
        payload = _hex_field(_read_json(_need(in_file, "--in")), "announcement")
        result = token.run_in_session(lambda session: fleet_steps.root_sign(session, payload))
    if out_file is not None:
        _write_json(out_file, result)
    else:
        print(json.dumps(result, sort_keys=True))


def store_status(token: Token) -> dict[str, Any]:
    """The node's store checkpoint and cluster pin, as JSON-ready values (no secrets)."""
    state, sequence = load_state(token, 0)
    return {
        "sequence": sequence,
        "etcd_cluster_id": f"{state.cluster_id:016x}" if state.cluster_id else "",
        "pinned_by_ceremony": bool(pinned_cluster_id(token)),
        "high_water": state.high_water,
        "alarm": state.alarm,
        "alarm_revision": state.alarm_revision,
    }


def store_alarm_clear(token: Token, accept_cluster_id: int) -> dict[str, Any]:
    """Clear the alarm and the high-water mark (the node relearns it from the store as it is).

    Security: this is the one way past a detected rollback, so it needs the token (the node's
    host and PIN), not etcd access; whoever runs it accepts the store's counters as they are.
    """
    state, sequence = load_state(token, 0)
    cluster_id = state.cluster_id
    if accept_cluster_id:
        token.replace_data(CLUSTER_PIN_LABEL, encode_cluster_id(accept_cluster_id))
        cluster_id = accept_cluster_id
    # The node's audit log still names the replaced store's revisions: from now on they are
    # ignored at a start (GuardState.accepted_at_ms), or the mark would come straight back.
    accepted = time.time_ns() // 1_000_000
    write_state(token, GuardState(cluster_id=cluster_id, accepted_at_ms=accepted), sequence + 1)
    return {"cleared": state.alarm, "etcd_cluster_id": f"{cluster_id:016x}" if cluster_id else ""}


def _need(path: Path | None, flag: str) -> Path:
    if path is None:
        raise CeremonyStepError(f"this step needs {flag}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    spec = TokenSpec(
        module=args.module,
        softhsm_conf=args.conf,
        token_label=args.label,
        pin_file=args.pin_file,
    )
    try:
        run_step(
            args.step,
            spec,
            args.in_file,
            args.out_file,
            etcd_cluster_id=args.etcd_cluster_id,
            accept_cluster_id=args.accept_cluster_id,
            account=args.account,
            forget_only=args.forget_only,
            epoch=args.epoch,
        )
    except (
        CeremonyStepError,
        CheckpointError,
        FleetStateError,
        fleet_steps.FleetStepError,
        HsmError,
        SoftHsmError,
        OSError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except PKCS11Error as exc:
        # python-pkcs11's messages name the failed call, never attribute values.
        print(f"error: PKCS#11 {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
