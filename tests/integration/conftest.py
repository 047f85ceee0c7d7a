"""The shared full-cluster fixture: the local-3dc topology, etcd without fsync, in a temp dir.

    def test_something(cluster: Cluster) -> None: ...            # session-wide cluster
    def test_chaos(healthy_cluster: Cluster) -> None: ...         # same, every process restarted
                                                                 # and healthy before the test

`cluster.client_config_path` is the client.toml to use; `cluster.etcd_endpoints()`,
`cluster.kill_dc("dc-b")`, `cluster.start_dc("dc-b")`, `cluster.kill(name)`, `cluster.crash(name)`
and `cluster.status()` are the controls (see deploy/cluster.py). Tests that kill processes
need not restore them: `healthy_cluster` does that for the next test.

The cluster is stopped (`down`, which waits until no process is left) and its directory removed
at the end of the session, also when `up` or a test failed. BKV_KEEP_CLUSTER=1 keeps the
directory (logs) for debugging.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.cluster import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="bkv-cluster-"))
    c = Cluster(root / "cluster")
    try:
        c.up(fsync=False)
        yield c
    finally:
        try:
            if c.exists():
                c.down()
        finally:
            if os.environ.get("BKV_KEEP_CLUSTER") != "1":
                shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def healthy_cluster(cluster: Cluster) -> Cluster:
    """The session cluster with every process running and healthy."""
    cluster.start_all()
    return cluster
