"""The cluster topology: data centres, etcd members, vault nodes, frontends and options.

Read from TOML (see `deploy/local-3dc.toml`). Parsing and `validate()` collect every problem and
raise one `TopologyError` listing them all. A port of 0 means "choose a free loopback port at
`up`"; `with_ports()` returns the topology with every port fixed, which `cluster.json` keeps so
that restarts reuse the same addresses.

The witnesses of the record log (docs/architecture.md) are the first `options.witnesses_per_dc`
vault nodes of each data centre, in topology order: static configuration, the same in every
node.toml, never something etcd decides. Each witness serves on a `witness_port` of its own.

By default every process binds the cluster's loopback `host`. A data centre may instead have a
host of its own with a command prefix that runs its processes inside a network namespace (e.g.
`["ip", "netns", "exec", NS]`; see `bkv_chaos/netns.py`): such a host must be link-local
(169.254.0.0/16), an address of a namespace the caller created, never a routed one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from deploy.errors import TopologyError
from deploy.etcd_auth import cluster_users, user_name_problems
from deploy.pki import CertPaths, Pki
from vault_common.event_loop import EVENT_LOOPS
from vault_common.toml_config import TomlReadError, read_toml
from vault_node.config import (
    MAX_CAPTURE_STREAMS,
    MAX_GROUP_COMMIT_US,
    MAX_RECORD_GROUPS,
    MAX_WITNESSES,
)
from vault_protocol.fleet import MAX_CONTEXT_BYTES

Role = Literal["etcd", "node", "frontend"]

# Names end up in file names, certificate SANs and etcd member names: keep them plain.
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_COMPACTION_MODES = ("revision", "periodic")
# A Go duration as etcd's periodic retention takes it ("5m", "1h30m", "90s"; a whole number is
# hours: etcd tries an integer first, then time.ParseDuration, which wants a unit).
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|m|s|ms|us|ns))+$|^\d+$")
ETCD_GOMAXPROCS_MAX = 1024

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """Cluster-wide options.

    etcd_fsync: etcd fsyncs its WAL (off only for tests: `--unsafe-no-fsync`).
    etcd_heartbeat_ms / etcd_election_ms: raft timing; short on loopback (etcd wants
        election >= 5 x heartbeat).
    etcd_compaction_mode / etcd_compaction_retention: etcd auto-compaction, so that erased
        records also leave etcd's history within a bounded time. "periodic" (the default)
        takes a duration ("5m": history older than about 5 minutes is compacted, every 5
        minutes); "revision" keeps that many revisions, which on an idle cluster is for ever.
    max_attempts: default guess limit written to every node.toml.
    ticket_ttl_s, lease_ttl_s: vault-node settings written to node.toml.
    session_ttl_s: frontend session lifetime written to frontend.toml.
    start_timeout_s: how long `up`/`start-dc` wait for a process to become healthy.
    max_restarts: how many times a supervisor restarts a child that exits unexpectedly.
    event_loop: the asyncio loop of vault nodes and frontends, passed as `--event-loop`:
        "uvloop" (default; ≈ 20-30% less CPU per gRPC call, see docs/performance.md) or
        "asyncio" (the standard library's loop).
    etcd_gomaxprocs: GOMAXPROCS of each etcd member; 0 (the default) leaves Go's default of
        one thread per core. All members of a `bkv-cluster` share one machine's cores. With 1, one
        series of five pairs showed 21-27% less etcd CPU per recovery and a 5-16% higher
        16-client peak, and a later series of three showed no gain. p50 and p99 at 70
        recoveries/s were worse (docs/performance.md, fourth session): an option to measure, not
        a default.
    witnesses_per_dc: how many vault nodes of each data centre witness the record log's group
        heads (the first ones, in topology order); 1 up to the nodes of the smallest data
        centre that has vault nodes. A data centre without vault nodes has no witness.
    record_groups: how many groups the records fall into (one witnessed head each), written to
        every node.toml: 1..65536, the same on every node.
    account_rebind_delay_s: key loss: how long a rebind to a new account key waits in the vault
        before the new key may sign (node.account_rebind_delay_s): 0..365 days, 7 days by
        default; the test cluster uses seconds.
    opaque_context: the fleet's OPAQUE context string (RFC 9807; UTF-8, at most 1024 bytes,
        "" allowed): written to every node.toml and client.toml and signed into the fleet's
        announcement. The default is the product's, "BKV-v1"; an app whose clients run another
        RFC 9807 implementation sets that implementation's (one popular one fixes "").
    witness_capture_streams: long-lived capture streams each vault node keeps per peer witness
        (node.toml `witness.capture_streams`); 0 = one unary call per capture. Measured in
        docs/performance.md (tenth session).
    group_commit_us: group commit window of every vault node (node.toml
        `node.group_commit_us`, 1000): record writes arriving within it share one etcd
        transaction; 0 = off. Measured in docs/performance.md (tenth session).
    """

    etcd_fsync: bool = True
    etcd_heartbeat_ms: int = 100
    etcd_election_ms: int = 1000
    etcd_compaction_mode: str = "periodic"
    etcd_compaction_retention: str = "5m"
    max_attempts: int = 10
    ticket_ttl_s: int = 120
    lease_ttl_s: int = 4
    session_ttl_s: int = 3600
    start_timeout_s: float = 60.0
    max_restarts: int = 5
    event_loop: str = "uvloop"
    etcd_gomaxprocs: int = 0
    witnesses_per_dc: int = 1
    record_groups: int = 256
    account_rebind_delay_s: int = 7 * 86_400
    opaque_context: str = "BKV-v1"
    witness_capture_streams: int = 4
    group_commit_us: int = 1000

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.etcd_heartbeat_ms < 10:
            out.append("options.etcd_heartbeat_ms must be >= 10")
        if self.etcd_election_ms < 5 * self.etcd_heartbeat_ms:
            out.append("options.etcd_election_ms must be >= 5 x etcd_heartbeat_ms")
        if self.etcd_compaction_mode not in _COMPACTION_MODES:
            out.append(f"options.etcd_compaction_mode must be one of {_COMPACTION_MODES}")
        if not self.etcd_compaction_retention.strip():
            out.append("options.etcd_compaction_retention must not be empty")
        elif self.etcd_compaction_mode == "revision" and not (
            self.etcd_compaction_retention.isdigit() and int(self.etcd_compaction_retention) > 0
        ):
            out.append("options.etcd_compaction_retention must be a positive revision count")
        elif self.etcd_compaction_mode == "periodic" and not _is_retention(
            self.etcd_compaction_retention
        ):
            out.append(
                "options.etcd_compaction_retention must be a positive duration such as '5m' "
                "or '1h' (a bare number is hours)"
            )
        if not 1 <= self.max_attempts <= 1000:
            out.append("options.max_attempts must be between 1 and 1000")
        for name in ("ticket_ttl_s", "lease_ttl_s", "session_ttl_s", "start_timeout_s"):
            if getattr(self, name) <= 0:
                out.append(f"options.{name} must be > 0")
        if self.max_restarts < 0:
            out.append("options.max_restarts must be >= 0")
        if self.event_loop not in EVENT_LOOPS:
            out.append(f"options.event_loop must be one of {EVENT_LOOPS}")
        if not 0 <= self.etcd_gomaxprocs <= ETCD_GOMAXPROCS_MAX:
            out.append(
                "options.etcd_gomaxprocs must be between 0 (Go's default) and "
                f"{ETCD_GOMAXPROCS_MAX}"
            )
        if self.witnesses_per_dc < 1:
            out.append("options.witnesses_per_dc must be >= 1")
        if not 1 <= self.record_groups <= MAX_RECORD_GROUPS:
            out.append(f"options.record_groups must be between 1 and {MAX_RECORD_GROUPS}")
        if not 0 <= self.account_rebind_delay_s <= 365 * 86_400:
            out.append("options.account_rebind_delay_s must be between 0 and 31536000")
        if len(self.opaque_context.encode("utf-8")) > MAX_CONTEXT_BYTES:
            out.append(f"options.opaque_context must be at most {MAX_CONTEXT_BYTES} bytes (UTF-8)")
        if not 0 <= self.witness_capture_streams <= MAX_CAPTURE_STREAMS:
            out.append(
                f"options.witness_capture_streams must be between 0 and {MAX_CAPTURE_STREAMS}"
            )
        if not 0 <= self.group_commit_us <= MAX_GROUP_COMMIT_US:
            out.append(f"options.group_commit_us must be between 0 and {MAX_GROUP_COMMIT_US}")
        return out


@dataclass(frozen=True)
class FrontendLimits:
    """The `[limits]` table of every frontend.toml (see docs/architecture.md)."""

    account_rate_per_s: float = 20.0
    account_burst: int = 40
    peer_rate_per_s: float = 200.0
    peer_burst: int = 400
    max_request_bytes: int = 65536
    node_deadline_s: float = 5.0
    relay_streams: int = 16  # OpenStream streams per node; 0 = unary calls (frontend config)

    def problems(self) -> list[str]:
        out = [
            f"limits.{f.name} must be > 0"
            for f in fields(self)
            if f.name != "relay_streams" and getattr(self, f.name) <= 0
        ]
        return out + (["limits.relay_streams must be >= 0"] if self.relay_streams < 0 else [])


@dataclass(frozen=True)
class EtcdMember:
    """One etcd member. `advertise_peer_port` (0 = off) makes it advertise that port to its
    peers instead of `peer_port`: a proxy there (bkv-chaos `slow-link`) forwards to `peer_port`,
    so every peer's traffic towards this member crosses it. The proxy must run while the member
    does."""

    name: str
    dc: str
    client_port: int = 0
    peer_port: int = 0
    advertise_peer_port: int = 0


@dataclass(frozen=True)
class DcNetwork:
    """Where the processes of data centre `dc` live: `host` is the address each of them binds
    and advertises; `command_prefix` is put before each command (its network namespace)."""

    dc: str
    host: str
    command_prefix: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        where = f"datacenter {self.dc!r}"
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return [f"{where}: host {self.host!r} is not an IP address"]
        if address.is_loopback:
            return []
        # Workplace rule: nothing but loopback, or addresses inside namespaces we create.
        if not address.is_link_local or address.version != 4:
            return [f"{where}: host {self.host!r} must be loopback or 169.254.0.0/16"]
        if not self.command_prefix:
            return [f"{where}: host {self.host!r} needs a command_prefix (its namespace)"]
        return []


@dataclass(frozen=True)
class VaultNode:
    """A vault node. `witness_port` is its witness server's port (witnesses only; 0 = choose
    one at `up`, and always 0 for a node that is no witness)."""

    name: str
    dc: str
    port: int = 0
    witness_port: int = 0


@dataclass(frozen=True)
class Frontend:
    name: str
    dc: str
    port: int = 0


@dataclass(frozen=True)
class Topology:
    """A whole cluster. `host` is the address every process binds (loopback for the launcher)."""

    name: str
    datacenters: tuple[str, ...]
    etcd: tuple[EtcdMember, ...]
    nodes: tuple[VaultNode, ...]
    frontends: tuple[Frontend, ...]
    host: str = "127.0.0.1"
    options: Options = field(default_factory=Options)
    limits: FrontendLimits = field(default_factory=FrontendLimits)
    networks: tuple[DcNetwork, ...] = ()  # per-DC host and command prefix (default: `host`)

    def network_of(self, dc: str) -> DcNetwork | None:
        return next((n for n in self.networks if n.dc == dc), None)

    def host_of(self, dc: str) -> str:
        """The address the processes of `dc` bind and advertise."""
        network = self.network_of(dc)
        return self.host if network is None else network.host

    def prefix_of(self, dc: str) -> tuple[str, ...]:
        """The command prefix of the processes of `dc` (empty: run as they are)."""
        network = self.network_of(dc)
        return () if network is None else network.command_prefix

    def witness_nodes(self) -> tuple[VaultNode, ...]:
        """The witnesses: the first `options.witnesses_per_dc` vault nodes of each data centre,
        in topology order (data centres in their order, nodes in theirs)."""
        per_dc = self.options.witnesses_per_dc
        return tuple(
            n for dc in self.datacenters for n in [n for n in self.nodes if n.dc == dc][:per_dc]
        )

    def is_witness(self, node: str) -> bool:
        return any(n.name == node for n in self.witness_nodes())

    def hosts(self) -> list[str]:
        """Every distinct bind address, the cluster's host first."""
        return list(dict.fromkeys([self.host, *(n.host for n in self.networks)]))

    def problems(self) -> list[str]:
        """Every problem of this topology (empty when valid)."""
        out = self._cluster_problems() + self._process_problems() + self._port_problems()
        out += user_name_problems(self)
        out += self._witness_problems()
        out += _certificate_clashes(self)
        return out + self._network_problems() + self.options.problems() + self.limits.problems()

    def _cluster_problems(self) -> list[str]:
        """The cluster's name and host, its data centres, and a process of every role."""
        out: list[str] = []
        if not _NAME_RE.match(self.name):
            out.append(f"cluster.name {self.name!r} must match {_NAME_RE.pattern}")
        try:
            if not ipaddress.ip_address(self.host).is_loopback:
                out.append(f"cluster.host {self.host!r}: the local launcher binds loopback only")
        except ValueError:
            out.append(f"cluster.host {self.host!r} is not an IP address")
        if not self.datacenters:
            out.append("at least one [[datacenter]] is required")
        seen_dc: set[str] = set()
        for dc in self.datacenters:
            if not _NAME_RE.match(dc):
                out.append(f"datacenter name {dc!r} must match {_NAME_RE.pattern}")
            if dc in seen_dc:
                out.append(f"datacenter {dc!r} is declared twice")
            seen_dc.add(dc)
        if not self.etcd:
            out.append("at least one etcd member is required")
        if not self.nodes:
            out.append("at least one vault node is required")
        if not self.frontends:
            out.append("at least one frontend is required")
        return out

    def _process_problems(self) -> list[str]:
        """Process names (valid, unique), their data centres, one etcd member per centre."""
        out: list[str] = []
        names: set[str] = set()
        for role, name, dc in self._named():
            if not _NAME_RE.match(name):
                out.append(f"{role} name {name!r} must match {_NAME_RE.pattern}")
            if name in names:
                out.append(f"process name {name!r} is used twice")
            names.add(name)
            if dc not in self.datacenters:
                out.append(f"{role} {name!r} is in unknown datacenter {dc!r}")
        members_per_dc: dict[str, int] = {}
        for member in self.etcd:
            members_per_dc[member.dc] = members_per_dc.get(member.dc, 0) + 1
        out += [
            f"datacenter {dc!r} has {n} etcd members (at most one)"
            for dc, n in members_per_dc.items()
            if n > 1
        ]
        return out

    def _port_problems(self) -> list[str]:
        """Port numbers (valid, none used twice) and the peer proxy's loopback-only ports."""
        out: list[str] = []
        ports: dict[int, str] = {}
        advertised = [
            (f"etcd {m.name}.advertise_peer_port", m.advertise_peer_port)
            for m in self.etcd
            if m.advertise_peer_port
        ]
        for label, port in [*self._ports(), *advertised]:
            if not 0 <= port <= 65535:
                out.append(f"{label} = {port} is not a port number (0 = choose a free one)")
            elif port:
                if port in ports:
                    out.append(f"{label} = {port} is also used by {ports[port]}")
                ports[port] = label
        out += [
            f"etcd {m.name}.advertise_peer_port: the peer proxy runs on loopback only"
            for m in self.etcd
            if m.advertise_peer_port and not _is_loopback(self.host_of(m.dc))
        ]
        return out

    def _witness_problems(self) -> list[str]:
        out: list[str] = []
        per_dc = self.options.witnesses_per_dc
        for dc in self.datacenters:
            count = sum(1 for n in self.nodes if n.dc == dc)
            if count and per_dc > count:
                out.append(
                    f"options.witnesses_per_dc = {per_dc} but datacenter {dc!r} has only "
                    f"{count} vault node{'s' if count > 1 else ''}"
                )
        witnesses = self.witness_nodes()
        if len(witnesses) > MAX_WITNESSES:
            out.append(
                f"options.witnesses_per_dc = {per_dc} makes {len(witnesses)} witnesses (at "
                f"most {MAX_WITNESSES})"
            )
        chosen = {n.name for n in witnesses}
        out += [
            f"node {n.name}.witness_port = {n.witness_port}: it is no witness (witnesses are the "
            f"first options.witnesses_per_dc = {per_dc} of its data centre), so it must be 0"
            for n in self.nodes
            if n.witness_port and n.name not in chosen
        ]
        return out

    def _network_problems(self) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for network in self.networks:
            if network.dc not in self.datacenters:
                out.append(f"network of unknown datacenter {network.dc!r}")
            if network.dc in seen:
                out.append(f"datacenter {network.dc!r} has two networks")
            seen.add(network.dc)
            out += network.problems()
        return out

    def validate(self) -> None:
        """Raise `TopologyError` listing every problem, or return."""
        problems = self.problems()
        if problems:
            raise TopologyError(problems)

    def _named(self) -> Iterator[tuple[str, str, str]]:
        for m in self.etcd:
            yield "etcd member", m.name, m.dc
        for n in self.nodes:
            yield "vault node", n.name, n.dc
        for f in self.frontends:
            yield "frontend", f.name, f.dc

    def _ports(self) -> Iterator[tuple[str, int]]:
        for m in self.etcd:
            yield f"etcd {m.name}.client_port", m.client_port
            yield f"etcd {m.name}.peer_port", m.peer_port
        witnesses = {n.name for n in self.witness_nodes()}
        for n in self.nodes:
            yield f"node {n.name}.port", n.port
            if n.name in witnesses or n.witness_port:
                yield f"node {n.name}.witness_port", n.witness_port
        for f in self.frontends:
            yield f"frontend {f.name}.port", f.port

    def unassigned_ports(self) -> int:
        return sum(1 for _, port in self._ports() if port == 0)

    def with_ports(self, allocate: Callable[[int], list[int]]) -> Topology:
        """This topology with every 0 port replaced by one of `allocate(count)`."""
        free = iter(allocate(self.unassigned_ports()))
        witnesses = {n.name for n in self.witness_nodes()}

        def pick(port: int) -> int:
            return port or next(free)

        return replace(
            self,
            etcd=tuple(
                replace(m, client_port=pick(m.client_port), peer_port=pick(m.peer_port))
                for m in self.etcd
            ),
            nodes=tuple(
                replace(
                    n,
                    port=pick(n.port),
                    witness_port=pick(n.witness_port) if n.name in witnesses else n.witness_port,
                )
                for n in self.nodes
            ),
            frontends=tuple(replace(f, port=pick(f.port)) for f in self.frontends),
        )

    def to_dict(self) -> dict[str, Any]:
        """A TOML/JSON-shaped dict that `parse_topology` reads back unchanged."""
        return {
            "cluster": {"name": self.name, "host": self.host},
            "options": {f.name: getattr(self.options, f.name) for f in fields(Options)},
            "limits": {f.name: getattr(self.limits, f.name) for f in fields(FrontendLimits)},
            "datacenter": [self._dc_dict(dc) for dc in self.datacenters],
            "frontend": [{"name": f.name, "dc": f.dc, "port": f.port} for f in self.frontends],
        }

    def _dc_dict(self, dc: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": dc}
        network = self.network_of(dc)
        if network is not None:
            out["host"] = network.host
            out["command_prefix"] = list(network.command_prefix)
        for m in self.etcd:
            if m.dc == dc:
                out["etcd"] = {
                    "name": m.name,
                    "client_port": m.client_port,
                    "peer_port": m.peer_port,
                }
                if m.advertise_peer_port:
                    out["etcd"]["advertise_peer_port"] = m.advertise_peer_port
        out["nodes"] = [
            {"name": n.name, "port": n.port, "witness_port": n.witness_port}
            for n in self.nodes
            if n.dc == dc
        ]
        return out


def _is_retention(text: str) -> bool:
    if not _DURATION_RE.match(text):
        return False
    return any(c.isdigit() and c != "0" for c in text)  # not zero: 0 turns compaction off


def _certificate_clashes(topology: Topology) -> list[str]:
    """Names whose certificate files would overwrite another's in `pki/` (a frontend `x-node`
    and a vault node `x` would both own `x-node-client.pem`; a process `etcd-user-root`, root's
    etcd certificate). A name used twice is reported as such, not here."""
    pki = Pki(Path("pki"))
    files: list[tuple[str, str, CertPaths]] = [
        *(("vault node", n.name, pki.server(n.name)) for n in topology.nodes),
        *(("vault node", n.name, pki.node_client(n.name)) for n in topology.nodes),
        *(("frontend", f.name, pki.server(f.name)) for f in topology.frontends),
        *(("frontend", f.name, pki.frontend_client(f.name)) for f in topology.frontends),
        *(("etcd member", m.name, pki.etcd_member(m.name)) for m in topology.etcd),
        *(("etcd member", m.name, pki.etcd_peer(m.name)) for m in topology.etcd),
        *(("etcd user", u, pki.etcd_user(u)) for u in cluster_users(topology)),
        *(("CA", ca.cert.stem, ca) for ca in pki.cas()),
    ]
    processes = {"vault node", "etcd member", "frontend"}
    owners: dict[str, tuple[str, str]] = {}
    out: list[str] = []
    for role, name, paths in files:
        first = owners.setdefault(paths.cert.name, (role, name))
        same_process = first[1] == name and {first[0], role} <= processes
        if first != (role, name) and not same_process:
            out.append(
                f"{role} {name!r} and {first[0]} {first[1]!r} would both write "
                f"pki/{paths.cert.name}: rename one"
            )
    return out


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Reader:
    """Reads typed values out of parsed TOML, recording problems instead of stopping."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def table(self, data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            self.problems.append(f"{where}{key} must be a table")
            return {}
        return value

    def tables(self, data: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.problems.append(f"{where}{key} must be an array of tables")
            return []
        return value

    def value(self, data: Mapping[str, Any], key: str, kind: type[T], default: T, where: str) -> T:
        if key not in data:
            return default
        value = data[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not ok:
            self.problems.append(f"{where}{key} must be a {kind.__name__}, not {value!r}")
            return default
        return value  # type: ignore[no-any-return]

    def strings(self, data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problems.append(f"{where}{key} must be an array of non-empty strings")
            return ()
        return tuple(value)

    def required(self, data: Mapping[str, Any], key: str, where: str) -> str:
        if key not in data:
            self.problems.append(f"{where}{key} is required")
            return ""
        return self.value(data, key, str, "", where)

    def unknown(self, data: Mapping[str, Any], known: set[str], where: str) -> None:
        self.problems += [f"{where}{k} is not a known setting" for k in data if k not in known]

    def dataclass(self, data: Mapping[str, Any], cls: type[T], where: str) -> T:
        defaults = cls()
        self.unknown(data, {f.name for f in fields(cls)}, where)  # type: ignore[arg-type]
        values = {
            f.name: self.value(
                data, f.name, type(getattr(defaults, f.name)), getattr(defaults, f.name), where
            )
            for f in fields(cls)  # type: ignore[arg-type]
        }
        return cls(**values)


@dataclass
class _Parsed:
    """What the [[datacenter]] and [[frontend]] tables declare, in file order."""

    datacenters: list[str] = field(default_factory=list)
    etcd: list[EtcdMember] = field(default_factory=list)
    nodes: list[VaultNode] = field(default_factory=list)
    networks: list[DcNetwork] = field(default_factory=list)
    frontends: list[Frontend] = field(default_factory=list)


def _parse_datacenter(r: _Reader, dc_data: Mapping[str, Any], where: str, out: _Parsed) -> None:
    """One [[datacenter]] table: its name, host, etcd member and vault nodes."""
    r.unknown(dc_data, {"name", "host", "command_prefix", "etcd", "nodes"}, where)
    dc = r.required(dc_data, "name", where)
    out.datacenters.append(dc)
    if "host" in dc_data or "command_prefix" in dc_data:
        out.networks.append(
            DcNetwork(
                dc=dc,
                host=r.value(dc_data, "host", str, "127.0.0.1", where),
                command_prefix=r.strings(dc_data, "command_prefix", where),
            )
        )
    if "etcd" in dc_data:
        e = r.table(dc_data, "etcd", where)
        ewhere = where + "etcd."
        r.unknown(e, {"name", "client_port", "peer_port", "advertise_peer_port"}, ewhere)
        out.etcd.append(
            EtcdMember(
                name=r.value(e, "name", str, f"etcd-{dc}", ewhere),
                dc=dc,
                client_port=r.value(e, "client_port", int, 0, ewhere),
                peer_port=r.value(e, "peer_port", int, 0, ewhere),
                advertise_peer_port=r.value(e, "advertise_peer_port", int, 0, ewhere),
            )
        )
    for j, n in enumerate(r.tables(dc_data, "nodes", where)):
        nwhere = f"{where}nodes[{j}]."
        r.unknown(n, {"name", "port", "witness_port"}, nwhere)
        out.nodes.append(
            VaultNode(
                name=r.required(n, "name", nwhere),
                dc=dc,
                port=r.value(n, "port", int, 0, nwhere),
                witness_port=r.value(n, "witness_port", int, 0, nwhere),
            )
        )


def _parse_frontend(r: _Reader, f: Mapping[str, Any], where: str, out: _Parsed) -> None:
    """One [[frontend]] table."""
    r.unknown(f, {"name", "dc", "port"}, where)
    out.frontends.append(
        Frontend(
            name=r.required(f, "name", where),
            dc=r.required(f, "dc", where),
            port=r.value(f, "port", int, 0, where),
        )
    )


def parse_topology(data: Mapping[str, Any]) -> Topology:
    """Build and validate a topology from parsed TOML; raise one `TopologyError` for all."""
    r = _Reader()
    r.unknown(data, {"cluster", "options", "limits", "datacenter", "frontend"}, "")
    cluster = r.table(data, "cluster", "")
    r.unknown(cluster, {"name", "host"}, "cluster.")
    options = r.dataclass(r.table(data, "options", ""), Options, "options.")
    limits = r.dataclass(r.table(data, "limits", ""), FrontendLimits, "limits.")
    parsed = _Parsed()
    for i, dc_data in enumerate(r.tables(data, "datacenter", "")):
        _parse_datacenter(r, dc_data, f"datacenter[{i}].", parsed)
    for i, f in enumerate(r.tables(data, "frontend", "")):
        _parse_frontend(r, f, f"frontend[{i}].", parsed)
    topology = Topology(
        name=r.value(cluster, "name", str, "local", "cluster."),
        host=r.value(cluster, "host", str, "127.0.0.1", "cluster."),
        datacenters=tuple(parsed.datacenters),
        etcd=tuple(parsed.etcd),
        nodes=tuple(parsed.nodes),
        frontends=tuple(parsed.frontends),
        options=options,
        limits=limits,
        networks=tuple(parsed.networks),
    )
    problems = r.problems + topology.problems()
    if problems:
        raise TopologyError(problems)
    return topology


def load_topology(path: Path) -> Topology:
    """Read and validate a topology TOML file."""
    try:
        data = read_toml(path)
    except TomlReadError as exc:
        raise TopologyError([exc.problem()]) from exc
    return parse_topology(data)


def default_topology_path() -> Path:
    """The bundled three-data-centre topology."""
    return Path(__file__).with_name("local-3dc.toml")
