"""Every bkv-chaos scenario, briefly, against the shared cluster: zero violations, operations
recorded, the fault injected and recorded.

Each run is bounded (a few seconds of load per scenario, client deadlines of a few seconds)
and heals its fault itself; `healthy_cluster` restarts anything left down before each test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_fixtures import own_cluster

from bkv_chaos import netns
from bkv_chaos.checker import ALLOWED_BAD_INPUT_CODES
from bkv_chaos.history import FAULTS_FILE, HISTORY_FILE, RUN_FILE, read_faults, read_history
from bkv_chaos.insider import INSIDER_FILE, read_results
from bkv_chaos.load import LoadConfig
from bkv_chaos.run import PLOT_FILE, VERDICT_FILE, ChaosConfig, run_chaos
from bkv_chaos.verdict import format_table
from deploy.cluster import Cluster

pytestmark = pytest.mark.chaos

LOAD = LoadConfig(workers=3, good=4, churn=1, guessing=2, cross=1)


def _run(cluster: Cluster, scenario: str, out: Path, duration: float = 10.0) -> Path:
    config = ChaosConfig(
        client_config=cluster.client_config_path, cluster_dir=cluster.directory,
        scenarios=scenario, duration_s=duration, seed=11, out_dir=out, load=LOAD,
    )  # fmt: skip
    result = run_chaos(config, echo=lambda _m: None)
    table = format_table(result.verdict)
    assert result.exit_code == 0, table
    assert not result.problems, result.problems
    return result.run_dir


def _check_run_dir(run_dir: Path, kinds: set[str]) -> None:
    for name in (HISTORY_FILE, FAULTS_FILE, RUN_FILE, VERDICT_FILE, PLOT_FILE):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("*.audit.jsonl"))
    history = read_history(run_dir / HISTORY_FILE)
    ops = {op.op for op in history}
    assert {"register", "recover", "wrong_recover", "bad_input", "final_recover"} <= ops
    assert any(op.is_definite_ok and op.op == "final_recover" for op in history)
    faults = read_faults(run_dir / FAULTS_FILE)
    assert {f.kind for f in faults} == kinds
    assert all(f.end is not None and f.end >= f.start for f in faults)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "scenario",
    [
        "kill-dc",
        "kill-etcd-leader",
        "pause-node",
        "lose-quorum",
        "kill-during-register",
        "slow-link",
    ],
)
def test_scenario_keeps_every_invariant(
    healthy_cluster: Cluster, tmp_path: Path, scenario: str
) -> None:
    run_dir = _run(healthy_cluster, scenario, tmp_path)
    _check_run_dir(run_dir, {scenario})


@pytest.mark.timeout(240)
def test_the_insider_gains_nothing_under_load(healthy_cluster: Cluster, tmp_path: Path) -> None:
    """`insider`: an etcd admin's copy, recreate, put-back and history attacks under the load;
    `storage_replay` checks all four from the audit lines, with no violation."""
    run_dir = _run(healthy_cluster, "insider", tmp_path, duration=20.0)
    _check_run_dir(run_dir, {"insider"})
    verdict = json.loads((run_dir / VERDICT_FILE).read_text())
    replay = verdict["invariants"]["storage_replay"]
    assert replay["checked"] == 4 and replay["violations"] == 0
    attacks = read_results(run_dir / INSIDER_FILE)
    assert {a.kind for a in attacks} == {"copy", "recreate", "put_back", "history_write"}
    assert all(a.written and "ok" not in a.outcomes for a in attacks)
    assert verdict["invariants"]["guess_limit"]["violations"] == 0


@pytest.fixture(scope="module")
def rollback_cluster() -> Iterator[Cluster]:
    """A cluster of its own (the local-3dc topology): a rollback throws away everything written
    since its snapshot, and its heal resets every witness, so it must not share a store."""
    with own_cluster("bkv-chaos-rollback-") as c:
        yield c


@pytest.mark.timeout(420)
def test_rollback_past_every_mark_grants_no_guess_under_load(
    rollback_cluster: Cluster, tmp_path: Path
) -> None:
    """`rollback`: a snapshot, the load on top of it, a restore bumped past every node's mark
    with the nodes running, a hold, the operator's accept-store. `storage_replay` checks every
    record written since the snapshot that a node handled in the window: no violation; the
    load's other invariants hold under the model of checker.RollbackWindow."""
    rollback_cluster.start_all()
    run_dir = _run(rollback_cluster, "rollback", tmp_path, duration=40.0)
    _check_run_dir(run_dir, {"rollback"})
    verdict = json.loads((run_dir / VERDICT_FILE).read_text())
    replay = verdict["invariants"]["storage_replay"]
    assert replay["checked"] > 0 and replay["violations"] == 0, replay
    (fault,) = read_faults(run_dir / FAULTS_FILE)
    facts = fault.facts
    print(f"rollback facts {dict(facts)}; storage_replay {replay}")
    assert facts["bumped_revision"] > facts["revision_before"] > facts["snapshot_revision"]
    assert fault.end is not None
    assert facts["snapshot_end"] <= fault.start < fault.end <= facts["accepted_at"]
    history = read_history(run_dir / HISTORY_FILE)
    inside = [op for op in history if fault.start <= op.invoke < facts["accepted_at"]]
    assert any(op.outcome == "tampered" for op in inside)  # refused: denial of service


