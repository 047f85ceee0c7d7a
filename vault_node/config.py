"""`node.toml`: the vault node's configuration, read once at start and validated as a whole."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from vault_common.metrics_http import metrics_address_problems
from vault_common.toml_config import TomlReadError, read_toml
from vault_protocol.fleet import MAX_CONTEXT_BYTES
from vault_protocol.opaque import DEFAULT_CONTEXT

MAX_GROUP_COMMIT_US = 100_000  # a write never waits longer than this for others
MAX_GROUP_COMMIT_BATCH = 64  # vault_node.group_commit.MAX_BATCH (etcd allows 128 ops per txn)
MAX_ATTEMPTS_LIMIT = 100
"""Highest `max_attempts_cap` an operator may configure (the client keeps it as a sanity bound)."""
DEFAULT_MAX_ATTEMPTS_CAP = 20


class ConfigError(ValueError):
    """The configuration is unusable; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid node configuration:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class NodeSection:
    """`[node]`: who this node is and how it behaves."""

    name: str  # unique node name, also the membership key's last component
    dc: str  # data centre the node runs in (frontends prefer their own)
    listen: str  # host:port the gRPC server binds
    advertise: str  # host:port frontends dial; written to the membership key
    max_attempts: int = 10  # default guess limit when a registration asks for 0
    # The most guesses a registration may ask for: one asking for more is refused (sealed
    # OUTCOME_REFUSED, nothing stored), not clamped, so no client believes it got more than it
    # has. In 1..100, and at least `max_attempts`.
    max_attempts_cap: int = DEFAULT_MAX_ATTEMPTS_CAP
    ticket_ttl_s: int = 120  # lifetime of a login ticket between the two recovery steps
    lease_ttl_s: int = 4  # membership lease TTL; also the fail-closed horizon
    audit_log: str = ""  # absolute path of the JSON-lines audit log
    # How often the store guard reads etcd while idle (so a rolled-back store is seen before
    # later writes carry it past the high-water mark) and checkpoints its mark in the token.
    checkpoint_interval_ms: int = 1000
    # A lock or delete has etcd compacted up to its revision after this delay (coalescing).
    compact_delay_ms: int = 500
    # Group commit (vault_node/group_commit.py): record writes that arrive within this many
    # microseconds go to etcd as one transaction of at most `group_commit_max` writes; 0 = off.
    # 1 ms measured: 0.72 of etcd's CPU per recovery (docs/performance.md, tenth session).
    group_commit_us: int = 1000
    group_commit_max: int = 16
    # host:port of the Prometheus metrics endpoint (HTTP, /metrics); "" = none. An IP address
    # that is not public (loopback on the local cluster); port 0 picks a free one (tests).
    metrics_address: str = ""
    # Key loss (issue 17): a rebind to another account key (Begin OP_REBIND) matures after this
    # many seconds; until then any request signed by the bound key cancels it. 0..365 days.
    account_rebind_delay_s: int = 7 * 86_400
    # A signed request whose ts_ms is this far ahead of the node's clock is refused. 1..86400.
    account_auth_max_future_s: int = 600
    # The fleet's OPAQUE context string (RFC 9807), UTF-8, the same on every node and in the
    # fleet's signed announcement; "" is valid (an app on an implementation that fixes an
    # empty context). Changing it breaks every login until clients change theirs.
    opaque_context: str = DEFAULT_CONTEXT.decode("ascii")
    # Records per second this node re-seals in the background during a fleet rotation's
    # overlap (vault_node.reseal).
    reseal_rate_per_s: int = 50


@dataclass(frozen=True)
class EtcdSection:
    """`[etcd]`: the etcd members, dialled as one round-robin target over TLS."""

    endpoints: tuple[str, ...] = ()
    ca: str = ""  # CA that signs the etcd members' certificates
    cert: str = ""  # this node's etcd client certificate; its CN is the node's etcd user
    key: str = ""  # its private key
    server_name: str = "bkv-etcd"  # the TLS name every member certificate carries


@dataclass(frozen=True)
class TlsSection:
    """`[tls]`: the server certificate and the CA that signs frontend client certificates."""

    ca: str = ""  # cluster CA (chain only)
    cert: str = ""  # server certificate (PEM)
    key: str = ""  # server private key (PEM)
    client_ca: str = ""  # only client certificates signed by this CA are accepted


