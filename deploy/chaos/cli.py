"""`bkv-chaos`: run load with faults against a local cluster, then check the invariants.

    bkv-chaos --config cluster/client.toml --scenario kill-dc,lose-quorum --duration 60 --seed 7
    bkv-chaos --cluster-up --scenario all --duration 240        # a temporary cluster (fsync off)

Exit status: 0 when every invariant has zero violations, 1 when any has one, 2 for bad usage or
a run that could not be made. Results go to `--out/<timestamp>/` (history.jsonl, faults.jsonl,
run.json, the nodes' audit files, verdict.json, throughput.png).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from deploy.chaos.run import ChaosConfig, run_chaos
from deploy.chaos.scenarios import SCENARIOS
from deploy.cluster import Cluster
from deploy.errors import DeployError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bkv-chaos",
        description="Inject faults into a local Backup Key Vault cluster under load and check "
        "the seven invariants from the recorded history.",
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
    p.add_argument("--workers", type=int, default=4, help="client threads (default 4)")
    p.add_argument(
        "--no-wire-probes", action="store_true",
        help="leave out the request bytes that are not a protobuf (see deploy/chaos/probes.py)",
    )  # fmt: skip
    return p


@contextmanager
def temporary_cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="bkv-chaos-cluster-"))
    cluster = Cluster(root / "cluster", echo=lambda m: print(m, file=sys.stderr))
    try:
        cluster.up(fsync=False)
        yield cluster
    finally:
        try:
            if cluster.exists():
                cluster.down()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from deploy.chaos.load import LoadConfig

    load = LoadConfig(workers=args.workers)
    try:
        if args.cluster_up:
            with temporary_cluster() as cluster:
                return _run(args, cluster.client_config_path, cluster.directory, load)
        if args.config is None:
            print("bkv-chaos: --config (or --cluster-up) is required", file=sys.stderr)
            return 2
        cluster_dir = args.cluster_dir or args.config.resolve().parent
        return _run(args, args.config, cluster_dir, load)
    except (ValueError, DeployError, OSError) as err:
        print(f"bkv-chaos: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bkv-chaos: interrupted (faults healed)", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, config: Path, cluster_dir: Path, load: object) -> int:
    from deploy.chaos.load import LoadConfig

    assert isinstance(load, LoadConfig)
    chaos = ChaosConfig(
        client_config=config, cluster_dir=cluster_dir, scenarios=args.scenario,
        duration_s=args.duration, seed=args.seed, out_dir=args.out, load=load,
        wire_probes=not args.no_wire_probes,
    )  # fmt: skip
    result = run_chaos(chaos)
    print(f"results: {result.run_dir}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
