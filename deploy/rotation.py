"""`bkv-cluster rotate-fleet`: replace the fleet's `kem`, `record` and `ticket` keys, no downtime.

Six steps, each resumable and logged (DIR/rotation/log.jsonl; the state in DIR/rotation/
state.json), run in order by `rotate-fleet`, or one at a time with `--step` (docs/architecture.md
"Fleet key rotation"; deploy/README.md says how across hosts):

1. install   the key ceremony makes epoch N's keys and carries them into every node token;
             each token's fleet state then accepts N beside the old epoch (sealing unchanged);
2. reload    every node takes its token's state (SIGHUP); wait until every node reports both
             epochs (its membership value; a report, not a decision);
3. announce  the fleet root token signs epoch N's announcement (kem key, epoch, OPAQUE context);
             it goes to etcd, where the frontends serve it to clients (GetFleet), and client.toml
             pins epoch N for new installs;
4. switch    every token's fleet state seals with N; reload; wait until every node reports it
             (a node never seals with an epoch before every node can open it: step 2 first);
5. reseal    the nodes re-seal, in the background, every record and group head still sealed with
             the old `record` key; wait until etcd holds no value that names it;
6. retire    wait out the tickets sealed with the old `ticket` key; every token stops accepting
             the old epoch; reload; wait; then the old keys are destroyed in every token.

Which keys a node uses and which are destroyed is written into the tokens with their PINs (the
ceremony steps), never into etcd: etcd only carries the signed announcement and the nodes'
reports. Nothing here needs a node to stop; requests go on through every step.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy import fleet as fleet_root
from deploy.configs import client_toml
from deploy.errors import ClusterStateError, DeployError
from deploy.etcd_auth import HEADS_PREFIX, NODES_PREFIX, RECORDS_PREFIX
from vault_node import ceremony
from vault_node.config import NodeConfig
from vault_node.fleet_keys import epoch_labels
from vault_node.records import sealed_key_name
from vault_node.service import MAX_CLOCK_SKEW_MS
from vault_node.softhsm import TokenSpec

if TYPE_CHECKING:
    from deploy.cluster import Cluster

STEPS = ("install", "reload", "announce", "switch", "reseal", "retire")
POLL_S = 0.5
PROGRESS_S = 5.0


class RotationError(DeployError):
    """A rotation step could not complete; what was done stays done (run it again)."""


@dataclass(frozen=True)
class RotationState:
    """DIR/rotation/state.json: the fleet's epoch and the rotation under way, if any."""

    epoch: int = 1  # the epoch the fleet seals with once no rotation is under way
    target: int = 0  # the epoch being introduced (0: none)
    done: tuple[str, ...] = ()
    switched_at: float = 0.0  # unix time the switch finished (tickets sealed before expire)

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(step for step in STEPS if step not in self.done) if self.target else ()

    @classmethod
    def load(cls, path: Path) -> RotationState:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            epoch=int(data["epoch"]),
            target=int(data["target"]),
            done=tuple(str(s) for s in data["done"]),
            switched_at=float(data["switched_at"]),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)


