"""The named faults of `bkv-chaos --scenario`: each one injects, holds and heals one fault.

| name                 | fault                                                            |
|----------------------|------------------------------------------------------------------|
| kill-dc              | SIGKILL every process of one data centre, then restart it        |
| kill-etcd-leader     | SIGKILL the etcd leader, then restart it                          |
| pause-node           | SIGSTOP a vault node for longer than its lease TTL, then SIGCONT |
| lose-quorum          | kill two data centres; bring one back (quorum), then the other   |
| kill-frontend        | SIGKILL one frontend, then restart it                            |
| kill-during-register | SIGKILL a vault node while registrations are in flight           |
| slow-link            | delay and reset the client's link to a frontend (TCP proxy), and |
|                      | an etcd peer link when the cluster has a peer proxy              |
| partition-dc         | cut one data centre's links to the others (network namespaces;  |
|                      | see netns.py): its host link stays up, so clients still reach it |
| insider              | an etcd admin attacks accounts of its own under load: writes a   |
|                      | saved record back, a pre-lock value from history, a recreated key|
|                      | and another account's record (insider.py; `storage_replay`)      |
| rollback             | an etcd admin snapshots the store, lets the load run on, restores|
|                      | the snapshot bumped past every node's mark with the nodes running|
|                      | and holds; heal: the operator accepts the store (`storage_replay`|
|                      | over every record written since the snapshot)                    |
| rotate               | the operator rotates the fleet's keys (`rotate-fleet`, all six   |
|                      | steps) under the load: the clients, pinned to the old key, learn |
|                      | the new one; the old keys are destroyed at the end. Its window is|
|                      | the whole rotation (slow: it waits out a ticket's life)          |

`all` runs each in turn. A fault's window starts once it is in place and ends when the heal
begins, so that the fail-closed check never counts a request served after the heal.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bkv_chaos import insider, netns
from bkv_chaos.faults import FaultContext, Scenario, SkipScenario
from bkv_chaos.history import LOSE_QUORUM, ROLLBACK, Fault
from bkv_chaos.proxy import LinkFault

REGISTER_WAIT_S = 5.0  # how long kill-during-register waits for a registration in flight


@contextmanager
def _window(ctx: FaultContext, kind: str, target: str, out: list[Fault]) -> Iterator[None]:
    """Record [entry, exit) of the block as a fault window (exit = the heal begins)."""
    start = ctx.now()
    try:
        yield
    finally:
        out.append(Fault(kind, target, start, ctx.now()))


def _hold(
    ctx: FaultContext,
    kind: str,
    target: str,
    inject: Callable[[], object],
    heal: Callable[[], object],
    hold_s: float,
) -> list[Fault]:
    """Inject, hold the fault for `hold_s` (its window), heal — also when holding fails."""
    faults: list[Fault] = []
    try:
        inject()
        with _window(ctx, kind, target, faults):
            ctx.wait(hold_s)
    finally:
        heal()
    return faults


def _past_lease(ctx: FaultContext, hold_s: float) -> float:
    """A hold past the lease TTL, so that the fault outlives the nodes' membership keys."""
    return max(hold_s, ctx.lease_ttl_s + 2.0)


def _kill_process(ctx: FaultContext, kind: str, process: str, hold_s: float) -> list[Fault]:
    """SIGKILL `process` (an etcd member, node or frontend), hold, start it again."""
    return _hold(
        ctx, kind, process, lambda: ctx.cluster.kill(process), lambda: ctx.cluster.start(process),
        hold_s,
    )  # fmt: skip


def _processes(ctx: FaultContext, role: str) -> list[str]:
    return [p.name for p in ctx.cluster.state().processes if p.role == role]


@dataclass
class KillDc:
    name: str = "kill-dc"

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        dc = ctx.rng.choice(ctx.cluster.topology.datacenters)
        return _hold(
            ctx,
            self.name,
            dc,
            lambda: ctx.cluster.kill_dc(dc),
            lambda: ctx.cluster.start_dc(dc),
            hold_s,
        )


@dataclass
class KillEtcdLeader:
    name: str = "kill-etcd-leader"

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        leader = ctx.cluster.etcd_leader()
        if leader is None:
            raise SkipScenario("no etcd leader found (is etcd healthy?)")
        return _kill_process(ctx, self.name, leader, hold_s)


@dataclass
class PauseNode:
    name: str = "pause-node"

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        node = ctx.rng.choice(_processes(ctx, "node"))
        faults = _hold(
            ctx, self.name, node,
            lambda: ctx.cluster.stop_process(node), lambda: ctx.cluster.cont_process(node),
            _past_lease(ctx, hold_s),  # its membership key expires while it is frozen
        )  # fmt: skip
        ctx.cluster.wait_healthy([node])
        return faults


