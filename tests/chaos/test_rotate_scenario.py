"""`bkv-chaos --scenario rotate`: the fleet's keys rotated under the chaos load, the checker's
invariants intact (the guess limit and lockouts from the audit lines, no lost write), and the
load's clients, pinned to the old key, crossing to the new one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import own_cluster
from test_scenarios import _check_run_dir, _run

from bkv_chaos.history import FAULTS_FILE, HISTORY_FILE, read_faults, read_history
from bkv_chaos.run import VERDICT_FILE
from deploy.cluster import Cluster

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def rotate_cluster() -> Iterator[Cluster]:
    """A cluster of its own (one node per data centre): the rotation leaves it at epoch 2, and
    its retirement waits out a ticket's life (10 s here, not the default 120 s)."""
    with own_cluster("bkv-chaos-rotate-", one_node_per_dc=True, options={"ticket_ttl_s": 10}) as c:
        yield c


@pytest.mark.timeout(600)
def test_a_fleet_rotation_under_the_chaos_load_keeps_every_invariant(
    rotate_cluster: Cluster, tmp_path: Path
) -> None:
    run_dir = _run(rotate_cluster, "rotate", tmp_path, duration=20.0)
    _check_run_dir(run_dir, {"rotate"})
    verdict = json.loads((run_dir / VERDICT_FILE).read_text())
    for name in ("guess_limit", "permanent_lockout", "no_lost_registration", "isolation"):
        assert verdict["invariants"][name]["violations"] == 0, verdict["invariants"][name]
    (fault,) = read_faults(run_dir / FAULTS_FILE)
    assert fault.end is not None
    history = read_history(run_dir / HISTORY_FILE)
    # The load's own operations (not the probes, whose refusals are "protocol" by design): none
    # failed for the fleet key (UnknownFleetKey, a refused announcement or a stale step would
    # be "protocol"), and each kind of operation succeeded after the rotation.
    users = [op for op in history if op.actor is None and op.op != "bad_input"]
    assert not [op for op in users if op.outcome == "protocol"], [
        (op.op, op.outcome) for op in users if op.outcome == "protocol"
    ]
    after = {op.op for op in users if op.invoke > fault.end and op.is_definite_ok}
    assert {"recover", "final_recover"} <= after, after
    events = [json.loads(line) for line in (rotate_cluster.layout.rotation_dir / "log.jsonl")
              .read_text().splitlines()]  # fmt: skip
    assert events[-1]["event"] == "finished" and events[-1]["epoch"] == 2
