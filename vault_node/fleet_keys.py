"""The fleet's key epochs: which `kem`, `record` and `ticket` keys a node opens and seals with.

A fleet rotation (`bkv-cluster rotate-fleet`, docs/architecture.md "Fleet key rotation") adds an
epoch's keys to every token, lets every node accept both epochs, switches sealing to the new one,
re-seals what etcd holds, and destroys the old keys. Epoch 1 keeps the labels tokens had before
rotation existed (`kem`, `record`, `ticket`); epoch n > 1 labels them `kem.n`, `record.n`,
`ticket.n` (vault_node.token_api.epoch_label). `oprf_seed`, `ake_seed`, `id_mac` and `witness`
are never rotated.

**Who decides.** Which epochs a node accepts and which it seals with is the `fleet_state` data
object in the node's own token, written only by the operator with the token's PIN
(`ceremony_cli fleet-state`); a node reads it at start and at each reload (SIGHUP). Never etcd:
etcd is trusted for availability only, and a key list taken from it would let etcd make nodes
seal with a key some node lacks, or destroy records for good.

`FleetState` is that object; `Keyring` is a node's view of it, checked against the keys its
token holds (`load_keyring`); the request logic asks the keyring which key a fleet id names
(`by_fleet_id`) and which labels seal and open (`seal_keys`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from bkv.store.v1 import sealed_pb2
from vault_node.records import SealKeys
from vault_node.token_api import (
    FIRST_EPOCH,
    KEM_LABEL,
    MAX_EPOCH,
    ROTATED_LABELS,
    DataObjects,
    HsmKeyMissing,
    TokenOps,
    epoch_label,
)
from vault_protocol.envelope import FLEET_ID_LEN, FleetKey

FLEET_STATE_LABEL = "fleet_state"
MAX_STATE_BYTES = 4096
MAX_ACCEPTED = 4  # epochs open at once: two during a rotation's overlap, a margin beyond
MAX_RETIRED = 64


class FleetStateError(ValueError):
    """The token's fleet state is malformed or contradictory; the message lists every problem."""


@dataclass(frozen=True)
class FleetState:
    """The epochs a token's node accepts and seals with (absent object: epoch 1 alone)."""

    accepted: tuple[int, ...] = (FIRST_EPOCH,)
    seal: int = FIRST_EPOCH
    retired_fleet_ids: tuple[bytes, ...] = ()
    sequence: int = 0

    def problems(self) -> list[str]:
        out: list[str] = []
        if not self.accepted:
            out.append("at least one epoch must be accepted")
        if len(self.accepted) > MAX_ACCEPTED:
            out.append(f"at most {MAX_ACCEPTED} epochs may be accepted at once")
        if list(self.accepted) != sorted(set(self.accepted)):
            out.append("accepted epochs must be listed once each, in increasing order")
        if any(not FIRST_EPOCH <= e <= MAX_EPOCH for e in self.accepted):
            out.append(f"epochs are in {FIRST_EPOCH}..{MAX_EPOCH}")
        if self.seal not in self.accepted:
            # A node must never seal with a key it would not open.
            out.append(f"the seal epoch {self.seal} is not an accepted epoch")
        if len(self.retired_fleet_ids) > MAX_RETIRED:
            out.append(f"at most {MAX_RETIRED} retired fleet ids are kept")
        if any(len(f) != FLEET_ID_LEN for f in self.retired_fleet_ids):
            out.append(f"a retired fleet id is {FLEET_ID_LEN} bytes")
        if self.sequence < 0:
            out.append("the sequence must not be negative")
        return out

    def validate(self) -> FleetState:
        problems = self.problems()
        if problems:
            raise FleetStateError("invalid fleet state: " + "; ".join(problems))
        return self

    def to_bytes(self) -> bytes:
        message = sealed_pb2.FleetState(
            sequence=self.sequence,
            accepted=list(self.accepted),
            seal=self.seal,
            retired_fleet_ids=list(self.retired_fleet_ids),
        )
        return bytes(message.SerializeToString(deterministic=True))

    @classmethod
    def from_bytes(cls, value: bytes) -> FleetState:
        if len(value) > MAX_STATE_BYTES:
            raise FleetStateError("the token's fleet state is oversized")
        try:
            message = sealed_pb2.FleetState.FromString(value)
        except DecodeError:
            raise FleetStateError("the token's fleet state does not parse") from None
        return cls(
            accepted=tuple(message.accepted),
            seal=message.seal,
            retired_fleet_ids=tuple(bytes(f) for f in message.retired_fleet_ids),
            sequence=message.sequence,
        ).validate()

    def describe(self) -> dict[str, Any]:
        """JSON-ready (no secrets: epochs and public fleet ids)."""
        return {
            "accepted": list(self.accepted),
            "seal": self.seal,
            "retired_fleet_ids": [f.hex() for f in self.retired_fleet_ids],
            "sequence": self.sequence,
        }

    # -- the operator's changes (each validated; `write_fleet_state` stores them) --

    def accepting(self, epoch: int) -> FleetState:
        """Also accept `epoch` (a rotation's install: its keys are in the token now)."""
        return replace(self, accepted=tuple(sorted({*self.accepted, epoch}))).validate()

    def sealing(self, epoch: int) -> FleetState:
        """Seal with `epoch` from now on (it must be accepted already)."""
        return replace(self, seal=epoch).validate()

    def retiring(self, epoch: int, fleet_id: bytes) -> FleetState:
        """Stop accepting `epoch`, whose fleet id was `fleet_id` (its keys are destroyed next)."""
        if epoch == self.seal:
            raise FleetStateError(f"epoch {epoch} is the seal epoch: switch sealing first")
        retired = tuple(dict.fromkeys((*self.retired_fleet_ids, fleet_id)))[-MAX_RETIRED:]
        accepted = tuple(e for e in self.accepted if e != epoch)
        return replace(self, accepted=accepted, retired_fleet_ids=retired).validate()


