"""Metrics of the vault node and the frontend: counts that agree with the audit log, fixed labels
only, one registry per process, the HTTP endpoint, the config checks, the scrape configuration
and the Grafana dashboard's metric names."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_node_service import LOCKED, OK, Harness

from bkv.v1 import envelope_pb2, node_pb2
from deploy.configs import ScrapeTarget, prometheus_yml
from frontend_chatd import metrics as fe_metrics
from frontend_chatd.metrics import FrontendMetrics
from frontend_chatd.ratelimit import RateLimited
from frontend_chatd.routing import NodeInfo
from vault_common.metrics_http import MetricsServer, metrics_address_problems
from vault_node import metrics as node_metrics
from vault_node.metrics import NodeMetrics
from vault_node.server import VaultNodeServicer
from vault_protocol import opaque

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "bkv-dashboard.json"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code


class FakeContext:
    def set_trailing_metadata(self, _trailers: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, _details: str) -> None:
        raise Aborted(code)


class _ThroughServicer:
    """The service as the harness calls it (`handle`), every envelope through the real
    servicer's `Open` with its metrics, as a node process runs it; other attributes pass."""

    def __init__(self, servicer: VaultNodeServicer, service: Any) -> None:
        self._servicer = servicer
        self._service = service

    async def handle(self, account_id: str, envelope: bytes) -> bytes:
        request = node_pb2.OpenRequest(account_id=account_id, envelope=envelope)
        reply = await self._servicer.Open(request, FakeContext())
        return bytes(reply.sealed_response)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)


class MeteredHarness(Harness):
    """The service harness, every request through the real servicer (`VaultNodeServicer.Open`)
    with its metrics, as a node process runs it."""

    def __init__(self, **kwargs: Any) -> None:
        self.metrics = NodeMetrics(process_collectors=False)
        self.servicer = VaultNodeServicer(self.metrics)
        super().__init__(**kwargs)
        token = self.metrics.metered_token(self.token)  # as the node process wraps its own
        self.service = self.node(metrics=self.metrics, token=token)
        self.servicer.service = self.service

        self.service = _ThroughServicer(self.servicer, self.service)  # type: ignore[assignment]

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def audited(self, event: str) -> int:
        return self.audit.events().count(event)


def test_counts_agree_with_the_audit_log_and_name_every_outcome() -> None:
    h = MeteredHarness()

    async def go() -> None:
        await h.register(b"right", "alice")
        await h.register(b"right", "bob", max_attempts=2)
        assert await h.recover(b"right", "alice")
        # A wrong password: the guess counted at step 1, then a finish with a bad MAC.
        _state, r1 = await h.start(b"wrong", "alice")
        assert r1.outcome == OK
        bad = await h.finish(b"\x00" * opaque.KE3_BYTES, r1.ticket, "alice")
        assert bad.outcome == envelope_pb2.OUTCOME_INVALID_PASSWORD
        for _ in range(2):
            assert (await h.wrong_guess("bob")).outcome == OK
        assert (await h.wrong_guess("bob")).outcome == LOCKED  # the lock
        assert (await h.wrong_guess("bob")).outcome == LOCKED  # locked for good
        assert (await h.status("nobody")).outcome == OK
        assert (await h.wrong_guess("nobody")).outcome == envelope_pb2.OUTCOME_NOT_REGISTERED
        with pytest.raises(Aborted) as refused:
            await h.servicer.Open(
                node_pb2.OpenRequest(account_id="alice", envelope=b"garbage"), FakeContext()
            )
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(go())
    assert h.value("bkv_node_password_evaluations_total") == h.audited("evaluate") == 4
    assert h.value("bkv_node_lockouts_total") == h.audited("lock") == 1
    for event in set(h.audit.events()):
        assert h.value("bkv_node_audit_events_total", event=event) == h.audited(event), event
    requests = {
        ("register_start", "ok"): 2,
        ("register_finish", "ok"): 2,
        ("recover_start", "ok"): 4,
        ("recover_start", "locked"): 2,
        ("recover_start", "not_registered"): 1,
        ("recover_finish", "ok"): 1,
        # protocol 3: every recovery sends a finish, a dummy one after a wrong or closed step 1
        ("recover_finish", "invalid_password"): 3,
        ("recover_finish", "locked"): 2,
        ("recover_finish", "not_registered"): 1,
        ("begin", "ok"): 1,  # a status begins with a Begin
        ("status", "ok"): 1,
        ("unknown", "invalid_argument"): 1,
    }
    for (op, outcome), want in requests.items():
        assert h.value("bkv_node_requests_total", op=op, outcome=outcome) == want, (op, outcome)
    total = sum(requests.values())
    seen = sum(
        s.value
        for f in h.metrics.registry.collect()
        if f.name == "bkv_node_requests"
        for s in f.samples
        if s.name == "bkv_node_requests_total"
    )
    assert seen == total
    latencies = sum(
        h.value("bkv_node_request_duration_seconds_count", op=op) for op in node_metrics.OPS
    )
    assert latencies == total
    # Protocol 3: one token ECDH per operation, on its step 1 only (the garbage opened nothing).
    first_steps = sum(
        want
        for (op, _), want in requests.items()
        if op in ("register_start", "recover_start", "begin")
    )
    assert h.value("bkv_node_token_op_duration_seconds_count", op="ecdh", key="kem") == first_steps
    assert h.value("bkv_node_token_op_duration_seconds_count", op="aes_gcm_seal", key="record")


