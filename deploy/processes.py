"""Supervised background processes: start one, check it, signal it, wait until it is gone.

Every service runs under its own `deploy.supervisor` in a process group of its own, whose id is
the supervisor's PID. We only ever signal a group we recorded, and before signalling we check
that the group is still ours: a live leader must have the start time we recorded (a PID reused
by an unrelated process has another), and without a leader the kernel does not hand out the
group's id again while members remain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import StartError


@dataclass(frozen=True)
class Running:
    """A started supervisor: its PID (= process group id) and its start time in clock ticks."""

    pgid: int
    start_ticks: int


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (`state` first, so field N of
    proc(5) is at index N - 3), or None when the process does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # FileNotFoundError, ProcessLookupError, or unreadable
        return None
    return raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, starttime) of a process from /proc, or None when it does not exist."""
    rest = stat_fields(pid)
    return None if rest is None else (rest[0], int(rest[2]), int(rest[19]))


def start_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[2]


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def group_pids(group: Running) -> list[int]:
    """Live (non-zombie) processes of the group, or [] when the group is gone or not ours."""
    leader = _stat(group.pgid)
    if leader is not None and leader[1] == group.pgid and leader[2] != group.start_ticks:
        return []  # the id was reused by a group that is not ours
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == group.pgid and stat[0] != "Z":
                pids.append(int(entry))
    return pids


def is_alive(group: Running) -> bool:
    return bool(group_pids(group))


def signal_group(group: Running, sig: signal.Signals) -> bool:
    """Send `sig` to the whole group if it is still ours and alive; True when sent."""
    if not is_alive(group):
        return False
    try:
        os.killpg(group.pgid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(group: Running, deadline: float) -> bool:
    """Poll until no process of the group is left (zombies count as gone)."""
    while is_alive(group):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def kill(group: Running, timeout: float = 10.0) -> None:
    """SIGKILL the whole group (supervisor and child, no restart) and wait until it is gone."""
    signal_group(group, signal.SIGKILL)
    if not wait_gone(group, time.monotonic() + timeout):
        raise StartError(f"process group {group.pgid} survived SIGKILL for {timeout}s")


def stop(group: Running, grace: float = 10.0) -> None:
    """SIGTERM the group, SIGKILL it after `grace` seconds, and wait until it is gone."""
    signal_group(group, signal.SIGCONT)  # a stopped group cannot act on SIGTERM
    signal_group(group, signal.SIGTERM)
    if not wait_gone(group, time.monotonic() + grace):
        kill(group)


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service under a supervisor. `command_prefix` goes before `argv` in the
    supervisor's command, so that its restarts run the same way (e.g. in one namespace)."""

    name: str
    argv: tuple[str, ...]
    log: Path
    state: Path
    env: Mapping[str, str]
    cwd: Path
    max_restarts: int = 5
    command_prefix: tuple[str, ...] = ()


def spawn(spec: ServiceSpec, timeout: float = 10.0) -> Running:
    """Start `spec` under a detached supervisor and return its group."""
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    spec.state.parent.mkdir(parents=True, exist_ok=True)
    argv: Sequence[str] = [
        sys.executable, "-m", "deploy.supervisor", "--detach",
        "--name", spec.name, "--log", str(spec.log), "--state", str(spec.state),
        "--max-restarts", str(spec.max_restarts), "--", *spec.command_prefix, *spec.argv,
    ]  # fmt: skip
    env = {**os.environ, **spec.env}
    try:
        # The launcher prints the supervisor's PID and exits at once (see deploy.supervisor).
        done = subprocess.run(
            argv, env=env, cwd=spec.cwd, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise StartError(f"{spec.name}: supervisor launcher hung") from exc
    if done.returncode != 0:
        raise StartError(f"{spec.name}: supervisor failed: {done.stderr.decode(errors='replace')}")
    pid = int(done.stdout.split()[0])
    ticks = start_ticks(pid)
    if ticks is None:
        raise StartError(f"{spec.name}: supervisor {pid} exited at once; see {spec.log}")
    return Running(pgid=pid, start_ticks=ticks)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages (logs hold no secrets by contract)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
