"""bkv-bench against the real session cluster: a short closed-loop run with ceilings and a short
open-loop run. Checks the files and that the counts add up; asserts no timing."""

import json
from pathlib import Path
from typing import Any

import pytest

from bkv_bench import cli
from deploy.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MIX = "recover=50,register=20,wrong=15,delete=15"


@pytest.fixture(autouse=True)
def _every_process_running(healthy_cluster: Cluster) -> None:
    """An earlier test (a DC-loss test, a failed chaos test) may have left a process down."""


def run(tmp_path: Path, cluster: Cluster, *extra: str) -> dict[str, Any]:
    out = tmp_path / "results"
    argv = ["--config", str(cluster.client_config_path), "--mix", MIX, "--ksf", "fast",
            "--accounts", "8", "--concurrency", "4", "--out", str(out), *extra]  # fmt: skip
    assert cli.main(argv) == 0
    (bench_json,) = out.glob("*/bench.json")
    assert (bench_json.parent / "bench.png").read_bytes()[:4] == b"\x89PNG"
    return json.loads(bench_json.read_text())  # type: ignore[no-any-return]


def bench_keys_left(cluster: Cluster) -> list[bytes]:
    """Keys the ceilings wrote under /bkv-bench/ and did not delete (read with etcdctl as root)."""
    from bkv_bench.ceilings import BENCH_PREFIX

    done = cluster.etcdctl("get", "--prefix", BENCH_PREFIX.decode(), "--keys-only")
    assert done.returncode == 0, done.stderr
    return [line.encode() for line in done.stdout.splitlines() if line.strip()]