@dataclass(frozen=True)
class HsmSection:
    """`[hsm]`: the node's own PKCS#11 token."""

    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    softhsm_conf: str = ""  # SOFTHSM2_CONF of this node's token directory
    token_label: str = ""
    pin_file: str = ""  # file holding the user PIN (never the PIN itself in the config)


MAX_RECORD_GROUPS = 65_536
MAX_WITNESSES = 15
MAX_CAPTURE_STREAMS = 64


@dataclass(frozen=True)
class WitnessSection:
    """`[witness]`: the record groups and the fleet's witnesses (docs/architecture.md).

    Records fall into `groups` groups by record id; each group has a head in etcd that a
    majority of the witnesses must capture before a guess-counting write is answered. The
    witness set is static configuration, the same on every node: etcd, which is not trusted for
    integrity, never decides who the witnesses are or how many make a majority.
    """

    groups: int = 256  # record groups, the same on every node of the fleet
    name: str = ""  # this node's name in the witness set ("" = the node's name)
    serve: bool = False  # whether this node is one of the witnesses in `peers`
    listen: str = ""  # host:port of this node's witness server (when serve)
    peers: tuple[str, ...] = ()  # every witness of the fleet: "name=host:port"
    ca: str = ""  # CA of the witnesses' server certificates (the cluster CA)
    client_cert: str = ""  # this node's client certificate for calling witnesses (node CA)
    client_key: str = ""  # its private key
    client_ca: str = ""  # a witness accepts only client certificates of this CA
    journal: str = ""  # absolute path: heads this witness captured, appended before answering
    # The longest the witness's token checkpoint trails its journal (witness_server.py says
    # what that window means); it also goes after CHECKPOINT_CAPTURES new heads.
    checkpoint_interval_ms: int = 5000
    # Long-lived Captures streams this node keeps per peer witness (one capture at a time on
    # each; answers MAC'd under a per-stream session key); 0 = a unary Capture per capture.
    capture_streams: int = 4

    def peer_map(self) -> dict[str, str]:
        """Witness name -> host:port (malformed entries are left out; `problems` names them)."""
        out: dict[str, str] = {}
        for entry in self.peers:
            name, sep, address = entry.partition("=")
            if sep and name and address:
                out[name] = address
        return out

    def problems(self, node_name: str) -> list[str]:
        out: list[str] = []
        if not 1 <= self.groups <= MAX_RECORD_GROUPS:
            out.append(f"witness.groups must be in 1..{MAX_RECORD_GROUPS}")
        peers = self.peer_map()
        if not self.peers:
            out.append("witness.peers must list every witness as name=host:port")
        if len(peers) != len(self.peers):
            out.append("witness.peers entries must be name=host:port, each name once")
        if len(peers) > MAX_WITNESSES:
            out.append(f"witness.peers may list at most {MAX_WITNESSES} witnesses")
        for name, address in peers.items():
            if not _is_host_port(address):
                out.append(f"witness.peers entry {name!r} must be name=host:port")
        own = self.name or node_name
        if self.serve:
            if own not in peers:
                out.append(f"witness.serve is on but {own!r} is not in witness.peers")
            if not _is_host_port(self.listen):
                out.append("witness.listen must be host:port when witness.serve is on")
            if not self.journal or not Path(self.journal).is_absolute():
                out.append("witness.journal must be an absolute path when witness.serve is on")
        elif own in peers:
            out.append(f"{own!r} is listed in witness.peers but witness.serve is off")
        for key in ("ca", "client_cert", "client_key"):
            value = getattr(self, key)
            if not value or not Path(value).is_absolute():
                out.append(f"witness.{key} must be an absolute path")
        if self.serve and (not self.client_ca or not Path(self.client_ca).is_absolute()):
            out.append("witness.client_ca must be an absolute path when witness.serve is on")
        if not 50 <= self.checkpoint_interval_ms <= 60_000:
            out.append("witness.checkpoint_interval_ms must be in 50..60000")
        if not 0 <= self.capture_streams <= MAX_CAPTURE_STREAMS:
            out.append(f"witness.capture_streams must be in 0..{MAX_CAPTURE_STREAMS}")
        return out


