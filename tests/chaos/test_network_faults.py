"""Network faults on clusters of their own: `partition-dc` (data centres in network namespaces
made for the test) and `slow-link` over an etcd peer link (one member behind a proxy).

Each test brings up its own cluster (about 5 s), runs a bounded load, and tears everything down
in `finally` blocks; the partition test also checks that no namespace or veth of its run is left.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bkv_chaos import netns
from bkv_chaos.history import (
    FAULTS_FILE,
    HISTORY_FILE,
    RUN_FILE,
    read_faults,
    read_history,
    read_run_info,
)
from bkv_chaos.load import LoadConfig
from bkv_chaos.proxy import peer_proxy_cluster
from bkv_chaos.run import ChaosConfig, RunResult, run_chaos
from bkv_chaos.verdict import format_table
from deploy.cluster import Cluster
from deploy.topology import default_topology_path, load_topology
from vault_common.audit_line import read_audits

pytestmark = pytest.mark.chaos

LOAD = LoadConfig(workers=3, good=4, churn=1, guessing=2, cross=1)
GRACE_S = 0.5  # requests in flight when the partition begins may still finish


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bkv-chaos-net-") as root:
        yield Path(root)


def _config(cluster: Cluster, scenario: str, out: Path, duration: float) -> ChaosConfig:
    return ChaosConfig(
        client_config=cluster.client_config_path, cluster_dir=cluster.directory,
        scenarios=scenario, duration_s=duration, seed=13, out_dir=out, load=LOAD,
    )  # fmt: skip


def _passed(result: RunResult) -> None:
    assert result.exit_code == 0, format_table(result.verdict)
    assert not result.problems, result.problems
    assert not result.skipped, result.skipped


@pytest.mark.timeout(180)
def test_partition_dc_majority_serves_minority_fails_closed(workdir: Path) -> None:
    why = netns.missing_privileges()
    if why:
        pytest.skip(why)
    topology = load_topology(default_topology_path())
    with netns.netns_cluster(workdir / "cluster", topology) as (cluster, lab):
        assert all(p.address.startswith("169.254.") for p in cluster.state().processes)
        assert all(p.command_prefix[:3] == ("ip", "netns", "exec")
                   for p in cluster.state().processes)  # fmt: skip
        # A 30-s slot holds the partition 12 s. A CI run's 8 s of partition (from a 20-s
        # slot) once ended before the majority's first success: the minority's nodes stay
        # routable until their 4-s leases lapse, and a relay to one waits out its deadline,
        # on a machine busy with the rest of the suite.
        config = _config(cluster, "partition-dc", workdir, 30.0)
        result = run_chaos(config, echo=lambda _m: None, network=lab)
        _passed(result)
        # Healed: every process serves again by itself (none was restarted: `problems`).
        assert all(s.healthy for s in cluster.status())
        assert not lab.partitioned
        run_dir = result.run_dir
        (fault,) = read_faults(run_dir / FAULTS_FILE)
        assert fault.kind == "partition-dc" and fault.target in topology.datacenters
        assert fault.end is not None and fault.end - fault.start >= 5.0
        history = read_history(run_dir / HISTORY_FILE)
        # Load operations (not probes) that succeeded while the partition held.
        during = [
            op for op in history
            if op.is_definite_ok and op.client != "probe" and op.op != "bad_input"
            and fault.start + GRACE_S < op.complete < fault.end
        ]  # fmt: skip
        assert during, "the majority side served nothing during the partition"
        assert any(
            op.is_definite_ok and op.op == "recover" and op.invoke > fault.end for op in history
        )
        # The minority's nodes evaluated no password while cut off (no quorum there).
        start_unix = read_run_info(run_dir / RUN_FILE).start_unix
        minority = {n.name for n in topology.nodes if n.dc == fault.target}
        evaluated = [
            e for e in read_audits(run_dir.glob("*.audit.jsonl"))
            if e.event == "evaluate" and e.node in minority
            and fault.start + GRACE_S < e.ts - start_unix < fault.end
        ]  # fmt: skip
        assert not evaluated, evaluated[:3]
        majority = {n.name for n in topology.nodes if n.dc != fault.target}
        assert any(
            e.event == "evaluate" and e.node in majority
            and fault.start + GRACE_S < e.ts - start_unix < fault.end
            for e in read_audits(run_dir.glob("*.audit.jsonl"))
        )  # fmt: skip
    # Checked after the block (not in a `finally`): a failure above keeps its own message.
    assert lab.leftovers() == [], "namespaces or veths of the run were left behind"


@pytest.mark.timeout(150)
def test_slow_link_slows_an_etcd_peer_link(workdir: Path) -> None:
    topology = load_topology(default_topology_path())
    with peer_proxy_cluster(workdir / "cluster", topology, rng=random.Random(5)) as (
        cluster,
        proxy,
    ):
        member = cluster.topology.etcd[-1]
        assert member.advertise_peer_port == proxy.port
        assert proxy.connections > 0  # the peers reach that member through the proxy only
        config = _config(cluster, "slow-link", workdir, 12.0)
        result = run_chaos(config, echo=lambda _m: None, peer_proxies=[proxy])
        _passed(result)
        faults = read_faults(result.run_dir / FAULTS_FILE)
        targets = sorted(f.target.split("->")[0] for f in faults)
        assert targets == ["client", "etcd-peer"]
        peer = next(f for f in faults if f.target.startswith("etcd-peer->"))
        assert peer.target.endswith(f":{member.peer_port}")
        assert all(s.healthy for s in cluster.status())
