"""frontend.toml: the frontend's configuration as frozen dataclasses, validated all at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from etcd_client.config import DEFAULT_SERVER_NAME, EtcdClientConfig, EtcdTls, endpoint_problems
from vault_common.metrics_http import metrics_address_problems
from vault_common.toml_config import TomlReadError, read_toml, unknown_keys

MIN_SESSION_SECRET_BYTES = 32
MIN_ENROLLMENT_SECRET_BYTES = 16
MAX_RELAY_STREAMS = 256  # streams per node: each is an HTTP/2 stream held open on the node
ETCD_CALL_TIMEOUT_S = 5.0  # deadline of one etcd call (account reads and binds, node listing)


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid frontend configuration:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class FrontendSection:
    name: str  # process name, used in logs
    dc: str  # the data centre this frontend runs in: its nodes are tried first
    listen: str  # host:port to bind for clients (TLS)
    session_secret_file: str  # 32+ random bytes shared by every frontend (challenges, sessions)
    enrollment_secret_file: str  # "" = open enrollment; else first logins need HMAC(account)
    session_ttl_s: int  # lifetime of a session token
    # host:port of the Prometheus metrics endpoint (HTTP, /metrics); "" = none. An IP address
    # that is not public (loopback on the local cluster); port 0 picks a free one (tests).
    metrics_address: str = ""


@dataclass(frozen=True)
class LimitsSection:
    account_rate_per_s: float  # Relay calls per second per account (token bucket refill)
    account_burst: int  # bucket size per account
    peer_rate_per_s: float  # calls per second per client IP, any method
    peer_burst: int  # bucket size per client IP
    max_request_bytes: int  # largest request message accepted (gRPC receive limit)
    node_deadline_s: float  # deadline of one call to a vault node
    # Long-lived OpenStream streams kept per node (frontend_chatd/streams.py); 0 = a unary Open
    # per request, as before. Optional; more requests in flight to one node than this go unary.
    relay_streams: int = 16


@dataclass(frozen=True)
class EtcdSection:
    endpoints: tuple[str, ...]  # host:port of every etcd member
    ca: str  # CA that signs the etcd members' server certificates
    cert: str  # this frontend's etcd client certificate; its CN is its etcd user
    key: str  # its private key
    server_name: str = DEFAULT_SERVER_NAME  # TLS name every member's certificate carries

    def tls(self) -> EtcdTls:
        """The TLS identity this frontend shows etcd (the etcd user is the certificate's CN)."""
        return EtcdTls(ca=self.ca, cert=self.cert, key=self.key, server_name=self.server_name)

    def client_config(self, call_timeout_s: float = 0.0) -> EtcdClientConfig:
        """The etcd client's configuration: every member, over TLS, as this frontend's user."""
        return EtcdClientConfig(
            endpoints=self.endpoints,
            tls=self.tls(),
            call_timeout_s=call_timeout_s or ETCD_CALL_TIMEOUT_S,
        )


@dataclass(frozen=True)
class TlsSection:
    cert: str  # server certificate shown to clients
    key: str  # its private key
    cluster_ca: str  # CA that signs vault-node certificates
    client_cert: str  # client certificate presented to vault nodes (frontend CA)
    client_key: str  # its private key


@dataclass(frozen=True)
class FrontendConfig:
    frontend: FrontendSection
    limits: LimitsSection
    etcd: EtcdSection
    tls: TlsSection

    def validate(self) -> list[str]:
        """Every problem with this configuration (empty when it is usable)."""
        problems: list[str] = []
        fe, lim, tls = self.frontend, self.limits, self.tls
        if not fe.name:
            problems.append("frontend.name must not be empty")
        if not fe.dc:
            problems.append("frontend.dc must not be empty")
        problems += _check_hostport("frontend.listen", fe.listen, allow_zero_port=True)
        problems += metrics_address_problems("frontend.metrics_address", fe.metrics_address)
        problems += _check_secret_file(
            "frontend.session_secret_file", fe.session_secret_file, MIN_SESSION_SECRET_BYTES
        )
        if fe.enrollment_secret_file:
            problems += _check_secret_file(
                "frontend.enrollment_secret_file",
                fe.enrollment_secret_file,
                MIN_ENROLLMENT_SECRET_BYTES,
            )
        if not 60 <= fe.session_ttl_s <= 7 * 24 * 3600:
            problems.append("frontend.session_ttl_s must be between 60 and 604800")
        for label, rate, burst in (
            ("account", lim.account_rate_per_s, lim.account_burst),
            ("peer", lim.peer_rate_per_s, lim.peer_burst),
        ):
            if not rate > 0:
                problems.append(f"limits.{label}_rate_per_s must be > 0")
            if burst < 1:
                problems.append(f"limits.{label}_burst must be >= 1")
        if not 1024 <= lim.max_request_bytes <= 16 * 1024 * 1024:
            problems.append("limits.max_request_bytes must be between 1024 and 16777216")
        if not 0 < lim.node_deadline_s <= 120:
            problems.append("limits.node_deadline_s must be > 0 and <= 120")
        if not 0 <= lim.relay_streams <= MAX_RELAY_STREAMS:
            problems.append(f"limits.relay_streams must be between 0 and {MAX_RELAY_STREAMS}")
        etcd = self.etcd
        if not etcd.endpoints:
            problems.append("etcd.endpoints must list at least one host:port")
        else:  # one round-robin gRPC target: several endpoints must be IP addresses
            problems += [f"etcd.{p}" for p in endpoint_problems(etcd.endpoints)]
        problems += [f"etcd.{p}" for p in etcd.tls().problems()]
        for f in fields(tls):
            problems += _check_file(f"tls.{f.name}", getattr(tls, f.name))
        return problems

    def check(self) -> FrontendConfig:
        """Return self, or raise ConfigError listing every problem."""
        problems = self.validate()
        if problems:
            raise ConfigError(problems)
        return self


def _check_secret_file(label: str, path: str, min_bytes: int) -> list[str]:
    problems = _check_file(label, path)
    if not problems:
        size = Path(path).stat().st_size
        if size < min_bytes:
            problems.append(f"{label} holds {size} bytes, needs at least {min_bytes}")
    return problems


def _check_file(label: str, path: str) -> list[str]:
    if not path:
        return [f"{label} must be set"]
    p = Path(path)
    if not p.is_absolute():
        return [f"{label} must be an absolute path (got {path!r})"]
    if not p.is_file():
        return [f"{label}: no such file {path!r}"]
    return []


def _check_hostport(label: str, value: str, *, allow_zero_port: bool) -> list[str]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        return [f"{label} must be host:port (got {value!r})"]
    low = 0 if allow_zero_port else 1
    if not low <= int(port) <= 65535:
        return [f"{label} has an invalid port {port!r}"]
    return []


_SECTIONS: dict[str, type[Any]] = {
    "frontend": FrontendSection,
    "limits": LimitsSection,
    "etcd": EtcdSection,
    "tls": TlsSection,
}
_OPTIONAL: dict[tuple[str, str], Any] = {
    ("frontend", "enrollment_secret_file"): "",
    ("frontend", "metrics_address"): "",
    ("etcd", "server_name"): DEFAULT_SERVER_NAME,
    ("limits", "relay_streams"): 16,
}
_FLOAT_FIELDS = {"account_rate_per_s", "peer_rate_per_s", "node_deadline_s"}
_INT_FIELDS = {
    "session_ttl_s", "account_burst", "peer_burst", "max_request_bytes", "relay_streams",
}  # fmt: skip


def parse_config(data: Mapping[str, Any]) -> FrontendConfig:
    """Build a FrontendConfig from parsed TOML; structural problems are reported all at once."""
    problems: list[str] = []
    built: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        raw = data.get(section)
        if not isinstance(raw, Mapping):
            problems.append(f"missing table [{section}]")
            continue
        names = [f.name for f in fields(cls)]
        for unknown in sorted(unknown_keys(raw, names)):
            problems.append(f"{section}.{unknown}: unknown key")
        values: dict[str, Any] = {}
        for name in names:
            if name not in raw:
                if (section, name) in _OPTIONAL:
                    values[name] = _OPTIONAL[(section, name)]
                    continue
                problems.append(f"{section}.{name}: missing")
                continue
            value, problem = _coerce(section, name, raw[name])
            if problem:
                problems.append(problem)
            values[name] = value
        if len(values) == len(names):
            built[section] = values
    if problems:
        raise ConfigError(problems)
    return FrontendConfig(**{s: _SECTIONS[s](**v) for s, v in built.items()})


def _coerce(section: str, name: str, value: Any) -> tuple[Any, str | None]:
    where = f"{section}.{name}"
    if name == "endpoints":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return (), f"{where} must be a list of strings"
        return tuple(value), None
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0.0, f"{where} must be a number"
        return float(value), None
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            return 0, f"{where} must be an integer"
        return value, None
    if not isinstance(value, str):
        return "", f"{where} must be a string"
    return value, None


def load_config(path: str | Path) -> FrontendConfig:
    """Read, parse and validate frontend.toml; raises ConfigError with every problem."""
    try:
        data = read_toml(path)
    except TomlReadError as e:
        raise ConfigError([e.problem()]) from e
    return parse_config(data).check()
