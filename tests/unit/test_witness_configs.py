"""The `[witness]` table of every node.toml: the same witness set on every node, a server on the
witnesses only, addresses on their data centre's host; and where `deploy` shows the witnesses."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deploy.cli import status_table
from deploy.cluster import Cluster
from deploy.configs import Layout, node_toml, witness_peers
from deploy.pki import create_pki
from deploy.topology import Topology, default_topology_path, load_topology, parse_topology
from vault_node.config import NodeConfig

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

WITNESSES = ["dc-a-node-1", "dc-b-node-1", "dc-c-node-1"]


def _topology(**options: Any) -> Topology:
    t = load_topology(default_topology_path())
    t = replace(t, options=replace(t.options, **options))
    t.validate()
    return t.with_ports(lambda n: list(range(54000, 54000 + n)))


def _tomls(t: Topology, layout: Layout) -> dict[str, dict[str, Any]]:
    eps = [f"127.0.0.1:{m.client_port}" for m in t.etcd]
    out: dict[str, dict[str, Any]] = {}
    for n in t.nodes:
        hsm = layout.hsm_dir(n.name)
        text = node_toml(t, n, layout, eps, n.name, hsm / "softhsm2.conf", hsm / "pin", "/m.so")
        out[n.name] = tomllib.loads(text)
    return out


def test_every_node_gets_the_same_witness_set_in_topology_order(tmp_path: Path) -> None:
    t = _topology()
    tables = {name: d["witness"] for name, d in _tomls(t, Layout(tmp_path)).items()}
    ports = {n.name: n.witness_port for n in t.nodes}
    expected = [f"{w}=127.0.0.1:{ports[w]}" for w in WITNESSES]
    assert witness_peers(t) == expected
    assert {name: w["peers"] for name, w in tables.items()} == {name: expected for name in tables}
    assert {w["groups"] for w in tables.values()} == {256}
    assert all(w["name"] == name for name, w in tables.items())


def test_witnesses_serve_and_journal_and_the_others_do_not(tmp_path: Path) -> None:
    t = _topology()
    layout = Layout(tmp_path)
    pki = tmp_path / "pki"
    tables = {name: d["witness"] for name, d in _tomls(t, layout).items()}
    for node in t.nodes:
        w = tables[node.name]
        common = {
            "groups": 256,
            "name": node.name,
            "peers": witness_peers(t),
            "ca": str(pki / "cluster-ca.pem"),
            "client_cert": str(pki / f"{node.name}-node-client.pem"),
            "client_key": str(pki / f"{node.name}-node-client.key"),
            "client_ca": str(pki / "node-client-ca.pem"),
            "capture_streams": 4,
        }
        if node.name in WITNESSES:
            journal = tmp_path / "logs" / f"{node.name}.witness.jsonl"
            assert journal == layout.witness_journal(node.name)
            assert w == {
                **common, "serve": True, "listen": f"127.0.0.1:{node.witness_port}",
                "journal": str(journal),
            }  # fmt: skip
            # The key order of docs/architecture.md.
            assert list(w) == ["groups", "name", "serve", "listen", "peers", "ca", "client_cert",
                               "client_key", "client_ca", "journal", "capture_streams"]  # fmt: skip
        else:
            assert w == {**common, "serve": False}, node.name  # no listen, no journal
            assert node.witness_port == 0


def test_the_written_tables_pass_the_nodes_own_validation(tmp_path: Path) -> None:
    t = _topology(witnesses_per_dc=2, record_groups=1024)
    for name, data in _tomls(t, Layout(tmp_path)).items():
        w = NodeConfig.from_mapping(data).witness
        assert w.groups == 1024
        assert w.serve  # two nodes per data centre, two witnesses each: all of them
        assert set(w.peer_map()) == {n.name for n in t.nodes}
        assert w.problems(name) == []


def test_a_witness_address_is_on_its_datacenters_host(tmp_path: Path) -> None:
    data = load_topology(default_topology_path()).to_dict()
    data["datacenter"][1]["host"] = "169.254.9.6"
    data["datacenter"][1]["command_prefix"] = ["ip", "netns", "exec", "bkv-x-dc-b"]
    t = parse_topology(data).with_ports(lambda n: list(range(54000, 54000 + n)))
    b1 = next(n for n in t.nodes if n.name == "dc-b-node-1")
    tomls = _tomls(t, Layout(tmp_path))
    assert tomls["dc-b-node-1"]["witness"]["listen"] == f"169.254.9.6:{b1.witness_port}"
    assert tomls["dc-b-node-1"]["node"]["listen"] == f"169.254.9.6:{b1.port}"
    assert f"dc-b-node-1=169.254.9.6:{b1.witness_port}" in tomls["dc-a-node-2"]["witness"]["peers"]


def test_cluster_json_records_the_witness_ports_and_status_shows_them(tmp_path: Path) -> None:
    t = _topology()
    cluster = Cluster(tmp_path)
    state = cluster._initial_state(t)
    create_pki(tmp_path / "pki", [], ["fe-1"], etcd_users=["root"])  # status reads these
    ports = {n.name: n.witness_port for n in t.nodes}
    nodes = {p.name: p for p in state.processes if p.role == "node"}
    assert {name: p.ports for name, p in nodes.items()} == {
        n.name: {"grpc": n.port, **({"witness": n.witness_port} if n.witness_port else {})}
        for n in t.nodes
    }
    assert cluster.witness_nodes() == WITNESSES
    statuses = {s.name: s for s in cluster.status()}  # nothing runs
    assert {n: s.witness for n, s in statuses.items() if s.witness} == {
        w: f"127.0.0.1:{ports[w]}" for w in WITNESSES
    }
    table = status_table(list(statuses.values())).splitlines()
    assert table[0].split() == ["DC", "PROCESS", "ROLE", "PGID", "PID", "ADDRESS", "WITNESS",
                                "SUPERVISOR", "HEALTH"]  # fmt: skip
    rows = {line.split()[1]: line.split() for line in table[1:]}
    assert rows["dc-a-node-1"][6] == f"127.0.0.1:{ports['dc-a-node-1']}"
    assert rows["dc-a-node-2"][6] == rows["fe-1"][6] == rows["etcd-dc-a"][6] == "-"
    assert all(len(r) == 9 for r in rows.values())


def test_the_documented_node_toml_has_the_table_deploy_writes(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    block = text.split("`node.toml`:\n```toml\n", 1)[1].split("```", 1)[0]
    documented = NodeConfig.from_mapping(tomllib.loads(block))
    assert documented.witness.serve and len(documented.witness.peers) == 3
    written = _tomls(_topology(), Layout(tmp_path))["dc-a-node-1"]["witness"]
    assert list(tomllib.loads(block)["witness"]) == list(written)
