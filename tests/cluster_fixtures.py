"""A cluster of a test module's (or session's) own: up in a temporary folder, and always down and
removed afterwards, even when a test fails (`BKV_KEEP_CLUSTER=1` keeps the folder to look at).

    @pytest.fixture(scope="module")
    def restore_cluster() -> Iterator[Cluster]:
        with own_cluster("bkv-restore-", one_node_per_dc=True) as c:
            yield c
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.cluster import Cluster
from deploy.topology import default_topology_path, load_topology

# The test clusters' key-loss rebind delay (node.account_rebind_delay_s): seconds, not days.
TEST_REBIND_DELAY_S = 3


@contextmanager
def own_cluster(
    prefix: str, *, one_node_per_dc: bool = False, options: Mapping[str, Any] | None = None
) -> Iterator[Cluster]:
    """The default local topology up with fsync off (and a rebind delay of seconds);
    `one_node_per_dc`: only each data centre's `-1` node (the witnesses), for tests that stop
    and restore the whole store; `options`: topology options to change (e.g. a short
    `ticket_ttl_s`)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    c = Cluster(root / "cluster")
    try:
        topology = load_topology(default_topology_path())
        topology = dataclasses.replace(
            topology,
            options=dataclasses.replace(
                topology.options, account_rebind_delay_s=TEST_REBIND_DELAY_S
            ),
        )
        if one_node_per_dc:
            topology = dataclasses.replace(
                topology, nodes=tuple(n for n in topology.nodes if n.name.endswith("-1"))
            )
        if options:
            topology = dataclasses.replace(
                topology, options=dataclasses.replace(topology.options, **options)
            )
        c.up(topology, fsync=False)
        yield c
    finally:
        try:
            if c.exists():
                c.down()
        finally:
            if os.environ.get("BKV_KEEP_CLUSTER") != "1":
                shutil.rmtree(root, ignore_errors=True)
