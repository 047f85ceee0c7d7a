"""Who may do what in etcd: the cluster's etcd users and roles, built from its topology.

etcd runs with `--client-cert-auth` and auth on, so the CN of a client certificate is the etcd
user (`deploy.pki` issues one certificate per user). Every process gets only what it needs:

* `bkv-node-<node>`, roles `bkv-node` and `bkv-member-<node>`: reads and writes every sealed
  record and every record group's head (`/bkv/v1/heads/`, which the witnesses vouch for);
  writes its own membership key `/bkv/v1/nodes/<dc>/<node>` and no other.
* `bkv-frontend-<fe>`, role `bkv-frontend`: reads node membership and the fleet's signed key
  announcement (`/bkv/v1/fleet/`, written by the operator as root, vouched for by its signature
  alone); reads and writes accounts and sessions; no record at all.
* `root`, role `root`: everything (operators and the launcher: bootstrap, compaction,
  defragmentation, snapshots).

A frontend therefore cannot read, reset or erase a record, and a node cannot announce another
node or rebind an account. An etcd admin (`root`) can still deny service and erase; DESIGN's
invariant 8 (sealed records bound to their etcd metadata, the witnessed head) is what keeps even
root from granting a guess.

`cluster_auth_plan(topology)` is the one place these rights are written down (an
`etcd_client.AuthPlan`); `bootstrap` applies it with `etcd_client.bootstrap_auth` and enables
auth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deploy.errors import StartError
from deploy.pki import ETCD_TLS_NAME

if TYPE_CHECKING:  # etcd_client is imported where used: the topology module imports this one
    from deploy.etcd import EtcdIdentity
    from deploy.topology import Topology
    from etcd_client import AuthPlan, EtcdClientConfig, Permission
    from etcd_client.types import PermissionType

ROOT_USER = "root"
ROOT_ROLE = "root"  # etcd's built-in admin role
NODE_ROLE = "bkv-node"
FRONTEND_ROLE = "bkv-frontend"
NODE_USER_PREFIX = "bkv-node-"
FRONTEND_USER_PREFIX = "bkv-frontend-"
MEMBER_ROLE_PREFIX = "bkv-member-"
MAX_USER_NAME = 64  # the CN of a certificate is at most 64 characters (RFC 5280 ub-common-name)

RECORDS_PREFIX = "/bkv/v1/records/"
HEADS_PREFIX = "/bkv/v1/heads/"  # each record group's head, written with every counted guess
NODES_PREFIX = "/bkv/v1/nodes/"
ACCOUNTS_PREFIX = "/bkv/v1/accounts/"
SESSIONS_PREFIX = "/bkv/v1/sessions/"
FLEET_PREFIX = "/bkv/v1/fleet/"  # the signed key announcement (vault_common.wire)

# The prefixes every vault node reads and writes: the one place to add a node-wide prefix.
NODE_READWRITE_PREFIXES: tuple[str, ...] = (RECORDS_PREFIX, HEADS_PREFIX)
FRONTEND_READ_PREFIXES: tuple[str, ...] = (NODES_PREFIX, FLEET_PREFIX)
FRONTEND_READWRITE_PREFIXES: tuple[str, ...] = (ACCOUNTS_PREFIX, SESSIONS_PREFIX)


def node_user(node: str) -> str:
    return NODE_USER_PREFIX + node


def frontend_user(frontend: str) -> str:
    return FRONTEND_USER_PREFIX + frontend


def member_role(node: str) -> str:
    return MEMBER_ROLE_PREFIX + node


def membership_key(dc: str, node: str) -> str:
    """The key a vault node announces itself under (on its lease)."""
    return f"{NODES_PREFIX}{dc}/{node}"


def cluster_users(topology: Topology) -> list[str]:
    """Every etcd user of the cluster, root first (one client certificate each)."""
    return [
        ROOT_USER,
        *(node_user(n.name) for n in topology.nodes),
        *(frontend_user(f.name) for f in topology.frontends),
    ]


Grants = tuple[dict[str, tuple["Permission", ...]], dict[str, tuple[str, ...]]]


def _prefix(key: str, perm: PermissionType) -> Permission:
    from etcd_client import Permission, prefix_end

    return Permission(key.encode(), prefix_end(key.encode()), perm)


def node_grants(node: str, dc: str) -> Grants:
    """(roles, {user: roles}) for one vault node: every record and group head, its own
    membership key."""
    from etcd_client import Permission

    # Its own membership key alone (range_end b""): a node cannot announce, overwrite or
    # withdraw another node.
    own = membership_key(dc, node).encode()
    roles = {
        NODE_ROLE: tuple(_prefix(p, "readwrite") for p in NODE_READWRITE_PREFIXES),
        member_role(node): (Permission(own, b"", "readwrite"),),
    }
    return roles, {node_user(node): (NODE_ROLE, member_role(node))}


def frontend_grants(frontend: str) -> Grants:
    """(roles, {user: roles}) for one frontend: membership to read, accounts and sessions."""
    roles = {
        FRONTEND_ROLE: (
            *(_prefix(p, "read") for p in FRONTEND_READ_PREFIXES),
            *(_prefix(p, "readwrite") for p in FRONTEND_READWRITE_PREFIXES),
        )
    }
    return roles, {frontend_user(frontend): (FRONTEND_ROLE,)}


def cluster_auth_plan(topology: Topology) -> AuthPlan:
    """The roles and users of `topology`'s etcd (see the module's list), for `bootstrap`."""
    from etcd_client import AuthPlan

    roles: dict[str, tuple[Permission, ...]] = {}
    users: dict[str, tuple[str, ...]] = {ROOT_USER: (ROOT_ROLE,)}
    grants = [node_grants(n.name, n.dc) for n in topology.nodes]
    grants += [frontend_grants(f.name) for f in topology.frontends]
    for more_roles, more_users in grants:
        roles.update(more_roles)
        users.update(more_users)
    return AuthPlan(roles=roles, users=users)


def user_name_problems(topology: Topology) -> list[str]:
    """Names whose etcd user would not fit a certificate's CN."""
    return [
        f"{what} name {name!r} is too long: its etcd user {user!r} must fit a certificate's "
        f"common name ({MAX_USER_NAME} characters)"
        for what, name, user in [
            *(("vault node", n.name, node_user(n.name)) for n in topology.nodes),
            *(("frontend", f.name, frontend_user(f.name)) for f in topology.frontends),
        ]
        if len(user) > MAX_USER_NAME
    ]


