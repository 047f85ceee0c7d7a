"""vault_node.config: node.toml as docs/architecture.md shows it, every problem reported at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vault_node.config import ConfigError, NodeConfig

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

EXAMPLE = """
[node]
name = "dc-a-node-1"
dc = "dc-a"
listen = "127.0.0.1:40011"
advertise = "127.0.0.1:40011"
max_attempts = 10
ticket_ttl_s = 120
lease_ttl_s = 4
audit_log = "/abs/logs/dc-a-node-1.audit.jsonl"
[etcd]
endpoints = ["127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579"]
ca = "/abs/pki/etcd-ca.pem"
cert = "/abs/pki/etcd-user-bkv-node-dc-a-node-1.pem"
key = "/abs/pki/etcd-user-bkv-node-dc-a-node-1.key"
server_name = "bkv-etcd"
[tls]
ca = "/abs/pki/cluster-ca.pem"
cert = "/abs/pki/dc-a-node-1.pem"
key = "/abs/pki/dc-a-node-1.key"
client_ca = "/abs/pki/frontend-ca.pem"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
softhsm_conf = "/abs/hsm/dc-a-node-1/softhsm2.conf"
token_label = "dc-a-node-1"
pin_file = "/abs/hsm/dc-a-node-1/pin"
[witness]
groups = 256
name = "dc-a-node-1"
serve = true
listen = "127.0.0.1:40111"
peers = [
  "dc-a-node-1=127.0.0.1:40111", "dc-b-node-1=127.0.0.1:40211", "dc-c-node-1=127.0.0.1:40311",
]
ca = "/abs/pki/cluster-ca.pem"
client_cert = "/abs/pki/dc-a-node-1-node-client.pem"
client_key = "/abs/pki/dc-a-node-1-node-client.key"
client_ca = "/abs/pki/node-client-ca.pem"
journal = "/abs/logs/dc-a-node-1.witness.jsonl"
"""


def test_the_documented_example_parses() -> None:
    config = NodeConfig.from_mapping(tomllib.loads(EXAMPLE))
    assert config.node.name == "dc-a-node-1" and config.node.lease_ttl_s == 4
    assert config.etcd.endpoints == ("127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579")
    assert config.tls.client_ca == "/abs/pki/frontend-ca.pem"
    assert config.etcd.ca == "/abs/pki/etcd-ca.pem" and config.etcd.server_name == "bkv-etcd"
    assert config.node.checkpoint_interval_ms == 1000 and config.node.compact_delay_ms == 500
    assert config.witness.serve and config.witness.groups == 256
    assert set(config.witness.peer_map()) == {"dc-a-node-1", "dc-b-node-1", "dc-c-node-1"}
    assert config.hsm.token_label == "dc-a-node-1"
    with pytest.raises(AttributeError):
        config.node.name = "x"  # type: ignore[misc]


def test_the_witness_set_is_checked() -> None:
    data = tomllib.loads(EXAMPLE)
    data["witness"]["peers"] = ["dc-b-node-1=127.0.0.1:40211", "nonsense"]
    data["witness"]["groups"] = 0
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_mapping(data)
    joined = "\n".join(info.value.problems)
    for needle in ("witness.groups", "name=host:port", "not in witness.peers"):
        assert needle in joined
    data = tomllib.loads(EXAMPLE)
    data["witness"]["serve"] = False
    with pytest.raises(ConfigError, match="serve is off"):
        NodeConfig.from_mapping(data)


def test_every_problem_is_reported_at_once() -> None:
    text = (
        EXAMPLE.replace('listen = "127.0.0.1:40011"', 'listen = "nowhere"')
        .replace("max_attempts = 10", "max_attempts = 0")
        .replace("lease_ttl_s = 4", "lease_ttl_s = 1")
        .replace('key = "/abs/pki/dc-a-node-1.key"', 'key = "relative.key"')
        .replace('token_label = "dc-a-node-1"', 'token_label = ""')
        .replace('ca = "/abs/pki/etcd-ca.pem"', 'ca = "etcd-ca.pem"')
        .replace("lease_ttl_s = 1", "lease_ttl_s = 1\ncheckpoint_interval_ms = 5")
    )
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_mapping(tomllib.loads(text))
    joined = "\n".join(info.value.problems)
    needles = (
        "node.listen", "node.max_attempts", "node.lease_ttl_s", "tls.key", "token_label",
        "etcd.ca", "node.checkpoint_interval_ms",
    )  # fmt: skip
    for needle in needles:
        assert needle in joined
    assert len(info.value.problems) == 7


def test_unknown_missing_and_mistyped_keys_are_reported_together() -> None:
    data = tomllib.loads(EXAMPLE)
    del data["node"]["dc"]
    data["node"]["colour"] = "blue"
    data["node"]["max_attempts"] = "ten"
    data["etcd"]["endpoints"] = "127.0.0.1:2379"
    data["extra"] = {}
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_mapping(data)
    joined = "\n".join(info.value.problems)
    for needle in ("node.dc", "node.colour", "node.max_attempts", "etcd.endpoints", "[extra]"):
        assert needle in joined


def test_value_problems_are_reported_next_to_missing_keys() -> None:
    data = tomllib.loads(EXAMPLE)
    del data["node"]["dc"]
    data["node"]["listen"] = "nowhere"
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_mapping(data)
    joined = "\n".join(info.value.problems)
    assert "missing key node.dc" in joined and "node.listen" in joined


def test_missing_node_section() -> None:
    with pytest.raises(ConfigError, match=r"\[node\]"):
        NodeConfig.from_mapping({})


def test_load_checks_files(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(EXAMPLE)
    with pytest.raises(ConfigError) as info:
        NodeConfig.load(path)
    assert any("does not exist" in p for p in info.value.problems)
    assert NodeConfig.load(path, check_files=False).node.dc == "dc-a"
    (tmp_path / "bad.toml").write_text("[node\n")
    with pytest.raises(ConfigError, match="cannot read"):
        NodeConfig.load(tmp_path / "bad.toml")


def test_the_account_key_settings_are_validated() -> None:
    """Key loss's rebind delay (0..365 days, 7 by default) and the bound on a signed request's
    timestamp ahead of the node's clock (1..86400 s, 600 by default): issue 17."""
    config = NodeConfig.from_mapping(tomllib.loads(EXAMPLE))
    assert config.node.account_rebind_delay_s == 7 * 86_400
    assert config.node.account_auth_max_future_s == 600
    data = tomllib.loads(EXAMPLE)
    data["node"]["account_rebind_delay_s"] = -1
    data["node"]["account_auth_max_future_s"] = 0
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_mapping(data)
    joined = "\n".join(info.value.problems)
    assert "node.account_rebind_delay_s" in joined and "node.account_auth_max_future_s" in joined
