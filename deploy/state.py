"""DIR/cluster.json: what a cluster is made of and which process groups run it.

Written atomically (temporary file + rename) under an exclusive lock on DIR/.cluster.lock, so
that `status`, `down`, `kill-dc` and `start-dc` from other invocations see a consistent file.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from deploy.errors import ClusterStateError
from deploy.processes import Running
from deploy.topology import Role, Topology, parse_topology

# 2: etcd locked down (TLS, client certificates, auth), its cluster id recorded.
# 3: witnesses of the record log: witness ports, node client certificates, `[witness]` in every
#    node.toml, the group heads' prefix in the node role.
# An older directory can still be read, shown and stopped, never started again (`Cluster`
# refuses, saying why): make a new cluster.
STATE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# Why a directory of an older version cannot be started, by version.
OUTDATED = {
    1: "made before etcd was locked down (plaintext etcd, no etcd certificates)",
    2: "made before the record log's witnesses (no witness ports, no node client certificates, "
    "no [witness] in node.toml, no etcd grant on the group heads)",
}


@dataclass(frozen=True)
class ProcessState:
    """One service. `pgid`/`start_ticks` identify its supervisor's group while it runs."""

    name: str
    role: Role
    dc: str
    address: str  # host:port it serves on (etcd: its client URL's host:port)
    ports: dict[str, int]
    log: str
    pgid: int | None = None
    start_ticks: int | None = None
    # Put before its command at every start, restarts included (e.g. its network namespace).
    command_prefix: tuple[str, ...] = ()

    @property
    def running(self) -> Running | None:
        if self.pgid is None or self.start_ticks is None:
            return None
        return Running(self.pgid, self.start_ticks)

    def with_running(self, running: Running | None) -> ProcessState:
        if running is None:
            return replace(self, pgid=None, start_ticks=None)
        return replace(self, pgid=running.pgid, start_ticks=running.start_ticks)


@dataclass(frozen=True)
class ClusterState:
    directory: str
    topology: Topology
    fsync: bool
    fleet_id: str
    processes: tuple[ProcessState, ...] = field(default=())
    etcd_cluster_id: str = ""  # hex, as etcd reports it ("" before the bootstrap has run)
    version: int = STATE_VERSION

    def process(self, name: str) -> ProcessState | None:
        return next((p for p in self.processes if p.name == name), None)

    def with_process(self, updated: ProcessState) -> ClusterState:
        procs = tuple(updated if p.name == updated.name else p for p in self.processes)
        return replace(self, processes=procs)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "directory": self.directory,
                "fsync": self.fsync,
                "fleet_id": self.fleet_id,
                "etcd_cluster_id": self.etcd_cluster_id,
                "topology": self.topology.to_dict(),
                "processes": [asdict(p) for p in self.processes],
            },
            indent=2,
        )

    @staticmethod
    def from_json(text: str) -> ClusterState:
        data: dict[str, Any] = json.loads(text)
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise ClusterStateError(f"cluster.json version {version!r} is unknown")
        return ClusterState(
            directory=data["directory"],
            topology=parse_topology(data["topology"]),
            fsync=bool(data["fsync"]),
            fleet_id=data["fleet_id"],
            processes=tuple(
                ProcessState(**{**p, "command_prefix": tuple(p.get("command_prefix", ()))})
                for p in data["processes"]
            ),
            etcd_cluster_id=str(data.get("etcd_cluster_id", "")),
            version=int(version),
        )


def read_state(path: Path) -> ClusterState:
    try:
        return ClusterState.from_json(path.read_text())
    except FileNotFoundError as exc:
        raise ClusterStateError(f"no cluster in {path.parent} (no {path.name})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterStateError(f"{path} is damaged: {exc}") from exc


def write_state(path: Path, state: ClusterState) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold the cluster directory's exclusive lock (one mutating invocation at a time)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
