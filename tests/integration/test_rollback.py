"""Storage cannot cheat, past the high-water marks: bumped restores and a forked member, for real.

A snapshot restore whose revision is pushed past every node's high-water mark before any node
looks (etcd 3.5's `--bump-revision`; here by writes on ports no node dials) leaves records that
open at their metadata and a store the store guard cannot tell from a current one. The group
heads the witnesses hold are what still tell (docs/architecture.md, "Storage cannot cheat").

Counts come from the vault nodes' audit lines: the evaluations of the victim's record after the
restore are the guesses the restore gave back. Every test runs on a cluster of its own (one
vault node per data centre, each one a witness) and ends with the operator accepting the store
(`insider.accept_store`), so the next starts clean.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cluster_fixtures import own_cluster

from bkv_chaos import insider
from client import VaultClient
from client.config import load_config
from client.errors import InvalidPassword
from deploy.cluster import Cluster
from vault_common.audit_line import AuditEvent, read_audits
from vault_node.store import record_key

pytestmark = pytest.mark.integration

PASSWORD = "the right passphrase of a rolled-back account"
GUESSES = 4  # wrong guesses spent between the snapshot and the restore
MAX_ATTEMPTS = 10
WITNESS_READY = "witness ready"


@pytest.fixture(scope="module")
def rollback_cluster() -> Iterator[Cluster]:
    with own_cluster("bkv-rollback-", one_node_per_dc=True) as c:
        yield c


@pytest.fixture
def store(rollback_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster healthy; afterwards the store accepted as it is (alarms, marks, witnessed
    heads and journals cleared on every node)."""
    rollback_cluster.start_all()
    try:
        yield rollback_cluster
    finally:
        insider.accept_store(rollback_cluster)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    return d


def audit_since(cluster: Cluster, since: float) -> list[AuditEvent]:
    events = read_audits((cluster.directory / "logs").glob("*.audit.jsonl"))
    return [e for e in events if e.ts >= since]


def owner(cluster: Cluster, key_dir: Path) -> insider.Owner:
    client = VaultClient(load_config(cluster.client_config_path), key_dir=key_dir, ksf="fast")
    client.create_account()
    key = client.register(PASSWORD, max_attempts=MAX_ATTEMPTS)
    return insider.Owner(client, PASSWORD, key)


def ready_lines(cluster: Cluster, node: str) -> int:
    try:
        return cluster.layout.log(node).read_text(errors="replace").count(WITNESS_READY)
    except OSError:
        return 0


def wait_witnesses_ready(cluster: Cluster, before: dict[str, int], timeout_s: float = 60.0) -> None:
    """Until each witness of `before` has logged one more `witness ready` than it had."""
    deadline = time.monotonic() + timeout_s
    for node, seen in before.items():
        while ready_lines(cluster, node) <= seen:
            assert time.monotonic() < deadline, f"{node} never logged {WITNESS_READY!r} again"
            time.sleep(0.2)


def restart_witnesses(cluster: Cluster, witnesses: list[str], *, lose_state: bool) -> None:
    """Stop `witnesses` at once, (optionally) forget their state — `witness-reset` on their
    tokens and their journals removed — and start them together, until each is ready again."""
    before = {w: ready_lines(cluster, w) for w in witnesses}
    for witness in witnesses:
        cluster.stop(witness)
    if lose_state:
        for witness in witnesses:
            insider.token_step(cluster, witness, "witness-reset", "--forget-only")
            cluster.layout.witness_journal(witness).unlink(missing_ok=True)
    for witness in witnesses:
        cluster.start(witness, wait=False)
    cluster.wait_healthy(witnesses, timeout=60.0)
    wait_witnesses_ready(cluster, before)


@dataclasses.dataclass
class Seen:
    """What a bumped restore left the victim's record with."""

    restored: insider.Restored
    outcomes: list[str]
    evaluations: int  # evaluations of the victim's record after the restore
    regained: int  # guesses the restore gave back (from the evaluations' own counters)
    rollbacks: set[str]  # nodes that audited a group rollback for the victim's record
    store_alarms: set[str]  # nodes whose store guard alarmed (it should not: the bump passes it)
    key_returned: bool


