"""Live table of vault nodes (watched in etcd), same-DC-first choice, one mTLS channel per node."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc

from bkv.v1 import node_pb2_grpc
from etcd_client import (
    EtcdAuthError,
    EtcdClient,
    EtcdCompacted,
    EtcdPermissionDenied,
    WatchEvent,
    prefix_end,
)
from vault_common.channels import reconnect_backoff

NODES_PREFIX = b"/bkv/v1/nodes/"
NODES_END = prefix_end(NODES_PREFIX)
MAX_NODE_VALUE_BYTES = 4096

log = logging.getLogger(__name__)

# A node that comes back is dialled again within seconds, not after gRPC's 120 s max backoff.
_CHANNEL_OPTIONS = tuple(reconnect_backoff(initial_ms=200, max_ms=3000))


@dataclass(frozen=True)
class NodeInfo:
    name: str
    dc: str
    address: str  # host:port the frontend dials


def parse_node(value: bytes) -> NodeInfo | None:
    """The membership value {"name", "dc", "address"} as a NodeInfo; None if unusable."""
    if len(value) > MAX_NODE_VALUE_BYTES:
        return None
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    name, dc, address = data.get("name"), data.get("dc"), data.get("address")
    if not (isinstance(name, str) and isinstance(dc, str) and isinstance(address, str)):
        return None
    host, sep, port = address.rpartition(":")
    if not (name and dc and host and sep and port.isdigit()):
        return None
    return NodeInfo(name=name, dc=dc, address=address)


def order_nodes(nodes: Iterable[NodeInfo], own_dc: str, turn: int) -> list[NodeInfo]:
    """Nodes to try, best first: own DC (rotated by `turn`), then the others (rotated too)."""
    ordered = sorted(set(nodes), key=lambda n: (n.dc, n.name, n.address))
    local = [n for n in ordered if n.dc == own_dc]
    remote = [n for n in ordered if n.dc != own_dc]
    return _rotate(local, turn) + _rotate(remote, turn)


def affine_order(nodes: Iterable[NodeInfo], own_dc: str, account_id: str) -> list[NodeInfo]:
    """Nodes to try for `account_id`, best first: own DC, then the others, each group in
    rendezvous-hash order, so an account keeps going to the same node while membership holds.

    Any node can serve any account; affinity only lets that node's record cache save the etcd
    read of its optimistic compare-and-swap (the node never trusts the routing for safety).
    """
    seed = account_id.encode("utf-8") + b"\x00"

    def score(node: NodeInfo) -> bytes:
        return hashlib.blake2b(seed + node.name.encode("utf-8"), digest_size=8).digest()

    unique = set(nodes)
    local = sorted((n for n in unique if n.dc == own_dc), key=score)
    remote = sorted((n for n in unique if n.dc != own_dc), key=score)
    return local + remote


def _rotate(items: list[NodeInfo], turn: int) -> list[NodeInfo]:
    if not items:
        return items
    k = turn % len(items)
    return items[k:] + items[:k]


class NodeTable:
    """Membership keys → nodes, plus the round-robin turn used to spread requests."""

    def __init__(self, own_dc: str) -> None:
        self.own_dc = own_dc
        self._nodes: dict[bytes, NodeInfo] = {}
        self._turn = 0

    def replace(self, entries: Iterable[tuple[bytes, bytes]]) -> None:
        nodes: dict[bytes, NodeInfo] = {}
        for key, value in entries:
            node = parse_node(value)
            if node is None:
                log.warning("ignoring malformed membership key %r", key)
            else:
                nodes[key] = node
        self._nodes = nodes

    def put(self, key: bytes, value: bytes) -> None:
        node = parse_node(value)
        if node is None:
            log.warning("ignoring malformed membership key %r", key)
            self._nodes.pop(key, None)
        else:
            self._nodes[key] = node

    def delete(self, key: bytes) -> None:
        self._nodes.pop(key, None)

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes.values())

    def plan(self, account_id: str = "") -> list[NodeInfo]:
        """Nodes in the order one request of `account_id` should try them (see
        `affine_order`); without an account, round robin (advances the turn)."""
        if account_id:
            return affine_order(self._nodes.values(), self.own_dc, account_id)
        self._turn += 1
        return order_nodes(self._nodes.values(), self.own_dc, self._turn)


StateCallback = Callable[[bool], None]
Sleep = Callable[[float], Awaitable[None]]


class NodeWatcher:
    """Keeps a NodeTable equal to /bkv/v1/nodes/ in etcd.

    List (with its revision), then watch from revision+1. When the watch dies (a killed member
    ends it with UNAVAILABLE) resume from the last revision seen; if that revision has been
    compacted, list again. `ready` is True while a watch is established on a listed table.
    """

    def __init__(
        self,
        client: EtcdClient,
        table: NodeTable,
        *,
        on_state: StateCallback = lambda ready: None,
        on_change: Callable[[], None] = lambda: None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] | None = None,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        self._client = client
        self._table = table
        self._on_state = on_state
        self._on_change = on_change
        self._sleep = sleep
        self._rng = rng
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self.ready = False
        self.revision: int | None = None  # last revision applied to the table

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self._on_state(ready)

    async def list_nodes(self) -> None:
        result = await self._client.range(NODES_PREFIX, range_end=NODES_END)
        self._table.replace((kv.key, kv.value) for kv in result.kvs)
        self.revision = result.header.revision
        self._on_change()

    async def run(self) -> None:
        """Run until cancelled."""
        backoff = self._backoff_min_s
        while True:
            try:
                if self.revision is None:
                    await self.list_nodes()
                await self._follow()
                backoff = self._backoff_min_s
            except asyncio.CancelledError:
                raise
            except EtcdCompacted:
                log.info("node watch: revision %s compacted, listing again", self.revision)
                self.revision = None
                self._set_ready(False)
            except Exception as e:  # noqa: BLE001 - the watch must outlive any etcd failure
                self._set_ready(False)
                # Refused (not transient): the frontend's etcd user lacks read on the prefix.
                refused = isinstance(e, EtcdPermissionDenied | EtcdAuthError)
                log.log(
                    logging.ERROR if refused else logging.WARNING,
                    "node watch interrupted (%s%s), resuming from revision %s",
                    type(e).__name__,
                    ": check the frontend's etcd role" if refused else "",
                    self.revision,
                )
                jitter = 0.5 + (self._rng() if self._rng else 0.5)
                await self._sleep(backoff * jitter)
                backoff = min(self._backoff_max_s, backoff * 2)

    async def _follow(self) -> None:
        assert self.revision is not None
        # Ready once etcd has set the watch up: from then on no change can be missed.
        events = self._client.watch(
            NODES_PREFIX,
            range_end=NODES_END,
            start_revision=self.revision + 1,
            on_created=lambda _revision: self._set_ready(True),
        )
        async with aclosing(events):
            async for event in events:
                self.apply(event)
        # The iterator raises when the stream dies; ending without error is a broken watch too.
        raise ConnectionError("node watch ended")

    def apply(self, event: WatchEvent) -> None:
        key, revision = event.kv.key, event.kv.mod_revision
        if event.kind == "DELETE":
            self._table.delete(key)
        else:
            self._table.put(key, event.kv.value)
        if self.revision is None or revision > self.revision:
            self.revision = revision
        self._on_change()


class NodeChannels:
    """One reused grpc.aio secure channel per node address."""

    def __init__(self, credentials: Any, close_grace_s: float = 5.0) -> None:
        self._credentials = credentials
        self._channels: dict[str, Any] = {}
        self._close_grace_s = close_grace_s
        self._closing: set[asyncio.Task[None]] = set()

    def stub(self, node: NodeInfo) -> Any:
        channel = self._channels.get(node.address)
        if channel is None:
            # Security: the node's certificate is checked against the cluster CA and the host of
            # its advertised address (certificates carry SANs localhost / 127.0.0.1 / name).
            channel = grpc.aio.secure_channel(node.address, self._credentials, _CHANNEL_OPTIONS)
            self._channels[node.address] = channel
        return node_pb2_grpc.VaultNodeStub(channel)

    def retain(self, addresses: Sequence[str]) -> None:
        """Close (after a grace period for calls in flight) channels of nodes that left."""
        keep = set(addresses)
        for address in [a for a in self._channels if a not in keep]:
            channel = self._channels.pop(address)
            task = asyncio.get_running_loop().create_task(channel.close(self._close_grace_s))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close(None) for c in channels), *self._closing)
