"""etcd maintenance: compact to the current revision, then defragment one member at a time.

    bkv-cluster maintain --dir DIR [--defrag]                       # a local cluster
    python -m deploy.etcd_maintain --endpoints https://A:2379,... \\
        --cacert etcd-ca.pem --cert root.pem --key root.key [--defrag]  # any cluster (systemd)

Why: the vault erases records (lockout, delete), and an erased sealed record must not stay
readable in etcd. Compaction removes every older revision from etcd's history (what any client
with the right to read could still ask for with `--rev`); auto-compaction (periodic, 5 minutes
by default) does it too, this does it now. Compaction only marks bbolt pages free: they still
hold the old bytes in the member's database file until reused. Defragmentation rewrites the
file with the live keys only and returns the freed pages to the file system. It blocks the
member for its duration, so members go one at a time and each must be healthy again before the
next (quorum is never at stake). Both need the root identity (defragment is root-only in 3.4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy import etcd
from deploy.errors import DeployError

# Runs etcdctl with `args` against `urls`: the CompletedProcess (text, output captured).
Etcdctl = Callable[[Sequence[str], Sequence[str]], "subprocess.CompletedProcess[str]"]


class MaintenanceError(DeployError):
    """etcdctl failed during compaction or defragmentation (its stderr is in the message)."""


@dataclass(frozen=True)
class MemberDb:
    url: str
    db_size: int  # bytes of the member's database file
    revision: int


@dataclass(frozen=True)
class MaintainReport:
    compacted_to: int  # the revision compacted to (0: nothing to compact)
    before: tuple[MemberDb, ...]
    after: tuple[MemberDb, ...]  # after the defragmentation (== before without --defrag)


def _check(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise MaintenanceError(f"{what} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def member_dbs(run: Etcdctl, urls: Sequence[str]) -> list[MemberDb]:
    """Database size and revision of each member (`etcdctl endpoint status`)."""
    out = _check(run(["endpoint", "status", "-w", "json"], urls), "endpoint status")
    try:
        rows = json.loads(out)
        return [
            MemberDb(
                str(row["Endpoint"]),
                int(row["Status"]["dbSize"]),
                int(row["Status"]["header"]["revision"]),
            )
            for row in rows
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise MaintenanceError(f"endpoint status: unexpected output {out[:200]!r}") from exc


def compact(run: Etcdctl, urls: Sequence[str], revision: int) -> int:
    """Compact etcd's history up to `revision` (waiting until it is physically applied);
    0 when there is nothing to compact. One call reaches every member through raft."""
    if revision <= 1:
        return 0
    done = run(["compaction", "--physical", str(revision)], urls)
    if done.returncode != 0 and "required revision has been compacted" in done.stderr:
        return 0  # auto-compaction got there first: nothing older is left
    _check(done, "compaction")
    return revision


def defragment(run: Etcdctl, url: str) -> None:
    """Defragment the one member at `url` and wait for its health (etcdctl waits)."""
    _check(run(["defrag", "--command-timeout=120s"], [url]), f"defrag of {url}")
    _check(run(["endpoint", "health"], [url]), f"health of {url} after defrag")


def maintain(
    run: Etcdctl,
    urls: Sequence[str],
    *,
    defrag: bool,
    echo: Callable[[str], None] = lambda _m: None,
) -> MaintainReport:
    """Compact to the current revision, then (with `defrag`) defragment each member in turn."""
    before = member_dbs(run, urls)
    revision = max(m.revision for m in before)
    compacted = compact(run, urls, revision)
    echo(f"compacted to revision {compacted}" if compacted else "nothing to compact")
    if not defrag:
        return MaintainReport(compacted, tuple(before), tuple(before))
    for member in before:
        defragment(run, member.url)
        echo(f"defragmented {member.url}")
    after = member_dbs(run, urls)
    return MaintainReport(compacted, tuple(before), tuple(after))


def report_lines(report: MaintainReport) -> list[str]:
    sizes = {m.url: m.db_size for m in report.after}
    return [
        f"{m.url}: database {m.db_size} -> {sizes.get(m.url, m.db_size)} bytes"
        for m in report.before
    ]


def etcdctl_runner(identity: etcd.EtcdIdentity, *, timeout_s: float = 180.0) -> Etcdctl:
    """An `Etcdctl` that runs the system etcdctl as `identity`."""

    def run(args: Sequence[str], urls: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return etcd.run_etcdctl(etcd.etcdctl_argv(urls, identity, args), timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise MaintenanceError(f"etcdctl {' '.join(args)} timed out") from exc

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.etcd_maintain", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--endpoints", required=True, help="comma-separated https:// client URLs")
    parser.add_argument("--cacert", type=Path, required=True, help="the etcd CA certificate")
    parser.add_argument("--cert", type=Path, required=True, help="root's client certificate")
    parser.add_argument("--key", type=Path, required=True, help="root's client key")
    parser.add_argument("--defrag", action="store_true", help="defragment each member in turn")
    args = parser.parse_args(argv)
    urls = [u for u in args.endpoints.split(",") if u]
    run = etcdctl_runner(etcd.EtcdIdentity(args.cacert, args.cert, args.key))
    try:
        report = maintain(run, urls, defrag=args.defrag, echo=print)
    except DeployError as exc:
        print(f"etcd maintenance: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