def regained_guesses(before: list[AuditEvent], after: list[AuditEvent]) -> int:
    """How many guesses a restore gave back: the record's counter after the last guess before
    it, against the counter the first evaluation after it committed (0 when none ran)."""
    first = next((e for e in sorted(after, key=lambda e: e.ts) if e.event == "evaluate"), None)
    last = max((e.attempts or 0 for e in before if e.event == "evaluate"), default=0)
    if first is None or first.attempts is None:
        return 0
    return max(0, last + 1 - first.attempts)


def bumped_attack(
    cluster: Cluster, tmp_path: Path, key_dir: Path, *, between: Callable[[], None] = lambda: None
) -> Seen:
    """Snapshot, GUESSES wrong guesses, `between()`, a restore bumped past every node's mark
    with every node running; then GUESSES wrong guesses and the right password."""
    victim = owner(cluster, key_dir)
    rid = insider.record_id_of(cluster, victim.client.account.account_id).hex()
    admin = insider.EtcdAdmin(cluster)
    snapshot = tmp_path / "before.db"
    admin.snapshot_save(snapshot, cluster.topology.etcd[0].name)
    started = time.time()
    for _ in range(GUESSES):
        assert victim.guess_wrong() == "invalid_password"
    between()
    since = time.time()
    restored = insider.restore_snapshot(
        cluster, snapshot, bump=insider.bump_needed(cluster, snapshot), keep_old=tmp_path / "old"
    )
    outcomes = [answered(cluster, victim.guess_wrong) for _ in range(GUESSES)]
    outcome, returned = answered(cluster, victim.recover)
    outcomes.append(outcome)
    victim.client.close()
    before = [e for e in audit_since(cluster, started) if e.record_id == rid and e.ts < since]
    after = audit_since(cluster, since)
    mine = [e for e in after if e.record_id == rid]
    return Seen(
        restored=restored,
        outcomes=outcomes,
        evaluations=sum(e.event == "evaluate" for e in mine),
        regained=regained_guesses(before, mine),
        rollbacks={e.node for e in mine if e.event == "rollback"},
        store_alarms={e.node for e in after if e.event == "rollback" and not e.record_id},
        key_returned=returned,
    )


T = TypeVar("T")


def answered(cluster: Cluster, attempt: Callable[[], T], tries: int = 5) -> T:
    """`attempt()` again while it is refused as unavailable, as an attacker would retry: a
    restore takes the nodes' etcd leases back with it, so a node may be re-registering when
    the first guess arrives (storage may deny service). Each try is an attempt of its own in
    the audit lines, which the assertions count."""
    for _ in range(tries - 1):
        result = attempt()
        code = result[0] if isinstance(result, tuple) else result
        if code != "unavailable":
            return result
        # The nodes the test keeps running (one variant stops a witness on purpose).
        running = {p.name for p in cluster.state().processes if p.running is not None}
        cluster.wait_healthy([n for n in insider.node_names(cluster) if n in running], 60.0)
    return attempt()


def show(label: str, seen: Seen) -> None:
    print(
        f"{label}: snapshot rev {seen.restored.snapshot_revision}, before "
        f"{seen.restored.revision_before}, after {seen.restored.revision_after}; outcomes "
        f"{seen.outcomes}; evaluations on the rolled-back record {seen.evaluations}, guesses "
        f"regained {seen.regained}; group rollbacks on {sorted(seen.rollbacks)}, store alarms "
        f"on {sorted(seen.store_alarms)}"
    )


# -- the tools, at the etcd level ----------------------------------------------------------------


def _snapshot_holding(admin: insider.EtcdAdmin, key: bytes, tmp_path: Path, member: str) -> Path:
    """`key` put as b"in the snapshot", then a snapshot of `member` saved: its file."""
    admin.put(key, b"in the snapshot")
    snapshot = tmp_path / "s.db"
    admin.snapshot_save(snapshot, member)
    return snapshot


