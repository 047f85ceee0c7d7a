"""frontend.toml parsing and validation: every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontend_chatd.config import ConfigError, load_config, parse_config

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def write_toml(tmp_path: Path, *, secret_bytes: int = 32, enrollment: str = "") -> Path:
    for name in [
        "fe.pem",
        "fe.key",
        "ca.pem",
        "client.pem",
        "client.key",
        "etcd-ca.pem",
        "etcd.pem",
        "etcd.key",
    ]:
        (tmp_path / name).write_text("x")
    (tmp_path / "session.key").write_bytes(b"s" * secret_bytes)
    text = f"""
[frontend]
name = "fe-1"
dc = "dc-a"
listen = "127.0.0.1:40001"
session_secret_file = "{tmp_path}/session.key"
enrollment_secret_file = "{enrollment}"
session_ttl_s = 3600
[limits]
account_rate_per_s = 20.0
account_burst = 40
peer_rate_per_s = 200
peer_burst = 400
max_request_bytes = 65536
node_deadline_s = 5.0
[etcd]
endpoints = ["127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579"]
ca = "{tmp_path}/etcd-ca.pem"
cert = "{tmp_path}/etcd.pem"
key = "{tmp_path}/etcd.key"
[tls]
cert = "{tmp_path}/fe.pem"
key = "{tmp_path}/fe.key"
cluster_ca = "{tmp_path}/ca.pem"
client_cert = "{tmp_path}/client.pem"
client_key = "{tmp_path}/client.key"
"""
    path = tmp_path / "frontend.toml"
    path.write_text(text)
    return path


def test_documented_example_loads(tmp_path: Path) -> None:
    config = load_config(write_toml(tmp_path))
    assert config.frontend.dc == "dc-a"
    assert config.limits.peer_rate_per_s == 200.0
    assert config.etcd.endpoints == ("127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579")
    assert config.frontend.enrollment_secret_file == ""
    assert config.etcd.server_name == "bkv-etcd"  # the default
    assert config.etcd.cert == f"{tmp_path}/etcd.pem"
    assert config.validate() == []
    client = config.etcd.client_config()
    client.validate()
    assert client.tls.ca == f"{tmp_path}/etcd-ca.pem" and client.endpoints == config.etcd.endpoints


def test_etcd_tls_and_endpoints_are_checked_with_the_rest(tmp_path: Path) -> None:
    path = write_toml(tmp_path)
    text = path.read_text()
    text = text.replace(
        'endpoints = ["127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579"]',
        'endpoints = ["etcd-a:2379", "etcd-b:2379"]\nserver_name = "etcd.internal"',
    )
    text = text.replace(f'ca = "{tmp_path}/etcd-ca.pem"', 'ca = "etcd-ca.pem"')
    text = text.replace(f'key = "{tmp_path}/etcd.key"', f'key = "{tmp_path}/gone.key"')
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "etcd.endpoints must all be IPv4 (or all IPv6) addresses when there are several: "
        "they form one round-robin gRPC target",
        "etcd.ca must be an absolute path (got 'etcd-ca.pem')",
        f"etcd.key: no such file '{tmp_path}/gone.key'",
    ]
    text = path.read_text().replace('ca = "etcd-ca.pem"\n', "")
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["etcd.ca: missing"]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    path = write_toml(tmp_path, secret_bytes=8, enrollment="relative/enroll.key")
    text = path.read_text()
    text = text.replace('listen = "127.0.0.1:40001"', 'listen = "nowhere"')
    text = text.replace("account_burst = 40", "account_burst = 0")
    text = text.replace("node_deadline_s = 5.0", "node_deadline_s = -1")
    text = text.replace(f'cert = "{tmp_path}/fe.pem"', f'cert = "{tmp_path}/missing.pem"')
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = "\n".join(info.value.problems)
    for expected in [
        "frontend.listen",
        "session_secret_file holds 8 bytes",
        "enrollment_secret_file must be an absolute path",
        "limits.account_burst",
        "limits.node_deadline_s",
        "tls.cert: no such file",
    ]:
        assert expected in problems
    assert len(info.value.problems) == 6


def test_structural_problems_all_listed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"frontend": {"name": 3, "bogus": 1}, "limits": {}, "etcd": {"endpoints": "x"}}
        )
    problems = info.value.problems
    assert "missing table [tls]" in problems
    assert "frontend.bogus: unknown key" in problems
    assert "frontend.name must be a string" in problems
    assert "limits.account_burst: missing" in problems
    assert "etcd.endpoints must be a list of strings" in problems


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[frontend\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
