"""`bkv-bench`: load-test a Backup Key Vault cluster through the real client library.

    bkv-bench --cluster-up [--dir DIR] [--nodes-per-dc N | --nodes N] [--fsync/--no-fsync]
              [--event-loop uvloop|asyncio] [--etcd-gomaxprocs N]
              --mix recover=80,register=10,wrong=5,delete=5 --concurrency 8 --duration 30
              --ksf fast [--rate R] [--ceilings] [--out results]
    bkv-bench --config client.toml --count 1000 ...

Closed loop by default (`--concurrency` workers, each with one operation in flight); open loop
with `--rate R` (operations start at fixed intervals; latency counts from the scheduled start).
Writes OUT/<timestamp>/bench.json and bench.png and prints a table per operation. With
`--ceilings`, the cluster's recovery rate is also given as a fraction of each ceiling measured in
the same run, among them the same path with its work taken out (`bkv_bench.shape_server`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bkv_bench import ceilings as ceil
from bkv_bench import report
from bkv_bench.calls import CallMeter, CallsCounted, calls_text
from bkv_bench.config import DEFAULT_MIX, BenchConfig, BenchConfigError, Mix
from bkv_bench.cpu import CpuMeter, CpuUsed, cpu_text
from bkv_bench.floor import Floor, floor_text, measure_floor
from bkv_bench.histogram import Recorder
from bkv_bench.loops import Budget, closed_loop, open_loop
from bkv_bench.plot import plot
from bkv_bench.result import BenchResult, BenchRun, ClusterFacts, Pools, RunConfig, Setup
from bkv_bench.topology import BENCH_NODES_PER_DC, bench_topology
from bkv_bench.workload import BenchSetupError, Workload, pool_sizes
from client.config import load_config
from client.errors import VaultError
from deploy.cluster import Cluster
from deploy.errors import DeployError
from deploy.topology import (
    ETCD_GOMAXPROCS_MAX,
    default_topology_path,
    load_topology,
)
from etcd_client import EtcdClientConfig, EtcdTls
from vault_common.event_loop import add_event_loop_option, run_on
from vault_common.tasks import cancel_and_wait

MAX_DURATION_OPS = 10_000_000

Clock = Callable[[], float]


def _mark(text: str) -> tuple[float, str]:
    at, sep, label = text.partition(":")
    try:
        return float(at), (label if sep else "fault")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mark wants SECONDS:LABEL, not {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bkv-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _cluster_args(p)
    _etcd_args(p)
    _load_args(p)
    _ceiling_args(p)
    p.add_argument(
        "--mark",
        type=_mark,
        action="append",
        default=[],
        help="SECONDS:LABEL, a fault to mark on the plot (repeatable)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results"))
    return p


def _cluster_args(p: argparse.ArgumentParser) -> None:
    """Which cluster: a running one (--config) or one started for the run (--cluster-up)."""
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", type=Path, help="client.toml of a running cluster")
    target.add_argument(
        "--cluster-up",
        action="store_true",
        help="start a local cluster for the run and stop it afterwards",
    )
    p.add_argument("--dir", type=Path, help="cluster directory for --cluster-up (default: temp)")
    p.add_argument("--topology", type=Path, help="topology TOML for --cluster-up")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--nodes-per-dc",
        type=int,
        help="vault nodes per data centre (default: 1 with the bundled topology, else the "
        "topology's own)",
    )
    size.add_argument("--nodes", type=int, help="vault nodes in all, spread over the DCs")
    p.add_argument(
        "--keep-limits",
        action="store_true",
        help="keep the topology's frontend rate limits (default: raised)",
    )
    p.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="etcd fsync for --cluster-up (default: the topology's, on)",
    )
    add_event_loop_option(
        p,
        "asyncio loop of the load generator and, with --cluster-up, of the cluster's "
        "nodes and frontends (default uvloop)",
    )
    p.add_argument(
        "--etcd-gomaxprocs",
        type=int,
        help="with --cluster-up: GOMAXPROCS of each etcd member (0 = Go's default; default: the "
        "topology's options.etcd_gomaxprocs)",
    )


def _etcd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--etcd",
        help="etcd endpoints host:port,... for --ceilings with --config, with --etcd-ca, "
        "--etcd-cert and --etcd-key (an identity allowed to write under /bkv-bench/); default: "
        "the cluster directory holding client.toml, with its admin identity",
    )
    p.add_argument("--etcd-ca", help="with --etcd: the CA of etcd's member certificates")
    p.add_argument("--etcd-cert", help="with --etcd: the etcd client certificate to dial with")
    p.add_argument("--etcd-key", help="with --etcd: its private key")


def _load_args(p: argparse.ArgumentParser) -> None:
    """The workload: mix, concurrency or rate, how long, how many accounts."""
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"operation weights (default {DEFAULT_MIX})")
    p.add_argument("--concurrency", type=int, default=8)
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--duration", type=float, help="seconds to run")
    amount.add_argument("--count", type=int, help="operations to run")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="hard stop of the measured phase (default 600)",
    )
    p.add_argument("--accounts", type=int, default=64)
    p.add_argument("--ksf", choices=("fast", "default"), default="fast")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: operations per second")
    p.add_argument(
        "--max-inflight",
        type=int,
        default=1024,
        help="open loop: operations in flight before new ones are dropped",
    )


def _ceiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ceilings",
        action="store_true",
        help="also measure the machine's ceilings: etcd CAS, gRPC, server crypto, and the "
        "recovery path without its work (needs the etcd endpoints)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="measure the floor (the work a recovery cannot do without: bkv_bench.floor) and "
        "the etcd CAS ceiling it takes etcd's part from; bench.json floor, cpu_efficiency "
        "(implied by --ceilings)",
    )
    p.add_argument("--ceiling-seconds", type=float, default=3.0)


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The validated BenchConfig (BenchConfigError listing every problem)."""
    problems: list[str] = []
    try:
        mix = Mix.parse(args.mix)
    except BenchConfigError as err:
        problems.append(str(err))
        mix = Mix.parse("recover=1")
    config = BenchConfig(
        mix=mix,
        concurrency=args.concurrency,
        count=args.count or 0,
        duration_s=args.duration or 0.0,
        max_seconds=args.max_seconds,
        accounts=args.accounts,
        ksf=args.ksf,
        rate=args.rate,
        ceilings=args.ceilings,
        floor=args.floor or args.ceilings,
        ceiling_seconds=args.ceiling_seconds,
        seed=args.seed,
        marks=tuple(args.mark),
    )
    problems += config.problems()
    if args.max_inflight < 1:
        problems.append("max-inflight must be at least 1")
    if not args.cluster_up:
        for flag, value in (
            ("--dir", args.dir),
            ("--topology", args.topology),
            ("--nodes-per-dc", args.nodes_per_dc),
            ("--nodes", args.nodes),
            ("--fsync/--no-fsync", args.fsync),
            ("--etcd-gomaxprocs", args.etcd_gomaxprocs),
        ):
            if value is not None:
                problems.append(f"{flag} only applies with --cluster-up")
    for flag, value in (("--nodes-per-dc", args.nodes_per_dc), ("--nodes", args.nodes)):
        if value is not None and value < 1:
            problems.append(f"{flag} must be at least 1")
    if args.etcd_gomaxprocs is not None and not 0 <= args.etcd_gomaxprocs <= ETCD_GOMAXPROCS_MAX:
        problems.append(
            f"--etcd-gomaxprocs must be between 0 (Go's default) and {ETCD_GOMAXPROCS_MAX}"
        )
    if problems:
        raise BenchConfigError("; ".join(problems))
    return config


