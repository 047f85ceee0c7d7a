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
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CollectorRegistry

from bkv.v1 import node_pb2, node_pb2_grpc, witness_pb2_grpc
from etcd_client import EtcdClientConfig, EtcdTls
from vault_common.decode_guard import RejectUndecodable
from vault_common.metrics_http import MetricsServer
from vault_common.wire import NOT_APPLIED  # on an UNAVAILABLE that wrote nothing
from vault_node.audit import AuditLog, high_water_from_audit
from vault_node.checkpoint import Checkpointer, latest_checkpoint, load_state
from vault_node.compactor import Compactor
from vault_node.config import NodeConfig
from vault_node.group_commit import GroupCommitStore
from vault_node.heads import open_head
from vault_node.membership import MemberInfo, Membership
from vault_node.metrics import NodeMetrics, RequestMeter
from vault_node.service import (
    BadRequest,
    Precondition,
    RecordCorrupt,
    RecordTampered,
    ServiceConfig,
    StoreRefused,
    TokenServerKeys,
    Unavailable,
    UnsupportedProtocol,
    VaultService,
    WriteUnconfirmed,
)
from vault_node.store import EtcdStore, RecordStore
from vault_node.store_guard import StoreGuard
from vault_node.witness_core import Ref
from vault_node.witness_server import WitnessServer
from vault_node.witnessing import CaptureEndpoint, PeerWitness, RemoteWitnesses, channel_credentials
from vault_protocol.errors import DecryptError

log = logging.getLogger(__name__)

SERVICE_NAME = "bkv.v1.VaultNode"
MAX_MESSAGE_BYTES = 64 * 1024
HEALTH_POLL_S = 0.2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def trailers_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes with `status_for(exc)`."""
    if isinstance(exc, Unavailable) and not isinstance(exc, WriteUnconfirmed):
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
    if isinstance(exc, BadRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, "the vault node refused the request"
    if isinstance(exc, Precondition):
        return grpc.StatusCode.FAILED_PRECONDITION, "stale request: start the operation again"
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, "vault node unavailable"
    if isinstance(exc, RecordCorrupt):
        # RecordTampered too: one text for every stored record the node refuses.
        return grpc.StatusCode.DATA_LOSS, "stored record refused"
    return grpc.StatusCode.INTERNAL, "internal error"


def outcome_for(exc: BaseException) -> str:
    """The metrics' outcome label of an error `status_for` maps (vault_node.metrics.OUTCOMES)."""
    if isinstance(exc, BadRequest):
        return "invalid_argument"
    if isinstance(exc, Precondition):
        return "failed_precondition"
    if isinstance(exc, WriteUnconfirmed):
        return "write_unconfirmed"
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, RecordTampered):
        return "tampered"
    if isinstance(exc, StoreRefused):
        return "store_refused"
    if isinstance(exc, RecordCorrupt):
        return "data_loss"
    return "internal"


OPEN_STREAM = f"/{SERVICE_NAME}/OpenStream"
MALFORMED_FRAME = object()


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
        parse = handler.request_deserializer

        def lenient(data: bytes) -> Any:
            try:
                return parse(data)
            except (DecodeError, UnicodeDecodeError):
                return MALFORMED_FRAME

        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream,
            request_deserializer=lenient,
            response_serializer=handler.response_serializer,
        )


def _wall_clock_ms() -> int:
    # Wall clock, not monotonic: tickets are redeemed at any node of the fleet.
    return time.time_ns() // 1_000_000


