"""Key loss, the operator's half: let a new account key log in at the frontends.

    bkv-cluster rebind-account --dir DIR ACCOUNT PUBLIC_KEY_HEX [--replace]   # a local cluster
    python -m deploy.account_rebind --endpoints https://A:2379,... --cacert etcd-ca.pem \\
        --cert etcd-user-root.pem --key etcd-user-root.key ACCOUNT PUBLIC_KEY_HEX [--replace]

A user whose device (and account key) is gone makes a new key on a new device (`bkv account
create --no-login`, `bkv account show` prints its public key) and proves who they are to the
operator by whatever means the service uses for account recovery. The operator then adds the
new key to the account's frontend binding (vault_common.account_binding) as etcd's root: the
new device may log in, and the old key still may, so that the old device, if it is not lost
after all, can still reach the vault and cancel. The vault itself keeps refusing the new key
until the user's signed rebind request (`bkv account rebind-request`) has waited out
`node.account_rebind_delay_s` there without the old key signing anything; the first recovery
after that binds it (docs/architecture.md, "Account keys"). `--replace` drops every other key
(after the vault's rebind has matured and bound, to shut the lost key out of the frontends).

Security: this changes who may *relay* for the account, not who may spend its guesses or
read its key: the vault checks its own binding. The operator's etcd root is needed because
frontends own the bindings (their etcd role) and nothing else should write them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployError
from deploy.etcd import EtcdIdentity
from deploy.pki import ETCD_TLS_NAME
from vault_common.account_binding import (
    PUBLIC_KEY_BYTES,
    binding_key,
    decode_binding,
    encode_binding,
)

TIMEOUT_S = 15.0


class RebindError(DeployError):
    """The rebind was refused (bad input) or etcd failed; nothing was changed."""


@dataclass(frozen=True)
class Rebound:
    account_id: str
    before: tuple[bytes, ...]  # the keys bound before (empty: none)
    after: tuple[bytes, ...]


def parse_public_key(text: str) -> bytes:
    """A raw Ed25519 public key from its 64 hex digits (as `bkv account show` prints it)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise RebindError("the public key must be 64 hex digits") from None
    if len(key) != PUBLIC_KEY_BYTES:
        raise RebindError("the public key must be 64 hex digits (32 bytes)")
    return key


def rebound_keys(before: tuple[bytes, ...], new: bytes, *, replace: bool) -> tuple[bytes, ...]:
    """The binding after the rebind: the bound key first, then `new` (or `new` alone)."""
    if replace or not before or before[0] == new:
        return (new,)
    return (before[0], new)


def rebind_account(
    endpoints: Sequence[str],
    identity: EtcdIdentity,
    account_id: str,
    public_key: bytes,
    *,
    replace: bool = False,
) -> Rebound:
    """Add (or with `replace`, set) `public_key` in the account's binding, by compare-and-swap
    on the value read (so a concurrent login or key change is never overwritten)."""
    from etcd_client import Compare, EtcdClient, EtcdClientConfig, EtcdTls, Put

    if not account_id or "/" in account_id:
        raise RebindError("account id must be non-empty, without '/'")
    config = EtcdClientConfig(
        endpoints=tuple(endpoints),
        tls=EtcdTls(
            ca=str(identity.ca), cert=str(identity.cert), key=str(identity.key),
            server_name=ETCD_TLS_NAME,
        ),
    )  # fmt: skip
    key = binding_key(account_id)

    async def run() -> Rebound:
        client = EtcdClient(config)
        try:
            kv = await client.get(key)
            before = decode_binding(kv.value) if kv is not None else ()
            after = rebound_keys(before, public_key, replace=replace)
            compare = (
                Compare.value_is(key, kv.value) if kv is not None else Compare.create_is(key, 0)
            )
            result = await client.txn([compare], [Put(key, encode_binding(after))], [])
            if not result.succeeded:
                raise RebindError("the binding changed meanwhile (a login?): run it again")
            return Rebound(account_id, before, after)
        finally:
            await client.close()

    try:
        return asyncio.run(asyncio.wait_for(run(), TIMEOUT_S))
    except RebindError:
        raise
    except TimeoutError as exc:
        raise RebindError(f"etcd did not answer within {TIMEOUT_S:g} s") from exc
    except Exception as exc:  # any client error: one message, the cause chained
        raise RebindError(f"etcd refused or failed: {exc!r}") from exc


def report(rebound: Rebound) -> str:
    keys = ", ".join(k.hex() for k in rebound.after)
    return (
        f"account {rebound.account_id}: frontends now accept the key(s) {keys}\n"
        "next: the user runs `bkv account rebind-request` on the new device; the vault binds "
        "the new key once node.account_rebind_delay_s has passed without the old key signing"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.account_rebind", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--endpoints", required=True, help="comma-separated https://host:port")
    p.add_argument("--cacert", required=True, help="the etcd CA")
    p.add_argument("--cert", required=True, help="etcd root's client certificate")
    p.add_argument("--key", required=True, help="its private key")
    p.add_argument("--replace", action="store_true", help="bind the new key alone")
    p.add_argument("account")
    p.add_argument("public_key", help="64 hex digits")
    args = p.parse_args(argv)
    endpoints = [e.strip().removeprefix("https://") for e in args.endpoints.split(",")]
    identity = EtcdIdentity(ca=Path(args.cacert), cert=Path(args.cert), key=Path(args.key))
    try:
        rebound = rebind_account(
            endpoints, identity, args.account, parse_public_key(args.public_key),
            replace=args.replace,
        )  # fmt: skip
    except RebindError as exc:
        print(f"rebind-account: {exc}", file=sys.stderr)
        return 1
    print(report(rebound))
    return 0


if __name__ == "__main__":
    sys.exit(main())
