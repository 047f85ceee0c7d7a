"""The token steps of a fleet rotation and of the fleet root key (run by `ceremony_cli`).

Each needs the token's PIN (it runs on the token's host, as the operator): that is the point.
Which epochs a node accepts, which it seals with and which keys are destroyed is decided here,
in the tokens, never through etcd (vault_node.fleet_keys).

Node tokens:
* `seal_with(token, epoch)`: the node seals with `epoch` from its next reload (it must be
  accepted: installed by `node-unwrap` of a rotation's blob).
* `retire(token, epoch)`: the node stops accepting `epoch` from its next reload; its fleet id
  is kept, so that a step 1 sent to it is refused by name.
* `destroy(token, epoch)`: destroy the epoch's kem (private and public), record and ticket keys;
  refused while the fleet state still accepts it.
* `status(token)`: the fleet state and which fleet key labels the token holds.

The fleet root token (operators only; `bkv-cluster up` makes it, never a node's token):
* `root_generate(session)`: the Ed25519 root key pair, non-extractable; returns the public key.
* `root_sign(session, payload)`: sign a serialized `FleetAnnouncement` (vault_protocol.fleet).
"""

from __future__ import annotations

from typing import Any, Final

from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from vault_node.fleet_keys import (
    FleetState,
    epoch_labels,
    read_fleet_state,
    write_fleet_state,
)
from vault_node.hsm import Token
from vault_node.token_api import FLEET_LABELS, HsmInputError, label_epoch
from vault_protocol.envelope import FleetKey
from vault_protocol.errors import InvalidInput
from vault_protocol.fleet import FleetRootKey, parse_announcement, sign_announcement

ROOT_LABEL: Final = "fleet-root"
ED25519_PARAMS: Final = encode_named_curve_parameters("1.3.101.112")  # id-Ed25519 (RFC 8410)


class FleetStepError(Exception):
    """A rotation or root step was refused; the message says why (no secret)."""


def seal_with(token: Token, epoch: int) -> FleetState:
    """The token's node seals with `epoch` from its next reload."""
    state = read_fleet_state(token)
    if epoch not in state.accepted:
        raise FleetStepError(f"epoch {epoch} is not accepted by this token (install it first)")
    return write_fleet_state(token, state.sealing(epoch))


def retire(token: Token, epoch: int) -> FleetState:
    """The token's node stops accepting `epoch` from its next reload (its keys stay until
    `destroy`, so that a node still using them until it reloads is not cut off)."""
    state = read_fleet_state(token)
    if epoch not in state.accepted:
        return state  # retired already (a resumed rotation)
    fleet_id = FleetKey(token.kem_public_key(epoch_labels(epoch)[0])).fleet_id
    return write_fleet_state(token, state.retiring(epoch, fleet_id))


def destroy(token: Token, epoch: int) -> int:
    """Destroy every object of `epoch`'s kem, record and ticket keys; how many were destroyed.

    Security: refused while the token's fleet state accepts the epoch: a node would then fail
    every request it opens with them, and the records sealed with them would be lost for good.
    """
    if epoch in read_fleet_state(token).accepted:
        raise FleetStepError(f"epoch {epoch} is still accepted by this token: retire it first")
    labels = set(epoch_labels(epoch))

    def run(session: Any) -> int:
        found = [o for lb in sorted(labels) for o in session.get_objects({Attribute.LABEL: lb})]
        for obj in found:
            obj.destroy()
        return len(found)

    destroyed = token.run_in_session(run)
    token.forget_keys()
    return destroyed


def held_labels(token: Token) -> list[str]:
    """The fleet key labels (of every epoch) the token holds objects of.

    The running node shares this token and replaces its checkpoint objects all the time: the
    search asks for key classes only (keys change only in the ceremony's own steps), and runs
    as a `run_search`, made again if a handle it found was gone when read.
    """

    def run(session: Any) -> list[str]:
        labels: set[str] = set()
        for object_class in KEY_CLASSES:
            for obj in session.get_objects({Attribute.CLASS: object_class}):
                label = str(obj[Attribute.LABEL])
                if (label in FLEET_LABELS or "." in label) and _is_epoch_label(label):
                    labels.add(label)
        return sorted(labels)

    return token.run_search(run)


KEY_CLASSES: Final = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)


def _is_epoch_label(label: str) -> bool:
    try:
        label_epoch(label)
    except HsmInputError:
        return False
    return True


def status(token: Token) -> dict[str, Any]:
    """JSON-ready: the fleet state and the fleet key labels held (public facts only)."""
    return {**read_fleet_state(token).describe(), "keys": held_labels(token)}


# --- the fleet root key ------------------------------------------------------------------------


def root_generate(session: Any) -> dict[str, Any]:
    """Root token: make the Ed25519 root key pair (non-extractable); its raw public key."""
    if list(session.get_objects({Attribute.LABEL: ROOT_LABEL})):
        raise FleetStepError("this token holds a fleet root key already")
    params = session.create_domain_parameters(
        KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: ED25519_PARAMS}, local=True
    )
    public, _ = params.generate_keypair(
        store=True,
        label=ROOT_LABEL,
        mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        public_template={Attribute.TOKEN: True},
        # The root key never leaves this token: announcements are signed inside it.
        private_template={
            Attribute.TOKEN: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,
        },
    )
    return {"root_public_key": _raw_ed25519(bytes(public[Attribute.EC_POINT])).hex()}


def root_sign(session: Any, payload: bytes) -> dict[str, Any]:
    """Root token: sign the serialized announcement `payload`; the `SignedFleetAnnouncement`.

    The payload must parse as an announcement and the signature verify under the token's own
    public key, so the root key never signs anything else."""
    private = _one(session, ObjectClass.PRIVATE_KEY)
    public = _public(session)
    try:
        announcement = parse_announcement(payload)
    except InvalidInput as exc:
        raise FleetStepError(f"refusing to sign: not a fleet announcement ({exc})") from None
    signed = sign_announcement(
        announcement, lambda data: bytes(private.sign(data, mechanism=Mechanism.EDDSA))
    )
    FleetRootKey(public).verify(signed)  # the token signed what it was asked to, with its key
    return {"signed_announcement": signed.hex(), "root_public_key": public.hex()}


def root_public(session: Any) -> dict[str, Any]:
    """Root token: the raw public root key."""
    return {"root_public_key": _public(session).hex()}


def _public(session: Any) -> bytes:
    return _raw_ed25519(bytes(_one(session, ObjectClass.PUBLIC_KEY)[Attribute.EC_POINT]))


def _one(session: Any, object_class: ObjectClass) -> Any:
    wanted = {Attribute.LABEL: ROOT_LABEL, Attribute.CLASS: object_class}
    found = list(session.get_objects(wanted))
    if len(found) != 1:
        raise FleetStepError(f"expected one {object_class.name} {ROOT_LABEL!r}: {len(found)}")
    return found[0]


def _raw_ed25519(ec_point: bytes) -> bytes:
    """The 32-byte key of a CKA_EC_POINT (DER OCTET STRING around it, or raw)."""
    if len(ec_point) == 34 and ec_point[:2] == b"\x04\x20":
        return ec_point[2:]
    if len(ec_point) == 32:
        return ec_point
    raise FleetStepError("the token returned a malformed Ed25519 public key")