@dataclass
class Rotation:
    """One cluster's `rotate-fleet`."""

    cluster: Cluster
    echo: Callable[[str], None] = print
    timeout_s: float = 120.0
    stall_s: float = 120.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _state: RotationState = field(init=False)

    def __post_init__(self) -> None:
        self._state = RotationState.load(self._state_file)

    @property
    def _state_file(self) -> Path:
        return self.cluster.layout.rotation_dir / "state.json"

    @property
    def state(self) -> RotationState:
        return self._state

    def run(self, step: str | None = None, *, force: bool = False) -> RotationState:
        """Run every pending step (a new rotation when none is under way), or only `step`,
        which must be the next pending one (or a finished one, to run it again)."""
        state = self._state
        if not state.target:
            if step not in (None, "install"):
                raise RotationError(f"no rotation under way: start with install, not {step}")
            state = self._save(replace(state, target=state.epoch + 1, done=()))
            self._log("start", epoch=state.epoch, target=state.target)
        if step is not None:
            if step not in STEPS:
                raise RotationError(f"unknown step {step!r} (steps: {', '.join(STEPS)})")
            pending = state.pending
            if step not in state.done and pending and step != pending[0]:
                raise RotationError(f"{step} comes after {pending[0]}: run the steps in order")
            self._run_step(step, force)
        else:
            for name in state.pending:
                self._run_step(name, force)
        return self._state

    def _run_step(self, step: str, force: bool) -> None:
        started = self.clock()
        self.echo(f"rotate-fleet: {step} (epoch {self._state.epoch} -> {self._state.target})")
        self._log("begin", step=step)
        details = getattr(self, f"_{step}")(force) or {}
        done = tuple(dict.fromkeys((*self._state.done, step)))
        self._save(replace(self._state, done=done))
        self._log("done", step=step, seconds=round(self.clock() - started, 3), **details)
        if step == "retire":
            self._save(RotationState(epoch=self._state.target))
            self._log("finished", epoch=self._state.epoch)

    # -- the steps --

    def _install(self, _force: bool) -> dict[str, Any]:
        state, layout = self._state, self.cluster.layout
        pub_name, json_name = ceremony.rotation_files(state.target)
        installed = [s["accepted"] for s in self._token_statuses().values()]
        if (layout.fleet_dir / pub_name).exists() and all(state.target in a for a in installed):
            # Installed already (the command stopped before it could write so).
            public = ceremony.load_fleet_public(layout.fleet_dir, pub_name, json_name)
            return {"fleet_id": public.fleet_id.hex(), "resumed": True}
        fleet = ceremony.run_rotation_ceremony(
            self._tokens(), layout.fleet_dir, state.target,
            layout.rotation_dir / f"epoch-{state.target}",
        )  # fmt: skip
        return {"fleet_id": fleet.fleet_id.hex()}

    def _reload(self, _force: bool) -> dict[str, Any]:
        old, new = self._state.epoch, self._state.target
        return self._reload_and_wait(
            lambda f: set(f["accepted"]) >= {old, new} and f["seal"] == old
        )

    def _announce(self, _force: bool) -> dict[str, Any]:
        state, layout = self._state, self.cluster.layout
        pub_name, json_name = ceremony.rotation_files(state.target)
        public = ceremony.load_fleet_public(layout.fleet_dir, pub_name, json_name)
        context = self.cluster.topology.options.opaque_context
        announcement = fleet_root.new_announcement(state.target, public.public_key, context)
        self.cluster.etcd_as_root().publish(fleet_root.sign(layout, announcement))
        # New installs pin the new key at once; clients pinned to an older one learn it from
        # the announcement (verified against the root key they pin).
        layout.client_config.write_text(
            client_toml(self.cluster.topology, layout, layout.fleet_dir / pub_name,
                        public.fleet_id, state.target)
        )  # fmt: skip
        return {"fleet_id": public.fleet_id.hex()}

    def _switch(self, _force: bool) -> dict[str, Any]:
        new = self._state.target
        self._token_steps("fleet-seal", new)
        details = self._reload_and_wait(lambda f: f["seal"] == new)
        self._save(replace(self._state, switched_at=self.clock()))
        return details

    def _reseal(self, force: bool) -> dict[str, Any]:
        old_label = epoch_labels(self._state.epoch)[1]
        deadline_free = self.clock() + self.stall_s
        last = -1
        reported = 0.0
        while True:
            left = self._sealed_with(old_label)
            if not left:
                return {"left": 0}
            if len(left) != last:
                last, deadline_free = len(left), self.clock() + self.stall_s
            if self.clock() - reported >= PROGRESS_S:
                self.echo(f"  {len(left)} values still sealed with {old_label!r}")
                reported = self.clock()
            if self.clock() >= deadline_free:
                if force:
                    self.echo(f"  --force: {len(left)} values left under {old_label!r}")
                    return {"left": len(left), "forced": True}
                shown = ", ".join(k.decode() for k in left[:5])
                raise RotationError(
                    f"{len(left)} values still name {old_label!r} after {self.stall_s:g} s "
                    f"without progress (e.g. {shown}): values that do not open are refused as "
                    "tampered and cannot be re-sealed (see the nodes' audit lines); run "
                    "`rotate-fleet --step reseal --force` to go on without them"
                )
            self.sleep(POLL_S)

    def _retire(self, force: bool) -> dict[str, Any]:
        old, new = self._state.epoch, self._state.target
        if "reseal" not in self._state.done and not force:
            raise RotationError("reseal has not finished: the old key still seals some values")
        # Tickets sealed with the old ticket key before the switch expire first.
        ttl_s = self.cluster.topology.options.ticket_ttl_s + MAX_CLOCK_SKEW_MS / 1000
        wait = self._state.switched_at + ttl_s - self.clock()
        if wait > 0:
            self.echo(f"  waiting {wait:.1f} s for tickets of epoch {old} to expire")
            self.sleep(wait)
        self._token_steps("fleet-retire", old)
        details = self._reload_and_wait(lambda f: f["accepted"] == [new])
        self._token_steps("fleet-destroy", old)
        left = {name: status["keys"] for name, status in self._token_statuses().items()}
        stale = set(epoch_labels(old))
        kept = {name: sorted(stale & set(keys)) for name, keys in left.items() if stale & set(keys)}
        if kept:
            raise RotationError(f"old keys still in tokens after destroy: {kept}")
        return {**details, "destroyed": sorted(stale)}

    # -- tokens, nodes, etcd --

    def _tokens(self) -> list[TokenSpec]:
        specs: list[TokenSpec] = []
        for node in self.cluster.topology.nodes:
            hsm = NodeConfig.load(self.cluster.layout.config(node.name), check_files=False).hsm
            specs.append(
                TokenSpec(
                    module=hsm.module,
                    softhsm_conf=Path(hsm.softhsm_conf),
                    token_label=hsm.token_label,
                    pin_file=Path(hsm.pin_file),
                )
            )
        return specs

    def _token_steps(self, step: str, epoch: int) -> None:
        for spec in self._tokens():
            try:
                result = ceremony.token_step(step, spec, epoch=epoch)
            except ceremony.CeremonyError as exc:
                raise RotationError(str(exc)) from exc
            self._log("token", step=step, token=spec.token_label, result=result)

    def _token_statuses(self) -> dict[str, dict[str, Any]]:
        return {
            spec.token_label: ceremony.token_step("fleet-status", spec) for spec in self._tokens()
        }

    def _reload_and_wait(self, reached: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """SIGHUP every vault node, then wait until each one's membership value shows a fleet
        state `reached` accepts."""
        names = [n.name for n in self.cluster.topology.nodes]
        for name in names:
            try:
                self.cluster.reload(name)
            except (ClusterStateError, ProcessLookupError) as exc:
                raise RotationError(f"{exc}; then run this step again") from exc
        deadline = self.clock() + self.timeout_s
        while True:
            reports = self._fleet_reports()
            missing = [n for n in names if n not in reports or not reached(reports[n])]
            if not missing:
                self._log("reported", nodes={n: reports[n] for n in names})
                return {"nodes": len(names)}
            if self.clock() >= deadline:
                shown = {n: reports.get(n, "no membership key") for n in missing}
                raise RotationError(f"vault nodes did not take the new fleet state: {shown}")
            self.sleep(POLL_S)

    def _fleet_reports(self) -> dict[str, dict[str, Any]]:
        reports: dict[str, dict[str, Any]] = {}
        for _key, value in self.cluster.etcd_as_root().values(NODES_PREFIX):
            try:
                member = json.loads(value)
            except ValueError:
                continue
            fleet = member.get("fleet") if isinstance(member, dict) else None
            if isinstance(fleet, dict) and isinstance(member.get("name"), str):
                reports[member["name"]] = fleet
        return reports

    def _sealed_with(self, label: str) -> list[bytes]:
        """etcd keys of records and group heads whose sealed value names `label`."""
        etcd = self.cluster.etcd_as_root()
        values: Sequence[tuple[bytes, bytes]] = [
            *etcd.values(RECORDS_PREFIX),
            *etcd.values(HEADS_PREFIX),
        ]
        return [key for key, value in values if sealed_key_name(value) == label]

    # -- state and log --

    def _save(self, state: RotationState) -> RotationState:
        state.save(self._state_file)
        self._state = state
        return state

    def _log(self, event: str, **details: Any) -> None:
        path = self.cluster.layout.rotation_dir / "log.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"ts": round(self.clock(), 3), "event": event, **details}
        with path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry, sort_keys=True) + "\n")
