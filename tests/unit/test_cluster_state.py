"""cluster.json: the etcd cluster id and the witness ports are kept; a cluster made before etcd
was locked down (state version 1) or before the witnesses (version 2) can still be read and
stopped but never started; `Cluster.etcdctl_argv`, `Cluster.witness_nodes`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.cluster import Cluster
from deploy.errors import ClusterStateError, UnknownProcessError
from deploy.pki import create_pki
from deploy.state import STATE_VERSION, ClusterState, ProcessState, read_state, write_state
from deploy.topology import default_topology_path, load_topology

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def _state(root: Path, **kw: object) -> ClusterState:
    t = load_topology(default_topology_path()).with_ports(lambda n: list(range(52000, 52000 + n)))
    procs = tuple(
        ProcessState(m.name, "etcd", m.dc, f"127.0.0.1:{m.client_port}", {}, "log") for m in t.etcd
    )
    return ClusterState(str(root), t, False, "ab" * 16, procs, **kw)  # type: ignore[arg-type]


def test_the_etcd_cluster_id_survives_a_round_trip(tmp_path: Path) -> None:
    state = _state(tmp_path, etcd_cluster_id="55ee7cf1bf2069f5")
    write_state(tmp_path / "cluster.json", state)
    again = read_state(tmp_path / "cluster.json")
    assert again == state
    assert again.version == STATE_VERSION == 3
    assert json.loads((tmp_path / "cluster.json").read_text())["etcd_cluster_id"] == (
        "55ee7cf1bf2069f5"
    )


def test_a_version_1_cluster_is_read_but_never_started(tmp_path: Path) -> None:
    data = json.loads(_state(tmp_path).to_json())
    data["version"] = 1
    del data["etcd_cluster_id"]
    (tmp_path / "cluster.json").write_text(json.dumps(data))
    create_pki(tmp_path / "pki", [], ["fe-1"])  # as then: no etcd member or user certificate
    state = read_state(tmp_path / "cluster.json")
    assert (state.version, state.etcd_cluster_id) == (1, "")
    cluster = Cluster(tmp_path)
    assert [s.supervisor for s in cluster.status()] == ["down"] * 3  # status works
    cluster.down()  # and so does down (nothing runs)
    with pytest.raises(ClusterStateError, match="before etcd was locked down"):
        cluster.start_all()
    with pytest.raises(ClusterStateError, match="before etcd was locked down"):
        cluster.up()


def test_witness_ports_survive_a_round_trip_and_the_witnesses_are_named(tmp_path: Path) -> None:
    state = _state(tmp_path)
    write_state(tmp_path / "cluster.json", state)
    saved = json.loads((tmp_path / "cluster.json").read_text())
    ports = {n["name"]: n["witness_port"] for dc in saved["topology"]["datacenter"]
             for n in dc["nodes"]}  # fmt: skip
    assert ports == {n.name: n.witness_port for n in state.topology.nodes}
    assert [ports[n] > 0 for n in sorted(ports)] == [True, False] * 3
    again = read_state(tmp_path / "cluster.json")
    assert again.topology.witness_nodes() == state.topology.witness_nodes()
    assert Cluster(tmp_path).witness_nodes() == ["dc-a-node-1", "dc-b-node-1", "dc-c-node-1"]


def test_a_version_2_cluster_is_read_but_never_started(tmp_path: Path) -> None:
    data = json.loads(_state(tmp_path, etcd_cluster_id="55ee7cf1bf2069f5").to_json())
    data["version"] = 2
    for dc in data["topology"]["datacenter"]:  # as then: no witness ports
        for node in dc["nodes"]:
            del node["witness_port"]
    del data["topology"]["options"]["witnesses_per_dc"]
    del data["topology"]["options"]["record_groups"]
    (tmp_path / "cluster.json").write_text(json.dumps(data))
    create_pki(tmp_path / "pki", [], ["fe-1"], etcd_users=["root"])
    state = read_state(tmp_path / "cluster.json")
    assert (state.version, state.etcd_cluster_id) == (2, "55ee7cf1bf2069f5")
    assert all(n.witness_port == 0 for n in state.topology.nodes)
    cluster = Cluster(tmp_path)
    assert [s.supervisor for s in cluster.status()] == ["down"] * 3
    cluster.down()
    for start in (cluster.start_all, cluster.up):
        with pytest.raises(ClusterStateError, match="made before the record log's witnesses"):
            start()


def test_an_unknown_version_is_refused(tmp_path: Path) -> None:
    data = json.loads(_state(tmp_path).to_json())
    data["version"] = 4
    (tmp_path / "cluster.json").write_text(json.dumps(data))
    with pytest.raises(ClusterStateError, match="version 4 is unknown"):
        read_state(tmp_path / "cluster.json")


def test_etcdctl_argv_reaches_every_member_or_the_named_ones_as_the_chosen_user(
    tmp_path: Path,
) -> None:
    write_state(tmp_path / "cluster.json", _state(tmp_path))
    cluster = Cluster(tmp_path)
    urls = list(cluster.etcd_client_urls().values())
    assert all(u.startswith("https://127.0.0.1:") for u in urls) and len(urls) == 3
    argv = cluster.etcdctl_argv("endpoint", "health")
    assert argv[1] == f"--endpoints={','.join(urls)}"
    assert argv[3] == f"--cert={tmp_path / 'pki' / 'etcd-user-root.pem'}"
    assert argv[-2:] == ["endpoint", "health"]
    one = cluster.etcdctl_argv("defrag", members=["etcd-dc-b"], user="bkv-frontend-fe-1")
    assert one[1] == f"--endpoints={cluster.etcd_client_urls()['etcd-dc-b']}"
    assert one[3] == f"--cert={tmp_path / 'pki' / 'etcd-user-bkv-frontend-fe-1.pem'}"
    with pytest.raises(UnknownProcessError, match="no etcd member 'etcd-dc-z'"):
        cluster.etcdctl_argv("get", "x", members=["etcd-dc-z"])
