"""Rollback detection: the etcd cluster's pinned identity and the revisions a node has seen.

etcd's revision counter only grows, so a linearizable answer can never carry a revision below
one that an earlier answer (finished before this request was sent) already carried. If it does,
the store was rolled back: a snapshot restored, or old data directories copied back. Every
record a rollback brings back opens again (its etcd metadata is the one it was sealed for), and
with it every guess spent since. So the guard raises an alarm that stays: the node refuses to
serve until an operator with access to its token clears it (`vault_node.ceremony_cli
store-alarm-clear`), and the alarm is checkpointed in the token, so a restart does not clear it.

The identity check is cheaper and catches more careless restores: etcd names its cluster in
every answer (`cluster_id`, derived from the members and the cluster token); the node pins the
one the key ceremony saw, and any other is a different store.

Limits (docs/architecture.md): a node that restarts learns its high-water mark from its token's
checkpoint and from its own audit log's last commits; a restore with every node restarted and
both of those lost, or a restore followed by enough writes to pass every node's mark before any
node looks, is not seen here. The witnessed record log of the next issue closes that.

Pure: no I/O and no clock; `vault_node.checkpoint` persists it, `vault_node.store` feeds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class StoreRolledBack(Exception):
    """The store is behind what this node has seen, or is another cluster: fail closed."""


@dataclass(frozen=True)
class GuardState:
    """What a checkpoint keeps: the pinned cluster, the high-water mark, the alarm if any."""

    cluster_id: int = 0  # 0: nothing pinned yet (trust on first use, logged)
    high_water: int = 0
    alarm: str = ""
    alarm_revision: int = 0
    alarmed_groups: frozenset[int] = frozenset()  # record groups a witness found rolled back
    accepted_at_ms: int = 0  # the operator's last store-alarm-clear: older audit lines ignored


class StoreGuard:
    """Checks every linearizable etcd answer against the pinned cluster and the high-water mark.

    A caller takes `floor()` before it sends a request and passes it with the answer's header to
    `observe`: answers to requests that ran at the same time may come back in any order, but
    none may come back below what was known before the request left.
    """

    def __init__(
        self,
        state: GuardState,
        *,
        on_alarm: Callable[[str], None] = lambda reason: None,
        on_pin: Callable[[int], None] = lambda cluster_id: None,
    ) -> None:
        self._cluster_id = state.cluster_id
        self._high_water = state.high_water
        self._alarm = state.alarm
        self._alarm_revision = state.alarm_revision
        self._groups = set(state.alarmed_groups)
        self._accepted_at_ms = state.accepted_at_ms
        self._on_alarm = on_alarm
        self._on_pin = on_pin

    @property
    def alarm(self) -> str:
        return self._alarm

    @property
    def high_water(self) -> int:
        return self._high_water

    def state(self) -> GuardState:
        return GuardState(
            self._cluster_id,
            self._high_water,
            self._alarm,
            self._alarm_revision,
            frozenset(self._groups),
            self._accepted_at_ms,
        )

    def alarmed_group_count(self) -> int:
        """How many groups are alarmed (safe to call from the metrics thread: one len())."""
        return len(self._groups)

    def group_alarmed(self, group: int) -> bool:
        return group in self._groups

    def alarm_group(self, group: int) -> bool:
        """A witness showed group `group` rolled back or forked: refuse it from now on (latched,
        checkpointed like the store alarm; cleared only with the token). True the first time."""
        if group in self._groups:
            return False
        self._groups.add(group)
        return True

    def floor(self) -> int:
        """The revision no answer to a request sent from now on may be below."""
        return self._high_water

    def check(self) -> None:
        """Raise `StoreRolledBack` if an alarm was ever raised."""
        if self._alarm:
            raise StoreRolledBack(self._alarm)

    def observe(self, cluster_id: int, revision: int, floor: int) -> None:
        """Check one linearizable answer's header; raise `StoreRolledBack` on a rollback."""
        self.check()
        if self._cluster_id == 0 and cluster_id:
            self._cluster_id = cluster_id
            self._on_pin(cluster_id)
        elif cluster_id != self._cluster_id:
            self._raise(
                f"etcd answered as cluster {cluster_id:016x}, but this node is pinned to "
                f"cluster {self._cluster_id:016x}: another store took etcd's place",
                revision,
            )
        if revision < floor:
            self._raise(
                f"etcd answered at revision {revision}, below revision {floor} it had already "
                "shown this node: the store was rolled back (a snapshot restore or old data)",
                revision,
            )
        if revision > self._high_water:
            self._high_water = revision

    def _raise(self, reason: str, revision: int) -> None:
        # Latched: going on once revisions pass the old mark again would accept every record
        # the rollback brought back, spent guesses included.
        self._alarm = reason
        self._alarm_revision = revision
        self._on_alarm(reason)
        raise StoreRolledBack(reason)
