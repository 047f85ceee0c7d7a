"""The etcd client's configuration: frozen dataclasses whose checks report every problem at once."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SERVER_NAME = "bkv-etcd"
MAX_CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class EtcdTls:
    """The TLS identity a process shows etcd, and what it trusts etcd's members by.

    etcd runs with `--client-cert-auth` and auth enabled, so the client certificate is both the
    transport credential and the etcd user: its common name is the user name.
    """

    ca: str  # PEM of the CA that signs etcd member (server) certificates
    cert: str  # this process's client certificate (PEM); its CN is the etcd user name
    key: str  # its private key (PEM)
    # TLS name every etcd member certificate carries: members live on different hosts, and one
    # name lets the client verify any member the same way (grpc.ssl_target_name_override).
    server_name: str = DEFAULT_SERVER_NAME

    def problems(self, *, check_files: bool = True) -> list[str]:
        """Every problem, each starting with the field's name; `check_files` also requires that
        the three files exist (off when checking a configuration written for another host)."""
        problems: list[str] = []
        for name in ("ca", "cert", "key"):
            problems += _path_problems(name, getattr(self, name), check_files)
        if not self.server_name.strip():
            problems.append("server_name must not be empty")
        elif self.server_name != self.server_name.strip() or any(
            c.isspace() for c in self.server_name
        ):
            problems.append(f"server_name must not contain spaces (got {self.server_name!r})")
        return problems


@dataclass(frozen=True)
class EtcdClientConfig:
    """Where etcd is, how to authenticate to it, and how long one call may take."""

    # "host:port" of every member. Several endpoints must be IP addresses of one family: they
    # become one gRPC target "ipv4:a:1,b:2" balanced round robin, so a dead member is skipped.
    endpoints: tuple[str, ...]
    tls: EtcdTls
    # gRPC deadline of one call (a hard asyncio bound a little later backs it up).
    call_timeout_s: float = 2.0

    def problems(self, *, check_files: bool = True) -> list[str]:
        """Every problem with this configuration (empty when it is usable)."""
        problems: list[str] = []
        if isinstance(self.endpoints, str) or not self.endpoints:
            problems.append("endpoints must list at least one host:port")
        else:
            problems += endpoint_problems(self.endpoints)
        if not (
            isinstance(self.call_timeout_s, int | float)
            and math.isfinite(self.call_timeout_s)
            and 0 < self.call_timeout_s <= MAX_CALL_TIMEOUT_S
        ):
            problems.append(f"call_timeout_s must be > 0 and <= {MAX_CALL_TIMEOUT_S:g}")
        problems += [f"tls.{p}" for p in self.tls.problems(check_files=check_files)]
        return problems

    def validate(self, *, check_files: bool = True) -> None:
        """Raise ValueError listing every problem, if there is any."""
        problems = self.problems(check_files=check_files)
        if problems:
            raise ValueError("invalid etcd client configuration:\n  " + "\n  ".join(problems))


def _path_problems(name: str, path: str, check_files: bool) -> list[str]:
    """Problems with a PEM file path: set, absolute, and (if `check_files`) an existing file."""
    if not path:
        return [f"{name} must be set"]
    p = Path(path)
    if not p.is_absolute():
        return [f"{name} must be an absolute path (got {path!r})"]
    if check_files and not p.is_file():
        return [f"{name}: no such file {path!r}"]
    return []


def split_endpoint(endpoint: str) -> tuple[str, int] | None:
    """("host", port) of "host:port" or "[v6]:port"; None when it is not of that form."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _ip_version(host) == 6:
            return None
    elif ":" in host or any(c.isspace() or c in "/,[]" for c in host):
        return None
    return host, int(port)


def _ip_version(host: str) -> int | None:
    """4 or 6 for an IP address literal, None for a host name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def endpoint_problems(endpoints: tuple[str, ...]) -> list[str]:
    """Problems with a list of member endpoints (each one, and the list as a whole)."""
    problems: list[str] = []
    parsed: list[tuple[str, int]] = []
    for i, endpoint in enumerate(endpoints):
        hostport = split_endpoint(endpoint) if isinstance(endpoint, str) else None
        if hostport is None:
            problems.append(
                f"endpoints[{i}] must be host:port with a port 1-65535 (got {endpoint!r})"
            )
        else:
            parsed.append(hostport)
    if len(set(endpoints)) != len(endpoints):
        problems.append("endpoints must not repeat a member")
    versions = {_ip_version(h) for h, _ in parsed}
    if len(parsed) > 1 and (None in versions or len(versions) != 1):
        problems.append(
            "endpoints must all be IPv4 (or all IPv6) addresses when there are several: "
            "they form one round-robin gRPC target"
        )
    return problems


def channel_target(endpoints: tuple[str, ...]) -> str:
    """The gRPC target for the members: "ipv4:a:1,b:2" (or "ipv6:[a]:1,..."), one name otherwise.

    Raises ValueError for endpoints that `endpoint_problems` rejects.
    """
    problems = endpoint_problems(endpoints) if endpoints else ["no endpoints"]
    if problems:
        raise ValueError("; ".join(problems))
    parsed = [split_endpoint(e) for e in endpoints]
    hosts = [hp for hp in parsed if hp is not None]
    version = _ip_version(hosts[0][0])
    if version == 4:
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts)
    if version == 6:
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in hosts)
    host, port = hosts[0]
    return f"dns:///{host}:{port}"
