"""The vault node's gRPC server: mTLS (frontend certificates only), VaultNode.Open, health.

Startup: bind with health NOT_SERVING, open the token (every PKCS#11 call on its one thread),
derive the AKE key pair, connect to etcd and register membership; SERVING once all of that is
done, NOT_SERVING whenever the fail-closed gate shuts. `status_for` is the one place where an
error becomes a gRPC status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CollectorRegistry

from bkv.v1 import node_pb2, node_pb2_grpc, witness_pb2_grpc
from etcd_client import EtcdClientConfig, EtcdTls
from vault_common.channels import mtls_channel_credentials
from vault_common.decode_guard import MALFORMED, RejectUndecodable, lenient
from vault_common.metrics_http import MetricsServer
from vault_common.tasks import cancel_and_wait
from vault_common.wire import (
    NOT_APPLIED,  # on an UNAVAILABLE that wrote nothing
    UNKNOWN_FLEET_DETAILS,
    account_refusal_details,
)
from vault_node.audit import AuditLog, high_water_from_audit
from vault_node.checkpoint import Checkpointer, latest_checkpoint, load_state
from vault_node.compactor import Compactor
from vault_node.config import NodeConfig
from vault_node.fleet_keys import FleetStateError, Keyring, load_keyring, read_fleet_state
from vault_node.group_commit import GroupCommitStore
from vault_node.heads import open_head
from vault_node.membership import MemberInfo, Membership
from vault_node.metrics import NodeMetrics, RequestMeter
from vault_node.records import FIRST_KEYS
from vault_node.reseal import Resealer
from vault_node.service import (
    MAX_CLOCK_SKEW_MS,
    AccountRefused,
    BadRequest,
    Precondition,
    RecordCorrupt,
    RecordTampered,
    ServiceConfig,
    StoreRefused,
    TokenServerKeys,
    Unavailable,
    UnknownFleet,
    UnsupportedProtocol,
    VaultService,
    WriteUnconfirmed,
)
from vault_node.store import EtcdStore, RecordStore
from vault_node.store_guard import StoreGuard
from vault_node.token_api import HsmError
from vault_node.witness_core import Ref
from vault_node.witness_server import WitnessServer
from vault_node.witnessing import CaptureEndpoint, PeerWitness, RemoteWitnesses
from vault_protocol.errors import DecryptError

log = logging.getLogger(__name__)

SERVICE_NAME = "bkv.v1.VaultNode"
MAX_MESSAGE_BYTES = 64 * 1024
HEALTH_POLL_S = 0.2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def trailers_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes with `status_for(exc)`: `bkv-not-applied: 1` on an
    UNAVAILABLE that wrote nothing, and on an account refusal (nothing written either)."""
    if isinstance(exc, Unavailable) and not isinstance(exc, WriteUnconfirmed):
        return NOT_APPLIED
    if isinstance(exc, AccountRefused):
        return NOT_APPLIED
    return ()


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping from the node's errors to gRPC status codes and details.

    Security: the details are one fixed text per code. The frontend reads them, and a specific
    reason ("registration ticket expired", "malformed KE1") would tell it which step an
    envelope carried; the node's own log keeps the reason.
    """
    if isinstance(exc, UnsupportedProtocol):
        # Names both versions (the frontend reads the version in the clear anyway), so that
        # the client can tell its user to upgrade (client.errors.error_from_status).
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, AccountRefused):
        # One fixed text per reason (and the record's last accepted ts_ms when stale): the
        # client tells its user what to do; the frontend learns that a signature was refused.
        return grpc.StatusCode.UNAUTHENTICATED, account_refusal_details(exc.reason, exc.floor_ms)
    if isinstance(exc, BadRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, "the vault node refused the request"
    if isinstance(exc, UnknownFleet):
        # Fixed text the client recognises (it then learns the fleet's new key); the fleet id
        # travels in the clear, so naming the refusal tells the frontend nothing.
        return grpc.StatusCode.FAILED_PRECONDITION, UNKNOWN_FLEET_DETAILS
    if isinstance(exc, Precondition):
        return grpc.StatusCode.FAILED_PRECONDITION, "stale request: start the operation again"
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, "vault node unavailable"
    if isinstance(exc, RecordCorrupt):
        # RecordTampered too: one text for every stored record the node refuses.
        return grpc.StatusCode.DATA_LOSS, "stored record refused"
    return grpc.StatusCode.INTERNAL, "internal error"


# The metrics' outcome label of each error `status_for` maps, the first that matches (a
# subclass before its base); anything else is "internal".
_ERROR_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (BadRequest, "invalid_argument"),
    (Precondition, "failed_precondition"),
    (WriteUnconfirmed, "write_unconfirmed"),
    (Unavailable, "unavailable"),
    (RecordTampered, "tampered"),
    (StoreRefused, "store_refused"),
    (RecordCorrupt, "data_loss"),
)


def outcome_for(exc: BaseException) -> str:
    """The metrics' outcome label of an error `status_for` maps (vault_node.metrics.OUTCOMES)."""
    if isinstance(exc, AccountRefused):
        return "auth_stale" if exc.reason == "stale" else "auth_refused"
    return next((label for kind, label in _ERROR_OUTCOMES if isinstance(exc, kind)), "internal")