class Progress:
    """A live line on a terminal: operations done, current rate, errors."""

    def __init__(self, recorder: Recorder, stream: TextIO, clock: Any = time.monotonic) -> None:
        self._recorder = recorder
        self._stream = stream
        self._clock = clock

    async def run(self, every_s: float = 1.0) -> None:
        last_total, last_t = 0, self._clock()
        while True:
            await asyncio.sleep(every_s)
            now, total = self._clock(), self._recorder.total
            rate = (total - last_total) / max(1e-9, now - last_t)
            last_total, last_t = total, now
            self._stream.write(
                f"\r{now - self._recorder.start:6.0f} s  {total:8d} ops  {rate:8.1f} ops/s now  "
                f"{self._recorder.total_errors:6d} errors"
            )
            self._stream.flush()


async def run_bench(
    config: BenchConfig,
    client_toml: Path,
    *,
    etcd: EtcdClientConfig | None,
    max_inflight: int,
    progress: TextIO | None,
    echo: Any,
    cpu: CpuMeter | None = None,
    shape: ceil.PathShape | None = None,
    calls: CallMeter | None = None,
) -> BenchRun:
    """Setup, measured phase, ceilings, cleanup."""
    client_config = load_config(client_toml)
    clock = time.monotonic
    recorder = Recorder(start=clock())
    with tempfile.TemporaryDirectory(prefix="bkv-bench-keys-") as key_dir:
        workload = Workload(client_config, Path(key_dir), ksf=config.ksf, recorder=recorder)
        try:
            setup = await _setup(workload, config, echo, clock)
            elapsed, used, counted = await _measured_phase(
                workload, config, recorder, max_inflight, progress, (cpu, calls), clock
            )
        finally:
            failed = await workload.cleanup()
            if failed:
                echo(f"cleanup: {failed} bench accounts could not be deleted")
    shape = shape or ceil.PathShape()
    measured = await _ceilings(config, etcd, shape, echo)
    floor = await _floor(config, measured, echo)
    return BenchRun(
        summaries=tuple(recorder.summary(op, elapsed) for op in recorder.ops()),
        combined=recorder.combined(elapsed),
        elapsed_s=elapsed,
        series=tuple(recorder.series(elapsed)),
        substituted=dict(recorder.substituted),
        setup=setup,
        ceilings=tuple(measured),
        pools=Pools(*pool_sizes(config.accounts, config.mix)),
        cpu=used,
        floor=floor,
        calls=counted,
    )