def test_labels_hold_no_account_record_id_or_secret() -> None:
    h = MeteredHarness()
    account = "carol-the-account-id"

    async def go() -> None:
        await h.register(b"a secret password", account)
        await h.recover(b"a secret password", account)
        await h.wrong_guess(account)

    asyncio.run(go())
    allowed = {
        "op": {*node_metrics.OPS, *node_metrics.TOKEN_OPS},
        "outcome": set(node_metrics.OUTCOMES),
        "event": set(node_metrics.AUDIT_EVENTS),
        "call": set(node_metrics.ETCD_CALLS),
        "key": set(node_metrics.TOKEN_KEYS),
        "kind": set(node_metrics.WITNESS_CAPTURES),
        "how": set(node_metrics.WITNESS_ASKS),
        "verdict": set(node_metrics.WITNESS_VERDICTS),
        "source": {"asked", "told"},
    }
    for family in h.metrics.registry.collect():
        for sample in family.samples:
            for name, value in sample.labels.items():
                if name in ("le", "quantile"):
                    continue
                assert value in allowed[name], (sample.name, name, value)
    text = exposition(h.metrics.registry)
    assert account not in text and h.record_id(account).hex() not in text
    # Its writes' heads: reserve, register and two evaluations awaited; both finishes on a head
    # this node saw witnessed, told to its own witness only.
    assert h.value("bkv_node_witness_captures_total", kind="majority") == 4
    assert h.value("bkv_node_witness_captures_total", kind="local") == 2


def test_contention_is_counted_as_conflicts_and_retries() -> None:
    h = MeteredHarness()

    async def go() -> None:
        await h.register(b"pw")
        await asyncio.gather(*(h.wrong_guess() for _ in range(4)))

    asyncio.run(go())
    conflicts = h.value("bkv_node_cas_conflicts_total")
    assert conflicts >= 1  # four concurrent guesses on one record: at least one lost its CAS
    assert h.value("bkv_node_cas_retries_total") >= conflicts
    assert h.value("bkv_node_password_evaluations_total") == h.audited("evaluate") == 4


def test_registries_of_several_processes_do_not_clash_and_include_process_collectors() -> None:
    a, b = NodeMetrics(), NodeMetrics()
    f = FrontendMetrics()
    a.evaluations.inc()
    assert a.registry.get_sample_value("bkv_node_password_evaluations_total") == 1
    assert b.registry.get_sample_value("bkv_node_password_evaluations_total") == 0
    for registry in (a.registry, f.registry):
        assert registry.get_sample_value("process_cpu_seconds_total") is not None
        assert registry.get_sample_value("process_resident_memory_bytes") > 0