# What a request is refused with: gRPC status code, details and trailing metadata.
Refusal = tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]

OPEN_STREAM = f"/{SERVICE_NAME}/OpenStream"
MALFORMED_FRAME = MALFORMED  # an OpenStream frame that does not decode


class LenientFrames(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """OpenStream's frames decoded leniently: an undecodable one becomes MALFORMED_FRAME, which
    the servicer answers by closing the stream with INVALID_ARGUMENT (invariant 7: a precise
    status, never grpcio's UNKNOWN and traceback). RejectUndecodable does this for unary calls."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method != OPEN_STREAM
            or handler.stream_stream is None
            or handler.request_deserializer is None
        ):
            return handler
        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream,
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _wall_clock_ms() -> int:
    # Wall clock, not monotonic: tickets are redeemed at any node of the fleet.
    return time.time_ns() // 1_000_000


class VaultNodeServicer(node_pb2_grpc.VaultNodeServicer):  # type: ignore[misc]
    """`VaultNode.Open` and `OpenStream`: hand each envelope to the service; UNAVAILABLE until
    ready. Both run `_answer` (`_open`, errors mapped by `_refusal`), so a frame on a stream is
    answered exactly as the same request in a unary call (same checks, audit and statuses)."""

    def __init__(self, metrics: NodeMetrics | None = None) -> None:
        self.service: VaultService | None = None
        self.metrics = metrics or NodeMetrics(process_collectors=False)

    async def _open(self, account_id: str, envelope: bytes, meter: RequestMeter) -> bytes:
        if self.service is None:
            raise Unavailable("vault node is starting")
        return await self.service.handle(account_id, envelope, meter)

    async def _answer(
        self, account_id: str, envelope: bytes, method: str, deadline_s: float | None = None
    ) -> bytes | Refusal:
        """The sealed response to one request, or the refusal to answer instead, metered.

        `deadline_s`: a frame's own deadline (a unary call has gRPC's): past it the work is
        cancelled (the frontend has given up on the request and counts it as possibly applied).
        """
        scope = asyncio.timeout(deadline_s)
        meter = self.metrics.request()
        try:
            async with scope:
                sealed = await self._open(account_id, envelope, meter)
        except asyncio.CancelledError:
            meter.done("cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 (mapped to a status right here, once)
            if isinstance(exc, TimeoutError) and scope.expired():
                meter.done("cancelled")
                log.info("%s -> DEADLINE_EXCEEDED: the frame's deadline passed", method)
                return grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ()
            meter.done(outcome_for(exc))
            return self._refusal(exc, method)
        meter.done()
        return sealed

    def _refusal(self, exc: BaseException, method: str) -> Refusal:
        """(code, details, trailers) for `exc`, logged once, without input bytes."""
        code, details = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            # The type and the stack only: an unexpected message could quote input bytes.
            frames = traceback.extract_tb(exc.__traceback__)
            where = " <- ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(frames))
            log.error("unexpected %s in %s at %s", type(exc).__name__, method, where)
        else:
            # Our own messages (no secrets, no input bytes): the reason stays in this log.
            log.info("%s -> %s: %s", method, code.name, exc)
        return code, details, trailers_for(exc)

    async def Open(self, request: Any, context: Any) -> Any:
        answer = await self._answer(request.account_id, request.envelope, "Open")
        if isinstance(answer, bytes):
            return node_pb2.OpenReply(sealed_response=answer)
        code, details, trailers = answer
        if trailers:
            context.set_trailing_metadata(trailers)
        await context.abort(code, details)

    async def OpenStream(self, frames: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """One request at a time: read a frame, answer it, read the next (node.proto). The
        stream's own status never carries "not applied" (it is not about one frame)."""
        async for frame in frames:
            if frame is MALFORMED_FRAME or frame.id == 0:
                # Security: a frontend that sends what no frontend of ours sends is cut off;
                # nothing of the frame is logged.
                log.warning("OpenStream: a malformed frame, stream closed")
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed frame")
            yield await self._frame_reply(frame)

    async def _frame_reply(self, frame: Any) -> Any:
        """The reply frame to `frame`: what Open would answer, status and trailers included."""
        deadline_s = frame.deadline_ms / 1000 if frame.deadline_ms else None
        answer = await self._answer(frame.account_id, frame.envelope, "OpenStream", deadline_s)
        if isinstance(answer, bytes):
            return node_pb2.OpenFrameReply(id=frame.id, sealed_response=answer)
        code, details, trailers = answer
        keys: dict[str, str] = dict(trailers)
        return node_pb2.OpenFrameReply(
            id=frame.id,
            code=code.value[0],
            details=details,
            not_applied=keys.get(NOT_APPLIED[0][0]) == "1",
            retry_after_ms=keys.get("retry-after-ms", ""),
        )


