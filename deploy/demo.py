"""The main scenario, end to end, against a local three-data-centre cluster (README command 1).

    .venv/bin/python -m deploy.demo [--dir DIR] [--keep] [--no-fsync] [--ksf default|fast]

Brings up the cluster of `deploy/local-3dc.toml` (or resumes the one in DIR), then, through the
client library: creates an account, registers a backup key behind a password, recovers it, tries
three wrong passwords (guesses left shown), recovers with the right one (the counter resets),
encrypts and decrypts a sample backup with the key, kills data centre dc-b, recovers again, brings
dc-b back and stops the cluster. Each step prints what happened and how long it took. Exits 1 at
the first step that does not do what it should.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from client import InvalidPassword, VaultClient
from client.errors import VaultError
from deploy.cluster import Cluster

T = TypeVar("T")

DEMO_PASSWORD = "correct horse battery staple"  # noqa: S105 - a demo account's throwaway password
WRONG_PASSWORDS = ("Tr0ub4dor&3", "hunter2", "password123")


class DemoFailed(Exception):
    """A step did not do what the scenario expects."""


class Steps:
    """Prints each step with its duration; `check` turns a wrong outcome into DemoFailed."""

    def __init__(self) -> None:
        self.number = 0
        self.started = time.perf_counter()

    @contextmanager
    def step(self, what: str) -> Iterator[Callable[[str], None]]:
        self.number += 1
        t0 = time.perf_counter()
        notes: list[str] = []
        print(f"[{self.number:2d}] {what} ...", flush=True)
        yield notes.append
        took = time.perf_counter() - t0
        detail = f": {'; '.join(notes)}" if notes else ""
        print(f"     ok in {took * 1000:.0f} ms{detail}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def fingerprint(key: object) -> str:
    """Short non-reversible tag so the output can show two keys are equal without showing them."""
    return hashlib.sha256(bytes(key)).hexdigest()[:12]  # type: ignore[call-overload]


def run_scenario(cluster: Cluster, work: Path, ksf: str) -> None:
    steps = Steps()
    with VaultClient.from_config(
        cluster.client_config_path, key_dir=work, ksf=None if ksf == "default" else ksf
    ) as vault:
        with steps.step("create an account (Ed25519 key in a 0600 file, login binds it)") as note:
            account = vault.create_account()
            note(f"account {account}")
        with steps.step("register a fresh backup key behind a password") as note:
            key = vault.register(DEMO_PASSWORD)
            note(f"key fingerprint {fingerprint(key)} (the key itself is shown to the user only)")
        with steps.step("recover the key with the password") as note:
            recovered = vault.recover(DEMO_PASSWORD)
            check(recovered == key, "recovered key differs from the registered one")
            note(f"same key ({fingerprint(recovered)})")
        for wrong in WRONG_PASSWORDS:
            with steps.step("recover with a wrong password") as note:
                try:
                    vault.recover(wrong)
                except InvalidPassword as exc:
                    note(f"InvalidPassword, {exc.guesses_left} guesses left")
                else:
                    raise DemoFailed("a wrong password returned a key")
        with steps.step("status") as note:
            status = vault.status()
            note(f"registered={status.registered} guesses_left={status.guesses_left}")
        with steps.step("recover with the right password (resets the counter)") as note:
            check(vault.recover(DEMO_PASSWORD) == key, "recovered key differs")
            status = vault.status()
            note(f"guesses_left back to {status.guesses_left}")
        with steps.step("encrypt and decrypt a sample backup with the key") as note:
            sample = work / "chat-backup.db"
            sample.write_bytes(os.urandom(3 << 20))
            vault.encrypt_backup(sample, work / "chat-backup.bkv", key)
            vault.decrypt_backup(work / "chat-backup.bkv", work / "chat-backup.out", key)
            same = (work / "chat-backup.out").read_bytes() == sample.read_bytes()
            check(same, "decrypted backup differs from the original")
            note(f"{sample.stat().st_size >> 20} MiB round trip, identical")
        with steps.step("kill data centre dc-b (SIGKILL its etcd member, vault nodes, frontend)"):
            cluster.kill_dc("dc-b")
        with steps.step("recover again with dc-b down") as note:
            check(vault.recover(DEMO_PASSWORD) == key, "recovered key differs")
            note("same key")
        with steps.step("bring dc-b back with its data") as note:
            cluster.start_dc("dc-b")
            note("all of dc-b healthy")
        with steps.step("recover once more with all three data centres") as note:
            check(vault.recover(DEMO_PASSWORD) == key, "recovered key differs")
            note("same key")
    print(f"scenario done in {time.perf_counter() - steps.started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the main scenario against a local cluster.")
    ap.add_argument(
        "--dir", type=Path, default=None, help="cluster directory (default: a temp dir)"
    )
    ap.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    ap.add_argument("--no-fsync", action="store_true", help="etcd without fsync (faster, unsafe)")
    ap.add_argument(
        "--ksf",
        choices=("default", "fast"),
        default="default",
        help="client Argon2id cost (default: t=3, p=4, 64 MiB)",
    )
    args = ap.parse_args(argv)
    own_dir = args.dir is None
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bkv-demo-"))
    cluster = Cluster(directory, echo=print)
    work = Path(tempfile.mkdtemp(prefix="bkv-demo-client-"))
    rc = 0
    try:
        t0 = time.perf_counter()
        report = cluster.up(fsync=not args.no_fsync)
        print(
            f"cluster up in {time.perf_counter() - t0:.1f} s "
            f"(etcd fsync {'on' if report.fsync else 'off'}), config {cluster.client_config_path}"
        )
        run_scenario(cluster, work, args.ksf)
    except (DemoFailed, VaultError) as exc:
        print(f"demo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"logs are in {directory / 'logs'}", file=sys.stderr)
        rc = 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            t0 = time.perf_counter()
            cluster.down()
            print(f"cluster stopped in {time.perf_counter() - t0:.1f} s")
            if own_dir and rc == 0:
                shutil.rmtree(directory, ignore_errors=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
