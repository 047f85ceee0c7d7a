"""`bkv-cluster`: run a local multi-data-centre Backup Key Vault cluster.

bkv-cluster up [--topology FILE] [--dir DIR] [--no-fsync]
bkv-cluster status [--metrics] | down [--dir DIR]   (--metrics: every metrics endpoint too)
bkv-cluster kill-dc NAME | start-dc NAME
bkv-cluster kill NAME | start NAME | stop NAME | crash NAME
bkv-cluster stop-process NAME | cont-process NAME
bkv-cluster etcdctl [--dir DIR] [--member NAME]... -- ARGS...   (as etcd's root, over TLS)
bkv-cluster maintain [--dir DIR] [--defrag]   (compact etcd now; defragment member by member)
bkv-cluster rebind-account [--dir DIR] [--replace] ACCOUNT PUBLIC_KEY_HEX   (key loss, etcd root)
bkv-cluster rotate-fleet [--dir DIR] [--step STEP] [--force]   (new fleet keys, no downtime)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploy import account_rebind, etcd_maintain
from deploy.cluster import ROLE_ORDER, Cluster, ProcessStatus, UpReport
from deploy.errors import DeployError
from deploy.rotation import STEPS as ROTATION_STEPS
from deploy.topology import default_topology_path, load_topology


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


def status_table(statuses: Sequence[ProcessStatus]) -> str:
    rows = [["DC", "PROCESS", "ROLE", "PGID", "PID", "ADDRESS", "WITNESS", "SUPERVISOR",
             "HEALTH"]]  # fmt: skip
    for s in sorted(statuses, key=lambda s: (s.dc, ROLE_ORDER.index(s.role), s.name)):
        health = "healthy" if s.healthy else ("down" if s.pgid is None else "UNHEALTHY")
        if s.leader:
            health += " (leader)"
        rows.append([s.dc, s.name, s.role, str(s.pgid or "-"), str(s.pid or "-"), s.address,
                     s.witness or "-", s.supervisor, health])  # fmt: skip
    return _table(rows)


def metrics_table(statuses: Sequence[ProcessStatus]) -> str:
    """Where each vault node and frontend serves its Prometheus metrics (http://ADDR/metrics)."""
    rows = [["PROCESS", "ROLE", "METRICS"]]
    for s in sorted(statuses, key=lambda s: (s.dc, ROLE_ORDER.index(s.role), s.name)):
        if s.role != "etcd":
            rows.append([s.name, s.role, f"http://{s.metrics}/metrics" if s.metrics else "-"])
    return _table(rows)


def phases_table(report: UpReport) -> str:
    rows = [["PHASE", "SECONDS"]]
    rows += [[name, f"{seconds:.2f}"] for name, seconds in report.phases]
    rows.append(["total", f"{report.total_s:.2f}"])
    return _table(rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bkv-cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path("cluster"),
                        help="cluster directory (default ./cluster)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="create and start (or resume) a cluster")
    up.add_argument("--topology", type=Path, default=None,
                    help=f"topology TOML (default {default_topology_path()})")  # fmt: skip
    up.add_argument("--no-fsync", action="store_true",
                    help="run etcd with --unsafe-no-fsync (tests only)")  # fmt: skip
    status = sub.add_parser("status", parents=[common], help="live status of every process")
    status.add_argument("--metrics", action="store_true",
                        help="also list each node's and frontend's metrics endpoint")  # fmt: skip
    _add_etcd_commands(sub, common)
    _add_key_commands(sub, common)
    sub.add_parser("down", parents=[common], help="stop every process (data is kept)")
    for name, what in (
        ("kill-dc", "SIGKILL every process of a data centre"),
        ("start-dc", "restart a data centre on its data and wait for health"),
        ("kill", "SIGKILL one process and its supervisor"),
        ("start", "start one process on its data and wait for health"),
        ("stop", "stop one process gracefully"),
        ("crash", "SIGKILL only the program; its supervisor restarts it"),
        ("stop-process", "SIGSTOP one process (it hangs, holding its sockets)"),
        ("cont-process", "SIGCONT a process stopped with stop-process"),
    ):
        sub.add_parser(name, parents=[common], help=what).add_argument("name")
    return parser


def _add_etcd_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """etcdctl as root, and the maintenance pass."""
    ctl = sub.add_parser(
        "etcdctl", parents=[common],
        help="run etcdctl against the cluster's etcd as root (TLS, client certificate)",
        description="Runs the system etcdctl (ETCDCTL_API=3) against every etcd member over "
        "https with the root identity, passing ARGS through; exits with etcdctl's status. "
        "Example: bkv-cluster etcdctl --dir DIR -- get --prefix /bkv/v1/records/ --keys-only",
    )  # fmt: skip
    ctl.add_argument(
        "--member",
        action="append",
        default=None,
        metavar="NAME",
        help="only this etcd member (repeatable; e.g. for snapshot save, defrag)",
    )
    ctl.add_argument("args", nargs=argparse.REMAINDER, help="etcdctl's arguments, after --")
    maintain = sub.add_parser(
        "maintain", parents=[common],
        help="compact etcd to its current revision (and --defrag each member in turn)",
    )  # fmt: skip
    maintain.add_argument(
        "--defrag",
        action="store_true",
        help="defragment every member, one at a time, after compacting",
    )


def _add_key_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The operator's key commands: an account's key-loss rebind, the fleet's key rotation."""
    rebind = sub.add_parser(
        "rebind-account", parents=[common],
        help="key loss: let a new account key log in at the frontends (as etcd root)",
        description="Adds PUBLIC_KEY (64 hex digits, from `bkv account show` on the user's new "
        "device) to ACCOUNT's frontend binding, beside the bound key, so that both may log in; "
        "the vault binds the new key only after the user's `bkv account rebind-request` has "
        "waited node.account_rebind_delay_s without the old key signing (deploy/README.md).",
    )  # fmt: skip
    rebind.add_argument("account")
    rebind.add_argument("public_key", help="the new key, 64 hex digits")
    rebind.add_argument(
        "--replace", action="store_true",
        help="bind the new key alone (once the vault's rebind has matured and bound it)",
    )  # fmt: skip
    rotate = sub.add_parser(
        "rotate-fleet", parents=[common],
        help="replace the fleet's kem, record and ticket keys while the cluster serves",
        description="Runs the pending steps of a fleet key rotation (a new one when none is "
        f"under way): {', '.join(ROTATION_STEPS)}. Each step is logged in DIR/rotation/ and "
        "resumable; see deploy/README.md for running them across hosts.",
    )  # fmt: skip
    rotate.add_argument("--step", choices=ROTATION_STEPS, default=None,
                        help="run only this step (the next pending one)")  # fmt: skip
    rotate.add_argument("--force", action="store_true",
                        help="reseal/retire: go on although values that do not open (tampered) "
                        "still name the old key")  # fmt: skip
    rotate.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the vault nodes at each reload")  # fmt: skip


def _up(cluster: Cluster, args: argparse.Namespace, started: float) -> int:
    topology = None if args.topology is None else load_topology(args.topology)
    report = cluster.up(topology, fsync=False if args.no_fsync else None)
    print(phases_table(report))
    statuses = cluster.status()
    print(status_table(statuses))
    print(metrics_table(statuses))
    print(f"etcd cluster id: {cluster.state().etcd_cluster_id or '-'}")
    print(f"client configuration: {cluster.client_config_path}")
    print(f"prometheus scrape configuration: {cluster.layout.prometheus_config}")
    print(f"up in {time.monotonic() - started:.1f} s (fsync {'on' if report.fsync else 'off'})")
    return 0


def _status(cluster: Cluster, args: argparse.Namespace, started: float) -> int:
    statuses = cluster.status()
    print(status_table(statuses))
    print(f"\netcd cluster id: {cluster.state().etcd_cluster_id or '-'}")
    if args.metrics:
        print(f"\n{metrics_table(statuses)}")
    return 0


def _etcdctl(cluster: Cluster, args: argparse.Namespace, started: float) -> int:
    args_ = list(args.args)
    if args_[:1] == ["--"]:
        args_ = args_[1:]
    return cluster.etcdctl(*args_, members=args.member, capture=False, timeout=None).returncode


def _maintain(cluster: Cluster, args: argparse.Namespace, started: float) -> int:
    print("\n".join(etcd_maintain.report_lines(cluster.maintain(defrag=args.defrag))))
    return 0


def _rebind_account(cluster: Cluster, args: argparse.Namespace, started: float) -> int:
    key = account_rebind.parse_public_key(args.public_key)
    print(account_rebind.report(cluster.rebind_account(args.account, key, replace=args.replace)))
    return 0


def _rotate_fleet(cluster: Cluster, args: argparse.Namespace, started: float) -> int:
    state = cluster.rotate_fleet(args.step, force=args.force, timeout_s=args.timeout)
    if state.target:
        print(f"rotation to epoch {state.target}: done {', '.join(state.done) or '-'}; "
              f"next {state.pending[0]}")  # fmt: skip
    else:
        print(f"fleet epoch {state.epoch}: rotation finished "
              f"({time.monotonic() - started:.1f} s)")  # fmt: skip
    return 0


def _process_command(cluster: Cluster, args: argparse.Namespace, started: float) -> int:
    """down, and the commands on one data centre or one process."""
    command: str = args.command
    if command == "down":
        cluster.down()
        print(f"stopped every process of {cluster.directory}")
    elif command == "kill-dc":
        cluster.kill_dc(args.name)
        print(f"killed data centre {args.name}")
    elif command == "start-dc":
        cluster.start_dc(args.name)
        print(f"data centre {args.name} healthy in {time.monotonic() - started:.1f} s")
    elif command == "crash":
        print(f"killed pid {cluster.crash(args.name)}; its supervisor restarts it")
    else:
        one: dict[str, Callable[[str], object]] = {
            "kill": cluster.kill,
            "start": cluster.start,
            "stop": cluster.stop,
            "stop-process": cluster.stop_process,
            "cont-process": cluster.cont_process,
        }
        one[command](args.name)
    return 0


_COMMANDS: dict[str, Callable[[Cluster, argparse.Namespace, float], int]] = {
    "up": _up,
    "status": _status,
    "etcdctl": _etcdctl,
    "maintain": _maintain,
    "rebind-account": _rebind_account,
    "rotate-fleet": _rotate_fleet,
}


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    handler = _COMMANDS.get(args.command, _process_command)
    return handler(Cluster(args.dir, echo=print), args, started)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except DeployError as exc:
        print(f"bkv-cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
