"""node.toml, frontend.toml and client.toml, in the shapes fixed by docs/architecture.md.

All paths written are absolute. The files hold paths to secrets, never a secret itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.etcd_auth import frontend_user, node_user
from deploy.pki import ETCD_TLS_NAME, Pki
from deploy.topology import Frontend, Topology, VaultNode

Scalar = str | int | float | bool
Value = Scalar | Sequence[str]


def _scalar(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("TOML values written by deploy must be finite")
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def dumps(tables: Mapping[str, Mapping[str, Value]]) -> str:
    """A TOML document of flat tables (enough for our three files)."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if isinstance(value, str | int | float | bool):
                lines.append(f"{key} = {_scalar(value)}")
            else:
                lines.append(f"{key} = [{', '.join(_scalar(v) for v in value)}]")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Layout:
    """Where everything of a cluster lives under its directory."""

    root: Path

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def session_secret(self) -> Path:
        return self.root / "secrets" / "session.key"

    @property
    def fleet_dir(self) -> Path:
        return self.root / "fleet"

    @property
    def fleet_root_key(self) -> Path:
        """The fleet root public key (PEM) clients pin to verify key announcements."""
        return self.fleet_dir / "root.pub"

    @property
    def fleet_root_token(self) -> Path:
        """The fleet root key's own token (operators only; never a node's)."""
        return self.root / "hsm-root"

    def announcement(self, epoch: int) -> Path:
        """The signed announcement of fleet epoch `epoch` (what etcd carries to frontends)."""
        return self.fleet_dir / f"announcement-{epoch}.bin"

    @property
    def rotation_dir(self) -> Path:
        """`rotate-fleet`'s state, log and the ceremony files of an unfinished install."""
        return self.root / "rotation"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".cluster.lock"

    @property
    def client_config(self) -> Path:
        return self.root / "client.toml"

    @property
    def prometheus_config(self) -> Path:
        """A Prometheus scrape configuration for every process's metrics (`bkv-cluster up`)."""
        return self.root / "prometheus.yml"

    def hsm_dir(self, node: str) -> Path:
        return self.root / "hsm" / node

    def etcd_data(self, member: str) -> Path:
        return self.root / "etcd" / member

    def config(self, name: str) -> Path:
        return self.root / "conf" / f"{name}.toml"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def etcd_log(self, member: str) -> Path:
        return self.root / "logs" / f"{member}.etcd.log"

    def audit_log(self, node: str) -> Path:
        return self.root / "logs" / f"{node}.audit.jsonl"

    def witness_journal(self, node: str) -> Path:
        """The heads witness `node` captured, appended before it answers."""
        return self.root / "logs" / f"{node}.witness.jsonl"

    def run_state(self, name: str) -> Path:
        return self.root / "run" / f"{name}.json"


def etcd_table(pki: Pki, user: str, etcd_endpoints: Sequence[str]) -> dict[str, Value]:
    """The `[etcd]` table of a process that is etcd user `user`: every member, the etcd CA to
    verify them by the name `bkv-etcd`, and that user's client certificate (its CN is the
    user; etcd grants it only its roles, see deploy/etcd_auth.py)."""
    identity = pki.etcd_user(user)
    return {
        "endpoints": list(etcd_endpoints),
        "ca": str(pki.etcd_ca.cert),
        "cert": str(identity.cert),
        "key": str(identity.key),
        "server_name": ETCD_TLS_NAME,
    }


def witness_address(topology: Topology, node: VaultNode) -> str:
    """host:port of witness `node`'s server (its data centre's host, as for its gRPC port)."""
    return f"{topology.host_of(node.dc)}:{node.witness_port}"


def witness_peers(topology: Topology) -> list[str]:
    """Every witness as `name=host:port`, in topology order: the same list in every node.toml."""
    return [f"{n.name}={witness_address(topology, n)}" for n in topology.witness_nodes()]


def witness_table(topology: Topology, node: VaultNode, layout: Layout) -> dict[str, Value]:
    """The `[witness]` table of `node` (docs/architecture.md; read by vault_node/config.py)."""
    pki = layout.pki
    serve = topology.is_witness(node.name)
    table: dict[str, Value] = {"groups": topology.options.record_groups, "name": node.name,
                               "serve": serve}  # fmt: skip
    if serve:
        table["listen"] = witness_address(topology, node)
    table |= {
        # The witness set comes from this file alone, identical on every node: etcd, trusted
        # for availability only, never decides who vouches for a head or what a majority is.
        "peers": witness_peers(topology),
        "ca": str(pki.cluster_ca.cert),  # witnesses show their node's server certificate
        "client_cert": str(pki.node_client(node.name).cert),
        "client_key": str(pki.node_client(node.name).key),
        # Only vault nodes hold certificates of this CA: a witness hears no frontend.
        "client_ca": str(pki.node_client_ca.cert),
    }
    if serve:
        table["journal"] = str(layout.witness_journal(node.name))
    table["capture_streams"] = topology.options.witness_capture_streams
    return table


