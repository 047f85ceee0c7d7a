"""`bkv-cluster` end to end on its own cluster: up, status, kill-dc, start-dc, down, resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import processes
from deploy.cluster import Cluster
from deploy.state import read_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def bkv_cluster(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def status_rows(root: Path) -> dict[str, list[str]]:
    done = bkv_cluster("status", "--dir", str(root))
    assert done.returncode == 0, done.stderr
    table, _, footer = done.stdout.partition("\n\n")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["DC", "PROCESS", "ROLE"]
    # Below the table: the etcd cluster id that the key ceremony pinned, as cluster.json has it.
    cluster_id = json.loads((root / "cluster.json").read_text())["etcd_cluster_id"]
    assert footer.strip() == f"etcd cluster id: {cluster_id}" and len(cluster_id) >= 8
    return {line.split()[1]: line.split() for line in lines[1:]}


def health(row: list[str]) -> str:
    return row[8]


def all_pids(root: Path) -> list[int]:
    """Every PID of every recorded process group (supervisors and children)."""
    state = read_state(root / "cluster.json")
    return [pid for p in state.processes if p.running for pid in processes.group_pids(p.running)]


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bkv-cli-"))
    root = tmp / "cluster"
    try:
        yield root
    finally:
        try:
            if (root / "cluster.json").exists():
                Cluster(root).down()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def test_up_status_kill_dc_start_dc_down(cluster_dir: Path) -> None:
    root = str(cluster_dir)
    started = time.monotonic()
    up = bkv_cluster("up", "--dir", root, "--no-fsync")
    up_s = time.monotonic() - started
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"bkv-cluster up took {up_s:.1f} s\n{up.stdout}")
    assert "etcd is locked down" in up.stdout
    assert "fsync: OFF" in up.stdout
    table = up.stdout.split("PHASE", 1)[1].splitlines()[1:]
    phases = [re.split(r"\s{2,}", line)[0] for line in table]
    # One line per phase, in this order: etcd is locked down before any node or frontend runs.
    assert phases[: phases.index("total") + 1] == [
        "certificates", "tokens", "etcd", "etcd auth", "key ceremony", "fleet root",
        "configuration", "vault nodes", "frontends", "total",
    ]  # fmt: skip
    cluster_id = json.loads((cluster_dir / "cluster.json").read_text())["etcd_cluster_id"]
    assert f"etcd cluster id: {cluster_id}" in up.stdout

    client = tomllib.loads((cluster_dir / "client.toml").read_text())["cluster"]
    assert len(client["frontends"]) == 2 and len(bytes.fromhex(client["fleet_id"])) == 16
    assert Path(client["fleet_public_key"]).is_file() and Path(client["ca"]).is_file()
    # The fleet root key that signs key announcements, and epoch 1 pinned (fleet rotation).
    assert Path(client["fleet_root_key"]).is_file() and client["fleet_epoch"] == 1

    rows = status_rows(cluster_dir)
    assert len(rows) == 11
    assert {n: health(r) for n, r in rows.items()} == {n: "healthy" for n in rows}
    assert sum(r[-1] == "(leader)" for r in rows.values()) == 1

    again = bkv_cluster("up", "--dir", root, "--no-fsync")
    assert again.returncode == 1 and "is running" in again.stderr

    killed = bkv_cluster("kill-dc", "dc-b", "--dir", root)
    assert killed.returncode == 0, killed.stderr
    rows = status_rows(cluster_dir)
    dc_b = {n for n, r in rows.items() if r[0] == "dc-b"}
    assert dc_b == {"etcd-dc-b", "dc-b-node-1", "dc-b-node-2", "fe-2"}
    assert all(health(rows[n]) == "down" and rows[n][3] == "-" for n in dc_b)
    for name in ("dc-a-node-1", "dc-c-node-2", "fe-1"):
        assert health(rows[name]) == "healthy"

    restarted = bkv_cluster("start-dc", "dc-b", "--dir", root)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    rows = status_rows(cluster_dir)
    assert {n: health(r) for n, r in rows.items()} == {n: "healthy" for n in rows}

    pids = all_pids(cluster_dir)
    assert len(pids) == 22  # a supervisor and a program per process
    down = bkv_cluster("down", "--dir", root)
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids if processes.pid_alive(pid)] == []
    state = json.loads((cluster_dir / "cluster.json").read_text())
    assert all(p["pgid"] is None for p in state["processes"])

    # `up` on a stopped cluster resumes it on its data: same ports, same fleet.
    resumed = bkv_cluster("up", "--dir", root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    assert "etcd auth" not in resumed.stdout  # etcd keeps its users and roles on its data
    assert tomllib.loads((cluster_dir / "client.toml").read_text())["cluster"] == client
    assert json.loads((cluster_dir / "cluster.json").read_text())["etcd_cluster_id"] == cluster_id
    rows = status_rows(cluster_dir)
    assert {n: health(r) for n, r in rows.items()} == {n: "healthy" for n in rows}
    assert bkv_cluster("down", "--dir", root).returncode == 0
    assert all_pids(cluster_dir) == []


def test_unknown_names_are_reported(cluster_dir: Path) -> None:
    done = bkv_cluster("status", "--dir", str(cluster_dir))
    assert done.returncode == 1 and "no cluster in" in done.stderr


def test_etcd_members_run_with_the_topologys_gomaxprocs(healthy_cluster: Cluster) -> None:
    # local-3dc.toml leaves Go's default: the members' environment carries no GOMAXPROCS of ours.
    state = healthy_cluster.state()
    assert state.topology.options.etcd_gomaxprocs == 0
    for name in ("etcd-dc-a", "etcd-dc-b", "etcd-dc-c"):
        pid = healthy_cluster.child_pid(name)
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        expected = (
            [f"GOMAXPROCS={os.environ['GOMAXPROCS']}".encode()]
            if "GOMAXPROCS" in os.environ
            else []
        )
        assert [e for e in environ if e.startswith(b"GOMAXPROCS=")] == expected, name
    # With the option set, every etcd member's start spec carries it; nodes and frontends do not.
    options = replace(state.topology.options, etcd_gomaxprocs=1)
    one = replace(state, topology=replace(state.topology, options=options))
    for proc in one.processes:
        env = healthy_cluster._spec(one, proc).env
        assert env.get("GOMAXPROCS") == ("1" if proc.role == "etcd" else None), proc.name


def test_maintain_compacts_and_defragments_the_session_cluster(healthy_cluster: Cluster) -> None:
    d = str(healthy_cluster.directory)
    done = bkv_cluster("maintain", "--dir", d, "--defrag", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("defragmented https://") == 3
    sizes = [line for line in done.stdout.splitlines() if ": database " in line]
    assert len(sizes) == 3
    assert all(s.healthy for s in healthy_cluster.status())


def test_node_tomls_load_and_agree_on_the_witness_set(healthy_cluster: Cluster) -> None:
    from vault_node.config import NodeConfig

    c = healthy_cluster
    topology = c.topology
    witnesses = c.witness_nodes()
    assert witnesses == ["dc-a-node-1", "dc-b-node-1", "dc-c-node-1"]
    configs = {
        n.name: NodeConfig.load(c.layout.config(n.name), check_files=True) for n in topology.nodes
    }
    peers = {name: config.witness.peer_map() for name, config in configs.items()}
    first = peers[topology.nodes[0].name]
    assert list(first) == witnesses
    assert all(p == first for p in peers.values())  # one witness set, the same on every node
    ports = {p.name: p.ports for p in c.state().processes if p.role == "node"}
    for name, config in configs.items():
        w = config.witness
        assert (w.name, w.serve, w.groups) == (name, name in witnesses, 256)
        if w.serve:
            assert w.listen == first[name] == f"127.0.0.1:{ports[name]['witness']}"
            assert Path(w.journal).parent.is_dir()
        else:
            assert (w.listen, w.journal) == ("", "") and "witness" not in ports[name]
    # `status` shows each witness's address, and only theirs.
    rows = status_rows(c.directory)
    assert {n: r[6] for n, r in rows.items() if r[6] != "-"} == {w: first[w] for w in witnesses}


def test_session_cluster_fixture(healthy_cluster: Cluster) -> None:
    c = healthy_cluster
    assert c.client_config_path.is_file()
    assert len(c.etcd_endpoints()) == 3
    assert c.etcd_leader() in {"etcd-dc-a", "etcd-dc-b", "etcd-dc-c"}
    assert all(s.healthy for s in c.status())
    old = c.child_pid("dc-c-node-1")
    assert c.crash("dc-c-node-1") == old  # the supervisor restarts it
    c.kill("fe-2")  # a kill is not restarted ...
    assert not next(s for s in c.status() if s.name == "fe-2").healthy
    c.start_all()  # ... until asked (healthy_cluster does this before every test)
    assert c.child_pid("dc-c-node-1") != old
    assert all(s.healthy for s in c.status())
