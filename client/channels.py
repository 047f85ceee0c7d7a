"""Channel set-up: how the clients reach frontends (one gRPC channel per frontend, reused).

A connector only does I/O: it opens channels, makes a stub and probes a frontend. Which frontend
to try, when to probe it and what a failure means are decided once, in `client.core`, for the
blocking and the awaiting client alike.

Readiness is probed with the frontend's health service (SERVING), the same in both clients, not
with `channel_ready_future`: that one leaves a connectivity-polling thread which raises "Channel
closed" when the channel is closed under it (grpc/grpc#18995). `client.core` remembers a
frontend that answered, so a probe costs nothing on the common path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bkv.v1 import frontend_pb2_grpc
from client.config import ClientConfig
from client.errors import BadInput
from vault_common.channels import reconnect_backoff

__all__ = [
    "AioGrpcConnector",
    "AsyncConnector",
    "Connector",
    "GrpcConnector",
    "channel_credentials",
    "channel_options",
]

log = logging.getLogger(__name__)
_HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="")
_SERVING = health_pb2.HealthCheckResponse.SERVING


def channel_options(config: ClientConfig) -> list[tuple[str, Any]]:
    """gRPC channel options shared by the blocking and the awaiting client."""
    # Reconnect quickly when a frontend restarts (gRPC's default backoff is 1 s, up to 120 s).
    options = reconnect_backoff(initial_ms=200, max_ms=2000, min_ms=200)
    if not config.insecure:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return options


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials trusting only the cluster CA (None with `insecure = true`)."""
    if config.insecure:
        log.warning("insecure = true: plaintext gRPC to the frontends (tests only)")
        return None
    try:
        return grpc.ssl_channel_credentials(root_certificates=Path(config.ca).read_bytes())
    except OSError:
        raise BadInput(f"cannot read the cluster CA {config.ca}") from None


class Connector(Protocol):
    """How the blocking client reaches frontends: one stub per address, reused; tests inject one."""

    def stub(self, address: str) -> Any:
        """The `Frontend` stub for `address` (its channel is opened on first use)."""
        ...

    def ready(self, address: str, timeout: float) -> bool:
        """Whether `address` answers (within `timeout`) that it serves; sends nothing of the
        vault protocol."""
        ...

    def close(self) -> None:
        """Close every channel."""
        ...


class AsyncConnector(Protocol):
    """How the awaiting client reaches frontends (the same three operations, awaited)."""

    def stub(self, address: str) -> Any:
        """The `grpc.aio` `Frontend` stub for `address`, opened on first use."""
        ...

    async def ready(self, address: str, timeout: float) -> bool:
        """As `Connector.ready`."""
        ...

    async def close(self) -> None:
        """Close every channel."""
        ...


class GrpcConnector:
    """One blocking gRPC channel per frontend, opened lazily, reused, TLS unless insecure."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._channels: dict[str, tuple[grpc.Channel, frontend_pb2_grpc.FrontendStub]] = {}

    def _entry(self, address: str) -> tuple[grpc.Channel, frontend_pb2_grpc.FrontendStub]:
        if address not in self._channels:
            creds = channel_credentials(self._config)
            options = channel_options(self._config)
            if creds is None:
                channel = grpc.insecure_channel(address, options=options)
            else:
                channel = grpc.secure_channel(address, creds, options=options)
            self._channels[address] = (channel, frontend_pb2_grpc.FrontendStub(channel))
        return self._channels[address]

    def stub(self, address: str) -> Any:
        return self._entry(address)[1]

    def ready(self, address: str, timeout: float) -> bool:
        health = health_pb2_grpc.HealthStub(self._entry(address)[0])
        try:
            reply = health.Check(_HEALTH_REQUEST, timeout=timeout)
        except grpc.RpcError:
            return False  # nothing of the vault protocol was sent to this frontend
        return bool(reply.status == _SERVING)

    def close(self) -> None:
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()


class AioGrpcConnector:
    """One `grpc.aio` channel per frontend, opened lazily and reused."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._channels: dict[str, tuple[grpc.aio.Channel, frontend_pb2_grpc.FrontendStub]] = {}

    def _entry(self, address: str) -> tuple[grpc.aio.Channel, frontend_pb2_grpc.FrontendStub]:
        if address not in self._channels:
            creds = channel_credentials(self._config)
            options = channel_options(self._config)
            if creds is None:
                channel = grpc.aio.insecure_channel(address, options=options)
            else:
                channel = grpc.aio.secure_channel(address, creds, options=options)
            self._channels[address] = (channel, frontend_pb2_grpc.FrontendStub(channel))
        return self._channels[address]

    def stub(self, address: str) -> Any:
        return self._entry(address)[1]

    async def ready(self, address: str, timeout: float) -> bool:
        health = health_pb2_grpc.HealthStub(self._entry(address)[0])
        try:
            reply = await health.Check(_HEALTH_REQUEST, timeout=timeout)
        except grpc.RpcError:
            return False  # nothing of the vault protocol was sent to this frontend
        return bool(reply.status == _SERVING)

    async def close(self) -> None:
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
