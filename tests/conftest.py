"""Shared test configuration: bounded hypothesis profiles, and the one full-cluster fixture.

    def test_something(cluster: Cluster) -> None: ...            # session-wide cluster
    def test_chaos(healthy_cluster: Cluster) -> None: ...         # same, every process restarted
                                                                 # and healthy before the test
    def test_flow(inproc_cluster: InProcessCluster) -> None: ...  # unit tier: one process

Every tier (integration, fuzz, chaos) shares the one session cluster: the local-3dc topology, etcd
without fsync, in a temp dir. It is only started when a test asks for it. It is stopped (`down`,
which waits until no process is left) and its directory removed at the end of the session, also
when `up` or a test failed; BKV_KEEP_CLUSTER=1 keeps the directory (logs) for debugging. Tests
that kill processes need not restore them: `healthy_cluster` does that for the next test.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import own_cluster
from hypothesis import HealthCheck, settings
from inproc_cluster import InProcessCluster

from deploy.cluster import Cluster

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with own_cluster("bkv-cluster-") as c:
        yield c


@pytest.fixture
def healthy_cluster(cluster: Cluster) -> Cluster:
    """The session cluster with every process running and healthy."""
    cluster.start_all()
    return cluster


@pytest.fixture
def inproc_cluster(tmp_path: Path) -> Iterator[InProcessCluster]:
    """The unit tier's cluster (tests/inproc_cluster.py): the real node, frontend and client
    code in this process on loopback gRPC with TLS, a software token and a memory store; no
    child process, no etcd, no SoftHSM. What it omits is listed in its module docstring."""
    with InProcessCluster(tmp_path / "inproc") as c:
        yield c