def _mtls_credentials(config: NodeConfig, client_ca: str) -> grpc.ServerCredentials:
    """The node's server certificate (with its CA appended when missing); callers must present a
    client certificate of `client_ca`."""
    tls = config.tls
    cert = Path(tls.cert).read_bytes()
    if tls.ca:
        ca = Path(tls.ca).read_bytes()
        if ca.strip() not in cert:
            cert = cert.rstrip(b"\n") + b"\n" + ca
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), cert)],
        root_certificates=Path(client_ca).read_bytes(),
        require_client_auth=True,
    )


def server_credentials(config: NodeConfig) -> grpc.ServerCredentials:
    # Security: only callers with a certificate from the frontend CA get a connection.
    return _mtls_credentials(config, config.tls.client_ca)


def witness_credentials(config: NodeConfig) -> grpc.ServerCredentials:
    """The witness port: the node's server certificate; callers need a node client certificate
    (Security: a frontend's certificate, of another CA, gets no connection)."""
    return _mtls_credentials(config, config.witness.client_ca)


def _grpc_server(*interceptors: Any) -> grpc.aio.Server:
    """A gRPC server with the node's receive limit (no port reuse: a taken port is an error)."""
    return grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )


class VaultNodeServer:
    """One vault node process: gRPC server, token, etcd store, membership, audit log."""

    def __init__(self, config: NodeConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        # A registry of this process's own (tests run several nodes in one process).
        self.metrics = NodeMetrics(registry)
        self._metrics_server: MetricsServer | None = None
        self._servicer = VaultNodeServicer(self.metrics)
        self._health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._token: Any = None
        self._store: EtcdStore | None = None
        self._membership: Membership | None = None
        self._audit: AuditLog | None = None
        self._guard: StoreGuard | None = None
        self._checkpointer: Checkpointer | None = None
        self._compactor: Compactor | None = None
        self._witness: WitnessServer | None = None
        self._witness_server: grpc.aio.Server | None = None
        self._witnesses: RemoteWitnesses | None = None
        self._resealer: Resealer | None = None
        self._keyring: Keyring | None = None
        self._member: MemberInfo | None = None
        self._batches: GroupCommitStore | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reported: int | None = None
        self._checkpoint_sequence = 0
        self.port = 0

    def serving(self) -> bool:
        return (
            self._servicer.service is not None
            and self._membership is not None
            and self._membership.serving()
            and self._guard is not None
            and not self._guard.alarm
        )

    async def start(self) -> None:
        """Bind (NOT_SERVING), open the token, connect etcd, register; SERVING when done."""
        await self._set_health(NOT_SERVING)
        if self.config.node.metrics_address:
            self._metrics_server = MetricsServer.start(
                self.config.node.metrics_address, self.metrics.registry
            )
            log.info("metrics on http://%s/metrics", self.config.node.metrics_address)
        # Security: a frame is bounded by the same receive limit as a unary request.
        server = _grpc_server(RejectUndecodable(), LenientFrames())
        node_pb2_grpc.add_VaultNodeServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = server.add_secure_port(self.config.node.listen, server_credentials(self.config))
        if self.port == 0:
            raise OSError(f"cannot bind {self.config.node.listen}")
        await server.start()
        self._server = server
        log.info("listening on %s (mTLS, frontend CA only)", self.config.node.listen)

        # The event loop's thread is this process's one PKCS#11 thread: every token call of the
        # node is made by the loop and blocked it anyway, so a hop to a worker thread only added
        # two thread switches per call (measured: 35-90 µs of CPU per call, on top of 39 µs for
        # an HMAC). Any other thread's PKCS#11 call now raises: SoftHSM runs unlocked.
        from vault_node.hsm import adopt_calling_thread

        adopt_calling_thread()
        token = self.metrics.metered_token(self._open_token())
        self._token = token
        keys = TokenServerKeys.derive(token)
        log.info("token %s open, AKE key pair derived", self.config.hsm.token_label)
        # The fleet key epochs the operator set in the token (never from etcd); a token whose
        # state names a key it lacks does not start.
        keyring = load_keyring(token, read_fleet_state(token))
        self._keyring = keyring
        self._log_keyring(keyring, "at start")

        node = self.config.node
        guard = self._open_guard(token)
        self._audit = AuditLog.open(node.audit_log, node.name, _wall_clock_ms)
        etcd = self.config.etcd
        # Each etcd call must end well inside the lease TTL, so fail-closed reacts in time.
        self._store = EtcdStore(
            EtcdClientConfig(
                endpoints=tuple(etcd.endpoints),
                tls=EtcdTls(ca=etcd.ca, cert=etcd.cert, key=etcd.key, server_name=etcd.server_name),
                call_timeout_s=min(2.0, node.lease_ttl_s / 3),
            ),
            guard,
            observe=self.metrics.etcd_call,
        )
        member = MemberInfo(node.name, node.dc, node.advertise, fleet=keyring.describe())
        self._member = member
        self._audit.write_fleet(keyring.describe())
        store = self._store
        self._membership = Membership(
            self._store,
            member,
            node.lease_ttl_s,
            monotonic=time.monotonic,
            on_change=lambda _serving: self._wake.set(),
            # Before serving again after an etcd outage (a restore is one), one linearizable
            # read through the store guard: a rolled-back store latches the alarm first.
            confirm=lambda: store.probe(member.key),
        )
        self.metrics.watch_state(
            serving=self.serving, lease_age_s=self._membership.lease_age_s,
            store_alarm=lambda: guard.alarm, alarmed_groups=guard.alarmed_group_count,
        )  # fmt: skip
        self._checkpointer = Checkpointer(
            token,
            guard,
            self._checkpoint_sequence,
            interval_s=node.checkpoint_interval_ms / 1000,
            probe=lambda: store.probe(member.key),
        )
        self._compactor = Compactor(store.compact, delay_s=node.compact_delay_ms / 1000)
        witnesses = await self._start_witnessing(token)
        records: RecordStore = self._store
        if node.group_commit_us:
            records = self._batches = GroupCommitStore(
                self._store, window_s=node.group_commit_us / 1e6, max_batch=node.group_commit_max
            )
        self._servicer.service = VaultService(
            token=token,
            store=records,
            keys=keys,
            config=ServiceConfig(
                node_name=node.name,
                default_max_attempts=node.max_attempts,
                max_attempts_cap=node.max_attempts_cap,
                rebind_delay_ms=node.account_rebind_delay_s * 1000,
                auth_max_future_ms=node.account_auth_max_future_s * 1000,
                ticket_ttl_ms=node.ticket_ttl_s * 1000,
                record_groups=self.config.witness.groups,
                opaque_context=node.opaque_context.encode("utf-8"),
            ),
            clock_ms=_wall_clock_ms,
            rng=os.urandom,
            audit=self._audit,
            # Not self.serving: a node whose store guard latched an alarm still takes requests
            # and refuses each with DATA_LOSS (service.StoreRefused), so that frontends do not
            # fail its accounts over to nodes that never saw their revisions.
            serving=self._membership.serving,
            on_erased=self._compactor.note,
            store_alarm=lambda: guard.alarm,
            witnesses=witnesses,
            group_alarms=guard,
            metrics=self.metrics,
            keyring=keyring,
        )
        # A placeholder of the old epoch is erased only once no registration ticket issued
        # before this node switched sealing can still name it (twice a ticket's life).
        self._resealer = Resealer(
            self._servicer.service, self._store, rate_per_s=node.reseal_rate_per_s,
            placeholder_delay_s=2 * (node.ticket_ttl_s + MAX_CLOCK_SKEW_MS / 1000),
        )  # fmt: skip
        self._resealer.start()
        self._checkpointer.start()
        self._compactor.start()
        self._membership.start()
        self._health_task = asyncio.get_running_loop().create_task(self._sync_health())

    async def _start_witnessing(self, token: Any) -> RemoteWitnesses:
        """The fleet's witnesses as this node's writes see them, and, on a witness node, its
        own witness service (on a port of its own, node client certificates only)."""
        w = self.config.witness
        peers = w.peer_map()
        own = w.name or self.config.node.name
        if w.serve:
            self._witness = WitnessServer(
                own, w.groups, len(peers), token, Path(w.journal),
                checkpoint_interval_s=w.checkpoint_interval_ms / 1000,
                on_verdict=lambda v, told: self.metrics.witness_verdict(v.name.lower(), told),
            )  # fmt: skip
            server = _grpc_server(RejectUndecodable())
            witness_pb2_grpc.add_WitnessServicer_to_server(self._witness, server)
            port = server.add_secure_port(w.listen, witness_credentials(self.config))
            if port == 0:
                raise OSError(f"cannot bind the witness port {w.listen}")
            await server.start()
            self._witness_server = server
            log.info("witness %s listening on %s (node client CA only)", own, w.listen)
        credentials = mtls_channel_credentials(w.ca, w.client_cert, w.client_key)

        def witness_mac(data: bytes) -> bytes:
            return bytes(token.hmac_sha256("witness", data))

        endpoints: list[CaptureEndpoint] = [
            self._witness
            if name == own and self._witness is not None
            else PeerWitness(
                name,
                address,
                credentials,
                streams=w.capture_streams,
                session=witness_mac,
                on_ask=self.metrics.witness_ask,
            )
            for name, address in sorted(peers.items())
        ]
        self._witnesses = RemoteWitnesses(
            endpoints, len(peers), witness_mac, os.urandom,
            local=own if self._witness is not None else None,
        )  # fmt: skip
        if self._witness is not None:
            self._witness.start(self._witnesses, store_heads=self._store_heads(token, w.groups))
        return self._witnesses

    def _log_keyring(self, keyring: Keyring, when: str) -> None:
        described = keyring.describe()
        log.info(
            "fleet keys %s: epochs %s accepted, sealing with epoch %d (fleet ids %s)",
            when, described["accepted"], keyring.seal, described["fleet_ids"],
        )  # fmt: skip

    async def reload(self) -> bool:
        """Take the token's fleet state again (SIGHUP; `bkv-cluster rotate-fleet` sends it after
        each change it made in the tokens): the new keyring serves every request from then on,
        requests in flight are not dropped. A state naming a key the token lacks is refused and
        the node keeps what it had (logged); True when the new state was taken."""
        service = self._servicer.service
        if service is None or self._token is None:
            log.warning("reload before the node started: ignored")
            return False
        token = self._token
        try:
            token.forget_keys()  # another process added or destroyed keys in the token
            keyring = load_keyring(token, read_fleet_state(token))
        except (FleetStateError, HsmError) as exc:
            log.error(
                "fleet reload refused, keeping epochs %s (sealing with %d): %s",
                list(service.keyring.accepted), service.keyring.seal, exc,
            )  # fmt: skip
            return False
        service.use_keyring(keyring)
        self._keyring = keyring
        self._log_keyring(keyring, "reloaded")
        if self._audit is not None:
            self._audit.write_fleet(keyring.describe())
        if self._resealer is not None:
            self._resealer.keyring_changed(keyring)
        if self._membership is not None and self._member is not None:
            self._member = replace(self._member, fleet=keyring.describe())
            await self._membership.update(self._member)
        return True

    def _store_heads(self, token: Any, groups: int) -> Callable[[], Awaitable[list[Ref]]]:
        """Every group's head in etcd, opened with the token: what a witness an operator reset
        (`ceremony_cli witness-reset`, the store accepted as it is) adopts as its own."""
        store = self._store
        assert store is not None

        async def read() -> list[Ref]:
            refs: list[Ref] = []
            keys = self._keyring.seal_keys if self._keyring is not None else FIRST_KEYS
            for group, stored in await store.read_heads():
                if not 0 <= group < groups:
                    continue
                try:
                    head = open_head(token, group, stored, keys)
                except DecryptError:
                    # Security: only heads a vault node sealed are adopted; this one stays
                    # unknown (its group's writes answer BEHIND until someone fixes it).
                    log.error("group %d's head in etcd does not open: not adopted", group)
                    continue
                refs.append(Ref(group, head.version, head.hash))
            return refs

        return read

    def _open_guard(self, token: Any) -> StoreGuard:
        """The store guard, from the token's checkpoint and the audit log's last commits."""
        node = self.config.node
        accepted = latest_checkpoint(token).accepted_at_ms
        audit_mark = high_water_from_audit(node.audit_log, since_ms=accepted)
        state, self._checkpoint_sequence = load_state(token, audit_mark)
        if not state.cluster_id:
            log.warning(
                "no etcd cluster id is pinned in token %s (the key ceremony ran without one): "
                "pinning the first cluster etcd names (trust on first use)",
                self.config.hsm.token_label,
            )
        if state.alarm:
            log.error("STORE ROLLBACK ALARM (from the token's checkpoint): %s", state.alarm)
        log.info("store high-water mark at start: revision %d", state.high_water)
        self._guard = StoreGuard(state, on_alarm=self._store_alarm, on_pin=self._pinned)
        return self._guard

    def _store_alarm(self, reason: str) -> None:
        """The guard saw etcd rolled back (or another cluster): stop serving, say so loudly."""
        log.error(
            "STORE ROLLBACK ALARM: %s. This node refuses to serve until an operator clears the "
            "alarm with its token (python -m vault_node.ceremony_cli store-alarm-clear).",
            reason,
        )
        if self._audit is not None:
            self._audit.write("rollback", b"")
        if self._checkpointer is not None:
            self._checkpointer.wake()
        self._wake.set()

    def _pinned(self, cluster_id: int) -> None:
        log.warning("pinned etcd cluster %016x (first seen)", cluster_id)
        if self._checkpointer is not None:
            self._checkpointer.wake()

    def _open_token(self) -> Any:
        from vault_node.hsm import Token, TokenSpec  # loads the PKCS#11 layer only when needed

        hsm = self.config.hsm
        spec = TokenSpec(
            module=hsm.module,
            softhsm_conf=Path(hsm.softhsm_conf),
            token_label=hsm.token_label,
            pin_file=Path(hsm.pin_file),
        )
        # Read-write for the store checkpoint's data objects only (vault_node.checkpoint).
        return Token.open(spec, read_write=True)

    async def _set_health(self, status: int) -> None:
        if status != self._reported:
            self._reported = status
            for name in ("", SERVICE_NAME):
                await self._health.set(name, status)
            if self._server is not None:
                log.info("health %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    async def _sync_health(self) -> None:
        # Polled as well as woken: the fail-closed gate also shuts by time alone.
        while True:
            await self._set_health(SERVING if self.serving() else NOT_SERVING)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), HEALTH_POLL_S)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Graceful stop: NOT_SERVING, revoke the lease, drain calls, close etcd and the token."""
        await cancel_and_wait(self._health_task)
        await self._health.enter_graceful_shutdown()
        if self._witness is not None:
            self._witness.close_streams()  # peers' idle capture streams would hold the stop
        if self._witness_server is not None:
            await self._witness_server.stop(grace_s)
        if self._witness is not None:
            try:
                await self._witness.stop()  # a last checkpoint of the witnessed heads
            except Exception:
                log.exception("could not write the witness's last checkpoint")
        if self._witnesses is not None:
            await self._witnesses.close()
        if self._resealer is not None:
            await self._resealer.stop()
        if self._compactor is not None:
            await self._compactor.stop()
        if self._membership is not None:
            await self._membership.stop()
        if self._checkpointer is not None:
            try:
                await self._checkpointer.stop()  # a last checkpoint of the high-water mark
            except Exception:
                log.exception("could not write the last store checkpoint")
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._batches is not None:
            await self._batches.close()
        if self._store is not None:
            await self._store.close()
        if self._token is not None:
            token, self._token = self._token, None
            token.close()  # on the loop's thread, the PKCS#11 thread (see `start`)
        if self._audit is not None:
            self._audit.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        log.info("stopped")
