"""The etcd part of the launcher alone: three supervised members over TLS, quorum, leader loss,
restart, the auth bootstrap, and compaction + defragmentation taking erased values away."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from deploy import etcd, etcd_auth, etcd_maintain, processes
from deploy.cluster import free_ports
from deploy.errors import StartError
from deploy.pki import Pki, create_pki
from deploy.topology import EtcdMember, Topology, default_topology_path, load_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FRONTEND = "bkv-frontend-fe-1"


@dataclass
class EtcdCluster:
    root: Path
    topology: Topology  # the etcd members only
    plan_topology: Topology  # the whole cluster, for the auth plan
    pki: Pki
    groups: dict[str, processes.Running]

    def url(self, name: str) -> str:
        member = next(m for m in self.topology.etcd if m.name == name)
        return etcd.client_url(self.topology.host, member)

    @property
    def urls(self) -> list[str]:
        return [self.url(m.name) for m in self.topology.etcd]

    @property
    def tls(self) -> etcd.ssl.SSLContext:
        return etcd.probe_context(etcd.EtcdIdentity.of(self.pki))

    def spec(self, member: EtcdMember) -> processes.ServiceSpec:
        t = self.topology
        argv = etcd.etcd_argv(
            member, t.etcd, host=t.host, options=t.options, pki=self.pki, fsync=False,
            data_dir=self.root / member.name, log_file=self.root / f"{member.name}.etcd.log",
        )  # fmt: skip
        return processes.ServiceSpec(
            member.name, tuple(argv), self.root / f"{member.name}.log",
            self.root / f"{member.name}.json", {}, self.root,
        )  # fmt: skip

    def start(self, member: EtcdMember) -> None:
        self.groups[member.name] = processes.spawn(self.spec(member))

    def etcdctl(
        self, *args: str, user: str = "root", urls: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = etcd.etcdctl_argv(urls or self.urls, etcd.EtcdIdentity.of(self.pki, user), args,
                                 dial_timeout_s=1, command_timeout_s=2)  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False,
                              env=etcd.etcdctl_env())  # fmt: skip

    def put(self, url: str, key: str, value: str) -> bool:
        return self.etcdctl("put", key, value, urls=[url]).returncode == 0

    def get(self, url: str, key: str) -> str | None:
        done = self.etcdctl("get", key, "--print-value-only", urls=[url])
        return done.stdout.rstrip("\n") if done.returncode == 0 and done.stdout else None

    def db_file(self, member: EtcdMember) -> Path:
        return self.root / member.name / "member" / "snap" / "db"


@contextmanager
def etcd_cluster_with(retention: str = "5m") -> Iterator[EtcdCluster]:
    full = load_topology(default_topology_path())
    options = replace(full.options, etcd_compaction_retention=retention)
    full = replace(full, options=options)
    topology = replace(full, nodes=(), frontends=())  # only the etcd members run
    topology = topology.with_ports(lambda n: free_ports(topology.host, n))
    root = Path(tempfile.mkdtemp(prefix="bkv-etcd-"))
    pki = create_pki(
        root / "pki", [], [], etcd_members={m.name: [topology.host] for m in topology.etcd},
        etcd_users=etcd_auth.cluster_users(full),
    )  # fmt: skip
    cluster = EtcdCluster(root, topology, full, pki, {})
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


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    with etcd_cluster_with() as cluster:
        yield cluster


def _eventually(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` holds (fails after `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_three_members_quorum_leader_kill_and_restart(etcd_cluster: EtcdCluster) -> None:
    c = etcd_cluster
    urls, tls = c.urls, c.tls
    assert etcd.wait_healthy(urls, tls, time.monotonic() + 15)
    assert c.put(urls[0], "/test/a", "1")
    assert c.get(urls[2], "/test/a") == "1"

    leader_url = etcd.find_leader(urls, tls)
    assert leader_url is not None
    assert sum(bool((s := etcd.member_status(u, tls)) and s.is_leader) for u in urls) == 1
    leader = next(m for m in c.topology.etcd if c.url(m.name) == leader_url)
    processes.kill(c.groups[leader.name])  # supervisor and etcd: no restart
    assert not processes.is_alive(c.groups[leader.name])

    others = [u for u in urls if u != leader_url]
    # Election timeout 1 s on loopback: a new leader well within a few seconds.
    took = _eventually("a put after the leader's loss",
                       lambda: any(c.put(u, "/test/b", "2") for u in others), 10)  # fmt: skip
    assert took < 8
    assert etcd.find_leader(others, tls) is not None

    c.start(leader)  # same data dir, same ports
    assert etcd.wait_healthy([leader_url], tls, time.monotonic() + 10)
    # The restarted member caught up with the write it missed.
    _eventually("the restarted member's catch-up", lambda: c.get(leader_url, "/test/b") == "2", 5)


def test_member_crash_is_restarted_by_its_supervisor(etcd_cluster: EtcdCluster) -> None:
    c = etcd_cluster
    name = c.topology.etcd[0].name
    assert etcd.wait_healthy(c.urls, c.tls, time.monotonic() + 15)
    child = json.loads((c.root / f"{name}.json").read_text())["child_pid"]
    os.kill(child, signal.SIGKILL)

    def restarted() -> bool:
        state = json.loads((c.root / f"{name}.json").read_text())
        return bool(state["child_pid"] != child and state["state"] == "running")

    _eventually("the supervisor's restart", restarted, 10)
    assert etcd.wait_healthy([c.url(name)], c.tls, time.monotonic() + 10)


def test_down_leaves_no_process(etcd_cluster: EtcdCluster) -> None:
    c = etcd_cluster
    urls = c.urls
    assert etcd.wait_healthy(urls, c.tls, time.monotonic() + 15)
    groups = list(c.groups.values())
    pids = [pid for g in groups for pid in processes.group_pids(g)]
    assert len(pids) == 6  # a supervisor and an etcd per member
    for group in groups:
        processes.stop(group)
    assert all(not processes.is_alive(g) for g in groups)
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)
    assert not any(etcd.is_healthy(u, c.tls, timeout=0.2) for u in urls)


def test_auth_bootstrap_locks_etcd_down_idempotently(etcd_cluster: EtcdCluster) -> None:
    c = etcd_cluster
    assert etcd.wait_healthy(c.urls, c.tls, time.monotonic() + 15)
    # Before the bootstrap any etcd-CA certificate may do anything (auth is off) ...
    assert c.etcdctl("put", "/bkv/v1/records/before", "x", user=FRONTEND).returncode == 0
    plan = etcd_auth.cluster_auth_plan(c.plan_topology)
    endpoints = [u.removeprefix("https://") for u in c.urls]
    started = time.monotonic()
    cluster_id = etcd_auth.bootstrap(endpoints, etcd.EtcdIdentity.of(c.pki), plan)
    print(f"auth bootstrap: {time.monotonic() - started:.2f} s")
    # ... after it, the frontend's identity is refused records and keeps its own prefixes.
    for args in (("get", "/bkv/v1/records/before"), ("put", "/bkv/v1/records/x", "y")):
        done = c.etcdctl(*args, user=FRONTEND)
        assert done.returncode != 0 and "permission denied" in done.stderr, done
    assert c.etcdctl("put", "/bkv/v1/accounts/a", "pk", user=FRONTEND).returncode == 0
    assert c.etcdctl("get", "/bkv/v1/records/before", "--print-value-only").stdout == "x\n"
    # The cluster id is etcd's own (as etcdctl reports it), and a second run changes nothing.
    status = json.loads(c.etcdctl("endpoint", "status", "-w", "json").stdout)
    assert {s["Status"]["header"]["cluster_id"] for s in status} == {cluster_id}

    def auth_state() -> list[str]:
        roles = c.etcdctl("role", "list").stdout.split()
        users = c.etcdctl("user", "list").stdout.split()
        return [*(c.etcdctl("role", "get", r).stdout for r in roles),
                *(c.etcdctl("user", "get", u).stdout for u in users)]  # fmt: skip

    before = auth_state()
    assert etcd_auth.bootstrap(endpoints, etcd.EtcdIdentity.of(c.pki), plan) == cluster_id
    assert auth_state() == before
    assert sorted(c.etcdctl("user", "list").stdout.split()) == sorted(plan.users)
    assert sorted(c.etcdctl("role", "list").stdout.split()) == sorted(plan.roles)  # root: built in
    # With auth on, probes and health checks still work (they need no permission).
    assert all(etcd.is_healthy(u, c.tls) for u in c.urls)
    assert etcd.find_leader(c.urls, c.tls) is not None


def _old_revision_gone(c: EtcdCluster, key: str, revision: int) -> bool:
    done = c.etcdctl("get", key, f"--rev={revision}")
    if done.returncode == 0:
        return False
    assert "required revision has been compacted" in done.stderr, done.stderr
    return True


def test_periodic_compaction_drops_an_overwritten_value_within_its_retention() -> None:
    with etcd_cluster_with(retention="2s") as c:
        assert etcd.wait_healthy(c.urls, c.tls, time.monotonic() + 15)
        assert c.put(c.urls[0], "/bkv/v1/records/r", "sealed-v1")
        rev = int(json.loads(c.etcdctl("get", "/bkv/v1/records/r", "-w", "json").stdout)
                  ["header"]["revision"])  # fmt: skip
        assert c.etcdctl("del", "/bkv/v1/records/r").returncode == 0
        assert c.etcdctl("get", "/bkv/v1/records/r", f"--rev={rev}",
                         "--print-value-only").stdout == "sealed-v1\n"  # fmt: skip
        gone = lambda: _old_revision_gone(c, "/bkv/v1/records/r", rev)  # noqa: E731
        took = _eventually("auto-compaction", gone, 15)
        print(f"periodic 2s: the erased value left etcd's history after {took:.1f} s")
        assert took < 3 * 2  # about the retention, at most twice it (+ a poll)


def test_maintain_compacts_and_defragments_the_erased_bytes_out_of_every_db_file(
    etcd_cluster: EtcdCluster,
) -> None:
    c = etcd_cluster
    assert etcd.wait_healthy(c.urls, c.tls, time.monotonic() + 15)
    marker = secrets.token_hex(24)
    assert c.put(c.urls[0], "/bkv/v1/records/m", marker)
    for i in range(20):  # the record rewritten, as a counter update does
        assert c.put(c.urls[0], "/bkv/v1/records/m", f"v{i}")
    dbs = [c.db_file(m) for m in c.topology.etcd]
    # etcd commits its backend every 100 ms: wait for the marker to be on disk everywhere.
    _eventually("the marker in every db file",
                lambda: all(marker.encode() in db.read_bytes() for db in dbs), 5)  # fmt: skip
    run = etcd_maintain.etcdctl_runner(etcd.EtcdIdentity.of(c.pki))
    report = etcd_maintain.maintain(run, c.urls, defrag=False)
    assert report.compacted_to > 20
    assert _old_revision_gone(c, "/bkv/v1/records/m", report.compacted_to - 20)
    left = sum(marker.encode() in db.read_bytes() for db in dbs)
    print(f"after compaction alone, the erased value is still in {left} of 3 db files")
    report = etcd_maintain.maintain(run, c.urls, defrag=True)
    assert [marker.encode() in db.read_bytes() for db in dbs] == [False, False, False]
    assert c.get(c.urls[1], "/bkv/v1/records/m") == "v19"  # the live value is kept
    assert all(etcd.is_healthy(u, c.tls) for u in c.urls)
    print("\n".join(etcd_maintain.report_lines(report)))


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
