"""`bkv-chaos`: run load with faults against a local cluster, then check the invariants.

    bkv-chaos --config cluster/client.toml --scenario kill-dc,lose-quorum --duration 60 --seed 7
    bkv-chaos --cluster-up --scenario all --duration 240        # a temporary cluster (fsync off)
    bkv-chaos --cluster-up --scenario partition-dc --duration 20 # DCs in network namespaces

With `--cluster-up` the temporary cluster is shaped for the scenarios: its data centres run in
network namespaces made for the run when `partition-dc` is asked for (or `--netns`; needs root
and `ip`, else partition-dc is skipped and says why); otherwise, when `slow-link` is asked for,
one etcd member's peers reach it through a proxy, so that slow-link slows an etcd peer link too.

Exit status: 0 when every invariant has zero violations, 1 when any has one, 2 for bad usage or
a run that could not be made. Results go to `--out/<timestamp>/` (history.jsonl, faults.jsonl,
run.json, the nodes' audit files, verdict.json, throughput.png).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bkv_chaos import netns
from bkv_chaos.proxy import LinkProxy, peer_proxy_cluster
from bkv_chaos.run import ChaosConfig, run_chaos
from bkv_chaos.scenarios import SCENARIOS, parse_scenarios
from deploy.cluster import Cluster
from deploy.errors import DeployError
from deploy.topology import default_topology_path, load_topology


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bkv-chaos",
        description="Inject faults into a local Backup Key Vault cluster under load and check "
        "the eight invariants from the recorded history.",
    )
    p.add_argument("--config", type=Path, help="client.toml of the cluster (from bkv-cluster up)")
    p.add_argument(
        "--scenario", required=True,
        help=f"comma-separated: {', '.join(SCENARIOS)}; or all (each in turn)",
    )  # fmt: skip
    p.add_argument("--duration", type=float, required=True, help="seconds of load, split evenly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument(
        "--cluster-dir", type=Path, help="where bkv-cluster up ran (default: the config's folder)"
    )
    p.add_argument(
        "--cluster-up", action="store_true",
        help="bring up a temporary cluster (fsync off) for this run and remove it afterwards",
    )  # fmt: skip
    p.add_argument(
        "--netns", action="store_true",
        help="with --cluster-up: run each data centre in a network namespace of its own "
        "(implied by partition-dc; needs root)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=4, help="client threads (default 4)")
    p.add_argument(
        "--no-wire-probes", action="store_true",
        help="leave out the request bytes that are not a protobuf (see bkv_chaos/probes.py)",
    )  # fmt: skip
    return p


@dataclass(frozen=True)
class TempCluster:
    """A cluster made for one run, with what its scenarios need from the tool."""

    cluster: Cluster
    network: netns.NetnsLab | None = None
    peer_proxies: tuple[LinkProxy, ...] = ()


def _echo(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def temporary_cluster(scenarios: str = "", *, use_netns: bool = False) -> Iterator[TempCluster]:
    """A temporary cluster (fsync off) shaped for `scenarios` (see the module docstring),
    stopped and removed on exit, namespaces and proxies included."""
    names = {s.name for s in parse_scenarios(scenarios)} if scenarios else set()
    use_netns = use_netns or "partition-dc" in names
    if use_netns and (why := netns.missing_privileges()):
        _echo(f"bkv-chaos: no network namespaces ({why}): a loopback cluster instead")
        use_netns = False
    topology = load_topology(default_topology_path())
    root = Path(tempfile.mkdtemp(prefix="bkv-chaos-cluster-"))
    directory = root / "cluster"
    try:
        with ExitStack() as stack:
            if use_netns:
                cluster, lab = stack.enter_context(
                    netns.netns_cluster(directory, topology, echo=_echo)
                )
                yield TempCluster(cluster, network=lab)
            elif "slow-link" in names:
                rng = random.Random()
                cluster, proxy = stack.enter_context(
                    peer_proxy_cluster(directory, topology, rng=rng, echo=_echo)
                )
                yield TempCluster(cluster, peer_proxies=(proxy,))
            else:
                cluster = Cluster(directory, echo=_echo)
                stack.callback(lambda: cluster.down() if cluster.exists() else None)
                cluster.up(topology, fsync=False)
                yield TempCluster(cluster)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from bkv_chaos.load import LoadConfig

    load = LoadConfig(workers=args.workers)
    try:
        if args.cluster_up:
            with temporary_cluster(args.scenario, use_netns=args.netns) as temp:
                cluster = temp.cluster
                return _run(args, cluster.client_config_path, cluster.directory, load, temp)
        if args.config is None:
            print("bkv-chaos: --config (or --cluster-up) is required", file=sys.stderr)
            return 2
        cluster_dir = args.cluster_dir or args.config.resolve().parent
        return _run(args, args.config, cluster_dir, load, None)
    except (ValueError, DeployError, OSError) as err:
        print(f"bkv-chaos: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bkv-chaos: interrupted (faults healed)", file=sys.stderr)
        return 2


def _run(
    args: argparse.Namespace,
    config: Path,
    cluster_dir: Path,
    load: object,
    temp: TempCluster | None,
) -> int:
    from bkv_chaos.load import LoadConfig

    assert isinstance(load, LoadConfig)
    chaos = ChaosConfig(
        client_config=config, cluster_dir=cluster_dir, scenarios=args.scenario,
        duration_s=args.duration, seed=args.seed, out_dir=args.out, load=load,
        wire_probes=not args.no_wire_probes,
    )  # fmt: skip
    result = run_chaos(
        chaos,
        network=None if temp is None else temp.network,
        peer_proxies=() if temp is None else temp.peer_proxies,
    )
    print(f"results: {result.run_dir}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
