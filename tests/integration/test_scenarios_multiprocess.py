"""The scenarios of tests/cluster_scenarios.py on the multi-process cluster (real etcd, real
SoftHSM tokens, real processes); tests/unit/test_inproc_cluster.py runs them in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_scenarios import register_recover_lockout

from deploy.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_register_recover_lockout_end_to_end(healthy_cluster: Cluster, tmp_path: Path) -> None:
    register_recover_lockout(healthy_cluster, tmp_path, max_attempts=3)