async def _setup(workload: Workload, config: BenchConfig, echo: Any, clock: Clock) -> Setup:
    """Register the run's accounts (not measured)."""
    setup_started = clock()
    echo(f"setup: registering {config.accounts} accounts (not measured)")
    await workload.setup(config.accounts, config.mix, config.concurrency)
    setup = Setup(
        accounts_registered=len(workload.accounts),
        failures=workload.setup_failures,
        seconds=round(clock() - setup_started, 3),
    )
    echo(f"setup: {len(workload.accounts)} accounts in {setup.seconds} s; measuring")
    return setup


async def _measured_phase(
    workload: Workload,
    config: BenchConfig,
    recorder: Recorder,
    max_inflight: int,
    progress: TextIO | None,
    meters: tuple[CpuMeter | None, CallMeter | None],
    clock: Clock,
) -> tuple[float, CpuUsed | None, CallsCounted | None]:
    """The closed or open loop until the budget is spent: (elapsed seconds, CPU used, the
    nodes' calls counted)."""
    cpu, calls = meters
    rng = random.Random(config.seed)  # picks operations, not secrets
    if calls is not None:
        calls.start()  # before the phase and the CPU meter start (read after both end): the
        # scrapes' own time and CPU, in the nodes and here, stay out of the phase's figures
    recorder.start = start = clock()
    if cpu is not None:
        cpu.start()
    if config.count:
        budget = Budget(config.count, start + config.max_seconds)
    else:
        budget = Budget(MAX_DURATION_OPS, start + min(config.duration_s, config.max_seconds))
    ticker = asyncio.create_task(Progress(recorder, progress).run()) if progress else None
    try:
        if config.mode == "open":
            await open_loop(
                config.rate,
                budget,
                lambda: config.mix.choose(rng),
                workload.execute,
                abandon=workload.abandon,
                max_inflight=max_inflight,
                clock=clock,
            )
        else:
            await closed_loop(
                config.concurrency,
                budget,
                lambda: config.mix.choose(rng),
                workload.execute,
                abandon=workload.abandon,
                clock=clock,
            )
    finally:
        if ticker is not None and progress is not None:
            await cancel_and_wait(ticker)
            progress.write("\n")
    elapsed = clock() - start
    used = cpu.stop() if cpu is not None else None
    return elapsed, used, (calls.stop() if calls is not None else None)