@dataclass(frozen=True)
class NodeConfig:
    """The whole `node.toml`."""

    node: NodeSection
    etcd: EtcdSection = field(default_factory=EtcdSection)
    tls: TlsSection = field(default_factory=TlsSection)
    hsm: HsmSection = field(default_factory=HsmSection)
    witness: WitnessSection = field(default_factory=WitnessSection)

    def problems(self, *, check_files: bool = False) -> list[str]:
        """Every problem of this configuration (empty when it is usable)."""
        out: list[str] = []
        n = self.node
        for name in ("name", "dc"):
            value = getattr(n, name)
            if not value or "/" in value or value.strip() != value:
                out.append(f"node.{name} must be non-empty, without '/' or surrounding spaces")
        for name in ("listen", "advertise"):
            if not _is_host_port(getattr(n, name)):
                out.append(f"node.{name} must be host:port with a port in 1..65535")
        if not 1 <= n.max_attempts_cap <= MAX_ATTEMPTS_LIMIT:
            out.append(f"node.max_attempts_cap must be in 1..{MAX_ATTEMPTS_LIMIT}")
        if not 1 <= n.max_attempts <= n.max_attempts_cap:
            out.append("node.max_attempts must be in 1..node.max_attempts_cap")
        if not 1 <= n.ticket_ttl_s <= 3600:
            out.append("node.ticket_ttl_s must be in 1..3600")
        if not 2 <= n.lease_ttl_s <= 600:
            out.append("node.lease_ttl_s must be in 2..600")
        if not 50 <= n.checkpoint_interval_ms <= 60_000:
            out.append("node.checkpoint_interval_ms must be in 50..60000")
        if not 0 <= n.compact_delay_ms <= 60_000:
            out.append("node.compact_delay_ms must be in 0..60000")
        if not 0 <= n.account_rebind_delay_s <= 365 * 86_400:
            out.append("node.account_rebind_delay_s must be in 0..31536000 (365 days)")
        if not 1 <= n.account_auth_max_future_s <= 86_400:
            out.append("node.account_auth_max_future_s must be in 1..86400")
        if not 0 <= n.group_commit_us <= MAX_GROUP_COMMIT_US:
            out.append(f"node.group_commit_us must be in 0..{MAX_GROUP_COMMIT_US}")
        if not 2 <= n.group_commit_max <= MAX_GROUP_COMMIT_BATCH:
            out.append(f"node.group_commit_max must be in 2..{MAX_GROUP_COMMIT_BATCH}")
        out += metrics_address_problems("node.metrics_address", n.metrics_address)
        if len(n.opaque_context.encode("utf-8")) > MAX_CONTEXT_BYTES:
            out.append(f"node.opaque_context must be at most {MAX_CONTEXT_BYTES} bytes (UTF-8)")
        if not 1 <= n.reseal_rate_per_s <= 10_000:
            out.append("node.reseal_rate_per_s must be in 1..10000")
        if not self.etcd.server_name or self.etcd.server_name.strip() != self.etcd.server_name:
            out.append("etcd.server_name must be a non-empty TLS name")
        if not self.etcd.endpoints:
            out.append("etcd.endpoints must list at least one host:port")
        for ep in self.etcd.endpoints:
            if not _is_host_port(ep):
                out.append(f"etcd.endpoints entry {ep!r} must be host:port")
        paths = {
            "node.audit_log": n.audit_log,
            "tls.cert": self.tls.cert,
            "tls.key": self.tls.key,
            "tls.client_ca": self.tls.client_ca,
            "hsm.module": self.hsm.module,
            "hsm.softhsm_conf": self.hsm.softhsm_conf,
            "hsm.pin_file": self.hsm.pin_file,
            "etcd.ca": self.etcd.ca,
            "etcd.cert": self.etcd.cert,
            "etcd.key": self.etcd.key,
        }
        if self.tls.ca:
            paths["tls.ca"] = self.tls.ca
        for name, value in paths.items():
            if not value or not Path(value).is_absolute():
                out.append(f"{name} must be an absolute path")
            elif check_files and name != "node.audit_log" and not Path(value).is_file():
                out.append(f"{name}: file {value} does not exist")
        if check_files and n.audit_log and Path(n.audit_log).is_absolute():
            if not Path(n.audit_log).parent.is_dir():
                out.append(f"node.audit_log: directory {Path(n.audit_log).parent} does not exist")
        if not self.hsm.token_label:
            out.append("hsm.token_label must be non-empty")
        out += self.witness.problems(n.name)
        if check_files:
            w = self.witness
            files = {"witness.ca": w.ca, "witness.client_cert": w.client_cert,
                     "witness.client_key": w.client_key}  # fmt: skip
            if w.serve:
                files["witness.client_ca"] = w.client_ca
            for name, value in files.items():
                if value and Path(value).is_absolute() and not Path(value).is_file():
                    out.append(f"{name}: file {value} does not exist")
        return out

    def validate(self, *, check_files: bool = False) -> None:
        """Raise `ConfigError` listing every problem at once."""
        problems = self.problems(check_files=check_files)
        if problems:
            raise ConfigError(problems)

    @staticmethod
    def from_mapping(data: dict[str, Any]) -> NodeConfig:
        """Build from parsed TOML; unknown or mistyped keys are reported together."""
        problems: list[str] = []
        known = {"node", "etcd", "tls", "hsm", "witness"}
        problems += [f"unknown section [{k}]" for k in data if k not in known]
        node = _section(data, "node", NodeSection, problems, required=True)
        etcd_raw = data.get("etcd", {})
        if isinstance(etcd_raw, dict) and isinstance(etcd_raw.get("endpoints"), list):
            etcd_raw = {**etcd_raw, "endpoints": tuple(etcd_raw["endpoints"])}
        etcd = _section({"etcd": etcd_raw}, "etcd", EtcdSection, problems, required=False)
        tls = _section(data, "tls", TlsSection, problems, required=False)
        hsm = _section(data, "hsm", HsmSection, problems, required=False)
        witness_raw = data.get("witness", {})
        if isinstance(witness_raw, dict) and isinstance(witness_raw.get("peers"), list):
            witness_raw = {**witness_raw, "peers": tuple(witness_raw["peers"])}
        witness = _section(
            {"witness": witness_raw}, "witness", WitnessSection, problems, required=True
        )
        # Sections are built even around bad keys (placeholders), so that the value checks
        # below run too and the operator sees every problem in one go.
        config = NodeConfig(node=node, etcd=etcd, tls=tls, hsm=hsm, witness=witness)
        problems += config.problems()
        if problems:
            raise ConfigError(problems)
        return config

    @staticmethod
    def load(path: str | Path, *, check_files: bool = True) -> NodeConfig:
        """Read and validate a `node.toml`."""
        try:
            data = read_toml(path)
        except TomlReadError as e:
            raise ConfigError([f"cannot read {path}: {e.cause}"]) from e
        config = NodeConfig.from_mapping(data)
        config.validate(check_files=check_files)
        return config


