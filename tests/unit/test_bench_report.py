"""bench.json, the text table and bench.png from synthetic results (no cluster)."""

import json
from pathlib import Path

import pytest

from bkv_bench import report, result
from bkv_bench.ceilings import Ceiling, hsm_seconds_per_recovery
from bkv_bench.histogram import Recorder
from bkv_bench.plot import plot
from bkv_bench.result import ClusterFacts, Pools, RunConfig, Setup

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def run_config(*, fsync: bool | None = None, nodes: int | None = None) -> RunConfig:
    return RunConfig(mode="closed", mix="recover=1", concurrency=8, accounts=4,
                     pools=Pools(4, 0), ksf="fast", cluster="cluster-up",
                     facts=ClusterFacts(fsync=fsync, nodes=nodes))  # fmt: skip


def synthetic() -> Recorder:
    r = Recorder(start=0.0)
    for i in range(300):
        r.record("recover", i / 100, 0.020 + (i % 10) / 1000)
    for i in range(30):
        r.record("register", i / 10, 0.040)
    r.record("wrong", 1.5, None, error="Unavailable")
    return r


def test_bench_json_has_the_documented_fields(tmp_path: Path) -> None:
    r = synthetic()
    ceilings = [
        Ceiling("etcd_cas", 2000, 2.0, 8),
        Ceiling("grpc_unary_tls", 4000, 2.0, 8),
        Ceiling("crypto_recovery", 900, 1.0, 1),
    ]
    doc = report.build(
        config=run_config(fsync=True, nodes=6),
        summaries=[r.summary(op, 3.0) for op in r.ops()], combined=r.combined(3.0),
        elapsed_s=3.0, series=r.series(3.0), substituted={"delete->register": 1},
        setup=Setup(accounts_registered=4), ceilings=ceilings, marks=[(1.0, "kill dc-b")],
    )  # fmt: skip
    report.write_json(tmp_path / "bench.json", doc)
    back = json.loads((tmp_path / "bench.json").read_text())
    rec = back["ops"]["recover"]
    assert rec["count"] == 300
    assert rec["throughput_per_s"] == pytest.approx(100.0)
    assert set(rec["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert back["ops"]["wrong"]["errors"] == {"Unavailable": 1}
    assert sum(op["count"] for op in back["ops"].values()) == back["total"]["count"] == 331
    c = back["ceilings"]
    assert c["etcd_cas_per_s"] == 1000.0
    assert c["grpc_calls_per_s"] == 2000.0
    assert c["crypto_recoveries_per_s"] == 900.0
    v = back["versus_ceilings"]
    assert v["etcd"]["fraction_of_bound"] == pytest.approx(100 / 500)
    assert v["etcd"]["meets_target"] is False
    assert back["config"]["fsync"] is True


def test_table_and_ceiling_text() -> None:
    r = synthetic()
    summaries = [r.summary(op, 3.0) for op in r.ops()]
    text = report.table(summaries, r.combined(3.0))
    assert "recover" in text and "p99.9 ms" in text
    assert "wrong: Unavailable 1" in text
    doc = report.build(config=run_config(), summaries=summaries, combined=r.combined(3.0),
                       elapsed_s=3.0, series=[], substituted={}, setup=Setup(),
                       ceilings=[Ceiling("etcd_cas", 300, 1.0, 8)])  # fmt: skip
    assert "target 35%: meets (long-term 50%)" in report.ceilings_text(doc)


def test_plot_writes_a_png_with_marks_and_gaps(tmp_path: Path) -> None:
    r = synthetic()
    gap = {"t_s": 3.0, "throughput_per_s": 0.0, "errors": 0, "p50_ms": None, "p99_ms": None}
    series = [*r.series(3.0), gap]
    plot(tmp_path / "bench.png", series, marks=[(1.0, "kill dc-b"), (2.0, "start dc-b")])
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot(tmp_path / "empty.png", [])
    assert (tmp_path / "empty.png").exists()


def test_hsm_estimate_counts_seven_calls() -> None:
    from bkv_bench.ceilings import HSM_CALLS_PER_RECOVERY

    assert sum(HSM_CALLS_PER_RECOVERY.values()) == 7
    # 2 ECDH at 2.8 k/s dominate: a bit under a millisecond of token time per recovery.
    assert 0.0005 < hsm_seconds_per_recovery() < 0.002


def test_crypto_ceiling_runs_a_bounded_loop() -> None:
    from bkv_bench.ceilings import crypto_ceiling

    c = crypto_ceiling(0.05)
    assert c.ops >= 1 and c.per_s > 0
    assert c.notes["hsm_calls_per_recovery"]["ecdh (envelope open)"] == 2


def test_shape_ceiling_fractions_in_json_and_text() -> None:
    """The cluster against the path without its work, and that path against the etcd bound."""
    r = Recorder(start=0.0)
    for i in range(200):
        r.record("recover", i / 100, 0.010)  # 100 recoveries/s over 2 s
    ceilings = [
        Ceiling("etcd_cas", 1600, 1.0, 16),  # bound 800 recoveries/s
        Ceiling("shape_recovery", 600, 2.0, 16, notes={"relays": 2, "stores": 6}),  # 300/s
    ]
    built = report.build(config=run_config(), summaries=[r.summary("recover", 2.0)],
                         combined=r.combined(2.0), elapsed_s=2.0, series=[], substituted={},
                         setup=Setup(), ceilings=ceilings)  # fmt: skip
    doc = built.to_json()
    assert doc["ceilings"]["shape_recoveries_per_s"] == 300.0
    assert doc["ceilings"]["details"]["shape_recovery"]["stores"] == 6
    shape = doc["versus_ceilings"]["shape"]
    assert shape["fraction_of_bound"] == pytest.approx(100 / 300, abs=1e-4)
    assert shape["shape_fraction_of_etcd_bound"] == pytest.approx(300 / 800)
    text = report.ceilings_text(built)
    assert "33.3% of the same path without its work (300.0/s)" in text
    assert "that path alone reaches 37.5% of the etcd bound" in text


def test_shape_without_etcd_ceiling_has_no_etcd_fraction() -> None:
    v = result.versus_ceilings(50.0, {"shape_recoveries_per_s": 200.0})
    assert v["shape"] == {"recoveries_bound_per_s": 200.0, "fraction_of_bound": 0.25}


def test_bench_json_keys_stay_those_readers_know() -> None:
    """BenchResult serialises to bench.json's keys, in bench.json's order (docs, curves, pairs)."""
    from bkv_bench.cpu import CpuUsed

    r = synthetic()
    built = report.build(config=run_config(), summaries=[r.summary(op, 3.0) for op in r.ops()],
                         combined=r.combined(3.0), elapsed_s=3.0, series=r.series(3.0),
                         substituted={}, setup=Setup(), ceilings=[Ceiling("etcd_cas", 300, 1.0, 8)],
                         cpu=CpuUsed({"node": 1.0, "bench": 0.5}))  # fmt: skip
    doc = built.to_json()
    assert list(doc) == ["started_at", "config", "elapsed_s", "total", "ops", "substituted",
                         "setup", "series", "marks", "machine", "ceilings", "versus_ceilings",
                         "cpu"]  # fmt: skip
    assert list(doc["config"]) == [
        "mode", "mix", "concurrency", "rate_per_s", "max_inflight", "count", "duration_s",
        "accounts", "pools", "ksf", "cluster", "fsync", "nodes", "frontends", "etcd_members",
        "cluster_event_loop", "etcd_gomaxprocs", "frontend_limits_raised", "ceiling_seconds",
        "seed", "client", "event_loop",
    ]  # fmt: skip
    known = ClusterFacts(fsync=True, nodes=6, frontends=2, etcd_members=3,
                         frontend_peer_rate_per_s=5.0, known=True)  # fmt: skip
    assert list(known.to_json()) == ["fsync", "nodes", "frontends", "etcd_members",
                                     "frontend_peer_rate_per_s", "cluster_event_loop",
                                     "etcd_gomaxprocs"]  # fmt: skip
    assert list(doc["setup"]) == ["accounts_registered", "failures", "seconds"]
    assert list(doc["machine"]) == ["cpu_count", "python", "platform", "load_average_at_end"]
    assert doc["cpu"]["ms_per_op"]["total"] == pytest.approx(1500 / 331, abs=0.01)
    assert doc["config"]["pools"] == {"main": 4, "wrong": 0}