async def _ceilings(
    config: BenchConfig, etcd: EtcdClientConfig | None, shape: ceil.PathShape, echo: Any
) -> list[ceil.Ceiling]:
    """The machine's ceilings after the measured phase (none without --ceilings)."""
    measured: list[ceil.Ceiling] = []
    if not (config.ceilings or config.floor):
        return measured
    if config.ceilings:
        echo("ceilings: etcd CAS, gRPC, crypto, the recovery path without its work")
    if etcd is not None:
        measured.append(
            await ceil.etcd_cas_ceiling(
                etcd, config.concurrency, config.ceiling_seconds, shape.etcd_pids
            )
        )
    else:
        echo("ceilings: no etcd endpoints known (pass --etcd): skipping the CAS ceiling")
    if not config.ceilings:
        return measured  # --floor alone: the CAS ceiling for etcd's CPU per transaction
    measured.append(await ceil.grpc_ceiling(config.concurrency, config.ceiling_seconds))
    measured.append(ceil.crypto_ceiling(config.ceiling_seconds))
    if etcd is not None:
        measured.append(
            await ceil.shape_ceiling(etcd, config.concurrency, config.ceiling_seconds, shape)
        )
    return measured


async def _floor(config: BenchConfig, ceilings: Sequence[ceil.Ceiling], echo: Any) -> Floor | None:
    """The floor of one recovery, measured now (None without --floor or --ceilings)."""
    if not config.floor:
        return None
    echo("floor: the work a recovery cannot do without (token, OPAQUE, client, etcd)")
    cas = next((c for c in ceilings if c.name == "etcd_cas"), None)
    etcd_ms = cas.notes.get("etcd_cpu_ms_per_txn") if cas is not None else None
    seconds = min(config.ceiling_seconds, 2.0)
    return await asyncio.to_thread(measure_floor, seconds, etcd_ms, config.ksf)


def etcd_config(args: argparse.Namespace, cluster: Cluster | None) -> EtcdClientConfig | None:
    """How the ceilings dial etcd: `--etcd` with the identity flags, else the cluster's admin."""
    if args.etcd:
        missing = [f for f in ("etcd_ca", "etcd_cert", "etcd_key") if not getattr(args, f)]
        if missing:
            flags = ", ".join("--" + f.replace("_", "-") for f in missing)
            raise BenchConfigError(f"--etcd needs {flags} (etcd admits no anonymous client)")
        return EtcdClientConfig(
            endpoints=tuple(args.etcd.split(",")),
            tls=EtcdTls(ca=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key),
        )
    if cluster is None:
        return None
    identity = cluster.etcd_identity()
    return EtcdClientConfig(
        endpoints=tuple(cluster.etcd_endpoints()),
        tls=EtcdTls(ca=str(identity.ca), cert=str(identity.cert), key=str(identity.key)),
    )


