"""The etcd part of the launcher alone: three supervised members, quorum, leader loss, restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from deploy import etcd, processes
from deploy.cluster import free_ports
from deploy.errors import StartError
from deploy.topology import EtcdMember, Topology, default_topology_path, load_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class EtcdCluster:
    root: Path
    topology: Topology
    groups: dict[str, processes.Running]

    def url(self, name: str) -> str:
        member = next(m for m in self.topology.etcd if m.name == name)
        return etcd.client_url(self.topology.host, member)

    def spec(self, member: EtcdMember) -> processes.ServiceSpec:
        t = self.topology
        argv = etcd.etcd_argv(
            member, t.etcd, host=t.host, options=t.options, fsync=False,
            data_dir=self.root / member.name, log_file=self.root / f"{member.name}.etcd.log",
        )  # fmt: skip
        return processes.ServiceSpec(
            member.name, tuple(argv), self.root / f"{member.name}.log",
            self.root / f"{member.name}.json", {}, self.root,
        )  # fmt: skip

    def start(self, member: EtcdMember) -> None:
        self.groups[member.name] = processes.spawn(self.spec(member))


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    topology = load_topology(default_topology_path())
    topology = replace(topology, nodes=(), frontends=())  # only the etcd members
    topology = topology.with_ports(lambda n: free_ports(topology.host, n))
    root = Path(tempfile.mkdtemp(prefix="bkv-etcd-"))
    cluster = EtcdCluster(root, topology, {})
    try:
        for member in topology.etcd:
            cluster.start(member)
        yield cluster
    finally:
        try:
            failures: list[StartError] = []
            for group in cluster.groups.values():
                try:  # one member that will not die must not leave the others running
                    processes.kill(group)
                except StartError as err:
                    failures.append(err)
            if failures:
                raise failures[0]
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _eventually_put(urls: list[str], key: bytes, value: bytes, timeout: float) -> float:
    """Seconds until a put through any of `urls` is acknowledged (fails after `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if any(etcd.kv_put(u, key, value, timeout=0.5) for u in urls):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"no put acknowledged within {timeout}s")


def test_three_members_quorum_leader_kill_and_restart(etcd_cluster: EtcdCluster) -> None:
    c = etcd_cluster
    urls = [c.url(m.name) for m in c.topology.etcd]
    assert etcd.wait_healthy(urls, time.monotonic() + 15)
    assert etcd.kv_put(urls[0], b"/test/a", b"1")
    assert etcd.kv_get(urls[2], b"/test/a") == b"1"

    leader_url = etcd.find_leader(urls)
    assert leader_url is not None
    leader = next(m for m in c.topology.etcd if c.url(m.name) == leader_url)
    processes.kill(c.groups[leader.name])  # supervisor and etcd: no restart
    assert not processes.is_alive(c.groups[leader.name])

    others = [u for u in urls if u != leader_url]
    # Election timeout 1 s on loopback: a new leader well within a few seconds.
    assert _eventually_put(others, b"/test/b", b"2", timeout=10) < 8
    assert etcd.find_leader(others) is not None

    c.start(leader)  # same data dir, same ports
    assert etcd.wait_healthy([leader_url], time.monotonic() + 10)
    # The restarted member caught up with the write it missed.
    deadline = time.monotonic() + 5
    while etcd.kv_get(leader_url, b"/test/b") != b"2":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_member_crash_is_restarted_by_its_supervisor(etcd_cluster: EtcdCluster) -> None:
    c = etcd_cluster
    name = c.topology.etcd[0].name
    urls = [c.url(m.name) for m in c.topology.etcd]
    assert etcd.wait_healthy(urls, time.monotonic() + 15)
    child = json.loads((c.root / f"{name}.json").read_text())["child_pid"]
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        state = json.loads((c.root / f"{name}.json").read_text())
        if state["child_pid"] != child and state["state"] == "running":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert etcd.wait_healthy([c.url(name)], time.monotonic() + 10)


def test_down_leaves_no_process(etcd_cluster: EtcdCluster) -> None:
    c = etcd_cluster
    urls = [c.url(m.name) for m in c.topology.etcd]
    assert etcd.wait_healthy(urls, time.monotonic() + 15)
    groups = list(c.groups.values())
    pids = [pid for g in groups for pid in processes.group_pids(g)]
    assert len(pids) == 6  # a supervisor and an etcd per member
    for group in groups:
        processes.stop(group)
    assert all(not processes.is_alive(g) for g in groups)
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)
    assert not any(etcd.is_healthy(u, timeout=0.2) for u in urls)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