@pytest.mark.timeout(300)
def test_a_bumped_restore_passes_every_revision_and_keeps_identity_and_values(
    store: Cluster, tmp_path: Path
) -> None:
    admin, key = insider.EtcdAdmin(store), b"/bkv/insider-test/value"
    snapshot = _snapshot_holding(admin, key, tmp_path, store.topology.etcd[1].name)
    saved = admin.get(key)
    assert saved is not None
    for i in range(30):
        admin.put(key, b"after the snapshot %d" % i)
    marks = {n: insider.store_status(store, n)["high_water"] for n in insider.node_names(store)}
    before = insider.store_revision(store)
    restored = insider.restore_snapshot(store, snapshot, bump=insider.bump_needed(store, snapshot))
    after = insider.cluster_status(store)
    print(f"bumped restore: {restored}, marks before {marks}")
    assert restored.snapshot_revision < before <= restored.revision_before
    assert restored.passes_marks and after.revision >= restored.revision_after
    assert after.revision > max(before, *marks.values())
    assert restored.cluster_id_before == restored.cluster_id_after == after.cluster_id != 0
    again = admin.get(key)
    assert again == saved and again.value == b"in the snapshot"  # value and metadata
    assert admin.get(insider.BUMP_KEY) is None  # the bump leaves no key behind
    admin.delete(key)


@pytest.mark.timeout(300)
def test_a_forked_member_serves_another_history_under_the_same_cluster_id(
    store: Cluster, tmp_path: Path
) -> None:
    admin, key = insider.EtcdAdmin(store), b"/bkv/insider-test/fork"
    snapshot = _snapshot_holding(admin, key, tmp_path, store.topology.etcd[0].name)
    admin.put(key, b"after the snapshot")
    cluster_id = insider.cluster_status(store).cluster_id
    member, node = store.topology.etcd[0].name, insider.node_names(store)[0]
    fork = insider.fork_member(
        store, member, snapshot, bump=insider.bump_needed(store, snapshot), nodes=[node]
    )
    try:
        forked, real = fork.admin(store).get(key), admin.get(key)
        admin.put(key, b"written while forked")  # the two others keep quorum
        assert fork.cluster_id == cluster_id
        assert forked is not None and forked.value == b"in the snapshot"
        assert real is not None and real.value == b"after the snapshot"
        assert fork.revision_after > insider.cluster_status(store).revision
        assert store.process(node).running is not None
        assert [m.healthy for m in store.status() if m.name == node] == [True]
    finally:
        insider.heal_fork(store, fork)
    assert not fork.data_dir.exists()
    back = admin.get(key)
    assert back is not None and back.value == b"written while forked"
    admin.delete(key)


# -- the attacks ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_bumped_restore_with_every_node_running_gains_no_guess(
    store: Cluster, tmp_path: Path, key_dir: Path
) -> None:
    """The bump passes every node's mark (no store alarm), yet the first guess after the
    restore is refused: the witnesses hold a newer head of the record's group."""
    seen = bumped_attack(store, tmp_path, key_dir)
    show("bumped restore, nodes running", seen)
    assert seen.restored.passes_marks and not seen.store_alarms
    assert seen.evaluations == 0 and seen.regained == 0
    # Every attempt is refused as tampered; one may instead meet a node that fails closed for a
    # moment after the restore (UNAVAILABLE, seen once in CI on a loaded machine): denial of
    # service, never a guess (DESIGN invariant 8), and the evaluations above stay 0.
    assert "tampered" in seen.outcomes and set(seen.outcomes) <= {"tampered", "unavailable"}
    assert not seen.key_returned
    assert seen.rollbacks


@pytest.mark.timeout(300)
def test_a_bumped_restore_after_a_witness_restarted_gains_no_guess(
    store: Cluster, tmp_path: Path, key_dir: Path
) -> None:
    """One witness restarted (its state kept) between the guesses and the restore: it comes
    back with the heads it held, and the restore is refused as before."""
    witness = store.witness_nodes()[0]
    seen = bumped_attack(
        store, tmp_path, key_dir,
        between=lambda: restart_witnesses(store, [witness], lose_state=False),
    )  # fmt: skip
    show(f"bumped restore, {witness} restarted", seen)
    assert seen.restored.passes_marks and not seen.store_alarms
    assert seen.evaluations == 0 and seen.regained == 0
    assert set(seen.outcomes) == {"tampered"} and not seen.key_returned
    assert seen.rollbacks


