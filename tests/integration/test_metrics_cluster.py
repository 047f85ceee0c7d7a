"""Metrics against a real cluster: after a scenario with known counts, scraping every vault node
and frontend gives exactly those counts (as deltas), and each node's agree with its audit lines."""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import VaultClient
from client.config import load_config
from client.errors import InvalidPassword, Locked
from deploy.cluster import Cluster
from vault_common.audit_line import read_audits

pytestmark = pytest.mark.integration

PASSWORD = "the right passphrase for the metrics test"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_all(cluster: Cluster) -> dict[str, Samples]:
    return {name: scrape(address) for name, address in cluster.metrics_addresses().items()}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def audit_counts(cluster: Cluster) -> dict[str, Counter[str]]:
    """Audit events per node, from every node's audit log."""
    out: dict[str, Counter[str]] = {}
    for event in read_audits((cluster.directory / "logs").glob("*.audit.jsonl")):
        out.setdefault(event.node, Counter())[event.event] += 1
    return out


@pytest.mark.timeout(180)
def test_scraped_counts_match_the_scenario_and_the_audit_lines(
    healthy_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = healthy_cluster
    nodes = [p.name for p in cluster.state().processes if p.role == "node"]
    frontends = [p.name for p in cluster.state().processes if p.role == "frontend"]
    assert set(cluster.metrics_addresses()) == set(nodes) | set(frontends)
    before, audit_before = scrape_all(cluster), audit_counts(cluster)

    config = load_config(cluster.client_config_path)
    keys = tmp_path / "keys"
    keys.mkdir()
    alice = VaultClient(config, key_dir=keys, ksf="fast")
    bob = VaultClient(config, key_dir=keys, ksf="fast")
    try:
        alice.create_account()
        bob.create_account()
        key = alice.register(PASSWORD)  # registration 1
        bob.register(PASSWORD, max_attempts=2)  # registration 2
        assert alice.recover(PASSWORD) == key  # right: 1 evaluation, 1 success
        for _ in range(2):  # wrong: 2 evaluations
            with pytest.raises(InvalidPassword):
                alice.recover("not " + PASSWORD)
        for _ in range(2):  # bob's two guesses: 2 evaluations
            with pytest.raises(InvalidPassword):
                bob.recover("not " + PASSWORD)
        with pytest.raises(Locked):  # the third: the lockout, no evaluation
            bob.recover("not " + PASSWORD)
    finally:
        alice.close()
        bob.close()

    after, audit_after = scrape_all(cluster), audit_counts(cluster)

    def delta(process: str, name: str, **labels: str) -> float:
        return total(after[process], name, **labels) - total(before[process], name, **labels)

    def node_sum(name: str, **labels: str) -> float:
        return sum(delta(n, name, **labels) for n in nodes)

    def audited(node: str, event: str) -> int:
        return audit_after.get(node, Counter())[event] - audit_before.get(node, Counter())[event]

    # The scenario's counts, summed over every node.
    assert node_sum("bkv_node_password_evaluations_total") == 5
    assert node_sum("bkv_node_lockouts_total") == 1
    assert node_sum("bkv_node_requests_total", op="register_finish", outcome="ok") == 2
    assert node_sum("bkv_node_requests_total", op="recover_finish", outcome="ok") == 1
    assert node_sum("bkv_node_requests_total", op="recover_start", outcome="ok") == 5
    assert node_sum("bkv_node_requests_total", op="recover_start", outcome="locked") == 1
    assert node_sum("bkv_node_audit_events_total", event="success") == 1
    assert node_sum("bkv_node_audit_events_total", event="register") == 2
    # Each node's counts are its audit lines.
    for node in nodes:
        assert delta(node, "bkv_node_password_evaluations_total") == audited(node, "evaluate")
        assert delta(node, "bkv_node_lockouts_total") == audited(node, "lock")
        for event in ("evaluate", "lock", "success", "register", "bad_mac", "reserve"):
            got = delta(node, "bkv_node_audit_events_total", event=event)
            assert got == audited(node, event), (node, event)
        assert delta(node, "bkv_node_serving") == 0 and total(after[node], "bkv_node_serving") == 1
    # What the frontends relayed is what the nodes answered, node by node.
    requests = node_sum("bkv_node_requests_total")
    assert requests >= 2 * 2 + 2 * 1 + 2 + 2 + 1
    relayed = sum(delta(f, "bkv_frontend_requests_total", rpc="Relay") for f in frontends)
    assert relayed == requests
    for node in nodes:
        by_frontends = sum(delta(f, "bkv_frontend_relays_total", node=node) for f in frontends)
        assert by_frontends == delta(node, "bkv_node_requests_total"), node
    assert sum(delta(f, "bkv_frontend_rate_limited_total") for f in frontends) == 0


@pytest.mark.timeout(60)
def test_status_lists_and_prometheus_yml_scrapes_every_metrics_endpoint(
    healthy_cluster: Cluster,
) -> None:
    import subprocess
    import sys

    addresses = healthy_cluster.metrics_addresses()
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "status", "--metrics", "--dir",
         str(healthy_cluster.directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scrape_config = healthy_cluster.layout.prometheus_config.read_text()
    for name, address in addresses.items():
        assert f"http://{address}/metrics" in done.stdout, name
        assert f'"{address}"' in scrape_config and f'process: "{name}"' in scrape_config
        assert scrape(address), name