def test_state_gauges_are_read_when_scraped() -> None:
    m = NodeMetrics(process_collectors=False)
    serving = {"now": False}
    m.watch_state(
        serving=lambda: serving["now"], lease_age_s=lambda: 1.5,
        store_alarm=lambda: "", alarmed_groups=lambda: 2,
    )  # fmt: skip
    assert m.registry.get_sample_value("bkv_node_serving") == 0
    serving["now"] = True
    assert m.registry.get_sample_value("bkv_node_serving") == 1
    assert m.registry.get_sample_value("bkv_node_lease_age_seconds") == 1.5
    assert m.registry.get_sample_value("bkv_node_store_alarm") == 0
    assert m.registry.get_sample_value("bkv_node_group_alarms") == 2


def test_frontend_counts_rate_limits_and_relays_per_node() -> None:
    m = FrontendMetrics(process_collectors=False)
    m.request("Relay", "RESOURCE_EXHAUSTED", RateLimited("account", 0.5), 0.001)
    m.request("GetChallenge", "RESOURCE_EXHAUSTED", RateLimited("peer", 0.5), 0.001)
    m.request("Relay", "RESOURCE_EXHAUSTED", None, 0.001)  # too large: not a rate limit
    m.request("Relay", "OK", None, 0.002)
    node = NodeInfo("node-a-1", "dc-a", "127.0.0.1:1")

    async def ok(_node: NodeInfo, _request: Any, _timeout: float) -> Any:
        return node_pb2.OpenReply(sealed_response=b"x")

    async def down(_node: NodeInfo, _request: Any, _timeout: float) -> Any:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "down")

    async def go() -> None:
        await m.timed_open(ok)(node, node_pb2.OpenRequest(), 1.0)
        with pytest.raises(grpc.aio.AioRpcError):
            await m.timed_open(down)(node, node_pb2.OpenRequest(), 1.0)

    asyncio.run(go())
    value = m.registry.get_sample_value
    assert value("bkv_frontend_rate_limited_total", {"scope": "account"}) == 1
    assert value("bkv_frontend_rate_limited_total", {"scope": "peer"}) == 1
    assert value("bkv_frontend_requests_total", {"rpc": "Relay", "outcome": "rate_limited"}) == 1
    assert (
        value("bkv_frontend_requests_total", {"rpc": "Relay", "outcome": "resource_exhausted"}) == 1
    )
    assert value("bkv_frontend_relays_total", {"node": "node-a-1", "outcome": "ok"}) == 1
    assert value("bkv_frontend_relays_total", {"node": "node-a-1", "outcome": "unavailable"}) == 1
    assert value("bkv_frontend_relay_duration_seconds_count", {"node": "node-a-1"}) == 2


def test_frontend_node_labels_are_bounded() -> None:
    m = FrontendMetrics(process_collectors=False)
    for i in range(fe_metrics.MAX_NODE_LABELS + 10):
        m.relayed(f"node-{i}", "OK", 0.001)
    nodes = {
        s.labels["node"]
        for f in m.registry.collect()
        if f.name == "bkv_frontend_relays"
        for s in f.samples
        if s.name == "bkv_frontend_relays_total"
    }
    assert len(nodes) == fe_metrics.MAX_NODE_LABELS + 1 and "other" in nodes


def test_the_http_endpoint_serves_the_registry() -> None:
    m = NodeMetrics()
    m.lockouts.inc(3)
    server = MetricsServer.start("127.0.0.1:0", m.registry)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["bkv_node_lockouts_total"] == 3
    assert "process_cpu_seconds_total" in samples


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("", True),
        ("127.0.0.1:9100", True),
        ("127.0.0.1:0", True),
        ("[::1]:9100", True),
        ("10.1.2.3:9100", True),
        ("169.254.10.2:9100", True),
        ("0.0.0.0:9100", False),
        ("[::]:9100", False),
        ("8.8.8.8:9100", False),
        ("localhost:9100", False),
        ("127.0.0.1", False),
        ("127.0.0.1:70000", False),
    ],
)
def test_metrics_address_must_be_a_non_public_ip_and_port(address: str, ok: bool) -> None:
    assert (metrics_address_problems("node.metrics_address", address) == []) is ok
    assert (metrics_address_problems("frontend.metrics_address", address) == []) is ok


