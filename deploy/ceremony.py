"""Thin adapter over `vault_node.softhsm` (token directories) and `vault_node.ceremony`.

`deploy` calls the vault node's own helpers so that the tokens it makes are exactly those a node
opens; this module only maps their errors to `deploy.errors.CeremonyError` and keeps their
signatures in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.errors import CeremonyError
from vault_node import ceremony, softhsm

TokenSpec = softhsm.TokenSpec


@dataclass(frozen=True)
class Fleet:
    """The fleet's public side, as clients pin it."""

    public_key: bytes  # uncompressed P-256 point of the `kem` key
    fleet_id: bytes  # 16 bytes
    public_key_file: Path  # PEM written by the ceremony (out_dir/fleet.pub)


def create_node_token(directory: Path, label: str) -> TokenSpec:
    """A new SoftHSM token directory holding one initialised token `label` (PIN file 0600)."""
    try:
        return softhsm.create_token(directory, label)
    except softhsm.SoftHsmError as exc:
        raise CeremonyError(f"token {label}: {exc}") from exc


def run_fleet_ceremony(
    tokens: list[TokenSpec], out_dir: Path, *, etcd_cluster_id: int = 0
) -> Fleet:
    """Make the fleet keys once and provision every token with them (see vault_node.ceremony),
    pinning the etcd cluster `etcd_cluster_id` (when non-zero) in every node token."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        public = ceremony.run_ceremony(tokens, out_dir, etcd_cluster_id=etcd_cluster_id)
    except ceremony.CeremonyError as exc:
        raise CeremonyError(str(exc)) from exc
    return Fleet(public.public_key, public.fleet_id, out_dir / ceremony.FLEET_PUB)


def load_fleet(out_dir: Path) -> Fleet:
    """The fleet published by an earlier ceremony in `out_dir`."""
    try:
        public = ceremony.load_fleet_public(out_dir)
    except (OSError, ValueError) as exc:
        raise CeremonyError(f"no fleet in {out_dir}: {exc}") from exc
    return Fleet(public.public_key, public.fleet_id, out_dir / ceremony.FLEET_PUB)
