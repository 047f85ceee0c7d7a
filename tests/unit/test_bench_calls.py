"""bkv_bench.calls: the vault nodes' call counters, diffed over a phase, per operation."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bkv_bench.calls import CallMeter, CallsCounted, calls_json, calls_text, counts
from vault_node.metrics import NodeMetrics

pytestmark = pytest.mark.unit


def page(metrics: NodeMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def fresh() -> NodeMetrics:
    return NodeMetrics(CollectorRegistry(), process_collectors=False)


def test_counts_read_the_nodes_real_metric_names() -> None:
    """The page a node serves (TYPE lines, buckets, _sum and _created samples): only the
    counts are kept, named by their labels."""
    m = fresh()
    for _ in range(3):
        m.token_seconds.labels(op="ecdh", key="kem").observe(0.001)
    m.etcd_seconds.labels(call="write_many").observe(0.002)
    m.cas_conflicts.inc(2)
    m.witness_capture("majority")
    m.witness_capture("local")
    m.witness_capture("local")
    m.witness_capture("no such kind")  # a fixed label set: ignored
    m.witness_ask("stream")
    m.witness_verdict("captured", told=False)
    m.witness_verdict("behind", told=False)
    m.witness_verdict("captured", told=True)
    m.witness_verdict("no such verdict", told=False)  # a fixed label set: ignored
    got = counts(page(m))
    assert got[("token", "ecdh kem")] == 3
    assert got[("etcd", "write_many")] == 1
    assert got[("cas", "cas_conflicts")] == 2
    assert got[("captures", "majority")] == 1 and got[("captures", "local")] == 2
    assert got[("peer_asks", "stream")] == 1
    assert got[("verdicts", "captured asked")] == 1 and got[("verdicts", "behind asked")] == 1
    assert got[("verdicts", "captured told")] == 1
    sections = {"token", "etcd", "cas", "captures", "peer_asks", "verdicts"}
    assert all(section in sections for section, _ in got)
    doc = calls_json(CallsCounted(got), ops=1)
    text = calls_text(doc)
    assert "witness captures (local 2.00, majority 1.00) with 1.00 peer asks" in text
    assert "1.00 not captured" in text  # the one `behind`


def test_the_meter_diffs_each_node_and_names_the_unreadable_ones() -> None:
    a, b = fresh(), fresh()
    a.token_seconds.labels(op="ecdh", key="kem").observe(0.001)  # before the phase
    pages = {"a": [page(a)], "b": [page(b)]}
    for _ in range(4):
        a.token_seconds.labels(op="ecdh", key="kem").observe(0.001)
        b.token_seconds.labels(op="ecdh", key="kem").observe(0.001)
    a.etcd_seconds.labels(call="write").observe(0.001)
    pages["a"].append(page(a))
    pages["b"].append("not a metrics page {")

    def fetch(address: str) -> str:
        return pages[address].pop(0)

    meter = CallMeter({"node-a": "a", "node-b": "b"}, fetch=fetch)
    meter.start()
    counted = meter.stop()
    assert counted.missing == ("node-b",)  # a page that does not parse counts nothing
    doc = calls_json(counted, ops=4)
    assert doc["token"] == {"ecdh kem": 1.0} and doc["etcd"] == {"write": 0.25}
    assert (doc["token_total"], doc["etcd_total"], doc["missing_nodes"]) == (1.0, 0.25, ["node-b"])
    assert "token 1.00 (ecdh kem 1.00), etcd 0.25" in calls_text(doc)


def test_a_node_down_at_the_start_is_missing_not_zero() -> None:
    def fetch(address: str) -> str:
        raise ConnectionRefusedError(address)

    meter = CallMeter({"node-a": "127.0.0.1:9"}, fetch=fetch)
    meter.start()
    counted = meter.stop()
    assert counted.missing == ("node-a",) and counted.counts == {}
    assert calls_json(counted, ops=0) == {
        "token_total": 0,
        "etcd_total": 0,
        "peer_asks_total": 0,
        "missing_nodes": ["node-a"],
    }
