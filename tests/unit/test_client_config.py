"""client.toml loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import ClientConfig, ksf_named, load_config, load_fleet_key
from client.errors import ConfigError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "client.toml"
    p.write_text(text)
    return p


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        '[cluster]\nfrontends = ["nohost"]\nfleet_id = "xyz"\nbogus = 1\n'
        '[client]\nksf = "turbo"\ncall_timeout_s = -1\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(p)
    text = str(info.value)
    for part in (
        "unknown key cluster.bogus",
        "'nohost' is not host:port",
        "cluster.ca",
        "server_name",
        "fleet_public_key",
        "fleet_id",
        "client.ksf",
        "call_timeout_s",
    ):
        assert part in text, part


def test_relative_paths_resolve_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "fleet.pub").write_text("x")
    p = _write(
        tmp_path,
        '[cluster]\nfrontends = ["127.0.0.1:1"]\nca = "ca.pem"\nserver_name = "localhost"\n'
        f'fleet_public_key = "fleet.pub"\nfleet_id = "{"ab" * 16}"\n[client]\nksf = "fast"\n',
    )
    cfg = load_config(p)
    assert cfg.ca == str(tmp_path / "ca.pem") and cfg.ksf == "fast" and cfg.source == str(p)
    with pytest.raises(ConfigError, match="not a P-256"):
        load_fleet_key(cfg)


def test_insecure_must_be_a_boolean(tmp_path: Path) -> None:
    """`insecure = "false"` once turned TLS off: a non-empty string was truthy."""
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "fleet.pub").write_text("x")
    base = (
        '[cluster]\nfrontends = ["127.0.0.1:1"]\nca = "ca.pem"\nserver_name = "localhost"\n'
        f'fleet_public_key = "fleet.pub"\nfleet_id = "{"ab" * 16}"\n'
    )
    for bad in ('"false"', '"true"', "0", "1"):
        with pytest.raises(ConfigError, match=r"cluster\.insecure must be true or false"):
            load_config(_write(tmp_path, base + f"insecure = {bad}\n"))
    assert load_config(_write(tmp_path, base + "insecure = false\n")).insecure is False
    assert load_config(_write(tmp_path, base)).insecure is False
    assert load_config(_write(tmp_path, base + "insecure = true\n")).insecure is True


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no client configuration"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(_write(tmp_path, "[cluster\n"))


def test_ksf_presets() -> None:
    fast = ksf_named("fast")
    default = ksf_named("default")
    assert (fast.time_cost, fast.lanes, fast.memory_kib) == (1, 1, 256)  # type: ignore[attr-defined]
    assert (default.time_cost, default.lanes, default.memory_kib) == (3, 4, 65536)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        ksf_named("turbo")


def test_enrollment_token_stays_out_of_repr() -> None:
    cfg = ClientConfig(
        ("127.0.0.1:1",), "", "", "", "00" * 16, insecure=True, enrollment_token="deadbeef"
    )
    assert "deadbeef" not in repr(cfg)