def node_toml(
    topology: Topology, node: VaultNode, layout: Layout, etcd_endpoints: Sequence[str],
    token_label: str, softhsm_conf: Path, pin_file: Path, module: str, metrics_port: int = 0,
) -> str:  # fmt: skip
    """`metrics_port` (0: none) is where the node serves its metrics, on its own host."""
    pki = layout.pki
    address = f"{topology.host_of(node.dc)}:{node.port}"
    section: dict[str, Value] = {
        "name": node.name, "dc": node.dc, "listen": address, "advertise": address,
        "max_attempts": topology.options.max_attempts,
        "ticket_ttl_s": topology.options.ticket_ttl_s,
        "lease_ttl_s": topology.options.lease_ttl_s,
        "account_rebind_delay_s": topology.options.account_rebind_delay_s,
        "audit_log": str(layout.audit_log(node.name)),
        "opaque_context": topology.options.opaque_context,
    }  # fmt: skip
    section["group_commit_us"] = topology.options.group_commit_us
    if metrics_port:
        section["metrics_address"] = f"{topology.host_of(node.dc)}:{metrics_port}"
    return dumps({
        "node": section,
        "etcd": etcd_table(pki, node_user(node.name), etcd_endpoints),
        "tls": {
            "ca": str(pki.cluster_ca.cert),
            "cert": str(pki.server(node.name).cert),
            "key": str(pki.server(node.name).key),
            # Only frontends hold certificates of this CA: nodes accept no other caller.
            "client_ca": str(pki.frontend_ca.cert),
        },
        "hsm": {
            "module": module, "softhsm_conf": str(softhsm_conf),
            "token_label": token_label, "pin_file": str(pin_file),
        },
        "witness": witness_table(topology, node, layout),
    })  # fmt: skip


def frontend_toml(
    topology: Topology, frontend: Frontend, layout: Layout, etcd_endpoints: Sequence[str],
    metrics_port: int = 0,
) -> str:  # fmt: skip
    """`metrics_port` (0: none) is where the frontend serves its metrics, on its own host."""
    pki = layout.pki
    limits = topology.limits
    section: dict[str, Value] = {
        "name": frontend.name, "dc": frontend.dc,
        "listen": f"{topology.host_of(frontend.dc)}:{frontend.port}",
        "session_secret_file": str(layout.session_secret),
        "enrollment_secret_file": "",
        "session_ttl_s": topology.options.session_ttl_s,
    }  # fmt: skip
    if metrics_port:
        section["metrics_address"] = f"{topology.host_of(frontend.dc)}:{metrics_port}"
    return dumps({
        "frontend": section,
        "limits": {
            "account_rate_per_s": float(limits.account_rate_per_s),
            "account_burst": limits.account_burst,
            "peer_rate_per_s": float(limits.peer_rate_per_s),
            "peer_burst": limits.peer_burst,
            "max_request_bytes": limits.max_request_bytes,
            "node_deadline_s": float(limits.node_deadline_s),
            "relay_streams": limits.relay_streams,
        },
        "etcd": etcd_table(pki, frontend_user(frontend.name), etcd_endpoints),
        "tls": {
            "cert": str(pki.server(frontend.name).cert),
            "key": str(pki.server(frontend.name).key),
            "cluster_ca": str(pki.cluster_ca.cert),
            "client_cert": str(pki.frontend_client(frontend.name).cert),
            "client_key": str(pki.frontend_client(frontend.name).key),
        },
    })  # fmt: skip


def client_toml(
    topology: Topology, layout: Layout, fleet_pub: Path, fleet_id: bytes, fleet_epoch: int = 1
) -> str:
    """The pins a client starts from: the kem key of `fleet_epoch`, and the fleet root key that
    signs the announcements of later ones (absent from clusters made before it existed)."""
    cluster: dict[str, Value] = {
        "frontends": [f"{topology.host_of(f.dc)}:{f.port}" for f in topology.frontends],
        "ca": str(layout.pki.cluster_ca.cert),
        "server_name": "localhost",
        "fleet_public_key": str(fleet_pub),
        "fleet_id": fleet_id.hex(),
        "fleet_epoch": fleet_epoch,
        "opaque_context": topology.options.opaque_context,
    }
    if layout.fleet_root_key.exists():
        cluster["fleet_root_key"] = str(layout.fleet_root_key)
    return dumps({"cluster": cluster})


@dataclass(frozen=True)
class ScrapeTarget:
    """One process whose metrics Prometheus scrapes."""

    name: str
    role: str  # "node" or "frontend"
    dc: str
    address: str  # host:port of its metrics endpoint


SCRAPE_INTERVAL_S = 5


def prometheus_yml(cluster_name: str, targets: Sequence[ScrapeTarget]) -> str:
    """A Prometheus scrape configuration: one job per role, each target labelled with its
    process name (`process`, not `node`: the frontend's relay metrics have a `node` label of
    their own), role and data centre. Strings are JSON, which YAML reads as they are."""
    lines = [
        "# Written by bkv-cluster up: every vault node's and frontend's metrics endpoint.",
        "# prometheus --config.file=prometheus.yml; Grafana: deploy/grafana/bkv-dashboard.json",
        "global:",
        f"  scrape_interval: {SCRAPE_INTERVAL_S}s",
        f"  external_labels: {{cluster: {json.dumps(cluster_name)}}}",
        "scrape_configs:",
    ]
    for role in ("node", "frontend"):
        chosen = [t for t in targets if t.role == role]
        if not chosen:
            continue
        lines += [f"  - job_name: {json.dumps('bkv-' + role)}", "    static_configs:"]
        for t in chosen:
            labels = {"process": t.name, "role": t.role, "dc": t.dc}
            lines += [
                f"      - targets: [{json.dumps(t.address)}]",
                "        labels: {"
                + ", ".join(f"{k}: {json.dumps(v)}" for k, v in labels.items())
                + "}",
            ]
    return "\n".join(lines) + "\n"