BOOTSTRAP_TIMEOUT_S = 30.0


def client_config(endpoints: Sequence[str], identity: EtcdIdentity) -> EtcdClientConfig:
    """An etcd client configuration over TLS as the etcd user of `identity`."""
    from etcd_client import EtcdClientConfig, EtcdTls

    return EtcdClientConfig(
        endpoints=tuple(endpoints),
        tls=EtcdTls(
            ca=str(identity.ca),
            cert=str(identity.cert),
            key=str(identity.key),
            server_name=ETCD_TLS_NAME,
        ),
    )


def bootstrap(
    endpoints: Sequence[str],
    identity: EtcdIdentity,
    plan: AuthPlan,
    *,
    timeout_s: float = BOOTSTRAP_TIMEOUT_S,
) -> int:
    """Create `plan`'s roles and users and turn auth on (idempotent: `bootstrap_auth`), then
    return the etcd cluster id. `identity` is root's (any certificate of the etcd CA passes
    while auth is still off; from then on only root may change users and roles)."""
    from etcd_client import EtcdClient, bootstrap_auth

    config = client_config(endpoints, identity)

    async def run() -> int:
        client = EtcdClient(config)
        try:
            await bootstrap_auth(client, plan)
            status = await client.status()
            return int(status.header.cluster_id)
        finally:
            await client.close()

    async def bounded() -> int:
        return await asyncio.wait_for(run(), timeout_s)

    try:
        return asyncio.run(bounded())
    except TimeoutError as exc:
        raise StartError(f"etcd auth bootstrap did not finish in {timeout_s:g} s") from exc
    except Exception as exc:  # any client error: one message, the cause chained
        raise StartError(f"etcd auth bootstrap failed: {exc!r}") from exc
