"""bkv_bench.floor without a cluster or a token: the typed floor and its arithmetic, the software
parts measured for real (the client's recovery against a software vault, the server's
multiplications), and bench.json's `floor` and `cpu_efficiency`."""

from __future__ import annotations

import pytest

from bkv_bench import floor, report
from bkv_bench.cpu import CpuUsed
from bkv_bench.floor import Floor, FloorPart, SoftwareVault, efficiency, floor_text
from bkv_bench.histogram import Recorder
from bkv_bench.result import ClusterFacts, Pools, RunConfig, Setup

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def sample() -> Floor:
    return Floor(
        (
            FloorPart("token_ecdh", 1, 400.0, "ECDH"),
            FloorPart("token_aes_gcm", 6, 50.0, "AES-GCM"),
            FloorPart("etcd_txn", 2, 500.0, "etcd"),
        )
    )


def test_the_floor_is_the_sum_of_counts_times_costs() -> None:
    f = sample()
    assert f.ms_per_recovery == pytest.approx(0.4 + 0.3 + 1.0)
    doc = f.to_json()
    assert doc["ms_per_recovery"] == 1.7 and doc["missing"] == []
    assert doc["parts"]["token_aes_gcm"] == {"count": 6, "us_each": 50.0, "ms": 0.3,
                                             "what": "AES-GCM"}  # fmt: skip
    assert efficiency(1.7, 6.8) == 0.25 and efficiency(1.7, None) is None
    text = floor_text(Floor(f.parts[:2], ("etcd_txn",)), 0.25)
    assert "floor (unavoidable work per recovery): 0.70 ms" in text
    assert "not measured: etcd_txn" in text and "CPU efficiency" in text and "25.0%" in text


def test_the_client_recovers_against_the_software_vault_and_only_its_steps_are_timed() -> None:
    vault = SoftwareVault("fast")
    us, mults = vault.client_recovery()
    # login_start: blind (1); login_finish: unblind (1), recover the envelope's key pair (1),
    # 3DH (3), the OPRF finalize's check; at least the five of RFC 9807's client side.
    assert mults >= 5 and us > 0
    median, again = floor.client_costs(0.05)
    assert median > 0 and again == mults


def test_the_server_parts_are_measured_and_the_multiplications_counted() -> None:
    costs = floor.server_costs(0.05)
    assert costs["hpke_open_software"] > 0 and costs["ristretto255_mult"] > 0
    assert costs["server_mults"] >= 4  # OPRF evaluation and 3DH at least


def test_bench_json_carries_the_floor_and_the_cpu_efficiency() -> None:
    r = Recorder(start=0.0)
    for i in range(100):
        r.record("recover", i / 100, 0.02)
    config = RunConfig(mode="closed", mix="recover=1", concurrency=4, accounts=4,
                       pools=Pools(4, 0), ksf="fast", cluster="cluster-up",
                       facts=ClusterFacts())  # fmt: skip
    cpu = CpuUsed({"node": 0.5, "bench": 0.18}, by_process={"dc-a-node-1 (witness)": 0.3})
    doc = report.build(
        config=config, summaries=[r.summary("recover", 1.0)], combined=r.combined(1.0),
        elapsed_s=1.0, series=r.series(1.0), substituted={}, setup=Setup(), ceilings=[],
        cpu=cpu, floor=sample(),
    ).to_json()  # fmt: skip
    assert doc["cpu"]["ms_per_op"]["total"] == 6.8
    assert doc["cpu"]["by_process_ms_per_op"] == {"dc-a-node-1 (witness)": 3.0}
    assert doc["floor"]["ms_per_recovery"] == 1.7
    assert doc["cpu_efficiency"] == 0.25
    without = report.build(
        config=config, summaries=[r.summary("recover", 1.0)], combined=r.combined(1.0),
        elapsed_s=1.0, series=r.series(1.0), substituted={}, setup=Setup(), ceilings=[],
    ).to_json()  # fmt: skip
    assert "floor" not in without and "cpu_efficiency" not in without
