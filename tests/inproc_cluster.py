"""The in-process cluster: the unit tier's stand-in for `deploy.cluster.Cluster`.

Real code, one process: vault nodes (`vault_node.service.VaultService` behind the real
`vault_node.server.VaultNodeServicer`, each on a `SoftToken` of one fleet), the witnesses of
the fleet (`LocalWitnesses`), one `MemoryRecordStore` in etcd's place, and a frontend (the real
`FrontendServicer`, `Relay` and routing, its account keys in memory), all served over gRPC on
loopback with TLS as in the multi-process cluster: the client trusts the cluster CA and sees
only frontends; the frontend reaches nodes over mTLS with its client certificate, and a node
accepts only certificates of the frontend CA. Everything runs on one asyncio loop in a
background thread, so a test can use the blocking client.

What a test uses of `Cluster` it finds here under the same names: `up()`, `down()`,
`exists()`, `directory`, `client_config_path` (a client.toml naming the frontends, the CA, the
fleet key and the fleet root key), `fleet_id()`. A fleet rotation's steps are `rotate(step)`, as
`bkv-cluster rotate-fleet` runs them (tokens, reloads, the announcement the frontend serves).
What it omits (the integration tier has it):
etcd (no quorum loss, no compaction, no rollback guard or checkpoints), PKCS#11 (keys in
memory), node membership and leases (the frontend's node table is filled once), processes and
their supervision (nothing to kill, stop or restart), audit log files (each node's audit is a
`MemoryAudit`, read with `audit_entries()`), and the witnesses' own gRPC service and journals.

    with InProcessCluster(tmp_path) as cluster:
        client = VaultClient(load_config(cluster.client_config_path), key_dir=..., ksf="fast")
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bkv.store.v1 import sealed_pb2
from bkv.v1 import frontend_pb2_grpc, node_pb2, node_pb2_grpc
from client.protocol import Outbound
from deploy.pki import CertPaths, Issued, issue_client, issue_server, make_ca
from frontend_chatd.accounts import Accounts, Enrollment
from frontend_chatd.fleet import FleetAnnouncements
from frontend_chatd.ratelimit import TokenBucketLimiter
from frontend_chatd.relay import Relay, stub_open_call
from frontend_chatd.routing import NodeChannels, NodeInfo, NodeTable
from frontend_chatd.server import FrontendServicer
from frontend_chatd.sessions import Challenges, SessionKeys, SessionTokens, issuer_id
from vault_common.channels import mtls_channel_credentials
from vault_node.audit import MemoryAudit
from vault_node.fleet_keys import epoch_labels, load_keyring, read_fleet_state, write_fleet_state
from vault_node.heads import group_of, next_head, open_head
from vault_node.records import open_record, seal_record
from vault_node.reseal import Resealer
from vault_node.server import VaultNodeServicer
from vault_node.service import ServiceConfig, TokenServerKeys, VaultService
from vault_node.soft_token import SoftToken
from vault_node.store import MemoryRecordStore
from vault_node.witness_core import Ref
from vault_node.witnessing import LocalWitnesses
from vault_protocol.envelope import FleetKey
from vault_protocol.fleet import FleetAnnouncement, FleetRootKey, sign_announcement
from vault_protocol.opaque import DEFAULT_CONTEXT

T = TypeVar("T")
NODES = (("dc-a-1", "dc-a"), ("dc-b-1", "dc-b"), ("dc-c-1", "dc-c"))
FRONTEND_DC = "dc-a"
START_TIMEOUT_S = 30.0


class MemoryKeyStore:
    """The frontend's account keys in memory (`frontend_chatd.accounts.KeyStore`), bound once."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    async def get(self, account_id: str) -> bytes | None:
        return self.keys.get(account_id)

    async def bind(self, account_id: str, public_key: bytes) -> bytes:
        # Put-if-absent, as EtcdKeyStore's transaction: the first login's key stays bound.
        return self.keys.setdefault(account_id, public_key)

    async def replace(self, account_id: str, old: bytes, new: bytes) -> bytes | None:
        # Compare-and-swap on the value, as EtcdKeyStore's transaction.
        if self.keys.get(account_id) == old:
            self.keys[account_id] = new
        return self.keys.get(account_id)