class VaultNodeServicer(node_pb2_grpc.VaultNodeServicer):  # type: ignore[misc]
    """`VaultNode.Open` and `OpenStream`: hand each envelope to the service; UNAVAILABLE until
    ready. Both run `_open` and map its errors with `_refusal`, so a frame on a stream is
    answered exactly as the same request in a unary call (same checks, audit and statuses)."""

    def __init__(self, metrics: NodeMetrics | None = None) -> None:
        self.service: VaultService | None = None
        self.metrics = metrics or NodeMetrics(process_collectors=False)

    async def _open(self, account_id: str, envelope: bytes, meter: RequestMeter) -> bytes:
        if self.service is None:
            raise Unavailable("vault node is starting")
        return await self.service.handle(account_id, envelope, meter)

    def _refusal(
        self, exc: BaseException, method: str
    ) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
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
        meter = self.metrics.request()
        try:
            sealed = await self._open(request.account_id, request.envelope, meter)
        except asyncio.CancelledError:
            meter.done("cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 (mapped to a status right here, once)
            meter.done(outcome_for(exc))
            code, details, trailers = self._refusal(exc, "Open")
            if trailers:
                context.set_trailing_metadata(trailers)
            await context.abort(code, details)
        meter.done()
        return node_pb2.OpenReply(sealed_response=sealed)

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
        # The frame's deadline, as a unary call's: past it the work is cancelled (the frontend
        # has given up on the request and counts it as possibly applied).
        scope = asyncio.timeout(frame.deadline_ms / 1000 if frame.deadline_ms else None)
        meter = self.metrics.request()
        try:
            async with scope:
                sealed = await self._open(frame.account_id, frame.envelope, meter)
        except asyncio.CancelledError:
            meter.done("cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 (mapped to a status right here, once)
            trailers: tuple[tuple[str, str], ...]
            if isinstance(exc, TimeoutError) and scope.expired():
                meter.done("cancelled")
                code, details, trailers = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ()
                log.info("OpenStream -> DEADLINE_EXCEEDED: the frame's deadline passed")
            else:
                meter.done(outcome_for(exc))
                code, details, trailers = self._refusal(exc, "OpenStream")
        else:
            meter.done()
            return node_pb2.OpenFrameReply(id=frame.id, sealed_response=sealed)
        keys: dict[str, str] = dict(trailers)
        return node_pb2.OpenFrameReply(
            id=frame.id,
            code=code.value[0],
            details=details,
            not_applied=keys.get(NOT_APPLIED[0][0]) == "1",
            retry_after_ms=keys.get("retry-after-ms", ""),
        )


def server_credentials(config: NodeConfig) -> grpc.ServerCredentials:
    tls = config.tls
    cert = Path(tls.cert).read_bytes()
    if tls.ca:
        ca = Path(tls.ca).read_bytes()
        if ca.strip() not in cert:
            cert = cert.rstrip(b"\n") + b"\n" + ca
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), cert)],
        root_certificates=Path(tls.client_ca).read_bytes(),
        # Security: only callers with a certificate from the frontend CA get a connection.
        require_client_auth=True,
    )


def witness_credentials(config: NodeConfig) -> grpc.ServerCredentials:
    """The witness port: the node's server certificate; callers need a node client certificate
    (Security: a frontend's certificate, of another CA, gets no connection)."""
    tls, w = config.tls, config.witness
    cert = Path(tls.cert).read_bytes()
    if tls.ca:
        ca = Path(tls.ca).read_bytes()
        if ca.strip() not in cert:
            cert = cert.rstrip(b"\n") + b"\n" + ca
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), cert)],
        root_certificates=Path(w.client_ca).read_bytes(),
        require_client_auth=True,
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
        server = grpc.aio.server(
            # Security: a frame is bounded by the same receive limit as a unary request.
            interceptors=[RejectUndecodable(), LenientFrames()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
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
        member = MemberInfo(name=node.name, dc=node.dc, address=node.advertise)
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
                ticket_ttl_ms=node.ticket_ttl_s * 1000,
                record_groups=self.config.witness.groups,
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
        )
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
            )  # fmt: skip
            server = grpc.aio.server(
                interceptors=[RejectUndecodable()],
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.so_reuseport", 0),
                ],
            )
            witness_pb2_grpc.add_WitnessServicer_to_server(self._witness, server)
            port = server.add_secure_port(w.listen, witness_credentials(self.config))
            if port == 0:
                raise OSError(f"cannot bind the witness port {w.listen}")
            await server.start()
            self._witness_server = server
            log.info("witness %s listening on %s (node client CA only)", own, w.listen)
        credentials = channel_credentials(w.ca, w.client_cert, w.client_key)

        def witness_mac(data: bytes) -> bytes:
            return bytes(token.hmac_sha256("witness", data))

        endpoints: list[CaptureEndpoint] = [
            self._witness
            if name == own and self._witness is not None
            else PeerWitness(
                name, address, credentials, streams=w.capture_streams, session=witness_mac
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

    def _store_heads(self, token: Any, groups: int) -> Callable[[], Awaitable[list[Ref]]]:
        """Every group's head in etcd, opened with the token: what a witness an operator reset
        (`ceremony_cli witness-reset`, the store accepted as it is) adopts as its own."""
        store = self._store
        assert store is not None

        async def read() -> list[Ref]:
            refs: list[Ref] = []
            for group, stored in await store.read_heads():
                if not 0 <= group < groups:
                    continue
                try:
                    head = open_head(token, group, stored)
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
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
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
