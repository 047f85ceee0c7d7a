"""The performance curves of issue 6 in one command: throughput and latency against clients and
against vault nodes, and the latency at a fraction of the peak in open loop.

    python -m bkv_bench.curves --cluster-up [--fsync] [--clients 1,2,4,8,16,32,64]
        [--nodes 1,2,4,6] [--node-clients 8] (--seconds 10 | --count K)
        [--open-loop-fraction 0.5] [--ksf fast] [--node-ceilings 5] [--out results]
    python -m bkv_bench.curves --config client.toml --nodes none --seconds 10

Every point is one `bkv-bench` run (`bkv_bench.cli.main`, mix `recover=100`), each bounded by
its own duration or count; each run's bench.json and bench.png stay under
`OUT/<timestamp>/runs/`. Steps:

1. the client sweep, closed loop, on one cluster (the given one, or one started for it);
2. an open-loop run at `--open-loop-fraction` of the sweep's peak throughput (latency counted from
   the scheduled start, so no coordinated omission), checked against the 50 ms p99 target;
3. the node sweep: a cluster of N vault nodes started and stopped for each N (`--cluster-up
   --nodes N`), at `--node-clients` clients; with `--node-ceilings S` each of those runs also
   measures the ceilings for S seconds, among them the recovery path without its work with N
   stores (`bkv-bench --ceilings`), so that the cluster's node curve stands beside the curve the
   plumbing alone allows on the same machine.

Writes `OUT/<timestamp>/curves.json` and `curves.png`, and prints a table. No figure is asserted:
the machine is shared and noisy, so the curves are a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

from bkv_bench import cli

P99_TARGET_MS = 50.0
MAX_CLIENTS = 1024
MAX_NODES = 64

BenchMain = Callable[[Sequence[str]], int]


class CurvesError(Exception):
    """Bad arguments, or a bench run that failed (the message says which)."""


@dataclass(frozen=True)
class CurvesConfig:
    """What to sweep. Exactly one of `seconds` and `count` sizes every run."""

    clients: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    nodes: tuple[int, ...] = (1, 2, 4, 6)
    node_clients: int = 8
    seconds: float | None = 10.0
    count: int | None = None
    open_loop_fraction: float = 0.5
    ksf: str = "fast"
    accounts: int = 64
    node_ceiling_seconds: float | None = None  # None: the node sweep measures no ceilings

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise CurvesError naming every problem at once."""
        problems: list[str] = []
        if not self.clients:
            problems.append("--clients needs at least one value")
        if any(not 1 <= c <= MAX_CLIENTS for c in self.clients):
            problems.append(f"--clients values must be in 1..{MAX_CLIENTS}")
        if any(not 1 <= n <= MAX_NODES for n in self.nodes):
            problems.append(f"--nodes values must be in 1..{MAX_NODES}")
        if not 1 <= self.node_clients <= MAX_CLIENTS:
            problems.append(f"--node-clients must be in 1..{MAX_CLIENTS}")
        if (self.seconds is None) == (self.count is None):
            problems.append("give --seconds or --count")
        if self.seconds is not None and not 0 < self.seconds <= 600:
            problems.append("--seconds must be in (0, 600]")
        if self.count is not None and not 1 <= self.count <= 1_000_000:
            problems.append("--count must be in 1..1000000")
        if not 0 < self.open_loop_fraction <= 1:
            problems.append("--open-loop-fraction must be in (0, 1]")
        if self.ksf not in ("fast", "default"):
            problems.append("--ksf must be fast or default")
        if self.accounts < 1:
            problems.append("--accounts must be at least 1")
        if self.node_ceiling_seconds is not None and not 0 < self.node_ceiling_seconds <= 60:
            problems.append("--node-ceilings must be in (0, 60] seconds")
        if problems:
            raise CurvesError("; ".join(problems))

    def amount(self) -> list[str]:
        """The bench arguments that size one run."""
        if self.count is not None:
            return ["--count", str(self.count)]
        return ["--duration", str(self.seconds)]


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """ "1,2,4" → (1, 2, 4); "none" or "" → ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise CurvesError(f"{what} must be comma-separated integers, got {text!r}") from None


def point(doc: Mapping[str, Any], op: str = "recover") -> dict[str, Any]:
    """One curve point from a bench.json: `op`'s throughput, latency percentiles and, when the
    run could see the cluster's processes, CPU milliseconds per operation over all of them."""
    figures = doc["ops"][op]
    latency = figures["latency_ms"]
    return {
        "count": figures["count"],
        "ok": figures["ok"],
        "errors": dict(figures["errors"]),
        "throughput_per_s": figures["throughput_per_s"],
        **{key: latency[key] for key in ("p50", "p90", "p99", "p999", "max")},
        "cpu_ms_per_op": doc.get("cpu", {}).get("ms_per_op", {}).get("total"),
        **ceiling_point(doc),
    }