@dataclass
class LoseQuorum:
    name: str = LOSE_QUORUM

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        first, second = ctx.rng.sample(list(ctx.cluster.topology.datacenters), 2)
        faults: list[Fault] = []
        killed: list[str] = []
        try:
            for dc in (first, second):
                ctx.cluster.kill_dc(dc)
                killed.append(dc)
            # Both are gone (kill_dc waits): from here no write can commit.
            with _window(ctx, self.name, f"{first},{second}", faults):
                ctx.wait(hold_s)
        finally:
            for dc in killed:  # the first restart restores quorum, the second the full cluster
                ctx.cluster.start_dc(dc)
        return faults


@dataclass
class KillFrontend:
    name: str = "kill-frontend"

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        frontend = ctx.rng.choice(_processes(ctx, "frontend"))
        return _kill_process(ctx, self.name, frontend, hold_s)


@dataclass
class KillDuringRegister:
    name: str = "kill-during-register"

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        # The load's first frontend routes to its own data centre first: kill a node there.
        frontend = _processes(ctx, "frontend")[0]
        dc = ctx.cluster.process(frontend).dc
        nodes = [n for n in _processes(ctx, "node") if ctx.cluster.process(n).dc == dc]
        node = ctx.rng.choice(nodes or _processes(ctx, "node"))
        in_flight = ctx.wait_until(lambda: ctx.recorder.in_flight("register") > 0, REGISTER_WAIT_S)
        if not in_flight:
            ctx.echo(f"  no registration in flight within {REGISTER_WAIT_S}s: killing anyway")
        return _kill_process(ctx, self.name, node, hold_s)


@dataclass
class SlowLink:
    """Delay (150-300 ms a chunk) and reset (3 % of chunks) on the link to one frontend, and
    on every etcd peer link that runs through a proxy (one fault window per link)."""

    name: str = "slow-link"
    fault: LinkFault = field(
        default_factory=lambda: LinkFault(delay_s=0.15, jitter_s=0.15, reset_probability=0.03)
    )

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        if not ctx.proxies:
            raise SkipScenario("the load does not run through the tool's proxies")
        links = [(ctx.proxies[0], "client")] + [(p, "etcd-peer") for p in ctx.peer_proxies]
        faults: list[Fault] = []
        try:
            for proxy, _ in links:
                proxy.set_fault(self.fault)
            start = ctx.now()
            ctx.wait(hold_s)
        finally:
            for proxy, _ in links:
                proxy.set_fault(LinkFault())
        end = ctx.now()
        for proxy, kind in links:
            target = f"{kind}->{proxy.upstream[0]}:{proxy.upstream[1]}"
            faults.append(Fault(self.name, target, start, end))
        return faults


@dataclass
class PartitionDc:
    """Cut one data centre that has a frontend off from the others, for longer than a lease.

    Expected: its etcd member loses quorum, so its nodes evaluate nothing (fail closed) while
    the majority keeps serving — also to clients that reach the minority's frontend, which
    fail over to another. Not a `lose-quorum` window: the cluster as a whole keeps quorum."""

    name: str = "partition-dc"

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        if ctx.network is None:
            raise SkipScenario(netns.missing_privileges() or netns.NO_LAB)
        topology = ctx.cluster.topology
        fronted = {f.dc for f in topology.frontends}
        with_frontend = [dc for dc in topology.datacenters if dc in fronted]
        dc = ctx.rng.choice(with_frontend or list(topology.datacenters))
        network = ctx.network
        return _hold(
            ctx, self.name, dc, lambda: network.partition(dc), lambda: network.heal(dc),
            _past_lease(ctx, hold_s),  # the majority drops the minority's nodes from routing
        )  # fmt: skip


@dataclass
class Insider:
    """An etcd admin attacks four accounts of its own (the load's invariants stay untouched):
    `copy`, `recreate`, `put_back` and `history_write` (bkv_chaos/insider.py). Results go to
    the run's insider.jsonl for the `storage_replay` invariant; the accounts' passwords and keys
    join the run's secrets, so the confidentiality check looks for them too."""

    name: str = "insider"
    accounts: int = 4
    guess_limit: int = 3

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        if ctx.client_factory is None or ctx.run_dir is None:
            raise SkipScenario("the insider needs the load's clients and the run directory")
        admin = insider.EtcdAdmin(ctx.cluster)
        owners: list[insider.Owner] = []
        ids: list[bytes] = []
        tag = ctx.rng.getrandbits(32)
        try:
            for i in range(self.accounts):
                client = ctx.client_factory()
                account = client.create_account(f"insider-{tag:08x}-{i}")
                password = ctx.recorder.password(make_password_for(ctx))
                limit = self.guess_limit if i == 3 else None
                key = client.register(password, max_attempts=limit)
                ctx.recorder.key(bytes(key))
                owners.append(insider.Owner(client, password, key))
                ids.append(insider.record_id_of(ctx.cluster, account))
            faults: list[Fault] = []
            with _window(ctx, self.name, "etcd", faults):
                results = [
                    insider.copy(admin, owners[0], ids[0], ids[1]),
                    insider.recreate(admin, owners[1], ids[1]),
                    insider.put_back(admin, owners[2], ids[2], guesses=3),
                    insider.history_write(admin, owners[3], ids[3], self.guess_limit),
                ]
            insider.write_results(ctx.run_dir / insider.INSIDER_FILE, results)
            for result in results:
                ctx.echo(
                    f"  insider {result.kind}: wrote at {result.written}, "
                    f"owner saw {sorted(set(result.outcomes))}"
                )
            return faults
        finally:
            for owner in owners:
                owner.client.close()


