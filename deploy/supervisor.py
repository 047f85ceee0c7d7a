"""A per-service supervisor: `python -m deploy.supervisor [options] -- COMMAND...`.

It runs COMMAND with stdout/stderr appended to the log file, restarts it when it exits on its
own (bounded exponential backoff, bounded count, the count forgiven after a long healthy run),
and on SIGTERM/SIGINT forwards SIGTERM to the child, SIGKILLs it after a grace period, and exits.

With `--detach` it first forks: the forked copy becomes a session (and process group) leader of
its own and supervises; the original prints the supervisor's PID and exits at once. The launcher
therefore never has the supervisor as a child (no zombie to reap), and the whole service —
supervisor and child, which stays in the supervisor's group — is stopped by one `killpg`.

The state file (JSON: supervisor pid, child pid, restarts, state) is rewritten atomically at
every change, for `bkv-cluster status` and chaos tooling that wants the child's PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

STOP_GRACE_S = 10
HEALTHY_RUN_S = 30.0  # a child that ran this long gets its restart count forgiven


@dataclass(frozen=True)
class SupervisorConfig:
    name: str
    log: Path
    state: Path
    argv: tuple[str, ...]
    max_restarts: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0

    def validate(self) -> None:
        problems = []
        if not self.argv:
            problems.append("a command is required after --")
        if self.max_restarts < 0:
            problems.append("--max-restarts must be >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            problems.append("backoff must satisfy 0 < initial <= max")
        if problems:
            raise ValueError("; ".join(problems))


def _write_state(path: Path, **state: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


class Supervisor:
    def __init__(self, config: SupervisorConfig, log: IO[bytes]) -> None:
        self.config = config
        self.log = log
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.restarts = 0

    def say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.log.write(f"{stamp} [supervisor {self.config.name}] {message}\n".encode())
        self.log.flush()

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            signal.alarm(STOP_GRACE_S)  # SIGALRM: the child ignored SIGTERM for too long

    def on_alarm(self, _signum: int, _frame: FrameType | None) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.kill()

    def state(self, state: str, rc: int | None = None) -> None:
        child = self.child
        _write_state(
            self.config.state,
            name=self.config.name,
            supervisor_pid=os.getpid(),
            child_pid=None if child is None else child.pid,
            restarts=self.restarts,
            state=state,
            last_exit=rc,
        )

    def run(self) -> int:
        backoff = self.config.backoff_initial_s
        while not self.stopping.is_set():
            started = time.monotonic()
            self.child = subprocess.Popen(
                self.config.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
            )
            self.say(f"started pid {self.child.pid}")
            self.state("running")
            rc = self.child.wait()
            if self.stopping.is_set():
                self.say(f"stopped (exit {rc})")
                self.state("stopped", rc)
                return 0
            if time.monotonic() - started >= HEALTHY_RUN_S:
                self.restarts, backoff = 0, self.config.backoff_initial_s
            if self.restarts >= self.config.max_restarts:
                self.say(f"exited with {rc}; giving up after {self.restarts} restarts")
                self.state("failed", rc)
                return 1
            self.restarts += 1
            self.say(f"exited with {rc}; restart {self.restarts} in {backoff:.1f}s")
            self.state("backoff", rc)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, self.config.backoff_max_s)
        self.state("stopped")
        return 0


def parse_args(argv: Sequence[str]) -> tuple[SupervisorConfig, bool]:
    parser = argparse.ArgumentParser(prog="python -m deploy.supervisor")
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--max-restarts", type=int, default=5)
    parser.add_argument("--detach", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    config = SupervisorConfig(
        name=args.name,
        log=args.log,
        state=args.state,
        argv=tuple(command),
        max_restarts=args.max_restarts,
    )
    config.validate()
    return config, bool(args.detach)


def _detach() -> bool:
    """Fork; in the original print the supervisor PID and return False; in the copy, start a
    new session (own process group, no controlling terminal) and return True."""
    pid = os.fork()
    if pid:
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        return False
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    config, detach = parse_args(sys.argv[1:] if argv is None else argv)
    if detach and not _detach():
        return 0
    with config.log.open("ab") as log:
        os.dup2(log.fileno(), 2)  # our own tracebacks go to the service log too
        supervisor = Supervisor(config, log)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, supervisor.on_signal)
        signal.signal(signal.SIGALRM, supervisor.on_alarm)
        return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