def ceiling_point(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The run's fractions of the etcd bound, its own and the work-free path's, when it measured
    the ceilings; nothing otherwise.

    >>> ceiling_point({})
    {}
    >>> ceiling_point({"versus_ceilings": {"etcd": {"fraction_of_bound": 0.17},
    ...     "shape": {"recoveries_bound_per_s": 190.0, "shape_fraction_of_etcd_bound": 0.31}}})
    {'fraction_of_etcd_bound': 0.17, 'shape_per_s': 190.0, 'shape_fraction_of_etcd_bound': 0.31}
    """
    versus = doc.get("versus_ceilings")
    if not versus:
        return {}
    shape = versus.get("shape", {})
    return {
        "fraction_of_etcd_bound": versus.get("etcd", {}).get("fraction_of_bound"),
        "shape_per_s": shape.get("recoveries_bound_per_s"),
        "shape_fraction_of_etcd_bound": shape.get("shape_fraction_of_etcd_bound"),
    }


def peak(points: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The point with the highest throughput."""
    return max(points, key=lambda p: float(p["throughput_per_s"]))


def open_loop_rate(peak_throughput: float, fraction: float) -> float:
    """The open-loop rate for `fraction` of the peak, at least one operation per second.

    >>> open_loop_rate(109.8, 0.5)
    54.9
    """
    return max(1.0, round(peak_throughput * fraction, 1))


class Runner:
    """Runs one bench per point and reads back its bench.json."""

    def __init__(self, out: Path, bench_main: BenchMain = cli.main) -> None:
        self.out = out
        self._main = bench_main

    def run(self, label: str, argv: Sequence[str]) -> dict[str, Any]:
        runs = self.out / "runs" / label
        code = self._main([*argv, "--out", str(runs)])
        if code != 0:
            raise CurvesError(f"bench run {label!r} failed with exit code {code}")
        found = sorted(runs.glob("*/bench.json"))
        if len(found) != 1:
            raise CurvesError(f"bench run {label!r} wrote {len(found)} bench.json files")
        doc: dict[str, Any] = json.loads(found[0].read_text())
        doc["_path"] = str(found[0])
        return doc


def sweep(
    config: CurvesConfig, target: Sequence[str], runner: Runner, cluster_up_args: Sequence[str]
) -> dict[str, Any]:
    """Run every point: the client sweep and the open loop against `target` (["--config",
    client.toml]), the node sweep on clusters started with `cluster_up_args` (fsync, topology)."""
    common = ["--mix", "recover=100", "--ksf", config.ksf, "--accounts", str(config.accounts)]
    result: dict[str, Any] = {"config": asdict(config), "clients": [], "nodes": []}
    for clients in config.clients:
        doc = runner.run(
            f"clients-{clients}",
            [*target, *common, "--concurrency", str(clients), *config.amount()],
        )
        result["clients"].append({"concurrency": clients, **point(doc), "bench_json": doc["_path"]})
        result.setdefault("cluster", doc["config"])
    best = peak(result["clients"])
    rate = open_loop_rate(float(best["throughput_per_s"]), config.open_loop_fraction)
    doc = runner.run(
        "open-loop",
        [*target, *common, "--rate", str(rate), *config.amount()],
    )
    open_point = point(doc)
    result["peak"] = {
        "concurrency": best["concurrency"],
        "throughput_per_s": best["throughput_per_s"],
    }
    result["open_loop"] = {
        "fraction_of_peak": config.open_loop_fraction,
        "rate_per_s": rate,
        **open_point,
        "p99_target_ms": P99_TARGET_MS,
        "p99_target_met": float(open_point["p99"]) < P99_TARGET_MS,
        "bench_json": doc["_path"],
    }
    ceilings = (
        ["--ceilings", "--ceiling-seconds", str(config.node_ceiling_seconds)]
        if config.node_ceiling_seconds is not None
        else []
    )
    for nodes in config.nodes:
        doc = runner.run(
            f"nodes-{nodes}",
            ["--cluster-up", *cluster_up_args, "--nodes", str(nodes), *common,
             "--concurrency", str(config.node_clients), *config.amount(), *ceilings],
        )  # fmt: skip
        result["nodes"].append({"nodes": nodes, **point(doc), "bench_json": doc["_path"]})
    return result


def table(result: Mapping[str, Any]) -> str:
    """The curves as text: one line per point."""
    lines = ["clients  rec/s   p50 ms   p90 ms   p99 ms  p99.9 ms  CPU ms/rec"]
    for p in result["clients"]:
        cpu = p.get("cpu_ms_per_op")
        lines.append(
            f"{p['concurrency']:7d} {p['throughput_per_s']:6.1f} {p['p50']:8.1f} "
            f"{p['p90']:8.1f} {p['p99']:8.1f} {p['p999']:9.1f} "
            + (f"{cpu:11.2f}" if cpu is not None else f"{'-':>11}")
        )
    o = result["open_loop"]
    verdict = "met" if o["p99_target_met"] else "NOT met"
    lines.append(
        f"open loop at {o['rate_per_s']}/s ({o['fraction_of_peak']:.0%} of the peak "
        f"{result['peak']['throughput_per_s']:.1f}/s): p50 {o['p50']:.1f} ms, "
        f"p99 {o['p99']:.1f} ms; target p99 < {P99_TARGET_MS:.0f} ms: {verdict}"
    )
    if result["nodes"]:
        with_shape = any(p.get("shape_per_s") for p in result["nodes"])
        lines.append(
            "nodes  rec/s   p50 ms   p99 ms"
            + ("  of etcd bound  no-work path/s  its share of etcd bound" if with_shape else "")
        )
        for p in result["nodes"]:
            line = f"{p['nodes']:5d} {p['throughput_per_s']:6.1f} {p['p50']:8.1f} {p['p99']:8.1f}"
            if with_shape:
                line += (
                    f"  {_percent(p.get('fraction_of_etcd_bound')):>13}  "
                    f"{p.get('shape_per_s') or 0:14.1f}  "
                    f"{_percent(p.get('shape_fraction_of_etcd_bound')):>23}"
                )
            lines.append(line)
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.1%}"


