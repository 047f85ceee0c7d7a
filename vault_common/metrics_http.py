"""The HTTP endpoint every process serves its Prometheus registry on (`metrics_address`).

The one module of vault_common that needs a package beyond grpc and protobuf (prometheus-client),
imported lazily so that importing vault_common stays free of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class MetricsServer:
    """`registry` at http://ADDRESS/metrics (port 0: any free port), served by prometheus_client's
    WSGI server on a daemon thread of its own; `port` is the bound port."""

    def __init__(self, httpd: Any, thread: Any) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port = int(httpd.server_address[1])

    @classmethod
    def start(cls, address: str, registry: CollectorRegistry) -> MetricsServer:
        from prometheus_client import start_http_server

        host, _, port = address.rpartition(":")
        httpd, thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        return cls(httpd, thread)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2.0)
