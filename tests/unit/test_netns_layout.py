"""The namespace lab's names and addresses, without making any namespace (pure)."""

from __future__ import annotations

import random

import pytest

from bkv_chaos.netns import NetnsLab, choose_subnet
from deploy.topology import default_topology_path, load_topology

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def _lab() -> NetnsLab:
    return NetnsLab("ab12cd", ("dc-a", "dc-b", "dc-c"), subnet=42)


def test_names_fit_interfaces_and_carry_the_run_id() -> None:
    lab = _lab()
    assert lab.problems() == []
    assert lab.namespace("dc-b") == "bkv-ab12cd-dc-b"
    assert all(len(lab.host_link(i)) <= 15 for i in range(8))
    assert lab.host_link(2) == "bkvab12cdh2"


def test_every_address_is_link_local_and_distinct() -> None:
    lab = _lab()
    hosts = [lab.dc_host(dc) for dc in lab.dcs]
    assert hosts == ["169.254.42.2", "169.254.42.6", "169.254.42.10"]
    mesh = [lab._mesh_addr(i, j, side) for i, j in lab._pairs() for side in (1, 2)]
    assert len(set(mesh + hosts)) == len(mesh) + len(hosts)
    assert all(a.startswith("169.254.42.") for a in mesh)


def test_apply_puts_each_dc_in_its_namespace() -> None:
    lab = _lab()
    t = lab.apply(load_topology(default_topology_path()))
    t.validate()
    assert t.host_of("dc-c") == "169.254.42.10"
    assert t.prefix_of("dc-c") == ("ip", "netns", "exec", "bkv-ab12cd-dc-c")
    with pytest.raises(ValueError, match="no namespace for dc-c"):
        NetnsLab("ab12cd", ("dc-a", "dc-b"), 42).apply(t)


def test_bad_labs_report_every_problem_and_subnets_avoid_used_ones() -> None:
    bad = NetnsLab("A!", ("dc-a",), subnet=169)
    assert len(bad.problems()) == 3
    used = set(range(0, 256)) - {7}
    assert choose_subnet(used, random.Random(1)) == 7
    with pytest.raises(OSError):
        choose_subnet(set(range(256)), random.Random(1))