def _section(
    data: dict[str, Any],
    name: str,
    cls: type[Any],
    problems: list[str],
    *,
    required: bool,
) -> Any:
    """An instance of `cls` from `data[name]`; every bad key is added to `problems`."""
    raw = data.get(name)
    if raw is None:
        if required:
            problems.append(f"[{name}] section is missing")
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"[{name}] must be a table")
        raw = {}
    declared = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in declared:
            problems.append(f"unknown key {name}.{key}")
            continue
        expected = _expected_type(cls, key)
        if expected is tuple:
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                problems.append(f"{name}.{key} must be a list of strings")
                continue
        elif expected is bool:
            if not isinstance(value, bool):
                problems.append(f"{name}.{key} must be true or false")
                continue
        elif expected is int:
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name}.{key} must be an integer")
                continue
        elif not isinstance(value, str):
            problems.append(f"{name}.{key} must be a string")
            continue
        kwargs[key] = value
    for key, f in declared.items():
        if key not in raw and f.default is MISSING and f.default_factory is MISSING:
            problems.append(f"missing key {name}.{key}")
    for key, f in declared.items():
        if key not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            kwargs[key] = ""  # placeholder for a missing or mistyped required key
    return cls(**kwargs)


def _expected_type(cls: type[Any], key: str) -> type:
    annotation = {f.name: f.type for f in fields(cls)}[key]
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if text.startswith("tuple"):
        return tuple
    if text == "int":
        return int
    if text == "bool":
        return bool
    return str


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        return False
    return 1 <= int(port) <= 65535
