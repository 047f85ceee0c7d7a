"""Evidence from the cluster for the checker: audit lines, logs, an etcd dump, process health.

* Audit files are appended to across runs: `audit_offsets` notes each file's size when the run
  starts and `copy_audit_tails` copies only what was written since, into the run directory.
* `etcd_dump` reads every key and value under "" through etcd's JSON gateway (no etcd client
  library, no `etcdctl` process), for the confidentiality check.
* `ProcessWatch` tells whether every cluster process is alive at the end and none crashed
  during the run: a supervisor restarts a crashed child, so a crash shows as a restart count
  that grew under the same supervisor.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import processes
from deploy.cluster import Cluster

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def _range_all(url: str, timeout: float) -> dict[str, Any] | None:
    body = json.dumps({"key": base64.b64encode(b"\0").decode(), "range_end": "AA=="}).encode()
    request = urllib.request.Request(url + "/v3/kv/range", data=body, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            parsed = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def etcd_dump(cluster: Cluster, timeout: float = 5.0) -> list[bytes] | None:
    """Every key and every value in etcd (keys and values as separate items), or None when no
    member answered."""
    for url in cluster.etcd_client_urls().values():
        answer = _range_all(url, timeout)
        if answer is None:
            continue
        items: list[bytes] = []
        for kv in answer.get("kvs", []):
            items.append(base64.b64decode(kv.get("key", "")))
            items.append(base64.b64decode(kv.get("value", "")))
        return items
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
