"""The cluster's recovery path with the work taken out: what the plumbing alone costs.

    python -m bkv_bench.shape_server store --cert C --key K --etcd host:port,... \
        --etcd-ca CA --etcd-cert C --etcd-key K --prefix P
    python -m bkv_bench.shape_server relay --cert C --key K --stores host:port,...
        [--reply-bytes 600] [--max-seconds 120] [--event-loop uvloop|asyncio]

`bkv-bench --ceilings` starts as many `relay` processes as the cluster has frontends and as many
`store` processes as it has vault nodes, and drives them with recoveries of the same shape as the
real ones: two unary TLS calls from the load generator to a relay, each relayed to the store that
the account's key is routed to (one per account, as the frontend routes an account to one node),
and each making one compare-and-swap on the account's etcd key from a store-local revision cache —
the steady state of a vault node (`vault_node.store.EtcdStore.swap` with its record cache). No
envelope, no OPAQUE, no token, no sessions: whatever the cluster spends beyond this is its own work.

A request is `account key (8 bytes) ‖ padding`; the store writes a record-sized value under
`--prefix`, which the harness deletes afterwards. Each process binds 127.0.0.1 on a free port,
prints `PORT <n>` once serving and stops when its stdin closes or after `--max-seconds`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bkv_bench.noop_server import bytes_call, bytes_channel, bytes_handler, serve_until_stopped
from etcd_client.types import Compare, Get, Put, RangeResult
from vault_common.event_loop import add_event_loop_option, run_on

SERVICE = "bkv.bench.v1.Shape"
RELAY_METHOD = f"/{SERVICE}/Relay"
STORE_METHOD = f"/{SERVICE}/Step"
ACCOUNT_BYTES = 8
VALUE_BYTES = 322  # a sealed record as a node writes it (as bkv_bench.ceilings.CAS_VALUE_BYTES)


def account_of(request: bytes) -> int:
    """The account a request belongs to (its first 8 bytes, big-endian).

    >>> account_of((7).to_bytes(8, "big") + bytes(4))
    7
    """
    if len(request) < ACCOUNT_BYTES:
        raise ValueError("request shorter than its account key")
    return int.from_bytes(request[:ACCOUNT_BYTES], "big")


def route(account: int, stores: int) -> int:
    """The store an account goes to: always the same one, as the frontend routes an account.

    >>> [route(a, 3) for a in range(5)]
    [0, 1, 2, 0, 1]
    """
    return account % stores


class Store:
    """One optimistic compare-and-swap per step, from a revision cache, as a vault node does."""

    def __init__(self, client: Any, prefix: bytes, reply: bytes) -> None:
        self._client = client
        self._prefix = prefix
        self._reply = reply
        self._value = os.urandom(VALUE_BYTES)
        self._revisions: dict[int, int] = {}  # account -> mod_revision of its key, 0 = absent
        self.conflicts = 0

    async def step(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        account = account_of(request)
        key = self._prefix + str(account).encode()
        for _ in range(2):  # a stale cache costs one failed compare, then the write goes through
            result = await self._client.txn(
                [Compare.mod_is(key, self._revisions.get(account, 0))],
                [Put(key, self._value)],
                [Get(key)],
            )
            if result.succeeded:
                self._revisions[account] = result.header.revision
                return self._reply
            self.conflicts += 1
            found = result.responses[0] if result.responses else None
            kvs = found.kvs if isinstance(found, RangeResult) else ()
            self._revisions[account] = kvs[0].mod_revision if kvs else 0
        await context.abort(grpc.StatusCode.ABORTED, "compare failed twice")
        raise AssertionError("unreachable")  # abort raises


async def serve_store(args: argparse.Namespace) -> None:
    from etcd_client import EtcdClient, EtcdClientConfig, EtcdTls

    client = EtcdClient(
        EtcdClientConfig(
            endpoints=tuple(args.etcd.split(",")),
            tls=EtcdTls(
                ca=args.etcd_ca,
                cert=args.etcd_cert,
                key=args.etcd_key,
                server_name=args.etcd_server_name,
            ),
            call_timeout_s=5.0,
        )
    )
    store = Store(client, args.prefix.encode(), bytes(args.reply_bytes))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((bytes_handler(STORE_METHOD, store.step),))
    try:
        await serve_until_stopped(server, args.cert_bytes, args.key_bytes, args.max_seconds)
    finally:
        await client.close()


async def serve_relay(args: argparse.Namespace) -> None:
    channels = [bytes_channel(args.cert_bytes, a) for a in args.stores.split(",")]
    calls = [bytes_call(c, STORE_METHOD) for c in channels]

    async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            account = account_of(request)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise AssertionError("unreachable") from err
        try:
            reply: bytes = await calls[route(account, len(calls))](request, timeout=5.0)
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), "store failed")
            raise AssertionError("unreachable") from err
        return reply

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((bytes_handler(RELAY_METHOD, relay),))
    try:
        await serve_until_stopped(server, args.cert_bytes, args.key_bytes, args.max_seconds)
    finally:
        for channel in channels:
            await channel.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bkv_bench.shape_server")
    p.add_argument("role", choices=("store", "relay"))
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--etcd", help="store: etcd endpoints host:port,...")
    p.add_argument("--etcd-ca", help="store: the etcd CA (PEM)")
    p.add_argument("--etcd-cert", help="store: the etcd client certificate to dial with")
    p.add_argument("--etcd-key", help="store: its private key")
    p.add_argument("--etcd-server-name", default="bkv-etcd", help="store: etcd's TLS name")
    p.add_argument("--prefix", help="store: the etcd key prefix to write under")
    p.add_argument("--stores", help="relay: the stores' addresses host:port,...")
    p.add_argument("--reply-bytes", type=int, default=600)
    p.add_argument("--max-seconds", type=float, default=120.0)
    add_event_loop_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.role == "store" and not (
        args.etcd and args.prefix and args.etcd_ca and args.etcd_cert and args.etcd_key
    ):
        p.error("store needs --etcd, --etcd-ca, --etcd-cert, --etcd-key and --prefix")
    if args.role == "store" and not args.prefix.startswith("/bkv-bench/"):
        p.error("store --prefix must start with /bkv-bench/ (it must never touch vault records)")
    if args.role == "relay" and not args.stores:
        p.error("relay needs --stores")
    if not 0 <= args.reply_bytes <= 1 << 20 or args.max_seconds <= 0:
        p.error("--reply-bytes must be 0..1048576 and --max-seconds positive")
    args.cert_bytes, args.key_bytes = args.cert.read_bytes(), args.key.read_bytes()
    serve = serve_store if args.role == "store" else serve_relay
    run_on(args.event_loop, serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
