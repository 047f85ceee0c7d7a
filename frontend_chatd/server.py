"""The frontend gRPC server: Frontend service, health, reflection; errors mapped once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from bkv.v1 import frontend_pb2, frontend_pb2_grpc
from etcd_client import EtcdClient
from frontend_chatd.accounts import (
    Accounts,
    AccountStoreUnavailable,
    Enrollment,
    EtcdKeyStore,
    LoginResult,
)
from frontend_chatd.config import FrontendConfig
from frontend_chatd.fleet import FleetAnnouncements, FleetUnavailable
from frontend_chatd.metrics import FrontendMetrics
from frontend_chatd.ratelimit import RateLimited, TokenBucketLimiter
from frontend_chatd.relay import (
    NodeRejected,
    NodeTimedOut,
    NoNodeAvailable,
    OpenCall,
    Relay,
    stub_open_call,
)
from frontend_chatd.routing import (
    NodeChannels,
    NodeTable,
    NodeWatcher,
)
from frontend_chatd.sessions import (
    Challenges,
    ChallengeSpent,
    InvalidArgument,
    SessionKeys,
    SessionTokens,
    Unauthenticated,
    bearer_token,
    issuer_id,
)
from frontend_chatd.streams import StreamPool, pooled_open_call
from vault_common.channels import mtls_channel_credentials
from vault_common.decode_guard import RejectUndecodable
from vault_common.event_loop import stop_on_signals
from vault_common.metrics_http import MetricsServer
from vault_common.tasks import cancel_and_wait
from vault_common.wire import NEW_CHALLENGE, NOT_APPLIED, RETRY_AFTER_MS_KEY

SERVICE_NAME = frontend_pb2.DESCRIPTOR.services_by_name["Frontend"].full_name
STOP_GRACE_S = 5.0

access_log = logging.getLogger("frontend_chatd.access")
log = logging.getLogger(__name__)

T = TypeVar("T")


class RequestTooLarge(Exception):
    """The envelope is larger than limits.max_request_bytes (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class StatusReply:
    code: grpc.StatusCode
    message: str
    trailing: tuple[tuple[str, str], ...] = ()


def to_status(error: BaseException) -> StatusReply:
    """The one mapping from the frontend's typed errors to the gRPC status the client sees."""
    if isinstance(error, ChallengeSpent):
        # The client may log in again at once with a new challenge (nothing was granted).
        return StatusReply(grpc.StatusCode.UNAUTHENTICATED, str(error), NEW_CHALLENGE)
    if isinstance(error, Unauthenticated):
        return StatusReply(grpc.StatusCode.UNAUTHENTICATED, str(error))
    if isinstance(error, InvalidArgument):
        return StatusReply(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if isinstance(error, RateLimited):
        return StatusReply(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(error),
            ((RETRY_AFTER_MS_KEY, str(error.retry_after_ms)),),
        )
    if isinstance(error, RequestTooLarge):
        return StatusReply(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    if isinstance(error, AccountStoreUnavailable | FleetUnavailable) or (
        isinstance(error, NoNodeAvailable) and not error.maybe_applied
    ):
        # Nothing reached a node that could have counted an attempt: the client may retry.
        return StatusReply(grpc.StatusCode.UNAVAILABLE, str(error), NOT_APPLIED)
    if isinstance(error, NoNodeAvailable | NodeTimedOut):
        return StatusReply(grpc.StatusCode.UNAVAILABLE, str(error))
    if isinstance(error, NodeRejected):
        trailing: tuple[tuple[str, str], ...] = (
            ((RETRY_AFTER_MS_KEY, error.status.retry_after_ms),)
            if error.status.retry_after_ms
            else ()
        )
        if error.status.not_applied:
            trailing += NOT_APPLIED
        return StatusReply(error.status.code, error.status.details, trailing)
    return StatusReply(grpc.StatusCode.INTERNAL, "internal error")


def account_tag(key: bytes, account_id: str) -> str:
    """What logs carry instead of the account id: enough to correlate lines, no directory.

    Security: keyed (HMAC under a key derived from the session secret), so guessable ids such as
    phone numbers cannot be found by hashing candidates; a plain hash could.
    """
    if not account_id:
        return "-"
    return hmac.new(key, account_id.encode(), hashlib.sha256).hexdigest()[:12]


def _peer_host(peer: str) -> str:
    """ "ipv4:1.2.3.4:5678" → "ipv4:1.2.3.4": one rate-limit bucket per address, not per port."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


@dataclass
class _Call:
    method: str
    peer: str
    account: str = ""
    started: float = field(default_factory=time.monotonic)


class FrontendServicer(frontend_pb2_grpc.FrontendServicer):  # type: ignore[misc]
    def __init__(
        self,
        accounts: Accounts,
        tokens: SessionTokens,
        relay: Relay,
        account_limiter: TokenBucketLimiter,
        peer_limiter: TokenBucketLimiter,
        max_request_bytes: int,
        log_tag_key: bytes,
        metrics: FrontendMetrics | None = None,
        fleet: FleetAnnouncements | None = None,
    ) -> None:
        self._metrics = metrics or FrontendMetrics(process_collectors=False)
        self._fleet = fleet
        self._log_tag_key = log_tag_key
        self._accounts = accounts
        self._tokens = tokens
        self._relay = relay
        self._account_limiter = account_limiter
        self._peer_limiter = peer_limiter
        self._max_request_bytes = max_request_bytes

    async def _handle(self, method: str, context: Any, body: Callable[[_Call], Awaitable[T]]) -> T:
        call = _Call(method, _peer_host(context.peer() or "unknown"))
        failure: StatusReply | None = None
        error: BaseException | None = None
        code = "OK"
        try:
            # Security: the per-peer bucket runs before any work (MAC checks, etcd reads).
            self._peer_limiter.acquire(call.peer)
            return await body(call)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as e:  # noqa: BLE001 - every error leaves through to_status()
            failure, error = to_status(e), e
            code = failure.code.name
            if failure.code == grpc.StatusCode.INTERNAL:
                # The type only: an exception's text could carry request bytes.
                log.error("%s failed unexpectedly: %s", method, type(e).__name__)
        finally:
            self._metrics.request(method, code, error, time.monotonic() - call.started)
            access_log.info(
                "method=%s account=%s peer=%s status=%s latency_ms=%.1f",
                method,
                account_tag(self._log_tag_key, call.account),
                call.peer,
                code,
                (time.monotonic() - call.started) * 1000,
            )
        assert failure is not None
        if failure.trailing:
            context.set_trailing_metadata(failure.trailing)
        await context.abort(failure.code, failure.message)
        raise AssertionError("unreachable: abort raises")

    async def GetChallenge(
        self, request: frontend_pb2.ChallengeRequest, context: Any
    ) -> frontend_pb2.ChallengeReply:
        async def body(call: _Call) -> frontend_pb2.ChallengeReply:
            call.account = request.account_id
            return frontend_pb2.ChallengeReply(
                challenge=self._accounts.challenge(request.account_id)
            )

        return await self._handle("GetChallenge", context, body)

    async def Login(
        self, request: frontend_pb2.LoginRequest, context: Any
    ) -> frontend_pb2.LoginReply:
        async def body(call: _Call) -> frontend_pb2.LoginReply:
            call.account = request.account_id
            result = await self._accounts.login(
                request.account_id,
                bytes(request.public_key),
                bytes(request.challenge),
                bytes(request.signature),
                request.enrollment_token,
            )
            return _session_reply(result)

        return await self._handle("Login", context, body)

    async def ChangeKey(
        self, request: frontend_pb2.ChangeKeyRequest, context: Any
    ) -> frontend_pb2.LoginReply:
        async def body(call: _Call) -> frontend_pb2.LoginReply:
            call.account = request.account_id
            result = await self._accounts.change_key(
                request.account_id, bytes(request.public_key), bytes(request.new_public_key),
                bytes(request.challenge), bytes(request.signature), bytes(request.new_signature),
            )  # fmt: skip
            return _session_reply(result)

        return await self._handle("ChangeKey", context, body)

    async def Relay(
        self, request: frontend_pb2.RelayRequest, context: Any
    ) -> frontend_pb2.RelayReply:
        async def body(call: _Call) -> frontend_pb2.RelayReply:
            session = self._tokens.verify(bearer_token(context.invocation_metadata()))
            call.account = session.account_id
            self._account_limiter.acquire(session.account_id)
            envelope = bytes(request.envelope)
            if not envelope:
                raise InvalidArgument("envelope is empty")
            if len(envelope) > self._max_request_bytes:
                raise RequestTooLarge("envelope too large")
            sealed = await self._relay.relay(session.account_id, envelope)
            return frontend_pb2.RelayReply(sealed_response=sealed)

        return await self._handle("Relay", context, body)

    async def GetFleet(
        self, request: frontend_pb2.FleetRequest, context: Any
    ) -> frontend_pb2.FleetReply:
        async def body(call: _Call) -> frontend_pb2.FleetReply:
            # No session: the announcement is public, and the client trusts only its signature.
            announcement = b"" if self._fleet is None else await self._fleet.current()
            return frontend_pb2.FleetReply(announcement=announcement)

        return await self._handle("GetFleet", context, body)


def _session_reply(result: LoginResult) -> frontend_pb2.LoginReply:
    return frontend_pb2.LoginReply(
        session_token=result.token, expires_at_ms=result.session.expires_at_ms
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class FrontendServer:
    """Everything one frontend process runs; `start()`, then `stop()`."""

    def __init__(self, config: FrontendConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        # A registry of this process's own (tests run several frontends in one process).
        self.metrics = FrontendMetrics(registry)
        self._metrics_server: MetricsServer | None = None
        fe, limits = config.frontend, config.limits
        keys = SessionKeys.derive(_read(fe.session_secret_file))
        enrollment = Enrollment(
            _read(fe.enrollment_secret_file) if fe.enrollment_secret_file else None
        )
        # Security: TLS to every member, authenticated (and authorised, by etcd's roles) as
        # the etcd user named by this frontend's client certificate.
        self.etcd = EtcdClient(config.etcd.client_config())
        self.table = NodeTable(fe.dc)
        tls = config.tls
        self.channels = NodeChannels(
            mtls_channel_credentials(tls.cluster_ca, tls.client_cert, tls.client_key)
        )
        self.streams: StreamPool | None = None
        self.health = health.aio.HealthServicer()
        self.watcher = NodeWatcher(
            self.etcd, self.table, on_state=self._update_health, on_change=self._nodes_changed
        )
        tokens = SessionTokens(keys, fe.session_ttl_s, time.time)
        self.servicer = FrontendServicer(
            accounts=Accounts(
                Challenges(keys, time.time, os.urandom, issuer_id(fe.name)),
                tokens,
                EtcdKeyStore(self.etcd),
                enrollment,
            ),
            tokens=tokens,
            relay=Relay(
                self.table.plan,
                self.metrics.timed_open(self._open_call(limits.relay_streams)),
                limits.node_deadline_s,
            ),
            account_limiter=TokenBucketLimiter(
                "account", limits.account_rate_per_s, limits.account_burst, time.monotonic
            ),
            peer_limiter=TokenBucketLimiter(
                "peer", limits.peer_rate_per_s, limits.peer_burst, time.monotonic
            ),
            max_request_bytes=limits.max_request_bytes,
            log_tag_key=keys.log_tag_key,
            metrics=self.metrics,
            fleet=FleetAnnouncements.from_etcd(self.etcd, time.monotonic),
        )
        self.server: Any = None
        self.port = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._serving: bool | None = None
        self.metrics.watch_state(
            serving=lambda: bool(self._serving), nodes=lambda: len(self.table.nodes())
        )

    def _open_call(self, streams: int) -> OpenCall:
        """Open over a pool of `streams` long-lived streams per node; unary calls when 0."""
        if streams == 0:
            return stub_open_call(self.channels.stub)
        self.streams = StreamPool(self.channels.stub, streams)
        return pooled_open_call(self.streams)

    def _nodes_changed(self) -> None:
        if self.streams is not None:
            self.streams.retain({n.address for n in self.table.nodes()})
        self.channels.retain([n.address for n in self.table.nodes()])
        self._update_health(self.watcher.ready)

    def _update_health(self, _ready: bool) -> None:
        serving = self.watcher.ready and bool(self.table.nodes())
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        log.info(
            "health: %s (%d nodes)",
            "SERVING" if serving else "NOT_SERVING",
            len(self.table.nodes()),
        )
        for service in ("", SERVICE_NAME):
            task = asyncio.get_running_loop().create_task(self.health.set(service, status))
            task.add_done_callback(lambda t: t.exception())

    async def start(self) -> int:
        fe, limits, tls = self.config.frontend, self.config.limits, self.config.tls
        if fe.metrics_address:
            self._metrics_server = MetricsServer.start(fe.metrics_address, self.metrics.registry)
            log.info("metrics on http://%s/metrics", fe.metrics_address)
        self.server = grpc.aio.server(
            interceptors=[RejectUndecodable()],
            options=[
                ("grpc.max_receive_message_length", limits.max_request_bytes),
                # Two processes must never share a port silently.
                ("grpc.so_reuseport", 0),
            ],
        )
        frontend_pb2_grpc.add_FrontendServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        credentials = grpc.ssl_server_credentials([(_read(tls.key), _read(tls.cert))])
        self.port = self.server.add_secure_port(fe.listen, credentials)
        if not self.port:
            raise OSError(f"cannot listen on {fe.listen}")
        self._update_health(False)
        await self.server.start()
        self._watch_task = asyncio.get_running_loop().create_task(self.watcher.run())
        log.info("frontend %s (%s) listening on %s", fe.name, fe.dc, fe.listen)
        return int(self.port)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace_s)
        await cancel_and_wait(self._watch_task)
        if self.streams is not None:
            self.streams.close()
        await self.channels.close()
        await self.etcd.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()


async def serve(config: FrontendConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    server = FrontendServer(config)
    stop = stop_on_signals()
    await server.start()
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await server.stop()
