"""Live health checks of the cluster's processes, each with a short timeout.

* etcd member: `/health` over HTTPS with the root etcd client certificate (a leader is known).
* vault node: gRPC health (service "") over mTLS with a frontend client certificate — the only
  kind a node accepts, so this also checks that the node enforces its client CA correctly.
* frontend: gRPC health over TLS, verified against the cluster CA as a client would.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.pki import Pki

TLS_NAME = "localhost"  # every server certificate carries this SAN


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes a health checker presents and trusts, read once."""

    ca: bytes
    client_cert: bytes | None = None
    client_key: bytes | None = None

    @classmethod
    def for_nodes(cls, pki: Pki, frontend: str) -> TlsFiles:
        paths = pki.frontend_client(frontend)
        return cls(
            pki.cluster_ca.cert.read_bytes(), paths.cert.read_bytes(), paths.key.read_bytes()
        )

    @classmethod
    def for_frontends(cls, pki: Pki) -> TlsFiles:
        return cls(pki.cluster_ca.cert.read_bytes())


def grpc_serving(address: str, tls: TlsFiles, timeout: float = 1.0) -> bool:
    """True when `address` answers the gRPC health check for service "" with SERVING."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.client_key, certificate_chain=tls.client_cert
    )
    options = [("grpc.ssl_target_name_override", TLS_NAME), ("grpc.enable_retries", 0)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