def read_fleet_state(token: DataObjects) -> FleetState:
    """The token's fleet state: the object with the highest sequence; epoch 1 when none."""
    best: FleetState | None = None
    for value in token.read_data(FLEET_STATE_LABEL):
        state = FleetState.from_bytes(value)
        if best is None or state.sequence >= best.sequence:
            best = state
    return best if best is not None else FleetState()


def write_fleet_state(token: DataObjects, state: FleetState) -> FleetState:
    """Store `state` as the token's fleet state, one sequence above the stored one."""
    stored = replace(state, sequence=read_fleet_state(token).sequence + 1).validate()
    token.replace_data(FLEET_STATE_LABEL, stored.to_bytes())
    return stored


def epoch_labels(epoch: int) -> tuple[str, str, str]:
    """(kem, record, ticket) labels of `epoch`."""
    kem, record, ticket = (epoch_label(base, epoch) for base in ROTATED_LABELS)
    return kem, record, ticket


@dataclass(frozen=True)
class EpochKeys:
    """One accepted epoch: its key labels and the public kem key envelopes are sealed to."""

    epoch: int
    fleet: FleetKey
    kem: str
    record: str
    ticket: str


class KeyringToken(Protocol):
    """What loading a keyring needs of the token."""

    def kem_public_key(self, label: str = KEM_LABEL) -> bytes: ...

    def missing_fleet_keys(self, labels: Any = ...) -> list[str]: ...


class FleetKeysMissing(HsmKeyMissing):
    """The token lacks a key of an epoch its fleet state accepts: the node keeps what it had
    (at a reload) or does not start (at a start)."""

    def __init__(self, missing: Iterable[str]) -> None:
        labels = sorted(missing)
        super().__init__(", ".join(labels), "accepted by the token's fleet state but missing")
        self.labels = labels


@dataclass(frozen=True)
class Keyring:
    """A node's fleet keys: every accepted epoch, the one it seals with, and the fleet ids of
    retired epochs (a step 1 to one of them is refused by name)."""

    epochs: dict[int, EpochKeys]
    seal: int
    retired: frozenset[bytes] = frozenset()
    _by_id: dict[bytes, EpochKeys] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.seal not in self.epochs:
            raise FleetStateError(f"the seal epoch {self.seal} is not an accepted epoch")
        object.__setattr__(self, "_by_id", {k.fleet.fleet_id: k for k in self.epochs.values()})

    @property
    def sealing(self) -> EpochKeys:
        return self.epochs[self.seal]

    @property
    def accepted(self) -> tuple[int, ...]:
        return tuple(sorted(self.epochs))

    def by_fleet_id(self, fleet_id: bytes) -> EpochKeys | None:
        """The accepted epoch whose kem key has `fleet_id`, or None."""
        return self._by_id.get(fleet_id)

    def knows(self, fleet_id: bytes) -> bool:
        """Whether `fleet_id` is an accepted or a retired epoch's (a step 2 may name it)."""
        return fleet_id in self._by_id or fleet_id in self.retired

    @property
    def seal_keys(self) -> SealKeys:
        """Seal with the seal epoch's keys; open with any accepted epoch's."""
        return SealKeys(
            record=self.sealing.record,
            ticket=self.sealing.ticket,
            record_opens=frozenset(k.record for k in self.epochs.values()),
            ticket_opens=frozenset(k.ticket for k in self.epochs.values()),
        )

    @property
    def stale_record_labels(self) -> frozenset[str]:
        """Accepted `record` labels of epochs older than the seal epoch: what a re-seal pass
        rewrites. Never a newer one: while the nodes switch one by one, a node that still
        seals with the old epoch must not re-seal back what a switched node sealed."""
        return frozenset(k.record for e, k in self.epochs.items() if e < self.seal)

    def describe(self) -> dict[str, Any]:
        """JSON-ready (public values only): epochs, seal epoch and fleet ids."""
        return {
            "accepted": list(self.accepted),
            "seal": self.seal,
            "fleet_ids": {str(e): k.fleet.fleet_id.hex() for e, k in sorted(self.epochs.items())},
        }


def first_epoch_keyring(token: TokenOps) -> Keyring:
    """Epoch 1 alone, as every token had before rotation existed (unit tests, tools)."""
    fleet = FleetKey(token.kem_public_key(KEM_LABEL))
    kem, record, ticket = epoch_labels(FIRST_EPOCH)
    return Keyring({FIRST_EPOCH: EpochKeys(FIRST_EPOCH, fleet, kem, record, ticket)}, FIRST_EPOCH)


def load_keyring(token: KeyringToken, state: FleetState) -> Keyring:
    """The keyring `state` asks for, checked against the token: `FleetKeysMissing` when an
    accepted epoch's key is not there (so a node never takes an epoch it cannot use)."""
    state.validate()
    labels = [label for epoch in state.accepted for label in epoch_labels(epoch)]
    missing = token.missing_fleet_keys(labels)
    if missing:
        raise FleetKeysMissing(missing)
    epochs: dict[int, EpochKeys] = {}
    for epoch in state.accepted:
        kem, record, ticket = epoch_labels(epoch)
        epochs[epoch] = EpochKeys(epoch, FleetKey(token.kem_public_key(kem)), kem, record, ticket)
    return Keyring(epochs, state.seal, frozenset(state.retired_fleet_ids))
