"""One chaos run against a running cluster: load + faults, then the offline check.

    result = run_chaos(ChaosConfig(client_config=Path("cluster/client.toml"),
                                   cluster_dir=Path("cluster"), scenarios="kill-dc",
                                   duration_s=20, seed=1, out_dir=Path("results")))
    result.exit_code   # 0 only when every invariant has zero violations

Steps: proxies in front of every frontend (the load goes through them; `slow-link` turns them
bad); accounts created; the run's clock starts; workers, the prober and the fault timeline run;
the load stops; every fault is healed (`start_all`, which also resumes stopped processes); one
`final_recover` per account that must keep its key; then run.json, the audit tails, the etcd dump
and the logs go to `bkv_chaos.verdict.check_run`, and the verdict and a plot are written
under `out_dir/<timestamp>/`. Temporary account keys live in a temp dir removed at the end.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bkv_chaos import collect, verdict
from bkv_chaos.faults import FaultContext, Timeline, run_timeline
from bkv_chaos.history import (
    FAULTS_FILE,
    HISTORY_FILE,
    RUN_FILE,
    Fault,
    JsonlWriter,
    RunInfo,
    write_run_info,
)
from bkv_chaos.load import (
    LoadConfig,
    LoadWorkers,
    client_factory,
    final_recover,
    load_client_config,
    make_cast,
    setup_cast,
)
from bkv_chaos.netns import NetnsLab
from bkv_chaos.plot import plot_run
from bkv_chaos.probes import Prober, ProbeTargets
from bkv_chaos.proxy import LinkFault, LinkProxy
from bkv_chaos.recorder import Recorder, RunClock
from bkv_chaos.scenarios import parse_scenarios
from bkv_chaos.verdict import Verdict
from client.config import load_config, load_fleet_key
from deploy.cluster import Cluster

VERDICT_FILE = "verdict.json"
PLOT_FILE = "throughput.png"


@dataclass(frozen=True)
class ChaosConfig:
    """One run. `duration_s` is split evenly between the scenarios (one slot each)."""

    client_config: Path
    cluster_dir: Path
    scenarios: str
    duration_s: float
    seed: int = 0
    out_dir: Path = Path("results")
    load: LoadConfig = field(default_factory=LoadConfig)
    probe_interval_s: float = 0.25
    wire_probes: bool = True  # send non-protobuf request bytes too (see bkv_chaos.probes)
    grace_s: float = 0.5
    stop_timeout_s: float = 20.0

    def problems(self) -> list[str]:
        out = []
        if not self.client_config.is_file():
            out.append(f"no client config {self.client_config}")
        if not (self.cluster_dir / "cluster.json").is_file():
            out.append(f"no cluster in {self.cluster_dir} (no cluster.json)")
        try:
            parse_scenarios(self.scenarios)
        except ValueError as err:
            out.append(str(err))
        if not 1 <= self.duration_s <= 24 * 3600:
            out.append("duration must be in 1..86400 seconds")
        if self.probe_interval_s <= 0:
            out.append("probe_interval_s must be > 0")
        try:
            self.load.validate()
        except ValueError as err:
            out.append(str(err))
        return out

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    verdict: Verdict
    exit_code: int
    skipped: tuple[str, ...]
    problems: tuple[str, ...]  # process problems at the end (crashes, dead processes)


def new_run_dir(out_dir: Path, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        path = out_dir / (f"{stamp}-s{seed}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot make a fresh run directory under {out_dir}")


class _ProbeThread:
    def __init__(self, prober: Prober, interval_s: float) -> None:
        self._prober = prober
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._prober.step()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)


def run_chaos(
    config: ChaosConfig,
    echo: Callable[[str], None] = print,
    *,
    network: NetnsLab | None = None,
    peer_proxies: Sequence[LinkProxy] = (),
) -> RunResult:
    """Run `config`. `network`: the namespaces the cluster's DCs run in (for `partition-dc`);
    `peer_proxies`: proxies on etcd peer links (for `slow-link`); both owned by the caller."""
    config.validate()
    run = _ChaosRun(config, echo, network, peer_proxies)
    try:
        ctx, watch, offsets = run.start_load()
        faults = run.inject_faults(ctx)
        return run.judge(ctx, watch, offsets, faults)
    finally:
        run.close()


class _ChaosRun:
    """One run's moving parts, in the order `run_chaos` steps through them; `close()` releases
    whatever was started, however far the run got."""

    def __init__(
        self,
        config: ChaosConfig,
        echo: Callable[[str], None],
        network: NetnsLab | None,
        peer_proxies: Sequence[LinkProxy],
    ) -> None:
        self.config, self.echo = config, echo
        self.network, self.peer_proxies = network, peer_proxies
        self.rng = random.Random(config.seed)
        self.cluster = Cluster(config.cluster_dir)
        self.scenarios = parse_scenarios(config.scenarios)
        self.run_dir = new_run_dir(config.out_dir, config.seed)
        echo(f"bkv-chaos: {config.scenarios} for {config.duration_s:.0f}s, seed {config.seed}")
        echo(f"results: {self.run_dir}")
        self.base = load_config(config.client_config)
        self.proxies = [
            LinkProxy((host, int(port)), rng=random.Random(self.rng.getrandbits(64)))
            for host, port in (fe.rsplit(":", 1) for fe in self.base.frontends)
        ]
        self.keys = Path(tempfile.mkdtemp(prefix="bkv-chaos-keys-"))
        self.stop = threading.Event()
        self.writer = JsonlWriter(self.run_dir / HISTORY_FILE)
        self.fault_writer = JsonlWriter(self.run_dir / FAULTS_FILE)
        self.recorder = Recorder(self.writer, RunClock())
        self.clock = RunClock()
        self.cast: Any = None
        self.prober: Prober | None = None
        self.workers: LoadWorkers | None = None
        self.probes: _ProbeThread | None = None

    def start_load(self) -> tuple[FaultContext, collect.ProcessWatch, dict[str, int]]:
        """Proxies, accounts and prober ready, every process healthy; then the clock starts and
        the load with it. Returns the fault context, the process watch and the audit offsets."""
        config, cluster, rng = self.config, self.cluster, self.rng
        for proxy in self.proxies:
            proxy.start()
        load_cfg = load_client_config(self.base, config.load, [p.address for p in self.proxies])
        make_client = client_factory(load_cfg, self.keys, config.load)
        cluster.start_all()  # every process up and healthy before the clock starts
        # Account ids must be new on every run (a cluster binds an id to its first key), so
        # the tag is not drawn from the seeded rng.
        tag = os.urandom(4).hex()
        self.cast = make_cast(config.load, self.recorder, make_client, rng, tag)
        setup_cast(self.cast, self.stop)
        self.prober = _make_prober(
            cluster, self.base, self.recorder, rng, self.keys, tag, self.cast, config.wire_probes
        )
        offsets = collect.audit_offsets(cluster)
        watch = collect.ProcessWatch.take(cluster)
        # The history's zero: from here on every time is relative to it.
        self.clock = RunClock()
        self.recorder.clock = self.clock
        self.workers = LoadWorkers(self.cast, config.load)
        self.probes = _ProbeThread(self.prober, config.probe_interval_s)
        self.workers.start()
        self.probes.start()
        ctx = FaultContext(
            cluster=cluster, recorder=self.recorder, rng=rng, proxies=self.proxies,
            stop=self.stop, echo=self.echo,
            lease_ttl_s=float(cluster.topology.options.lease_ttl_s),
            peer_proxies=self.peer_proxies, network=self.network, client_factory=make_client,
            run_dir=self.run_dir,
        )  # fmt: skip
        return ctx, watch, offsets

    def inject_faults(self, ctx: FaultContext) -> Sequence[Fault]:
        """The fault timeline; then the load stops and every fault is healed."""
        timeline = Timeline(slot_s=self.config.duration_s / len(self.scenarios))
        try:
            return run_timeline(self.scenarios, timeline, ctx, self.fault_writer)
        finally:
            self._heal()

    def _heal(self) -> None:
        assert self.probes is not None and self.workers is not None
        self.probes.stop(self.config.stop_timeout_s)
        if not self.workers.stop(self.config.stop_timeout_s):
            self.echo("WARNING: a load worker did not stop in time")
        for proxy in (*self.proxies, *self.peer_proxies):
            proxy.set_fault(LinkFault())
        if self.network is not None:
            for dc in sorted(self.network.partitioned):
                self.network.heal(dc)
        self.cluster.start_all()

    def judge(
        self,
        ctx: FaultContext,
        watch: collect.ProcessWatch,
        offsets: dict[str, int],
        faults: Sequence[Fault],
    ) -> RunResult:
        """Final recoveries, the run's files collected, the offline check, verdict and plot."""
        cluster, run_dir = self.cluster, self.run_dir
        self.echo(f"[{self.clock.now():7.2f}s] load stopped; final recoveries")
        final_recover(self.cast)
        problems = watch.problems(cluster)
        for problem in problems:
            self.echo(f"PROCESS PROBLEM: {problem}")
        write_run_info(run_dir / RUN_FILE, RunInfo(self.clock.start_unix, not problems))
        collect.copy_audit_tails(cluster, offsets, run_dir)
        etcd_values = collect.etcd_dump(cluster)
        if etcd_values is None:
            self.echo("WARNING: no etcd member answered the dump: etcd values unchecked")
        self.fault_writer.close()
        self.writer.close()
        result = verdict.check_run(
            run_dir, self.recorder.secrets(), etcd_values or [], collect.log_files(cluster),
            grace_s=self.config.grace_s,
        )  # fmt: skip
        verdict.write_verdict(run_dir / VERDICT_FILE, result)
        title = f"bkv-chaos {self.config.scenarios}"
        plot_run(self.recorder.ops(), faults, run_dir / PLOT_FILE, title)
        verdict.print_verdict(result)
        if ctx.skipped:
            self.echo("skipped: " + "; ".join(ctx.skipped))
        if self.recorder.unexpected:
            unexpected = ", ".join(sorted(set(self.recorder.unexpected)))
            self.echo("unexpected exceptions in the load: " + unexpected)
        return RunResult(
            run_dir, result, verdict.exit_code(result), tuple(ctx.skipped), tuple(problems)
        )

    def close(self) -> None:
        self.stop.set()
        if self.prober is not None:
            self.prober.close()
        if self.cast is not None:
            for actor in self.cast.all:
                actor.close()
        for proxy in self.proxies:
            proxy.stop()
        self.fault_writer.close()
        self.writer.close()
        shutil.rmtree(self.keys, ignore_errors=True)


def _make_prober(
    cluster: Cluster,
    base: Any,
    recorder: Recorder,
    rng: random.Random,
    keys: Path,
    tag: str,
    cast: Any,
    wire: bool,
) -> Prober:
    state = cluster.state()
    pki = cluster.layout.pki
    fe_name = state.topology.frontends[0].name
    targets = ProbeTargets(
        frontends=tuple(base.frontends),
        nodes=tuple((p.name, p.address) for p in state.processes if p.role == "node"),
        ca_cert=pki.cluster_ca.cert,
        frontend_client_cert=pki.frontend_client(fe_name).cert,
        frontend_client_key=pki.frontend_client(fe_name).key,
        server_name=base.server_name,
    )
    return Prober(
        targets, load_fleet_key(base), recorder, random.Random(rng.getrandbits(64)), keys,
        f"chaos-{tag}-probe", [a.account for a in cast.good], wire=wire,
    )  # fmt: skip