def test_scrape_configuration_lists_every_target_with_its_labels() -> None:
    text = prometheus_yml(
        "local",
        [
            ScrapeTarget("node-a-1", "node", "dc-a", "127.0.0.1:10001"),
            ScrapeTarget("fe-a", "frontend", "dc-a", "127.0.0.1:10002"),
        ],
    )
    assert 'job_name: "bkv-node"' in text and 'job_name: "bkv-frontend"' in text
    assert '- targets: ["127.0.0.1:10001"]' in text
    assert 'labels: {process: "fe-a", role: "frontend", dc: "dc-a"}' in text


# -- the Grafana dashboard -------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or an aggregation
        names.add(match.group())
    return names


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can export, labelled children made or not yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                "_created"), "gauge": ("",), "info": ("_info",)}  # fmt: skip
    names: set[str] = set()
    for family in registry.collect():
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def exposition(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set().union(*(metric_names(e) for e in exprs))
    exported = exported_names(NodeMetrics().registry) | exported_names(FrontendMetrics().registry)
    assert used, exprs
    assert used <= exported, sorted(used - exported)
    # What the issue names: recoveries by outcome, p99, guesses, lockouts, node health.
    for wanted in ("bkv_node_requests_total", "bkv_node_request_duration_seconds_bucket",
                   "bkv_node_password_evaluations_total", "bkv_node_lockouts_total",
                   "bkv_node_serving"):  # fmt: skip
        assert wanted in used


def test_metric_names_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, op) (rate(bkv_node_request_duration_seconds_bucket"
        '{op="recover_start", job=~"bkv-.*"}[5m]))) / on (x) group_left bkv_node_serving'
    )
    assert metric_names(expr) == {"bkv_node_request_duration_seconds_bucket", "bkv_node_serving"}


# -- deploy: configs, cluster.json, status ---------------------------------------------------


def test_deploy_writes_each_process_a_metrics_address_and_status_lists_it(tmp_path: Path) -> None:
    import tomllib

    from deploy.cli import metrics_table
    from deploy.cluster import Cluster
    from deploy.configs import Layout, frontend_toml, node_toml
    from deploy.pki import create_pki
    from deploy.topology import default_topology_path, load_topology
    from vault_node.config import NodeConfig

    t = load_topology(default_topology_path()).with_ports(lambda n: list(range(54000, 54000 + n)))
    node, fe = t.nodes[0], t.frontends[0]
    layout = Layout(tmp_path)
    eps = [f"127.0.0.1:{m.client_port}" for m in t.etcd]
    hsm = layout.hsm_dir(node.name)
    text = node_toml(t, node, layout, eps, "label", hsm / "c", hsm / "pin", "/m.so", 55001)
    data = tomllib.loads(text)
    assert data["node"]["metrics_address"] == "127.0.0.1:55001"
    assert NodeConfig.from_mapping(data).node.metrics_address == "127.0.0.1:55001"
    fe_data = tomllib.loads(frontend_toml(t, fe, layout, eps, 55002))
    assert fe_data["frontend"]["metrics_address"] == "127.0.0.1:55002"
    assert "metrics_address" not in tomllib.loads(frontend_toml(t, fe, layout, eps))["frontend"]

    names = [n.name for n in t.nodes] + [f.name for f in t.frontends]
    ports = {name: 56000 + i for i, name in enumerate(names)}
    cluster = Cluster(tmp_path)
    state = cluster._initial_state(t, ports)
    assert all(p.ports.get("metrics") == ports[p.name] for p in state.processes if p.role != "etcd")
    create_pki(tmp_path / "pki", [], [fe.name], etcd_users=["root"])  # status reads these
    assert cluster.metrics_addresses() == {
        name: f"127.0.0.1:{port}" for name, port in ports.items()
    }
    statuses = cluster.status()  # nothing runs
    assert {s.name: s.metrics for s in statuses if s.metrics} == cluster.metrics_addresses()
    table = metrics_table(statuses)
    assert f"http://127.0.0.1:{ports[node.name]}/metrics" in table
    cluster._write_scrape_config(state)
    scrape = layout.prometheus_config.read_text()
    assert all(f'"127.0.0.1:{port}"' in scrape for port in ports.values())
