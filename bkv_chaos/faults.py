"""The fault timeline: each scenario in its own slot — warm up, inject, hold, heal, recover.

A `Scenario` injects its fault and heals it inside `run(ctx, hold_s)`, healing in a `finally` so
that an error never leaves a data centre down or a process stopped, and returns the `Fault`
windows it made (start = the fault is in place, end = the heal began). The timeline writes each
fault to `faults.jsonl` once the slot is over, with the driver's note of the first definite
success after its end (the checker recomputes it).

Faults touch only what the cluster recorded (`deploy.cluster.Cluster`: process groups by PID,
never by name) and the tool's own proxies and namespaces.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from bkv_chaos.history import Fault, JsonlWriter
from bkv_chaos.netns import NetnsLab
from bkv_chaos.proxy import LinkProxy
from bkv_chaos.recorder import Recorder
from deploy.cluster import Cluster


class SkipScenario(Exception):
    """The scenario cannot run here (e.g. no root for network namespaces); says why."""


@dataclass
class FaultContext:
    """What a scenario may act on. `wait(s)` sleeps unless the run is being stopped.

    proxies: the client links (one per frontend); peer_proxies: etcd peer links that run
    through a proxy (see `bkv_chaos.proxy.peer_proxy_cluster`); network: the run's
    namespaces when the cluster's data centres run in them (`partition-dc`); client_factory
    and run_dir: for scenarios that act as users of their own (`insider`).
    """

    cluster: Cluster
    recorder: Recorder
    rng: random.Random
    proxies: Sequence[LinkProxy]
    stop: threading.Event
    echo: Callable[[str], None]
    lease_ttl_s: float = 4.0
    skipped: list[str] = field(default_factory=list)
    peer_proxies: Sequence[LinkProxy] = ()
    network: NetnsLab | None = None
    # The load's client factory (a new client per call) and the run's directory: scenarios
    # that act as a user of their own (`insider`) and write results beside the history.
    client_factory: Callable[[], Any] | None = None
    run_dir: Path | None = None

    def now(self) -> float:
        return self.recorder.clock.now()

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds`; True when the run was stopped meanwhile."""
        return self.stop.wait(max(0.0, seconds))

    def wait_until(self, predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        """Poll `predicate` until true or `timeout`; returns its last value."""
        deadline = self.now() + timeout
        while not predicate():
            if self.now() >= deadline or self.wait(step):
                return predicate()
        return True


class Scenario(Protocol):
    name: str

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        """Inject, hold about `hold_s`, heal (always), and return the fault windows."""
        ...


@dataclass(frozen=True)
class Timeline:
    """How a run's time is split: per scenario a slot of `slot_s` seconds.

    warmup_s: load without faults at the start of each slot.
    hold_fraction: the part of the slot the fault is held (scenarios may need longer).
    min_recovery_s: at least this long after a heal before the next slot starts.
    """

    slot_s: float
    warmup_s: float = 2.0
    hold_fraction: float = 0.4
    min_recovery_s: float = 2.0

    def validate(self) -> None:
        problems = []
        if self.slot_s <= 0:
            problems.append("slot_s must be > 0")
        if self.warmup_s < 0 or self.min_recovery_s < 0:
            problems.append("warmup_s and min_recovery_s must be >= 0")
        if not 0 < self.hold_fraction < 1:
            problems.append("hold_fraction must be in (0, 1)")
        if problems:
            raise ValueError("timeline: " + "; ".join(problems))

    @property
    def hold_s(self) -> float:
        return max(1.0, self.slot_s * self.hold_fraction)


def _served_after(recorder: Recorder, t: float) -> Callable[[], bool]:
    return lambda: recorder.first_success_after(t) is not None


def run_timeline(
    scenarios: Sequence[Scenario], timeline: Timeline, ctx: FaultContext, writer: JsonlWriter
) -> list[Fault]:
    """Run every scenario in turn; return every fault written."""
    timeline.validate()
    written: list[Fault] = []
    for scenario in scenarios:
        slot_start = ctx.now()
        if ctx.wait(min(timeline.warmup_s, timeline.slot_s / 4)):
            break
        ctx.echo(f"[{ctx.now():7.2f}s] fault {scenario.name}: inject")
        try:
            faults = scenario.run(ctx, timeline.hold_s)
        except SkipScenario as skip:
            ctx.echo(f"[{ctx.now():7.2f}s] fault {scenario.name}: SKIPPED: {skip}")
            ctx.skipped.append(f"{scenario.name}: {skip}")
            continue
        ctx.echo(f"[{ctx.now():7.2f}s] fault {scenario.name}: healed")
        healed_at = ctx.now()
        ends = [f.end for f in faults if f.end is not None]
        last_end = max(ends, default=healed_at)
        # Recovery: wait for the first definite success after the heal, bounded by the slot.
        remaining = max(timeline.min_recovery_s, slot_start + timeline.slot_s - ctx.now())
        ctx.wait_until(_served_after(ctx.recorder, last_end), remaining)
        for fault in faults:
            noted = None if fault.end is None else ctx.recorder.first_success_after(fault.end)
            fault = replace(fault, recovered_at=noted)
            writer.append(fault)
            written.append(fault)
        ctx.wait(slot_start + timeline.slot_s - ctx.now())
    return written