@pytest.mark.timeout(420)
@pytest.mark.parametrize("rest", ["running", "down"])
def test_a_bumped_restore_after_a_majority_of_witnesses_lost_their_state(
    store: Cluster, tmp_path: Path, key_dir: Path, rest: str
) -> None:
    """The documented limit: a majority of witnesses restarted at once with their state lost
    (journal removed, `witness-reset`). With the remaining witness `running`, they catch up
    from it and still hold the heads; with it `down` (from before their restart until after
    the attack) they catch up only from each other, and nothing holds the heads the restore
    rolls back. Asserted: what comes back is at most the guesses spent since the snapshot;
    the figure is printed for the docs."""
    witnesses = store.witness_nodes()
    lost = witnesses[len(witnesses) // 2 :]
    kept = [w for w in witnesses if w not in lost]
    assert 2 * len(lost) > len(witnesses)

    def restart() -> None:
        if rest == "down":
            for witness in kept:  # started again by the fixture's accept_store
                store.stop(witness)
        restart_witnesses(store, lost, lose_state=True)

    seen = bumped_attack(store, tmp_path, key_dir, between=restart)
    show(f"bumped restore, majority {lost} restarted with state lost, the rest {rest}", seen)
    print(
        f"MAJORITY-LOSS FIGURE (rest {rest}): {seen.regained} of {GUESSES} guesses spent since "
        f"the snapshot came back ({seen.evaluations} evaluations on the rolled-back record; "
        f"key returned: {seen.key_returned})"
    )
    assert seen.restored.passes_marks
    assert seen.regained <= GUESSES
    assert seen.evaluations <= GUESSES + 1  # the guesses sent after the restore, at most


@pytest.mark.timeout(420)
def test_a_forked_member_grants_no_guess_to_the_node_that_sees_it(
    store: Cluster, tmp_path: Path, key_dir: Path
) -> None:
    """Two etcd members keep the real history; the third serves the snapshot (bumped past every
    mark) to one vault node only. The victim's guesses sent straight to that node (as a lying
    frontend would) are refused: the witnesses hold the group's newer head. The other nodes
    keep serving the real record, whose counter the fork did not touch."""
    victim = owner(store, key_dir)
    rid = insider.record_id_of(store, victim.client.account.account_id)
    admin = insider.EtcdAdmin(store)
    snapshot = tmp_path / "before.db"
    admin.snapshot_save(snapshot, store.topology.etcd[0].name)
    for _ in range(GUESSES):
        assert victim.guess_wrong() == "invalid_password"
    member = store.topology.etcd[0].name
    forked_node = next(n for n in insider.node_names(store) if store.process(n).dc == "dc-a")
    real_node = next(n for n in insider.node_names(store) if store.process(n).dc != "dc-a")
    since = time.time()
    fork = insider.fork_member(
        store, member, snapshot, bump=insider.bump_needed(store, snapshot), nodes=[forked_node]
    )
    seen: dict[str, Any] = {}
    try:
        # Two views of the record at once: the snapshot's on the fork, the current one else.
        forked = fork.admin(store).get(record_key(rid))
        real = admin.get(record_key(rid))
        assert forked is not None and real is not None
        seen["views"] = (forked.mod_revision, real.mod_revision)
        on_fork = insider.owner_via_node(store, victim, forked_node)
        seen["outcomes"] = [on_fork.guess_wrong() for _ in range(GUESSES)]
        outcome, seen["key_returned"] = on_fork.recover()
        seen["outcomes"].append(outcome)
        on_fork.client.close()
        on_real = insider.owner_via_node(store, victim, real_node)
        with pytest.raises(InvalidPassword) as wrong:
            on_real.client.recover("still not the password")
        seen["real_guesses_left"] = wrong.value.guesses_left
        on_real.client.close()
    finally:
        victim.client.close()
        insider.heal_fork(store, fork)
    events = [e for e in audit_since(store, since) if e.record_id == rid.hex()]
    on_forked = [e for e in events if e.node == forked_node]
    print(
        f"fork of {member} (snapshot rev {fork.snapshot_revision}, bumped to "
        f"{fork.revision_after}) seen by {forked_node}: outcomes {seen['outcomes']}, "
        f"evaluations there {sum(e.event == 'evaluate' for e in on_forked)}, record at rev "
        f"{seen['views'][0]} on the fork and {seen['views'][1]} on the cluster; {real_node} "
        f"answered {seen['real_guesses_left']} guesses left"
    )
    assert not [e for e in on_forked if e.event == "evaluate"]
    assert set(seen["outcomes"]) == {"tampered"} and not seen["key_returned"]
    assert any(e.event == "rollback" for e in on_forked)
    assert seen["views"][0] <= fork.snapshot_revision < seen["views"][1]
    assert seen["real_guesses_left"] == MAX_ATTEMPTS - GUESSES - 1