def check_counts(doc: dict[str, Any], total: int) -> None:
    ops = doc["ops"]
    assert sum(op["count"] for op in ops.values()) == doc["total"]["count"] == total
    for op in ops.values():
        assert op["ok"] + sum(op["errors"].values()) == op["count"]
        assert set(op["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    # Wrong guesses are expected answers, never a lockout of a bench account.
    assert all("Locked" not in op["errors"] for op in ops.values())
    assert ops["recover"]["ok"] > 0


def test_closed_loop_with_ceilings(
    tmp_path: Path, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run(tmp_path, cluster, "--count", "30", "--ceilings", "--ceiling-seconds", "0.3")
    check_counts(doc, 30)
    config = doc["config"]
    assert (config["mode"], config["concurrency"], config["ksf"]) == ("closed", 4, "fast")
    assert config["fsync"] is False and config["nodes"] == len(cluster.topology.nodes)
    ceilings = doc["ceilings"]
    for name in ("etcd_cas_per_s", "grpc_calls_per_s", "crypto_recoveries_per_s",
                 "shape_recoveries_per_s"):  # fmt: skip
        assert ceilings[name] > 0
    assert "fraction_of_bound" in doc["versus_ceilings"]["etcd"]
    # The path without its work copies the cluster's layout and meters every role of it.
    shape = ceilings["details"]["shape_recovery"]
    assert (shape["relays"], shape["stores"], shape["errors"]) == (
        len(cluster.topology.frontends), len(cluster.topology.nodes), 0)  # fmt: skip
    assert set(shape["cpu"]["seconds"]) == {"etcd", "node", "frontend", "bench"}
    assert shape["cpu"]["seconds"]["etcd"] > 0 and shape["cpu"]["missing_pids"] == []
    assert "shape_fraction_of_etcd_bound" in doc["versus_ceilings"]["shape"]
    assert not bench_keys_left(cluster)
    # The no-op server runs the loop the bench runs, as the cluster's servers do.
    assert ceilings["details"]["grpc_unary_tls"]["server"] == "grpc.aio on uvloop, own process"
    assert (config["event_loop"], config["cluster_event_loop"]) == ("uvloop", "uvloop")
    assert config["etcd_gomaxprocs"] == cluster.topology.options.etcd_gomaxprocs == 0
    cpu = doc["cpu"]
    assert set(cpu["seconds"]) == {"etcd", "node", "frontend", "bench"}
    assert all(s >= 0 for s in cpu["seconds"].values()) and cpu["ms_per_op"]["total"] > 0
    # Every process by name, the witnesses marked as such.
    witnesses = {f"{name} (witness)" for name in cluster.witness_nodes()}
    assert witnesses <= set(cpu["by_process_ms_per_op"])
    # The floor (implied by --ceilings): every part measured, etcd's from the CAS ceiling.
    floor = doc["floor"]
    assert set(floor["parts"]) == {
        "token_ecdh", "hpke_open_software", "ristretto255_server", "token_aes_gcm",
        "token_hmac_oprf", "account_verify", "client_crypto", "etcd_txn",
    } and floor["missing"] == []  # fmt: skip
    assert all(part["ms"] > 0 for part in floor["parts"].values())
    assert (
        0
        < doc["cpu_efficiency"]
        == pytest.approx(floor["ms_per_recovery"] / cpu["ms_per_op"]["total"], abs=1e-3)
    )
    printed = capsys.readouterr().out
    assert "p99.9 ms" in printed and "etcd CAS" in printed and "CPU per operation" in printed
    assert "floor (unavoidable work per recovery)" in printed and "CPU efficiency" in printed


def test_open_loop(tmp_path: Path, cluster: Cluster) -> None:
    doc = run(tmp_path, cluster, "--count", "20", "--rate", "20")
    check_counts(doc, 20)
    assert doc["config"]["mode"] == "open" and doc["config"]["rate_per_s"] == 20


@pytest.mark.timeout(240)
def test_curves_on_the_cluster_and_one_node_count(tmp_path: Path, cluster: Cluster) -> None:
    """`python -m bkv_bench.curves`: a two-point client sweep on the session cluster, the open
    loop at half its peak, and a one-node cluster started and stopped for the node sweep."""
    from bkv_bench import curves

    out = tmp_path / "curves"
    argv = ["--config", str(cluster.client_config_path), "--clients", "1,2", "--nodes", "1",
            "--no-fsync", "--count", "6", "--accounts", "4", "--out", str(out)]  # fmt: skip
    assert curves.main(argv) == 0
    (result_dir,) = out.iterdir()
    result = json.loads((result_dir / "curves.json").read_text())
    assert (result_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert [p["concurrency"] for p in result["clients"]] == [1, 2]
    assert all(p["count"] == 6 and p["ok"] == 6 for p in result["clients"])
    assert result["open_loop"]["count"] == 6 and result["open_loop"]["rate_per_s"] >= 1.0
    assert [(p["nodes"], p["ok"]) for p in result["nodes"]] == [(1, 6)]
    assert len(list(result_dir.glob("runs/*/*/bench.json"))) == 4


def test_pairs_on_the_cluster(tmp_path: Path, cluster: Cluster) -> None:
    """`python -m bkv_bench.pairs`: one pair (the load generator on either loop) against the
    session cluster; every run's bench.json is kept and the ratios are read from them."""
    from bkv_bench import pairs

    out = tmp_path / "pairs"
    argv = ["--pairs", "1", "--a=--event-loop uvloop", "--b=--event-loop asyncio",
            "--out", str(out), "--", "--config", str(cluster.client_config_path),
            "--mix", "recover=100", "--ksf", "fast", "--accounts", "4", "--count", "6",
            "--concurrency", "2"]  # fmt: skip
    assert pairs.main(argv) == 0
    (result_dir,) = out.iterdir()
    result = json.loads((result_dir / "pairs.json").read_text())
    assert (result_dir / "pairs.png").read_bytes()[:4] == b"\x89PNG"
    (pair,) = result["pairs"]
    assert (pair["a"]["ok"], pair["b"]["ok"]) == (6, 6)
    ratio = pair["ratio_b_over_a"]["throughput_per_s"]
    assert ratio == pytest.approx(
        pair["b"]["throughput_per_s"] / pair["a"]["throughput_per_s"], rel=1e-3
    )
    loops = {json.loads(Path(pair[s]["bench_json"]).read_text())["config"]["event_loop"]
             for s in ("a", "b")}  # fmt: skip
    assert loops == {"uvloop", "asyncio"}


def test_pairs_with_a_side_from_a_source_tree(tmp_path: Path, cluster: Cluster) -> None:
    """`--tree-b`: side B runs from a source tree with its own .venv, in a child process (here
    this repository's own tree, which has one), against the session cluster."""
    from bkv_bench import pairs

    tree = Path(__file__).resolve().parents[2]
    out = tmp_path / "pairs"
    argv = ["--pairs", "1", "--tree-b", str(tree), "--label-b", "tree", "--out", str(out),
            "--", "--config", str(cluster.client_config_path), "--mix", "recover=100",
            "--ksf", "fast", "--accounts", "4", "--count", "6", "--concurrency", "2"]  # fmt: skip
    assert pairs.main(argv) == 0
    (result_dir,) = out.iterdir()
    result = json.loads((result_dir / "pairs.json").read_text())
    assert result["trees"] == {"a": None, "b": str(tree)}
    (pair,) = result["pairs"]
    assert (pair["a"]["ok"], pair["b"]["ok"]) == (6, 6)
    assert Path(pair["b"]["bench_json"]).is_file()


def test_calls_per_recovery_from_the_nodes_own_counters(tmp_path: Path, cluster: Cluster) -> None:
    """bench.json's `calls_per_op`, read from every vault node's metrics: a recovery of protocol
    3 opens one envelope (one ECDH in a token: its finish is sealed with step 1's key) and runs
    the OPRF once; its two record writes reach etcd as at most two transactions."""
    out = tmp_path / "results"
    argv = ["--config", str(cluster.client_config_path), "--mix", "recover=100",
            "--ksf", "fast", "--accounts", "4", "--concurrency", "4", "--count", "24",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    (bench_json,) = out.glob("*/bench.json")
    doc = json.loads(bench_json.read_text())
    assert doc["total"]["count"] == doc["ops"]["recover"]["ok"] == 24
    calls = doc["calls_per_op"]
    assert calls["missing_nodes"] == []
    token = calls["token"]
    print(f"calls per recovery: {calls}")
    assert token["ecdh kem"] == token["hmac_sha512 oprf_seed"] == 1.0
    assert token["aes_gcm_seal ticket"] == token["aes_gcm_open ticket"] == 1.0
    record_writes = calls["etcd"].get("write", 0) + calls["etcd"].get("write_many", 0)
    assert 0 < record_writes <= 2.0  # a group commit carries several records in one
    # Each committed write's head witnessed once: the evaluation by a majority (awaited), the
    # finish by this node's own witness alone when it wrote on a head it saw witnessed, else
    # lazily (another node's write came between).
    captures = calls["captures"]
    assert captures["majority"] == 1.0
    assert captures.get("local", 0) + captures.get("lazy", 0) == pytest.approx(1.0)
    # The witnesses' own counts: the majority's two answers (own witness and a peer) and the
    # finish's capture by at least one witness; the first assertion fails if a witness's
    # verdicts are not counted at all.
    verdicts = calls["verdicts"]
    assert verdicts["captured asked"] >= 2.0
    assert verdicts.get("rollback asked", 0) == verdicts.get("rollback told", 0) == 0
