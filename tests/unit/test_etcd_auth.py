"""The etcd auth plan built from the topology: exactly which role may do what, and who has it."""

from __future__ import annotations

import pytest

from deploy.etcd_auth import (
    NODE_READWRITE_PREFIXES,
    cluster_auth_plan,
    cluster_users,
    frontend_user,
    membership_key,
    node_user,
)
from deploy.topology import default_topology_path, load_topology
from etcd_client import Permission, prefix_end

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

TOPOLOGY = load_topology(default_topology_path())
NODES = [n.name for n in TOPOLOGY.nodes]


def _prefix(key: bytes, perm: str) -> Permission:
    return Permission(key, prefix_end(key), perm)  # type: ignore[arg-type]


def test_node_role_reads_and_writes_the_records_and_the_group_heads_only() -> None:
    plan = cluster_auth_plan(TOPOLOGY)
    assert NODE_READWRITE_PREFIXES == ("/bkv/v1/records/", "/bkv/v1/heads/")
    assert plan.roles["bkv-node"] == (
        Permission(b"/bkv/v1/records/", b"/bkv/v1/records0", "readwrite"),
        Permission(b"/bkv/v1/heads/", b"/bkv/v1/heads0", "readwrite"),
    )


def test_frontends_cannot_touch_the_group_heads() -> None:
    plan = cluster_auth_plan(TOPOLOGY)
    assert [p for p in plan.roles["bkv-frontend"] if b"/bkv/v1/heads/".startswith(p.key)] == []


def test_each_node_may_write_its_own_membership_key_and_no_other() -> None:
    plan = cluster_auth_plan(TOPOLOGY)
    for node in TOPOLOGY.nodes:
        key = f"/bkv/v1/nodes/{node.dc}/{node.name}".encode()
        assert key.decode() == membership_key(node.dc, node.name)
        # range_end b"": the one key, not a prefix (dc-a-node-1 must not cover dc-a-node-10).
        assert plan.roles[f"bkv-member-{node.name}"] == (Permission(key, b"", "readwrite"),)
        assert plan.users[f"bkv-node-{node.name}"] == ("bkv-node", f"bkv-member-{node.name}")


def test_frontend_role_reads_nodes_and_owns_accounts_and_sessions_but_no_record() -> None:
    plan = cluster_auth_plan(TOPOLOGY)
    assert plan.roles["bkv-frontend"] == (
        _prefix(b"/bkv/v1/nodes/", "read"),
        _prefix(b"/bkv/v1/fleet/", "read"),  # the signed key announcement it serves (GetFleet)
        _prefix(b"/bkv/v1/accounts/", "readwrite"),
        _prefix(b"/bkv/v1/sessions/", "readwrite"),
    )
    for fe in TOPOLOGY.frontends:
        assert plan.users[f"bkv-frontend-{fe.name}"] == ("bkv-frontend",)
    granted = [p for p in plan.roles["bkv-frontend"] if b"/bkv/v1/records/".startswith(p.key)]
    assert granted == []


def test_exactly_these_roles_and_users_and_root_is_root() -> None:
    plan = cluster_auth_plan(TOPOLOGY)
    assert set(plan.roles) == {"bkv-node", "bkv-frontend", *(f"bkv-member-{n}" for n in NODES)}
    assert set(plan.users) == {
        "root", *(f"bkv-node-{n}" for n in NODES), "bkv-frontend-fe-1", "bkv-frontend-fe-2",
    }  # fmt: skip
    assert plan.users["root"] == ("root",)
    assert "root" not in plan.roles  # built in to etcd
    assert plan.problems() == []  # etcd_client's own checks of the plan
    assert sorted(cluster_users(TOPOLOGY)) == sorted(plan.users)
    assert cluster_users(TOPOLOGY)[0] == "root"


def test_no_role_grants_the_whole_keyspace_or_a_key_outside_bkv() -> None:
    plan = cluster_auth_plan(TOPOLOGY)
    for role, permissions in plan.roles.items():
        for p in permissions:
            assert p.key.startswith(b"/bkv/v1/"), role
            assert p.range_end in (b"", prefix_end(p.key)), role
            assert p.range_end != b"\0", role


def test_user_names() -> None:
    assert node_user("dc-a-node-1") == "bkv-node-dc-a-node-1"
    assert frontend_user("fe-1") == "bkv-frontend-fe-1"
