"""The fleet root key and the fleet's signed key announcements (the operator's side).

`bkv-cluster up` makes the fleet root key in a token of its own (`DIR/hsm-root`, operators
only, never a vault node's token), writes its public key to `DIR/fleet/root.pub`, which every
client.toml pins (`fleet_root_key`), and publishes the first announcement (epoch 1: the kem key
of the ceremony and the fleet's OPAQUE context). `rotate-fleet` announces each new epoch the same
way. An announcement is signed inside the root token (`ceremony_cli root-sign`), kept in
`DIR/fleet/announcement-<epoch>.bin` and written to etcd (`/bkv/v1/fleet/announcement`, as
root), where the frontends read it for `GetFleet`: etcd and the frontends only carry it, the
signature is the trust (vault_protocol.fleet).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from deploy.configs import Layout
from deploy.errors import CeremonyError, DeployError
from deploy.etcd import EtcdIdentity
from deploy.etcd_auth import client_config
from vault_common.wire import FLEET_ANNOUNCEMENT_KEY
from vault_node import ceremony, softhsm
from vault_protocol.errors import InvalidInput
from vault_protocol.fleet import AnnouncementRefused, FleetAnnouncement, FleetRootKey

if TYPE_CHECKING:
    from etcd_client import EtcdClient

ROOT_TOKEN_LABEL = "bkv-fleet-root"  # noqa: S105 - a token label, not a secret
ETCD_TIMEOUT_S = 20.0
ETCD_TRIES = 4
T = TypeVar("T")


def root_token(layout: Layout) -> softhsm.TokenSpec:
    """The fleet root token of the cluster in `layout` (made by `create_root`)."""
    directory = layout.fleet_root_token
    return softhsm.TokenSpec(
        module=softhsm.DEFAULT_MODULE,
        softhsm_conf=directory / softhsm.CONF_NAME,
        token_label=ROOT_TOKEN_LABEL,
        pin_file=directory / softhsm.PIN_NAME,
    )


def create_root(layout: Layout) -> FleetRootKey:
    """Make the fleet root token and its Ed25519 key (non-extractable); write root.pub."""
    try:
        spec = softhsm.create_token(layout.fleet_root_token, ROOT_TOKEN_LABEL)
        made = ceremony.token_step("root-generate", spec)
    except (softhsm.SoftHsmError, ceremony.CeremonyError) as exc:
        raise CeremonyError(f"fleet root key: {exc}") from exc
    root = FleetRootKey(bytes.fromhex(made["root_public_key"]))
    layout.fleet_dir.mkdir(parents=True, exist_ok=True)
    layout.fleet_root_key.write_bytes(root.to_pem())
    return root


def load_root(layout: Layout) -> FleetRootKey:
    """The pinned root public key of the cluster in `layout`."""
    try:
        return FleetRootKey.from_pem(layout.fleet_root_key.read_bytes())
    except (OSError, InvalidInput) as exc:
        raise DeployError(f"no fleet root key in {layout.fleet_dir}: {exc}") from exc


def sign(layout: Layout, announcement: FleetAnnouncement) -> bytes:
    """`announcement` signed in the root token, checked against root.pub, kept in its file."""
    try:
        payload = {"announcement": announcement.to_bytes().hex()}
        made = ceremony.token_step("root-sign", root_token(layout), payload=payload)
    except ceremony.CeremonyError as exc:
        raise CeremonyError(f"signing the fleet announcement: {exc}") from exc
    signed = bytes.fromhex(made["signed_announcement"])
    try:
        load_root(layout).verify(signed)
    except AnnouncementRefused as exc:
        raise CeremonyError(f"root.pub refuses what the root token signed: {exc}") from exc
    path = layout.announcement(announcement.epoch)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(signed)
    tmp.replace(path)
    return signed


def new_announcement(epoch: int, kem_public_key: bytes, opaque_context: str) -> FleetAnnouncement:
    return FleetAnnouncement(
        epoch=epoch,
        kem_public_key=kem_public_key,
        opaque_context=opaque_context.encode("utf-8"),
        issued_at_ms=time.time_ns() // 1_000_000,
    )


# --- etcd as root (the operator's identity) ----------------------------------------------------


class EtcdAsRoot:
    """Small synchronous etcd calls as root: the announcement's key, the nodes' membership, and
    the sealed values' key names (what `rotate-fleet` reads; none of it is secret)."""

    def __init__(self, endpoints: Sequence[str], identity: EtcdIdentity) -> None:
        self._config = client_config(endpoints, identity)

    def _run(self, call: Callable[[EtcdClient], Awaitable[T]]) -> T:
        from etcd_client import EtcdClient

        async def go() -> T:
            client = EtcdClient(self._config)
            try:
                return await asyncio.wait_for(call(client), ETCD_TIMEOUT_S)
            finally:
                await client.close()

        from etcd_client.errors import EtcdUnavailable

        for attempt in range(ETCD_TRIES):
            try:
                return asyncio.run(go())
            except EtcdUnavailable as exc:
                # A member restarting, or a loaded machine's handshake timing out: try again.
                if attempt == ETCD_TRIES - 1:
                    raise DeployError(f"etcd (as root): {exc}") from exc
                time.sleep(0.2 * 2**attempt)
            except Exception as exc:  # one message, the cause chained
                raise DeployError(f"etcd (as root): {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def publish(self, signed: bytes) -> None:
        """Put the signed announcement where the frontends read it."""

        async def put(client: EtcdClient) -> None:
            await client.put(FLEET_ANNOUNCEMENT_KEY.encode(), signed)

        self._run(put)

    def announcement(self) -> bytes | None:
        async def get(client: EtcdClient) -> bytes | None:
            kv = await client.get(FLEET_ANNOUNCEMENT_KEY.encode())
            return None if kv is None else bytes(kv.value)

        return self._run(get)

    def values(self, prefix: str, *, page: int = 1000) -> list[tuple[bytes, bytes]]:
        """Every (key, value) under `prefix`, read in pages (linearizable)."""
        from etcd_client import prefix_end

        async def scan(client: EtcdClient) -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            start, end = prefix.encode(), prefix_end(prefix.encode())
            while True:
                result = await client.range(start, range_end=end, limit=page)
                out += [(bytes(kv.key), bytes(kv.value)) for kv in result.kvs]
                if len(result.kvs) < page:
                    return out
                start = bytes(result.kvs[-1].key) + b"\0"

        return self._run(scan)