def cluster_facts(cluster: Cluster | None) -> ClusterFacts:
    """fsync, node/frontend/etcd counts and limits of a cluster directory, if there is one."""
    if cluster is None or not cluster.exists():
        return ClusterFacts()
    state = cluster.state()
    t = state.topology
    return ClusterFacts(
        fsync=state.fsync,
        nodes=len(t.nodes),
        frontends=len(t.frontends),
        etcd_members=len(t.etcd),
        frontend_peer_rate_per_s=t.limits.peer_rate_per_s,
        cluster_event_loop=t.options.event_loop,
        etcd_gomaxprocs=t.options.etcd_gomaxprocs,
        known=True,
    )


def cluster_pids(cluster: Cluster | None) -> dict[str, list[int]]:
    """The running cluster processes' PIDs by role (etcd, node, frontend), for the CPU meter."""
    pids: dict[str, list[int]] = {}
    for role, pid, _ in cluster_processes(cluster):
        pids.setdefault(role, []).append(pid)
    return pids


def cluster_processes(cluster: Cluster | None) -> list[tuple[str, int, str]]:
    """(role, PID, name) of every running cluster process; a witness node's name says so
    (`dc-a-node-1 (witness)`), so that bench.json's CPU by process tells witnesses apart."""
    if cluster is None or not cluster.exists():
        return []
    witnesses = set(cluster.witness_nodes())
    out: list[tuple[str, int, str]] = []
    for proc in cluster.state().processes:
        pid = cluster.child_pid(proc.name)
        if pid:
            name = f"{proc.name} (witness)" if proc.name in witnesses else proc.name
            out.append((proc.role, pid, name))
    return out


def node_metrics(cluster: Cluster) -> dict[str, str]:
    """Vault node name -> host:port of its metrics endpoint (the call counts' source)."""
    if not cluster.exists():
        return {}
    nodes = {n.name for n in cluster.topology.nodes}
    return {name: a for name, a in cluster.metrics_addresses().items() if name in nodes and a}