def plot_curves(path: Path, result: Mapping[str, Any]) -> None:
    """Three panels: rec/s against clients, p50/p99 against clients, rec/s against nodes."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=100)
    try:
        clients = [p["concurrency"] for p in result["clients"]]
        left, middle, right = axes
        left.plot(clients, [p["throughput_per_s"] for p in result["clients"]], marker="o")
        left.set_xscale("log", base=2)
        left.set_xlabel("concurrent clients")
        left.set_ylabel("recoveries / s")
        for key, color in (("p50", "tab:green"), ("p99", "tab:orange")):
            middle.plot(clients, [p[key] for p in result["clients"]], marker="o", label=key,
                        color=color)  # fmt: skip
        middle.axhline(P99_TARGET_MS, color="tab:red", linestyle="--", label="50 ms")
        middle.set_xscale("log", base=2)
        middle.set_yscale("log")
        middle.set_xlabel("concurrent clients")
        middle.set_ylabel("latency, ms")
        middle.legend()
        if result["nodes"]:
            nodes = [p["nodes"] for p in result["nodes"]]
            right.plot(nodes, [p["throughput_per_s"] for p in result["nodes"]], marker="o",
                       label="cluster")  # fmt: skip
            if any(p.get("shape_per_s") for p in result["nodes"]):
                right.plot(nodes, [p.get("shape_per_s") or float("nan") for p in result["nodes"]],
                           marker="s", linestyle="--", label="same path, no work")  # fmt: skip
                right.legend()
        right.set_xlabel("vault nodes")
        right.set_ylabel("recoveries / s")
        for ax in (left, middle):
            ax.set_xticks(clients, [str(c) for c in clients])
        for ax in (left, right):
            ax.set_ylim(
                bottom=0
            )  # throughput from zero: run-to-run noise must not look like a trend
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.suptitle(f"bkv-bench curves, mix recover=100, {result.get('title', '')}".rstrip(", "))
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bkv_bench.curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", type=Path, help="client.toml of a running cluster")
    target.add_argument("--cluster-up", action="store_true", help="start a cluster for the sweep")
    p.add_argument("--topology", type=Path, help="topology TOML for clusters this tool starts")
    p.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                   help="etcd fsync for clusters this tool starts (default on)")  # fmt: skip
    p.add_argument("--clients", default="1,2,4,8,16,32,64")
    p.add_argument("--nodes", default="1,2,4,6", help='node counts, or "none"')
    p.add_argument("--node-clients", type=int, default=8)
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--seconds", type=float)
    amount.add_argument("--count", type=int)
    p.add_argument("--open-loop-fraction", type=float, default=0.5)
    p.add_argument("--ksf", choices=("fast", "default"), default="fast")
    p.add_argument("--accounts", type=int, default=64)
    p.add_argument("--node-ceilings", type=float, metavar="SECONDS",
                   help="measure the ceilings (the no-work path among them) in every node-sweep "
                   "run, each for SECONDS")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("results"))
    return p


def main(argv: Sequence[str] | None = None, bench_main: BenchMain = cli.main) -> int:
    args = parser().parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (None if args.count else 10.0)
    try:
        config = CurvesConfig(
            clients=parse_ints(args.clients, "--clients"),
            nodes=parse_ints(args.nodes, "--nodes"),
            node_clients=args.node_clients,
            seconds=seconds,
            count=args.count,
            open_loop_fraction=args.open_loop_fraction,
            ksf=args.ksf,
            accounts=args.accounts,
            node_ceiling_seconds=args.node_ceilings,
        )
    except CurvesError as err:
        print(f"curves: {err}", file=sys.stderr)
        return 2
    fsync = ["--fsync" if args.fsync else "--no-fsync"]
    topology = ["--topology", str(args.topology)] if args.topology else []
    out = cli.out_dir(args.out)
    runner = Runner(out, bench_main)
    try:
        if args.config is not None:
            result = sweep(config, ["--config", str(args.config)], runner, [*fsync, *topology])
        else:
            result = _with_cluster(config, runner, args.fsync, args.topology, [*fsync, *topology])
    except CurvesError as err:
        print(f"curves: {err}", file=sys.stderr)
        return 1
    cluster = result.get("cluster", {})
    fsync_text = {True: "on", False: "off"}.get(cluster.get("fsync"), "unknown")
    result["title"] = f"fsync {fsync_text}, {cluster.get('nodes')} nodes, ksf {config.ksf}"
    (out / "curves.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    plot_curves(out / "curves.png", result)
    print(table(result))
    print(f"wrote {out / 'curves.json'} and {out / 'curves.png'}")
    return 0


def _with_cluster(
    config: CurvesConfig,
    runner: Runner,
    fsync: bool,
    topology_path: Path | None,
    node_sweep_args: list[str],
) -> dict[str, Any]:
    """The sweep on a cluster started here (bkv-bench's load-test limits), stopped and removed
    after: its directory holds tokens and keys, which must not stay in a results folder."""
    from bkv_bench.topology import BENCH_NODES_PER_DC, bench_topology
    from deploy.cluster import Cluster
    from deploy.topology import default_topology_path, load_topology

    base = load_topology(topology_path or default_topology_path())
    per_dc = BENCH_NODES_PER_DC if topology_path is None else None  # as bkv-bench's default
    temp = tempfile.mkdtemp(prefix="bkv-curves-cluster-")
    cluster = Cluster(Path(temp))
    try:
        cluster.up(bench_topology(base, nodes_per_dc=per_dc), fsync=fsync)
        return sweep(config, ["--config", str(cluster.client_config_path)], runner, node_sweep_args)
    finally:
        try:
            if cluster.exists():
                cluster.down()
        finally:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
