"""etcd members: the command line of one member, and fast health, leader and key-value probes.

Probes go through etcd's HTTP endpoints (`/health`, the v3 JSON gateway) with short timeouts:
no etcd client library in the launcher (two etcd proto sets cannot share a process) and no
`etcdctl` (about 30 ms of process start per call).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.topology import EtcdMember, Options, Topology

# Loopback only: never route a probe through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def client_url(host: str, member: EtcdMember) -> str:
    return f"http://{host}:{member.client_port}"


def peer_url(host: str, member: EtcdMember) -> str:
    return f"http://{host}:{member.peer_port}"


def advertised_peer_url(host: str, member: EtcdMember) -> str:
    """The peer URL the other members dial: a proxy's port when the member has one."""
    return f"http://{host}:{member.advertise_peer_port or member.peer_port}"


def endpoints(host: str, members: Sequence[EtcdMember]) -> list[str]:
    """`host:port` client endpoints, the form node.toml and frontend.toml take."""
    return [f"{host}:{m.client_port}" for m in members]


def topology_endpoints(topology: Topology) -> list[str]:
    """Every member's `host:port` client endpoint, each on its data centre's host."""
    return [f"{topology.host_of(m.dc)}:{m.client_port}" for m in topology.etcd]


def member_hosts(topology: Topology) -> dict[str, str]:
    """Member name -> the host it binds and advertises (its data centre's)."""
    return {m.name: topology.host_of(m.dc) for m in topology.etcd}


def etcd_argv(
    member: EtcdMember,
    members: Sequence[EtcdMember],
    *,
    host: str,
    options: Options,
    data_dir: Path,
    log_file: Path,
    fsync: bool,
    etcd_binary: str = "etcd",
    hosts: Mapping[str, str] | None = None,
) -> list[str]:
    """The command line of `member` in a cluster of `members`.

    `hosts` maps member names to their own host (default: `host` for all). A member with an
    `advertise_peer_port` listens on its `peer_port` but advertises the proxy's port, and every
    member's `--initial-cluster` names that port (member ids are derived from these URLs, so
    all members must agree on them).

    `--initial-cluster-state new` is ignored by etcd once the data dir holds a member, so the
    same command restarts a member on its data.
    """

    def host_of(m: EtcdMember) -> str:
        return host if hosts is None else hosts.get(m.name, host)

    own = host_of(member)
    initial = ",".join(f"{m.name}={advertised_peer_url(host_of(m), m)}" for m in members)
    argv = [
        etcd_binary,
        "--name", member.name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url(own, member),
        "--advertise-client-urls", client_url(own, member),
        "--listen-peer-urls", peer_url(own, member),
        "--initial-advertise-peer-urls", advertised_peer_url(own, member),
        "--initial-cluster", initial,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", "bkv-" + "-".join(m.name for m in members),
        "--heartbeat-interval", str(options.etcd_heartbeat_ms),
        "--election-timeout", str(options.etcd_election_ms),
        # A member that rejoins (start-dc, a healed partition) must not depose a working
        # leader: with pre-vote it campaigns only when a quorum would vote for it (etcd 3.4
        # has it off by default; 3.5 turned it on).
        "--pre-vote",
        # Erased records must also leave etcd's history (DESIGN: auto-compaction).
        "--auto-compaction-mode", options.etcd_compaction_mode,
        "--auto-compaction-retention", options.etcd_compaction_retention,
        "--logger", "zap",
        "--log-outputs", str(log_file),
    ]  # fmt: skip
    if not fsync:
        # Accepted by etcd 3.4 although missing from --help (PLATFORM.md). Tests only.
        argv.append("--unsafe-no-fsync")
    return argv


def _request(url: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any] | None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            parsed = json.loads(resp.read())
    except (OSError, ValueError):
        # OSError covers refused connections, timeouts and HTTP errors (URLError subclasses it).
        return None
    return parsed if isinstance(parsed, dict) else None


def is_healthy(url: str, timeout: float = 0.5) -> bool:
    """True when the member answers `/health` with a leader elected (quorum reachable)."""
    answer = _request(url + "/health", None, timeout)
    return answer is not None and answer.get("health") == "true"


@dataclass(frozen=True)
class MemberStatus:
    member_id: str
    leader_id: str

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader_id and self.leader_id not in ("", "0")


def member_status(url: str, timeout: float = 0.5) -> MemberStatus | None:
    answer = _request(url + "/v3/maintenance/status", {}, timeout)
    if answer is None:
        return None
    header = answer.get("header", {})
    return MemberStatus(str(header.get("member_id", "")), str(answer.get("leader", "")))


def find_leader(urls: Sequence[str], timeout: float = 0.5) -> str | None:
    """The client URL of the member that reports itself leader, or None."""
    for url in urls:
        status = member_status(url, timeout)
        if status is not None and status.is_leader:
            return url
    return None


def wait_healthy(urls: Sequence[str], deadline: float, need: int | None = None) -> bool:
    """Poll until at least `need` (default: all) of `urls` are healthy, or the deadline."""
    need = len(urls) if need is None else need
    while True:
        if sum(is_healthy(u) for u in urls) >= need:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv_put(url: str, key: bytes, value: bytes, timeout: float = 1.0) -> bool:
    """One put through the JSON gateway; True when the member acknowledged it."""
    answer = _request(url + "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout)
    return answer is not None and "header" in answer


def kv_get(url: str, key: bytes, timeout: float = 1.0) -> bytes | None:
    """A linearizable read through the JSON gateway; None when absent or unreachable."""
    answer = _request(url + "/v3/kv/range", {"key": _b64(key)}, timeout)
    if answer is None or not answer.get("kvs"):
        return None
    return base64.b64decode(answer["kvs"][0].get("value", ""))
