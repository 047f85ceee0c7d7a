"""etcd auth bootstrap: roles with their key permissions, password-less users, then auth on.

Users have no password (`UserAddOptions.no_password`): each authenticates only by a client
certificate whose CN is its name, signed by the CA etcd trusts (`--client-cert-auth`). So a
stolen etcd endpoint address is useless without a certificate, and no password sits in any file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from etcd_client.client import EtcdClient
from etcd_client.types import Permission

__all__ = ["ROOT", "AuthPlan", "Permission", "bootstrap_auth"]

log = logging.getLogger(__name__)

# etcd's built-in superuser and role: auth can only be enabled when user "root" has role "root".
ROOT = "root"


@dataclass(frozen=True)
class AuthPlan:
    """Which roles exist (with their permissions) and which users have which roles."""

    roles: Mapping[str, tuple[Permission, ...]]  # role -> its permissions; "root" is built in
    users: Mapping[str, tuple[str, ...]]  # user -> roles; must contain "root" with role "root"

    def problems(self) -> list[str]:
        """Every problem with the plan (empty when etcd will accept all of it)."""
        problems: list[str] = []
        for role, permissions in self.roles.items():
            if not _is_name(role):
                problems.append(f"role name {role!r} must be non-empty, without spaces")
            if role == ROOT:
                problems.append('role "root" is built in (every permission): do not list it')
            if not isinstance(permissions, tuple) or not permissions:
                problems.append(f"role {role!r} needs a tuple of at least one permission")
                continue
            for i, permission in enumerate(permissions):
                if not isinstance(permission, Permission):
                    problems.append(f"role {role!r} permission {i} is not a Permission")
                    continue
                problems += [f"role {role!r} permission {i}: {p}" for p in permission.problems()]
        if ROOT not in self.users or ROOT not in self.users[ROOT]:
            problems.append('users must contain "root" with role "root" (etcd requires it)')
        for user, roles in self.users.items():
            if not _is_name(user):
                problems.append(f"user name {user!r} must be non-empty, without spaces")
            if not isinstance(roles, tuple):
                problems.append(f"user {user!r}: roles must be a tuple of role names")
                continue
            for role in roles:
                if role != ROOT and role not in self.roles:
                    problems.append(f"user {user!r} has role {role!r}, which the plan lacks")
        return problems

    def validate(self) -> None:
        """Raise ValueError listing every problem, if there is any."""
        problems = self.problems()
        if problems:
            raise ValueError("invalid etcd auth plan:\n  " + "\n  ".join(problems))


def _is_name(name: object) -> bool:
    """A usable etcd user or role name: a non-empty string without whitespace."""
    return isinstance(name, str) and bool(name) and not any(c.isspace() for c in name)


async def bootstrap_auth(client: EtcdClient, plan: AuthPlan) -> None:
    """Create the plan's roles (with their permissions) and users (no passwords), then enable
    auth.

    Idempotent: on a cluster where auth is already on (connect as root then: only root may
    administer auth) it adds only what is missing — every auth change bumps etcd's auth revision
    and makes requests in flight elsewhere fail once with "auth store is old", so nothing that
    is there already is written again. It never removes anything: a permission, role or user
    that the plan no longer has stays until an operator revokes it. A permission on the same
    key and range as the plan's but of another type is set to the plan's.
    """
    plan.validate()
    for role in sorted(plan.roles):
        if await client.role_add(role):
            log.info("etcd auth: added role %s", role)
        have = set(await client.role_get(role))
        for permission in plan.roles[role]:
            if permission not in have:
                await client.role_grant_permission(
                    role, permission.key, permission.range_end, permission.perm
                )
                log.info("etcd auth: role %s may %s %r", role, permission.perm, permission.key)
    for user in sorted(plan.users):
        if await client.user_add(user):
            log.info("etcd auth: added user %s (client certificate only)", user)
        have_roles = set(await client.user_get(user))
        for role in plan.users[user]:
            if role not in have_roles:
                await client.user_grant_role(user, role)
                log.info("etcd auth: user %s has role %s", user, role)
    await client.auth_enable()
    log.info("etcd auth: enabled")
