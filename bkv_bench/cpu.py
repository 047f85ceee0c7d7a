"""CPU time per role over the measured phase: where each operation's CPU goes.

`CpuMeter` reads utime + stime (all threads) of every cluster process from `/proc/<pid>/stat`
when the measured phase starts and when it ends, and the load generator's own
`time.process_time()`. Dividing by the operations done gives CPU milliseconds per operation for
the vault nodes, etcd members, frontends and the load generator: the figure that says whether a
cluster on shared cores is bound by consensus or by the processes around it.

A process that ended or was restarted during the phase (a different start time) is left out and
named under `missing`, so a figure never mixes two lives of a process.

>>> reads = iter([(100, 2.0), (100, 2.75)])      # node 11: 0.75 s of CPU in the phase
>>> meter = CpuMeter({"node": [11]}, own=iter([1.0, 1.5]).__next__, read=lambda pid: next(reads))
>>> meter.start()
>>> used = meter.stop()
>>> used.seconds
{'node': 0.75, 'bench': 0.5}
>>> cpu_json(used, ops=100, elapsed_s=1.0)["ms_per_op"]
{'node': 7.5, 'bench': 5.0, 'total': 12.5}
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploy.processes import stat_fields

# (start time in clock ticks, CPU seconds) of one process, or None when it does not exist.
Reader = Callable[[int], tuple[int, float] | None]

_TICKS = os.sysconf("SC_CLK_TCK")


def read_proc(pid: int) -> tuple[int, float] | None:
    """(start time in ticks, utime + stime in seconds) of `pid` from /proc, None if gone."""
    rest = stat_fields(pid)
    if rest is None:
        return None
    return int(rest[19]), (int(rest[11]) + int(rest[12])) / _TICKS


@dataclass(frozen=True)
class CpuUsed:
    """CPU seconds per role over one phase, and the processes that could not be counted;
    `by_process`: per named process (a witness node apart from the others, say)."""

    seconds: dict[str, float]
    missing: tuple[int, ...] = field(default=())
    by_process: dict[str, float] = field(default_factory=dict)


class CpuMeter:
    """CPU seconds of the given processes (by role) and of this process, between start and stop."""

    def __init__(
        self,
        pids: Mapping[str, Sequence[int]],
        *,
        own: Callable[[], float] = time.process_time,
        read: Reader = read_proc,
        names: Mapping[int, str] | None = None,
    ) -> None:
        """`names`: a name per PID, for `CpuUsed.by_process` (unnamed processes: roles only)."""
        self._pids = {role: tuple(p) for role, p in pids.items()}
        self._names = dict(names or {})
        self._own = own
        self._read = read
        self._before: dict[int, tuple[int, float] | None] = {}
        self._own_before = 0.0

    def start(self) -> None:
        self._before = {pid: self._read(pid) for ps in self._pids.values() for pid in ps}
        self._own_before = self._own()

    def stop(self) -> CpuUsed:
        own = self._own() - self._own_before
        seconds: dict[str, float] = {}
        by_process: dict[str, float] = {}
        missing: list[int] = []
        for role, pids in self._pids.items():
            total = 0.0
            for pid in pids:
                before, after = self._before.get(pid), self._read(pid)
                if before is None or after is None or before[0] != after[0]:
                    missing.append(pid)  # gone, or another process under a reused PID
                    continue
                total += after[1] - before[1]
                if pid in self._names:
                    by_process[self._names[pid]] = after[1] - before[1]
            seconds[role] = total
        seconds["bench"] = own
        return CpuUsed(seconds, tuple(missing), by_process)


def cpu_json(used: CpuUsed, *, ops: int, elapsed_s: float) -> dict[str, Any]:
    """bench.json's `cpu`: seconds and milliseconds per operation by role, cores kept busy."""
    total = sum(used.seconds.values())
    per_op = {role: round(s * 1000 / ops, 2) if ops else None for role, s in used.seconds.items()}
    per_op["total"] = round(total * 1000 / ops, 2) if ops else None
    out: dict[str, Any] = {
        "seconds": {role: round(s, 3) for role, s in used.seconds.items()},
        "ms_per_op": per_op,
        "cores_busy": round(total / elapsed_s, 2) if elapsed_s > 0 else None,
        "missing_pids": list(used.missing),
    }
    if used.by_process:
        out["by_process_ms_per_op"] = {
            name: round(s * 1000 / ops, 2) if ops else None
            for name, s in sorted(used.by_process.items())
        }
    return out


def cpu_text(cpu: Mapping[str, Any]) -> str:
    """One line: CPU ms per operation by role and in all, and how many cores that kept busy."""
    per_op = cpu["ms_per_op"]
    if per_op.get("total") is None:
        return ""
    parts = ", ".join(f"{role} {ms:.2f}" for role, ms in per_op.items() if role != "total")
    line = (
        f"CPU per operation (measured phase): {per_op['total']:.2f} ms ({parts}); "
        f"{cpu['cores_busy']} cores busy"
    )
    if cpu["missing_pids"]:
        line += f"; not counted (ended or restarted): {len(cpu['missing_pids'])} processes"
    return line