@pytest.mark.timeout(240)
def test_cli_kill_frontend(healthy_cluster: Cluster, tmp_path: Path) -> None:
    """The command line end to end: exit status 0 and the results directory."""
    done = subprocess.run(
        [sys.executable, "-m", "bkv_chaos.cli", "--config",
         str(healthy_cluster.client_config_path), "--scenario", "kill-frontend",
         "--duration", "10", "--seed", "5", "--out", str(tmp_path), "--workers", "3"],
        capture_output=True, text=True, timeout=200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASS" in done.stdout and "FAIL" not in done.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    _check_run_dir(run_dir, {"kill-frontend"})


@pytest.mark.timeout(30)
def test_partition_dc_skips_on_a_cluster_outside_namespaces(
    healthy_cluster: Cluster, tmp_path: Path
) -> None:
    """The shared loopback cluster has no namespaces: partition-dc says why and touches nothing
    (tests/chaos/test_network_faults.py runs it on a cluster in namespaces)."""
    import random
    import threading

    from bkv_chaos.faults import FaultContext, SkipScenario
    from bkv_chaos.history import JsonlWriter
    from bkv_chaos.recorder import Recorder, RunClock
    from bkv_chaos.scenarios import PartitionDc

    with JsonlWriter(tmp_path / "h.jsonl") as writer:
        ctx = FaultContext(
            cluster=healthy_cluster, recorder=Recorder(writer, RunClock()),
            rng=random.Random(1), proxies=(), stop=threading.Event(), echo=lambda _m: None,
        )  # fmt: skip
        with pytest.raises(SkipScenario) as skip:
            PartitionDc().run(ctx, 1.0)
    assert str(skip.value) == (netns.missing_privileges() or netns.NO_LAB)


@pytest.mark.timeout(60)
def test_undecodable_requests_get_a_documented_status(
    healthy_cluster: Cluster, tmp_path: Path
) -> None:
    import random

    from bkv_chaos.history import JsonlWriter
    from bkv_chaos.probes import NOT_PROTOBUF, Prober, ProbeTargets
    from bkv_chaos.recorder import Recorder, RunClock
    from client.config import load_config, load_fleet_key

    state = healthy_cluster.state()
    pki = healthy_cluster.layout.pki
    base = load_config(healthy_cluster.client_config_path)
    targets = ProbeTargets(
        frontends=base.frontends,
        nodes=tuple((p.name, p.address) for p in state.processes if p.role == "node"),
        ca_cert=pki.cluster_ca.cert,
        frontend_client_cert=pki.frontend_client("fe-1").cert,
        frontend_client_key=pki.frontend_client("fe-1").key,
    )
    with JsonlWriter(tmp_path / "h.jsonl") as writer:
        recorder = Recorder(writer, RunClock())
        prober = Prober(
            targets, load_fleet_key(base), recorder, random.Random(1), tmp_path,
            "chaos-wire-probe", [],
        )  # fmt: skip
        try:
            codes = {prober.open_raw(NOT_PROTOBUF), prober.relay_raw(NOT_PROTOBUF)}
        finally:
            prober.close()
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert {c.name for c in codes} <= ALLOWED_BAD_INPUT_CODES
