"""The HTTP endpoint every process serves its Prometheus registry on (`metrics_address`).

The one module of vault_common that needs a package beyond grpc and protobuf (prometheus-client),
imported lazily so that importing vault_common stays free of it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def metrics_address_problems(label: str, value: str) -> list[str]:
    """Problems of a metrics address: "" (none) or IP:port, the IP neither a wildcard nor public.

    Security: the metrics count outcomes (wrong guesses, lockouts) and are served without TLS
    or authentication: for operators' scrapers only, so never on every interface or a routed
    public address (loopback on the local cluster; a private operator network across hosts).
    """
    if not value:
        return []
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return [f"{label} must be host:port with a port in 0..65535 (got {value!r})"]
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return [f"{label} must name an IP address, not {host!r}"]
    if address.is_unspecified or address.is_global:
        return [f"{label} {host!r} must be loopback or a private address, not a wildcard or a "
                "public one (the metrics have no authentication)"]  # fmt: skip
    return []


def process_registry(
    registry: CollectorRegistry | None, *, process_collectors: bool
) -> CollectorRegistry:
    """`registry` (a fresh one when None: never the global one, so that tests can run several
    processes' metrics in one interpreter), with the default collectors when asked: CPU seconds,
    resident memory and open fds (from /proc), the Python version, GC counts."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    r = registry if registry is not None else CollectorRegistry()
    if process_collectors:
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
    return r


class Children:
    """The children of one labelled metric by label values, each made on first use (a series
    appears when it first counts): a hook then costs a dict read, not a label lookup."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def get(self, labels: tuple[str, ...]) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


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
