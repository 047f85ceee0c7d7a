"""gRPC channel set-up more than one part shares: mTLS credentials read from files, reconnect
backoff, and etcd's channel options.

>>> dict(reconnect_backoff(initial_ms=100, max_ms=1000))["grpc.max_reconnect_backoff_ms"]
1000
>>> dict(etcd_channel_options("bkv-etcd"))["grpc.lb_policy_name"]
'round_robin'
"""

from __future__ import annotations

from typing import Any

import grpc

# etcd's --max-request-bytes is 1.5 MiB by default; a range over many records answers more.
ETCD_MAX_RECEIVE_BYTES = 64 * 1024 * 1024


def reconnect_backoff(
    *, initial_ms: int, max_ms: int, min_ms: int | None = None
) -> list[tuple[str, Any]]:
    """Options that dial a peer that comes back within `max_ms`, not after gRPC's 120 s."""
    options: list[tuple[str, Any]] = [("grpc.initial_reconnect_backoff_ms", initial_ms)]
    if min_ms is not None:
        options.append(("grpc.min_reconnect_backoff_ms", min_ms))
    options.append(("grpc.max_reconnect_backoff_ms", max_ms))
    return options


def etcd_channel_options(
    server_name: str, *, max_receive_bytes: int = ETCD_MAX_RECEIVE_BYTES
) -> list[tuple[str, Any]]:
    """The gRPC channel options for a channel to etcd's members (round robin over them)."""
    return [
        # Security: every member's certificate must carry this name, signed by the etcd CA.
        ("grpc.ssl_target_name_override", server_name),
        ("grpc.lb_policy_name", "round_robin"),
        # A member that comes back is dialled again within a second, not after gRPC's 120 s.
        *reconnect_backoff(initial_ms=100, max_ms=1000, min_ms=100),
        # Dead connections under a quiet watch are found in ~15 s; etcd permits pings every 5 s
        # while a stream is open, so none are sent without one.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_receive_bytes),
    ]


def mtls_channel_credentials(ca: str, cert: str, key: str) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files: trust only the CA in `ca`, present the client
    certificate `cert` with its private key `key` (frontend to node, node to witness)."""
    with open(ca, "rb") as f:
        root = f.read()
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private = f.read()
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private, certificate_chain=chain
    )
