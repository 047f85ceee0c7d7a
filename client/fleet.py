"""Which fleet key the client seals to, and how it learns a rotated one (no I/O).

A client pins the fleet's kem key (client.toml `fleet_public_key`, `fleet_id`, `fleet_epoch`)
and, since fleet rotation exists, the fleet root key (`fleet_root_key`). When the operator
rotates the fleet (`bkv-cluster rotate-fleet`), the root key signs an announcement of the new
kem key, and the frontends serve it (`Frontend.GetFleet`). `FleetView.learn` takes it only if its
signature verifies against the pinned root key and its epoch is higher than the one held: a
frontend can withhold an announcement (the vault then refuses the old key once it is retired:
`UnknownFleetKey`), never make a client seal to a key of its choice or go back to an older one.

The announcement also carries the fleet's OPAQUE context. A client configured with another one
(client.toml `opaque_context`) fails at once with a `ConfigError`, before it sends a password
step: otherwise every right password would fail its MAC check and spend a guess.

>>> from cryptography.hazmat.primitives.asymmetric import ec, ed25519
>>> from cryptography.hazmat.primitives import serialization
>>> def point():
...     return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
...         serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
>>> root = ed25519.Ed25519PrivateKey.generate()
>>> pin = FleetRootKey(root.public_key().public_bytes(
...     serialization.Encoding.Raw, serialization.PublicFormat.Raw))
>>> view = FleetView(FleetKey(point()), 1, pin, None)
>>> view.learn(sign_announcement(FleetAnnouncement(2, point(), b""), root.sign))
True
>>> view.epoch, view.opaque_context()
(2, b'')
"""

from __future__ import annotations

from client.errors import ConfigError, FleetAnnouncementRefused
from vault_protocol.envelope import FleetKey
from vault_protocol.fleet import (
    AnnouncementRefused,
    FleetAnnouncement,
    FleetRootKey,
    sign_announcement,
)
from vault_protocol.opaque import DEFAULT_CONTEXT

__all__ = ["FleetView", "sign_announcement"]


class FleetView:
    """The fleet key and epoch this client seals to now, and the OPAQUE context it uses.

    pinned, epoch: the kem key client.toml pins and its epoch.
    root: the pinned fleet root key (None: this client cannot learn a new key).
    configured_context: client.toml's `opaque_context` (None: the fleet's announced one, else
        the product default).
    """

    def __init__(
        self,
        pinned: FleetKey,
        epoch: int,
        root: FleetRootKey | None,
        configured_context: bytes | None,
    ) -> None:
        self._key = pinned
        self._epoch = epoch
        self._root = root
        self._configured = configured_context
        self._announced: bytes | None = None  # the context of the last verified announcement

    @property
    def key(self) -> FleetKey:
        return self._key

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def can_learn(self) -> bool:
        return self._root is not None

    def opaque_context(self) -> bytes:
        """The OPAQUE context to run the protocol with; `ConfigError` when client.toml names
        another one than the fleet announced (nothing is sent: a mismatch would cost the user
        a guess per right password)."""
        announced, configured = self._announced, self._configured
        if announced is not None and configured is not None and announced != configured:
            raise ConfigError(
                f"client.toml's opaque_context ({configured!r}) is not this fleet's "
                f"({announced!r}, from its signed announcement): fix opaque_context"
            )
        if configured is not None:
            return configured
        return announced if announced is not None else DEFAULT_CONTEXT

    def learn(self, signed: bytes) -> bool:
        """Take the announcement in `signed` if it verifies and is newer; True when the key
        changed. `FleetAnnouncementRefused` for an unsigned, wrongly signed or malformed one,
        one older than the epoch held (a replay), or another key for the epoch held."""
        if self._root is None:
            raise FleetAnnouncementRefused(
                "no fleet root key is pinned (client.toml fleet_root_key): cannot verify"
            )
        try:
            announcement = self._root.verify(signed)
        except AnnouncementRefused as exc:
            raise FleetAnnouncementRefused(str(exc)) from None
        return self._take(announcement)

    def _take(self, announcement: FleetAnnouncement) -> bool:
        if announcement.epoch < self._epoch:
            # Security: a validly signed old announcement (a frontend replaying it) must not
            # take a client back to a retired, possibly compromised, key.
            raise FleetAnnouncementRefused(
                f"the announced fleet epoch {announcement.epoch} is older than the one held "
                f"({self._epoch}): not taken"
            )
        if announcement.epoch == self._epoch:
            if announcement.fleet_key != self._key:
                raise FleetAnnouncementRefused(
                    f"the announcement names another key for epoch {self._epoch} than the one "
                    "pinned: check client.toml's fleet_public_key"
                )
            self._announced = announcement.opaque_context
            return False
        self._key, self._epoch = announcement.fleet_key, announcement.epoch
        self._announced = announcement.opaque_context
        return True
