"""Topology files: the bundled one parses, and every problem of a bad one is reported at once."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deploy.errors import TopologyError
from deploy.topology import (
    Options,
    default_topology_path,
    load_topology,
    parse_topology,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def _base() -> dict[str, Any]:
    return load_topology(default_topology_path()).to_dict()


def _problems(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as info:
        parse_topology(data)
    return info.value.problems


def test_bundled_topology_has_three_dcs_two_nodes_each_two_frontends() -> None:
    t = load_topology(default_topology_path())
    assert t.datacenters == ("dc-a", "dc-b", "dc-c")
    assert [(m.name, m.dc) for m in t.etcd] == [
        ("etcd-dc-a", "dc-a"), ("etcd-dc-b", "dc-b"), ("etcd-dc-c", "dc-c"),
    ]  # fmt: skip
    for dc in t.datacenters:
        assert len([n for n in t.nodes if n.dc == dc]) == 2
    assert [(f.name, f.dc) for f in t.frontends] == [("fe-1", "dc-a"), ("fe-2", "dc-b")]
    assert t.unassigned_ports() == 3 * 2 + 6 + 3 + 2  # etcd, nodes, witnesses, frontends
    assert (t.options.witnesses_per_dc, t.options.record_groups) == (1, 256)
    assert t.options.etcd_fsync is True
    assert t.options.etcd_election_ms >= 5 * t.options.etcd_heartbeat_ms
    # Erased records leave etcd's history within minutes even on an idle cluster.
    assert (t.options.etcd_compaction_mode, t.options.etcd_compaction_retention) == (
        "periodic", "5m",
    )  # fmt: skip


def test_round_trip_through_dict() -> None:
    t = load_topology(default_topology_path())
    assert parse_topology(t.to_dict()) == t


def test_with_ports_fills_only_zero_ports_and_keeps_fixed_ones() -> None:
    data = _base()
    data["frontend"][0]["port"] = 40001
    t = parse_topology(data)
    filled = t.with_ports(lambda n: list(range(50000, 50000 + n)))
    assert filled.unassigned_ports() == 0
    assert filled.frontends[0].port == 40001
    ports = [p for m in filled.etcd for p in (m.client_port, m.peer_port)]
    ports += [n.port for n in filled.nodes] + [f.port for f in filled.frontends]
    ports += [n.witness_port for n in filled.witness_nodes()]
    assert len(set(ports)) == len(ports)
    filled.validate()


# ---- witnesses -------------------------------------------------------------------------------


def _nodes(dc: str, count: int) -> list[dict[str, Any]]:
    return [{"name": f"{dc}-node-{i + 1}", "port": 0} for i in range(count)]


def test_the_witnesses_are_the_first_nodes_of_each_datacenter_in_topology_order() -> None:
    t = load_topology(default_topology_path())
    assert [n.name for n in t.witness_nodes()] == ["dc-a-node-1", "dc-b-node-1", "dc-c-node-1"]
    assert t.is_witness("dc-b-node-1") and not t.is_witness("dc-b-node-2")
    data = _base()
    data["options"]["witnesses_per_dc"] = 2
    data["datacenter"][1]["nodes"] = _nodes("dc-b", 3)[::-1]  # topology order, not name order
    t = parse_topology(data)
    assert [n.name for n in t.witness_nodes()] == [
        "dc-a-node-1", "dc-a-node-2", "dc-b-node-3", "dc-b-node-2", "dc-c-node-1", "dc-c-node-2",
    ]  # fmt: skip
    # The order follows the datacenters' order, whatever the order of the node list.
    reordered = replace(t, nodes=tuple(sorted(t.nodes, key=lambda n: n.name, reverse=True)))
    assert [n.dc for n in reordered.witness_nodes()] == ["dc-a"] * 2 + ["dc-b"] * 2 + ["dc-c"] * 2


def test_a_datacenter_without_vault_nodes_has_no_witness() -> None:
    data = _base()
    data["datacenter"][2]["nodes"] = []
    t = parse_topology(data)
    assert [n.name for n in t.witness_nodes()] == ["dc-a-node-1", "dc-b-node-1"]


def test_witnesses_per_dc_and_record_groups_are_bounded() -> None:
    data = _base()
    data["options"]["witnesses_per_dc"] = 3  # every data centre has two nodes
    data["options"]["record_groups"] = 65537
    assert _problems(data) == (
        "options.witnesses_per_dc = 3 but datacenter 'dc-a' has only 2 vault nodes",
        "options.witnesses_per_dc = 3 but datacenter 'dc-b' has only 2 vault nodes",
        "options.witnesses_per_dc = 3 but datacenter 'dc-c' has only 2 vault nodes",
        "options.record_groups must be between 1 and 65536",
    )
    assert Options(witnesses_per_dc=0).problems() == ["options.witnesses_per_dc must be >= 1"]
    assert Options(record_groups=0).problems() == [
        "options.record_groups must be between 1 and 65536"
    ]
    for good in (1, 256, 65536):
        assert Options(record_groups=good).problems() == []
    # At most 15 witnesses (what a node accepts in witness.peers).
    data = _base()
    data["options"]["witnesses_per_dc"] = 6
    for i, dc in enumerate(("dc-a", "dc-b", "dc-c")):
        data["datacenter"][i]["nodes"] = _nodes(dc, 6)
    assert _problems(data) == ("options.witnesses_per_dc = 6 makes 18 witnesses (at most 15)",)
    data["options"]["witnesses_per_dc"] = 5
    assert len(parse_topology(data).witness_nodes()) == 15


def test_with_ports_gives_witnesses_a_witness_port_and_no_one_else() -> None:
    data = _base()
    data["datacenter"][1]["nodes"][0]["witness_port"] = 41111  # a fixed one is kept
    t = parse_topology(data)
    filled = t.with_ports(lambda n: list(range(50000, 50000 + n)))
    assert filled.unassigned_ports() == 0
    by_name = {n.name: n for n in filled.nodes}
    assert by_name["dc-b-node-1"].witness_port == 41111
    assert by_name["dc-a-node-1"].witness_port >= 50000
    assert by_name["dc-c-node-1"].witness_port >= 50000
    assert [by_name[f"{dc}-node-2"].witness_port for dc in ("dc-a", "dc-b", "dc-c")] == [0] * 3
    assert parse_topology(filled.to_dict()) == filled


def test_a_witness_port_must_be_unique_and_only_on_a_witness() -> None:
    data = _base()
    data["datacenter"][0]["nodes"][0]["witness_port"] = 41111
    data["datacenter"][1]["nodes"][0]["port"] = 41111
    data["datacenter"][2]["nodes"][1]["witness_port"] = 41112
    text = "\n".join(_problems(data))
    assert "node dc-b-node-1.port = 41111 is also used by node dc-a-node-1.witness_port" in text
    assert (
        "node dc-c-node-2.witness_port = 41112: it is no witness (witnesses are the first "
        "options.witnesses_per_dc = 1 of its data centre), so it must be 0"
    ) in text


def test_names_whose_certificate_files_would_clash_are_refused() -> None:
    data = _base()
    data["frontend"][0]["name"] = "dc-a-node-1-node"  # its client cert = dc-a-node-1's node one
    data["frontend"][1]["name"] = "etcd-user-root"  # its server cert = root's etcd certificate
    assert _problems(data) == (
        "frontend 'dc-a-node-1-node' and vault node 'dc-a-node-1' would both write "
        "pki/dc-a-node-1-node-client.pem: rename one",
        "etcd user 'root' and frontend 'etcd-user-root' would both write "
        "pki/etcd-user-root.pem: rename one",
    )
    data = _base()
    data["frontend"][0]["name"] = "cluster-ca"
    assert _problems(data) == (
        "CA 'cluster-ca' and frontend 'cluster-ca' would both write pki/cluster-ca.pem: rename one",
    )
    # A name used twice is reported once, as such.
    data = _base()
    data["frontend"][0]["name"] = "dc-a-node-1"
    assert _problems(data) == ("process name 'dc-a-node-1' is used twice",)


def test_every_problem_is_reported_at_once() -> None:
    data = _base()
    data["cluster"]["host"] = "10.0.0.1"
    data["options"]["etcd_election_ms"] = 200  # < 5 x heartbeat 100
    data["options"]["max_attempts"] = 0
    data["options"]["etcd_fsync"] = "yes"
    data["options"]["bogus"] = 1
    data["datacenter"][1]["name"] = "dc-a"  # duplicate
    data["datacenter"][2]["nodes"][0]["name"] = "dc-a-node-1"  # duplicate process name
    data["datacenter"][2]["nodes"][1]["port"] = 70000
    data["frontend"][1]["dc"] = "dc-z"
    data["frontend"][0]["port"] = 40001
    data["datacenter"][0]["nodes"][0]["port"] = 40001
    problems = _problems(data)
    text = "\n".join(problems)
    for expected in (
        "cluster.host '10.0.0.1': the local launcher binds loopback only",
        "etcd_election_ms must be >= 5 x etcd_heartbeat_ms",
        "max_attempts must be between 1 and 1000",
        "options.etcd_fsync must be a bool",
        "options.bogus is not a known setting",
        "datacenter 'dc-a' is declared twice",
        "process name 'dc-a-node-1' is used twice",
        "= 70000 is not a port number",
        "unknown datacenter 'dc-z'",
        "= 40001 is also used by",
    ):
        assert expected in text, expected
    assert len(problems) >= 10


def test_missing_sections_are_reported_together() -> None:
    problems = _problems({"cluster": {"name": "x"}})
    assert "at least one [[datacenter]] is required" in problems
    assert "at least one etcd member is required" in problems
    assert "at least one vault node is required" in problems
    assert "at least one frontend is required" in problems


def test_wrong_shapes_and_names() -> None:
    data = _base()
    data["datacenter"][0]["nodes"] = "two"
    data["frontend"][0]["name"] = "FE 1"
    data["frontend"][1].pop("dc")
    data["cluster"]["name"] = "Local!"
    problems = _problems(data)
    text = "\n".join(problems)
    assert "datacenter[0].nodes must be an array of tables" in text
    assert "frontend name 'FE 1' must match" in text
    assert "frontend[1].dc is required" in text
    assert "cluster.name 'Local!' must match" in text


def test_two_etcd_members_in_one_dc_is_rejected() -> None:
    data = _base()
    data["datacenter"].append(copy.deepcopy(data["datacenter"][0]))
    data["datacenter"][-1]["name"] = "dc-a"
    data["datacenter"][-1]["etcd"]["name"] = "etcd-dc-a-2"
    data["datacenter"][-1]["nodes"] = []
    assert "datacenter 'dc-a' has 2 etcd members (at most one)" in _problems(data)


def test_options_compaction_and_ints_as_floats() -> None:
    data = _base()
    data["options"]["etcd_compaction_mode"] = "never"
    data["options"]["start_timeout_s"] = 30  # an int where a float is expected is fine
    text = "\n".join(_problems(data))
    assert "etcd_compaction_mode must be one of" in text
    data["options"]["etcd_compaction_mode"] = "periodic"
    data["options"]["etcd_compaction_retention"] = "5m"
    assert parse_topology(data).options.start_timeout_s == 30.0


def test_revision_retention_must_be_a_count() -> None:
    revision = Options(etcd_compaction_mode="revision", etcd_compaction_retention="5m")
    assert any("positive revision count" in p for p in revision.problems())
    assert (
        Options(etcd_compaction_mode="revision", etcd_compaction_retention="1000").problems() == []
    )
    assert Options().problems() == []


def test_compaction_defaults_to_periodic_five_minutes_and_checks_the_duration() -> None:
    assert (Options().etcd_compaction_mode, Options().etcd_compaction_retention) == (
        "periodic", "5m",
    )  # fmt: skip
    for good in ("5m", "1h", "90s", "1h30m", "0.5h", "2"):
        assert Options(etcd_compaction_retention=good).problems() == [], good
    for bad in ("0", "0m", "five", "5 m", "-5m", "m", "5d", "0.5"):
        problems = Options(etcd_compaction_retention=bad).problems()
        assert problems == [
            "options.etcd_compaction_retention must be a positive duration such as '5m' or '1h' "
            "(a bare number is hours)"
        ], bad


def test_names_must_fit_their_etcd_users_common_name() -> None:
    data = _base()
    data["datacenter"][0]["nodes"][0]["name"] = "n" * 55  # bkv-node- + 55 = 64: fits
    data["frontend"][0]["name"] = "f" * 52  # bkv-frontend- + 52 = 65: does not
    problems = _problems(data)
    assert problems == (
        f"frontend name {'f' * 52!r} is too long: its etcd user 'bkv-frontend-{'f' * 52}' must "
        "fit a certificate's common name (64 characters)",
    )


def test_etcd_gomaxprocs_is_gos_default_unless_set_and_bounded() -> None:
    assert Options().etcd_gomaxprocs == 0  # Go's default: one thread per core
    assert Options(etcd_gomaxprocs=1).problems() == []
    for bad in (-1, 1025):
        assert Options(etcd_gomaxprocs=bad).problems() == [
            "options.etcd_gomaxprocs must be between 0 (Go's default) and 1024"
        ]


def test_event_loop_is_one_of_the_known_loops() -> None:
    assert Options().event_loop == "uvloop"
    assert Options(event_loop="asyncio").problems() == []
    assert Options(event_loop="trio").problems() == [
        "options.event_loop must be one of ('uvloop', 'asyncio')"
    ]


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\n")
    with pytest.raises(TopologyError, match="not valid TOML"):
        load_topology(bad)


def _with_network(data: dict[str, Any], i: int, host: str, prefix: list[str]) -> None:
    data["datacenter"][i]["host"] = host
    data["datacenter"][i]["command_prefix"] = prefix


def test_a_datacenter_may_run_on_its_own_link_local_host_in_a_namespace() -> None:
    data = _base()
    _with_network(data, 0, "169.254.9.2", ["ip", "netns", "exec", "bkv-x-dc-a"])
    t = parse_topology(data)
    assert t.host_of("dc-a") == "169.254.9.2" and t.host_of("dc-b") == t.host == "127.0.0.1"
    assert t.prefix_of("dc-a") == ("ip", "netns", "exec", "bkv-x-dc-a")
    assert t.prefix_of("dc-b") == ()
    assert t.hosts() == ["127.0.0.1", "169.254.9.2"]
    assert parse_topology(t.to_dict()) == t
    # The default topology has no per-DC network and writes none.
    assert all("host" not in dc for dc in _base()["datacenter"])


def test_datacenter_hosts_must_be_loopback_or_link_local_in_a_namespace() -> None:
    data = _base()
    _with_network(data, 0, "10.1.2.3", ["ip", "netns", "exec", "n"])
    _with_network(data, 1, "169.254.9.6", [])
    _with_network(data, 2, "not-an-ip", ["x", ""])
    text = "\n".join(_problems(data))
    assert "datacenter 'dc-a': host '10.1.2.3' must be loopback or 169.254.0.0/16" in text
    assert "datacenter 'dc-b': host '169.254.9.6' needs a command_prefix" in text
    assert "datacenter 'dc-c': host 'not-an-ip' is not an IP address" in text
    assert "datacenter[2].command_prefix must be an array of non-empty strings" in text


def test_etcd_peer_proxy_port_is_advertised_to_every_member(tmp_path: Path) -> None:
    from deploy.etcd import etcd_argv, member_hosts
    from deploy.pki import Pki

    data = _base()
    data["datacenter"][2]["etcd"]["advertise_peer_port"] = 41999
    t = parse_topology(data).with_ports(lambda n: list(range(50000, 50000 + n)))
    assert parse_topology(t.to_dict()) == t
    c = t.etcd[2]
    for member in t.etcd:
        argv = etcd_argv(
            member, t.etcd, host=t.host, options=t.options, pki=Pki(tmp_path),
            data_dir=tmp_path, log_file=tmp_path / "log", fsync=False, hosts=member_hosts(t),
        )  # fmt: skip
        initial = argv[argv.index("--initial-cluster") + 1]
        assert f"{c.name}=https://127.0.0.1:41999" in initial
        listen = argv[argv.index("--listen-peer-urls") + 1]
        assert listen == f"https://127.0.0.1:{member.peer_port}"
    advertised = argv[argv.index("--initial-advertise-peer-urls") + 1]
    assert advertised == "https://127.0.0.1:41999"  # the last argv is that member's


def test_etcd_peer_proxy_is_loopback_only_and_its_port_unique() -> None:
    data = _base()
    data["datacenter"][0]["etcd"]["advertise_peer_port"] = 41999
    data["datacenter"][0]["etcd"]["client_port"] = 41999
    _with_network(data, 0, "169.254.9.2", ["ip", "netns", "exec", "n"])
    text = "\n".join(_problems(data))
    assert "advertise_peer_port = 41999 is also used by" in text
    assert "etcd etcd-dc-a.advertise_peer_port: the peer proxy runs on loopback only" in text