def out_dir(base: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def cluster_for(args: argparse.Namespace, echo: Any) -> Iterator[tuple[Path, Cluster | None]]:
    """(client.toml, cluster) for the run: the given config, or a cluster started and stopped."""
    if not args.cluster_up:
        directory = args.config.resolve().parent
        cluster = Cluster(directory)
        yield args.config, (cluster if cluster.exists() else None)
        return
    temp = None if args.dir else tempfile.mkdtemp(prefix="bkv-bench-cluster-")
    cluster = Cluster(args.dir or Path(temp or "."), echo=echo)
    base = load_topology(args.topology or default_topology_path())
    nodes_per_dc = args.nodes_per_dc
    if nodes_per_dc is None and args.nodes is None and args.topology is None:
        nodes_per_dc = BENCH_NODES_PER_DC  # the bench's layout (bkv_bench.topology)
    topology = bench_topology(
        base,
        nodes_per_dc=nodes_per_dc,
        nodes=args.nodes,
        keep_limits=args.keep_limits,
        event_loop=args.event_loop,
        etcd_gomaxprocs=args.etcd_gomaxprocs,
    )
    try:
        echo(f"cluster: starting {len(topology.nodes)} vault nodes in {cluster.directory}")
        cluster.up(topology, fsync=args.fsync)
        yield cluster.client_config_path, cluster
    finally:
        if cluster.exists():
            echo("cluster: stopping")
            cluster.down()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = bench_config(args)
        etcd_config(args, None)  # the --etcd flags, checked before anything starts
    except BenchConfigError as err:
        print(f"bkv-bench: {err}", file=sys.stderr)
        return 2
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        measured = _run_on_cluster(args, config)
    except (DeployError, VaultError, BenchSetupError, OSError) as err:
        print(f"bkv-bench: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if isinstance(measured, int):
        return measured
    run, facts = measured
    result = report.build(
        config=run_config(args, config, facts, run.pools),
        summaries=run.summaries,
        combined=run.combined,
        elapsed_s=run.elapsed_s,
        series=run.series,
        substituted=run.substituted,
        setup=run.setup,
        ceilings=run.ceilings,
        marks=config.marks,
        started_at=started_at,
        cpu=run.cpu,
        calls=run.calls,
        floor=run.floor,
    )
    write_and_print(args.out, result, config)
    return 0


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_on_cluster(
    args: argparse.Namespace, config: BenchConfig
) -> tuple[BenchRun, ClusterFacts] | int:
    """The run against the given or started cluster; an exit code if --ceilings cannot run."""
    with cluster_for(args, _echo) as (client_toml, cluster):
        facts = cluster_facts(cluster)
        pids = cluster_pids(cluster)
        shape = ceil.PathShape(
            relays=facts.frontends or ceil.PathShape.relays,
            stores=facts.nodes or ceil.PathShape.stores,
            etcd_pids=tuple(pids.get("etcd", ())),
        )
        problems = shape.validate() if config.ceilings else []
        if problems:  # before the run, not after it: the ceilings come last
            print(f"bkv-bench: --ceilings on this cluster: {'; '.join(problems)}", file=sys.stderr)
            return 2
        run = run_on(
            args.event_loop,
            run_bench(
                config,
                client_toml,
                etcd=etcd_config(args, cluster),
                max_inflight=args.max_inflight,
                progress=sys.stderr if sys.stderr.isatty() else None,
                echo=_echo,
                cpu=CpuMeter(pids, names={pid: n for _, pid, n in cluster_processes(cluster)}),
                shape=shape,
                calls=CallMeter(node_metrics(cluster)) if cluster is not None else None,
            ),
        )
    return run, facts


def run_config(
    args: argparse.Namespace, config: BenchConfig, facts: ClusterFacts, pools: Pools
) -> RunConfig:
    """bench.json's `config`: the settings of the run and the facts of its cluster."""
    return RunConfig(
        mode=config.mode,
        mix=config.mix.text(),
        concurrency=config.concurrency,
        rate_per_s=config.rate or None,
        max_inflight=args.max_inflight if config.mode == "open" else None,
        count=config.count or None,
        duration_s=config.duration_s or None,
        accounts=config.accounts,
        pools=pools,
        ksf=config.ksf,
        cluster="cluster-up" if args.cluster_up else str(args.config),
        facts=facts,
        frontend_limits_raised=bool(args.cluster_up and not args.keep_limits),
        ceiling_seconds=config.ceiling_seconds if config.ceilings else None,
        seed=config.seed,
        event_loop=args.event_loop,
    )


def write_and_print(base: Path, result: BenchResult, config: BenchConfig) -> None:
    """bench.json and bench.png under a new OUT/<timestamp>/, and the tables on stdout."""
    out = out_dir(base)
    report.write_json(out / "bench.json", result)
    facts = result.config.facts
    fsync = {True: "on", False: "off", None: "unknown"}[facts.fsync]
    plot(
        out / "bench.png",
        list(result.series),
        marks=config.marks,
        title=f"bkv-bench {config.mode} loop, {config.mix.text()}, fsync {fsync}, "
        f"{facts.nodes or '?'} nodes, ksf {config.ksf}",
    )
    print(
        f"{config.mode} loop, fsync {fsync}, {facts.nodes or '?'} vault nodes, "
        f"concurrency {config.concurrency}, ksf {config.ksf}, {result.elapsed_s:.1f} s"
    )
    print(report.table(result.ops, result.total))
    if result.substituted:
        print(
            "substituted (re-registrations): "
            + ", ".join(f"{k} {v}" for k, v in result.substituted.items())
        )
    doc = result.to_json()
    if "cpu" in doc:
        print(cpu_text(doc["cpu"]))
    if "calls_per_op" in doc:
        print(calls_text(doc["calls_per_op"]))
    if result.floor is not None:
        print(floor_text(result.floor, doc.get("cpu_efficiency")))
    text = report.ceilings_text(result)
    if text:
        print(text)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


if __name__ == "__main__":
    sys.exit(main())
