"""The node's newest head per group: a record cached before another record of its group was
written is decided on the group's newest head, so the write commits without a conflict; a
head that is no longer etcd's still only fails the compare-and-swap."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from account_keys import account_signer
from inproc_cluster import InProcessVault

from client.protocol import FlowContext, recover_flow, register_flow, run
from vault_node.service import ServiceConfig, TokenServerKeys, VaultService
from vault_node.store import MemoryRecordStore, WriteResult
from vault_protocol import opaque
from vault_protocol.backup_key import BackupKey
from vault_protocol.ksf import IdentityKsf

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

PASSWORD = "correct horse battery staple"


def vault_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Conflicts(MemoryRecordStore):
    """The memory store, counting the writes that met a conflict."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0

    async def write(self, *args: Any, **kwargs: Any) -> WriteResult:  # type: ignore[override]
        result = await super().write(*args, **kwargs)
        self.conflicts += result[0] == 0
        return result


def vault_with_one_group() -> tuple[InProcessVault, Conflicts]:
    vault = InProcessVault(record_groups=1)  # every record in group 0: one head for all
    store = Conflicts()
    vault.store = vault.service._store = store
    return vault, store


def flows(vault: InProcessVault, account: str) -> FlowContext:
    return FlowContext(
        fleet=vault.fleet,
        account_id=account,
        signer=account_signer(account),
        opaque=opaque.OpaqueConfig(ksf=IdentityKsf()),
    )


def register(vault: InProcessVault, account: str) -> BackupKey:
    return run(
        register_flow(flows(vault, account), PASSWORD),
        lambda out: vault.handle(account, out.envelope),
    )


def recover(vault: InProcessVault, account: str) -> BackupKey:
    return run(
        recover_flow(flows(vault, account), PASSWORD),
        lambda out: vault.handle(account, out.envelope),
    )


def test_a_record_of_a_group_written_since_is_decided_on_the_groups_newest_head() -> None:
    vault, store = vault_with_one_group()
    keys = {account: register(vault, account) for account in ("alice", "bob", "carol")}
    store.conflicts = 0
    for _ in range(2):
        for account, key in keys.items():
            # Each recovery writes the group's head twice; the next account's cached record
            # still names the head before those writes.
            assert recover(vault, account) == key
    assert store.conflicts == 0


def test_a_head_written_by_another_node_costs_one_conflict_and_no_guess() -> None:
    vault, store = vault_with_one_group()
    alice, bob = register(vault, "alice"), register(vault, "bob")
    assert recover(vault, "alice") == alice
    # Another node of the fleet (same store, token and witnesses) writes the group's head.
    other = VaultService(
        token=vault.token, store=store, keys=TokenServerKeys.derive(vault.token),
        config=ServiceConfig(node_name="node-2", record_groups=1), clock_ms=vault_clock_ms,
        rng=os.urandom, audit=vault.audit, witnesses=vault.witnesses,
    )  # fmt: skip
    assert (
        run(
            recover_flow(flows(vault, "bob"), PASSWORD),
            lambda out: asyncio.run(other.handle("bob", out.envelope)),
        )
        == bob
    )
    # This node's newest head of the group is stale now: its next write meets one conflict,
    # reads the group's head from that failed write, and commits on it; one guess counted.
    store.conflicts = 0
    evaluated = [e for e in vault.audit.entries if e[0] == "evaluate"]
    assert recover(vault, "alice") == alice
    assert store.conflicts == 1
    assert len([e for e in vault.audit.entries if e[0] == "evaluate"]) == len(evaluated) + 1