@dataclass
class Rollback:
    """An etcd admin rolls the whole store back under load, past every node's high-water mark:
    snapshot, let the load spend guesses, lock, register and delete on top of it for half the
    hold, restore the snapshot bumped past every revision the store had (insider.restore_snapshot
    with insider.bump_needed) while every node runs, and hold. Heal: the operator accepts the
    store as it is (insider.accept_store). Expected: every record written since the snapshot is
    refused (DATA_LOSS) until the heal; denial of service, never a guess.

    The fault's window is [restore, heal); its facts are what the checker's model needs
    (checker.RollbackWindow): snapshot_start/snapshot_end (history clock), snapshot_revision,
    revision_before (the store's just before the restore), bumped_revision (after the bump,
    before any node could reach the store), revision_after, restored_at, accepted_at (every
    node cleared, none started yet) and healed_at."""

    name: str = ROLLBACK
    margin: int = 500  # revisions past the store's, for writes that land before the restore

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        cluster = ctx.cluster
        work = Path(tempfile.mkdtemp(prefix="bkv-chaos-rollback-"))
        facts: dict[str, float] = {}
        try:
            snapshot = work / "snapshot.db"
            facts["snapshot_start"] = ctx.now()
            insider.EtcdAdmin(cluster).snapshot_save(snapshot, cluster.topology.etcd[0].name)
            facts["snapshot_end"] = ctx.now()
            facts["snapshot_revision"] = insider.snapshot_revision(snapshot)
            ctx.wait(max(1.0, hold_s / 2))  # the load writes on top of the snapshot
            bump = insider.bump_needed(cluster, snapshot, margin=self.margin)
            start = ctx.now()
            try:
                restored = insider.restore_snapshot(cluster, snapshot, bump=bump)
                facts["restored_at"] = ctx.now()
                facts["revision_before"] = restored.revision_before
                facts["bumped_revision"] = restored.bumped_revision
                facts["revision_after"] = restored.revision_after
                ctx.echo(
                    f"  rollback to rev {restored.snapshot_revision} (store was at "
                    f"{restored.revision_before}), bumped to {restored.bumped_revision}, same "
                    f"cluster id: {restored.cluster_id_before == restored.cluster_id_after}"
                )
                if not restored.passes_marks:
                    ctx.echo("  WARNING: the bump did not pass the store's revision")
                ctx.wait(hold_s)
            finally:
                end = ctx.now()
                try:
                    insider.accept_store(
                        cluster, on_cleared=lambda: facts.__setitem__("accepted_at", ctx.now())
                    )
                finally:
                    facts["healed_at"] = ctx.now()
            return [Fault(self.name, "etcd", start, end, facts=dict(facts))]
        finally:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class RotateFleet:
    """The operator replaces the fleet's kem, record and ticket keys while the load runs
    (deploy/rotation.py): install, reload, announce, switch, reseal, retire. Expected: every
    invariant holds (the checker's, from the history and the audit lines: the guess limit,
    lockouts, no lost write), and the load's clients, which pin the old key, cross to the new
    one (the history shows no failed recovery for it). Not healed: the new epoch stays."""

    name: str = "rotate"

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        faults: list[Fault] = []
        with _window(ctx, self.name, "fleet keys", faults):
            state = ctx.cluster.rotate_fleet()
        ctx.echo(f"  fleet rotated to epoch {state.epoch}; the old keys are destroyed")
        # The load then runs on the new keys alone for the hold: a rotation that took the whole
        # slot (a loaded machine) would otherwise leave no operation after it to check.
        ctx.wait(hold_s)
        return faults


def make_password_for(ctx: FaultContext) -> str:
    """A fresh password from the run's seeded generator (bkv_chaos.load.make_password)."""
    from bkv_chaos.load import make_password

    return make_password(ctx.rng)


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "kill-dc": KillDc,
    "kill-etcd-leader": KillEtcdLeader,
    "pause-node": PauseNode,
    LOSE_QUORUM: LoseQuorum,
    "kill-frontend": KillFrontend,
    "kill-during-register": KillDuringRegister,
    "slow-link": SlowLink,
    "partition-dc": PartitionDc,
    "insider": Insider,
    ROLLBACK: Rollback,
    "rotate": RotateFleet,
}


def parse_scenarios(text: str) -> list[Scenario]:
    """`a,b,c` or `all` → scenarios in that order; ValueError naming every unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        names = list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise ValueError(
            f"unknown scenario(s) {', '.join(unknown) or '(none given)'};"
            f" choose from {', '.join(SCENARIOS)} or all"
        )
    return [SCENARIOS[n]() for n in names]