@dataclass
class InProcessNode:
    """One vault node: its token, service, audit and loopback address."""

    name: str
    dc: str
    token: SoftToken
    service: VaultService
    audit: MemoryAudit
    address: str = ""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class InProcessVault:
    """One real vault node called directly and synchronously, without gRPC: the node service on
    a software token, a memory store and in-process witnesses. For client tests that fake the
    frontends' transport (tests/unit/test_client_vault.py, test_client_cli.py) but not the
    vault's logic. `handle` works from plain code and from inside a running event loop."""

    def __init__(self, *, max_attempts: int = 10, record_groups: int = 16) -> None:
        self.token = SoftToken(label="node-1")
        self.store = MemoryRecordStore()
        self.audit = MemoryAudit()
        self.witnesses = LocalWitnesses(["w1", "w2", "w3"], record_groups)
        self.service = VaultService(
            token=self.token, store=self.store, keys=TokenServerKeys.derive(self.token),
            config=ServiceConfig(node_name="node-1", default_max_attempts=max_attempts,
                                 record_groups=record_groups),
            clock_ms=_wall_clock_ms, rng=os.urandom, audit=self.audit, witnesses=self.witnesses,
        )  # fmt: skip
        self.fleet = FleetKey(self.token.kem_public_key())

    def handle(self, account_id: str, envelope: bytes) -> bytes:
        """The node's sealed answer; a `ServiceError` as the node raises it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.service.handle(account_id, envelope))
        # Called from a coroutine (the asyncio client's fake transport): a loop of its own.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.service.handle(account_id, envelope)).result()


class InProcessCluster:
    """Nodes, witnesses, a frontend and a memory store in this process (see the module doc)."""

    def __init__(
        self,
        directory: Path,
        *,
        nodes: Sequence[tuple[str, str]] = NODES,
        max_attempts: int = 10,
        record_groups: int = 16,
        rebind_delay_ms: int = 7 * 86_400_000,
        opaque_context: bytes = DEFAULT_CONTEXT,
    ) -> None:
        self._directory = directory
        self._node_specs = tuple(nodes)
        self.opaque_context = opaque_context
        # The fleet root key (a token of its own in a real cluster) and the signed announcement
        # of the current epoch, which the frontend serves (GetFleet).
        self.root_key = ed25519.Ed25519PrivateKey.generate()
        self.epoch = 1
        self.announcement = b""
        self._max_attempts = max_attempts
        self._rebind_delay_ms = rebind_delay_ms
        self._record_groups = record_groups
        self.store = MemoryRecordStore()
        self.witnesses = LocalWitnesses([name for name, _ in nodes], record_groups)
        self.fleet_token = SoftToken(label="fleet")
        self.nodes: list[InProcessNode] = []
        self.frontends: list[str] = []
        self.account_keys = MemoryKeyStore()  # the frontend's account bindings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[grpc.aio.Server] = []
        self._channels: NodeChannels | None = None

    # -- the interface shared with deploy.cluster.Cluster --

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def client_config_path(self) -> Path:
        return self._directory / "client.toml"

    def exists(self) -> bool:
        return self._loop is not None

    def fleet_id(self) -> bytes:
        return FleetKey(self.fleet_token.kem_public_key()).fleet_id

    def up(self) -> None:
        """Certificates, nodes and the frontend, serving on loopback; client.toml written."""
        if self._loop is not None:
            raise RuntimeError("the in-process cluster is already up")
        self._directory.mkdir(parents=True, exist_ok=True)
        self.announce()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="inproc-cluster")
        self._thread.start()
        try:
            self.run(self._start(self._write_pki()), timeout=START_TIMEOUT_S)
        except BaseException:
            self.down()
            raise
        self._write_client_config()

    def down(self) -> None:
        """Stop every server, close the channels and the loop (idempotent)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result(START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join(START_TIMEOUT_S)
            loop.close()

    def __enter__(self) -> InProcessCluster:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # -- what only the in-process tier offers --

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coro` on the cluster's loop (where the services live) and wait for it."""
        assert self._loop is not None, "the in-process cluster is not up"
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def audit_entries(self) -> list[tuple[str, bytes, int | None, int | None]]:
        """Every node's audit entries (event, record id, attempts, max attempts)."""
        return [entry for node in self.nodes for entry in node.audit.entries]

    def evaluations(self) -> int:
        """OPRF evaluations over the whole cluster, as the audit records them."""
        return sum(1 for entry in self.audit_entries() if str(entry[0]) == "evaluate")

    def node_sender(self, account_id: str, node: int = 0) -> Callable[[Outbound], bytes]:
        """`send` for `client.protocol.run`: `VaultNode.Open` on a node over gRPC with the
        frontend's client certificate, as the frontend relays it for a verified session."""

        def send(outbound: Outbound) -> bytes:
            request = node_pb2.OpenRequest(account_id=account_id, envelope=outbound.envelope)
            return self.run(self._open(node, request))

        return send

    def rewrite_record(
        self, account_id: str, change: Callable[[sealed_pb2.Record], None], node: int = 0
    ) -> None:
        """Change an account's record as a vault node writes one (sealed for the key's next
        version, its group's head advanced and witnessed): for records no client can make."""
        self.run(self._rewrite(self.nodes[node].token, account_id, change))

    def announce(self) -> bytes:
        """Sign the current epoch's announcement with the root key; the frontend serves it."""
        kem = epoch_labels(self.epoch)[0]
        announcement = FleetAnnouncement(
            self.epoch, self.fleet_token.kem_public_key(kem), self.opaque_context
        )
        self.announcement = sign_announcement(announcement, self.root_key.sign)
        return self.announcement

    def rotate(self, step: str) -> None:
        """One step of a fleet rotation to the next epoch (deploy/rotation.py): "install" (the
        new keys into every token, both epochs accepted), "announce", "switch" (seal with it),
        "reseal" (one re-seal pass on the first node), "retire" (stop accepting the old epoch,
        destroy its keys). Every node reloads after a change of its token."""
        self.run(self._rotate(step))

    async def _rotate(self, step: str) -> None:
        new = max(e for node in self.nodes for e in read_fleet_state(node.token).accepted)
        if step == "install":
            new += 1
            self.fleet_token.install(self.fleet_token.material.with_epoch(new))
        elif step == "announce":
            self.epoch = new
            self.announce()
            return
        elif step == "reseal":
            service = self.nodes[0].service
            await Resealer(service, self.store, rate_per_s=1e6, placeholder_delay_s=0).run_once()
            return
        for node in self.nodes:
            token, state = node.token, read_fleet_state(node.token)
            old = state.accepted[0]
            if step == "install":
                token.install(self.fleet_token.material)
                state = state.accepting(new)
            elif step == "switch":
                state = state.sealing(new)
            elif step == "retire":
                state = state.retiring(
                    old, FleetKey(token.kem_public_key(epoch_labels(old)[0])).fleet_id
                )
            write_fleet_state(token, state)
            node.service.use_keyring(load_keyring(token, read_fleet_state(token)))
            if step == "retire":
                token.destroy(epoch_labels(old))

    # -- internals, on the loop --

    async def _open(self, node: int, request: node_pb2.OpenRequest) -> bytes:
        assert self._channels is not None
        n = self.nodes[node]
        stub = self._channels.stub(NodeInfo(name=n.name, dc=n.dc, address=n.address))
        reply = await stub.Open(request, timeout=10)
        return bytes(reply.sealed_response)

    async def _rewrite(
        self, token: SoftToken, account_id: str, change: Callable[[sealed_pb2.Record], None]
    ) -> None:
        rid = token.hmac_sha256("id_mac", account_id.encode())
        group = group_of(rid, self._record_groups)
        snapshot = await self.store.read(rid, group)
        assert snapshot.record is not None, "no record to rewrite"
        record = open_record(token, rid, snapshot.record)
        change(record)
        head = open_head(token, group, snapshot.head)
        meta = snapshot.record.meta
        sealed = seal_record(token, rid, record, meta.successor(), os.urandom)
        sealed_head, new_head = next_head(token, head, rid, sealed, os.urandom)
        revision, _ = await self.store.write(rid, sealed, meta, group, sealed_head, head.meta)
        assert revision, "the record changed while it was rewritten"
        for state in self.witnesses.states.values():  # as a witnessed write leaves them
            state.capture(Ref.of(head.ref), head.prev, Ref.of(new_head.ref))

    def _write_pki(self) -> dict[str, CertPaths]:
        """A cluster CA (node and frontend server certificates) and a frontend CA (the
        frontend's client certificate, the only one nodes accept), as deploy.pki makes them."""
        now = dt.datetime.now(dt.UTC)
        pki = self._directory / "pki"
        pki.mkdir(exist_ok=True)
        cluster_ca, frontend_ca = make_ca("bkv cluster CA", now=now), make_ca("bkv fe CA", now=now)
        issued: dict[str, Issued] = {
            "cluster-ca": cluster_ca,
            "frontend-ca": frontend_ca,
            "fe-1": issue_server(cluster_ca, "fe-1", now=now),
            "fe-1-client": issue_client(frontend_ca, "fe-1", now=now),
            **{name: issue_server(cluster_ca, name, now=now) for name, _ in self._node_specs},
        }
        paths: dict[str, CertPaths] = {}
        for name, cert in issued.items():
            paths[name] = CertPaths(cert=pki / f"{name}.crt", key=pki / f"{name}.key")
            cert.write(paths[name])
        return paths

    async def _start(self, pki: dict[str, CertPaths]) -> None:
        frontend_ca = pki["frontend-ca"].cert.read_bytes()
        table = NodeTable(FRONTEND_DC)
        for name, dc in self._node_specs:
            token = self.fleet_token.same_fleet(name)
            audit = MemoryAudit()
            service = VaultService(
                token=token, store=self.store, keys=TokenServerKeys.derive(token),
                config=ServiceConfig(node_name=name, default_max_attempts=self._max_attempts,
                                     record_groups=self._record_groups,
                                     rebind_delay_ms=self._rebind_delay_ms,
                                     opaque_context=self.opaque_context),
                clock_ms=_wall_clock_ms, rng=os.urandom, audit=audit, witnesses=self.witnesses,
            )  # fmt: skip
            servicer = VaultNodeServicer()
            servicer.service = service
            server = grpc.aio.server()
            node_pb2_grpc.add_VaultNodeServicer_to_server(servicer, server)
            credentials = grpc.ssl_server_credentials(
                [(pki[name].key.read_bytes(), pki[name].cert.read_bytes())],
                root_certificates=frontend_ca,
                require_client_auth=True,  # Security: frontend certificates only, as a node
            )
            port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
            self._servers.append(server)
            node = InProcessNode(name, dc, token, service, audit, f"127.0.0.1:{port}")
            self.nodes.append(node)
            table.put(f"/bkv/v1/nodes/{name}".encode(), json.dumps(
                {"name": name, "dc": dc, "address": node.address}).encode())  # fmt: skip
        self._channels = NodeChannels(
            mtls_channel_credentials(
                str(pki["cluster-ca"].cert), str(pki["fe-1-client"].cert),
                str(pki["fe-1-client"].key),
            )
        )  # fmt: skip
        await self._start_frontend(pki, table, self._channels)

    async def _start_frontend(
        self, pki: dict[str, CertPaths], table: NodeTable, channels: NodeChannels
    ) -> None:
        keys = SessionKeys.derive(os.urandom(32))
        tokens = SessionTokens(keys, 3600, time.time)
        servicer = FrontendServicer(
            accounts=Accounts(
                Challenges(keys, time.time, os.urandom, issuer_id("inproc-frontend")),
                tokens,
                self.account_keys,
                Enrollment(None),
            ),
            tokens=tokens,
            relay=Relay(table.plan, stub_open_call(channels.stub), 5.0),
            account_limiter=TokenBucketLimiter("account", 20.0, 40, time.monotonic),
            peer_limiter=TokenBucketLimiter("peer", 200.0, 400, time.monotonic),
            max_request_bytes=65_536,
            log_tag_key=keys.log_tag_key,
            fleet=FleetAnnouncements(self._current_announcement, _no_cache()),
        )
        health_servicer = health.aio.HealthServicer()
        for service in ("", "bkv.v1.Frontend"):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        server = grpc.aio.server()
        frontend_pb2_grpc.add_FrontendServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        fe = pki["fe-1"]
        port = server.add_secure_port(
            "127.0.0.1:0",
            grpc.ssl_server_credentials([(fe.key.read_bytes(), fe.cert.read_bytes())]),
        )
        await server.start()
        self._servers.append(server)
        self.frontends.append(f"127.0.0.1:{port}")

    async def _stop(self) -> None:
        for server in reversed(self._servers):
            await server.stop(0)
        self._servers.clear()
        if self._channels is not None:
            await self._channels.close()
            self._channels = None

    async def _current_announcement(self) -> bytes:
        return self.announcement

    def _write_client_config(self) -> None:
        fleet_pub = self._directory / "fleet.pub"
        fleet_pub.write_bytes(FleetKey(self.fleet_token.kem_public_key()).to_pem())
        root_pub = self._directory / "root.pub"
        raw = self.root_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        root_pub.write_bytes(FleetRootKey(raw).to_pem())
        frontends = ", ".join(f'"{address}"' for address in self.frontends)
        self.client_config_path.write_text(
            "[cluster]\n"
            f"frontends = [{frontends}]\n"
            f'ca = "{self._directory / "pki" / "cluster-ca.crt"}"\n'
            'server_name = "localhost"\n'
            f'fleet_public_key = "{fleet_pub}"\n'
            f'fleet_id = "{self.fleet_id().hex()}"\n'
            f'fleet_root_key = "{root_pub}"\n'
        )


def _no_cache() -> Callable[[], float]:
    """A clock that moves a minute per reading: the frontend's announcement cache never hits
    (a test publishes and reads at once)."""
    ticks = itertools.count(step=60)
    return lambda: float(next(ticks))
