"""Evidence from the cluster for the checker: audit lines, logs, an etcd dump, process health.

* Audit files are appended to across runs: `audit_offsets` notes each file's size when the run
  starts and `copy_audit_tails` copies only what was written since, into the run directory.
* `etcd_dump` reads every key and value with `etcdctl` as the cluster's admin (etcd admits no
  anonymous reader, and its JSON gateway ignores client certificates), for the
  confidentiality check.
* `ProcessWatch` tells whether every cluster process is alive at the end and none crashed
  during the run: a supervisor restarts a crashed child, so a crash shows as a restart count
  that grew under the same supervisor.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy import processes
from deploy.cluster import Cluster


def audit_files(cluster: Cluster) -> list[Path]:
    return sorted((cluster.directory / "logs").glob("*.audit.jsonl"))


def audit_offsets(cluster: Cluster) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in audit_files(cluster)}


def copy_audit_tails(cluster: Cluster, offsets: dict[str, int], run_dir: Path) -> list[Path]:
    """Copy the part of each audit file written since `offsets` (whole lines) to `run_dir`."""
    copied = []
    for path in audit_files(cluster):
        with path.open("rb") as fh:
            fh.seek(offsets.get(path.name, 0))
            data = fh.read()
        target = run_dir / path.name
        target.write_bytes(data)
        copied.append(target)
    return copied


def log_files(cluster: Cluster) -> list[Path]:
    """Every file under the cluster's logs dir (service logs, etcd logs, audit files)."""
    return sorted(p for p in (cluster.directory / "logs").iterdir() if p.is_file())


def etcd_dump(cluster: Cluster) -> list[bytes] | None:
    """Every key and every value in etcd (keys and values as separate items), read with the
    admin identity, or None when etcd did not answer."""
    from bkv_chaos.insider import EtcdAdmin, InsiderError

    try:
        return EtcdAdmin(cluster).dump()
    except (InsiderError, OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _supervisor_restarts(cluster: Cluster, name: str) -> int | None:
    try:
        data = json.loads(cluster.layout.run_state(name).read_text())
    except (OSError, ValueError):
        return None
    value = data.get("restarts") if isinstance(data, dict) else None
    return value if isinstance(value, int) else None


@dataclass(frozen=True)
class ProcessWatch:
    """Each process's supervisor group and restart count, taken at the start of a run."""

    baseline: dict[str, tuple[int | None, int | None]]

    @classmethod
    def take(cls, cluster: Cluster) -> ProcessWatch:
        return cls({p.name: (p.pgid, _supervisor_restarts(cluster, p.name))
                    for p in cluster.state().processes})  # fmt: skip

    def problems(self, cluster: Cluster) -> list[str]:
        """Processes not alive now, or whose child was restarted by its supervisor (a crash)."""
        out = []
        for proc in cluster.state().processes:
            running = proc.running
            if running is None or not processes.is_alive(running):
                out.append(f"{proc.name} is not running")
                continue
            restarts = _supervisor_restarts(cluster, proc.name) or 0
            pgid, before = self.baseline.get(proc.name, (None, None))
            # A supervisor the run started itself (after a kill) began at 0 restarts.
            base = (before or 0) if pgid == proc.pgid else 0
            if restarts > base:
                out.append(f"{proc.name} crashed and was restarted {restarts - base} time(s)")
        return out
