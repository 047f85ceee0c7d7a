"""deploy.cluster.free_ports: distinct, bindable ports, below the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket

import pytest

from deploy import cluster
from deploy.cluster import LOWEST_FREE_PORT, ephemeral_range, free_ports

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert 0 < low <= high
    ports = free_ports("127.0.0.1", 40)
    assert len(set(ports)) == 40
    assert all(LOWEST_FREE_PORT <= p < low for p in ports)
    for port in ports:  # released again: a listener can take each one
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        # A window of eight ports that starts at the taken one: it is never returned.
        monkeypatch.setattr(cluster, "LOWEST_FREE_PORT", taken)
        monkeypatch.setattr(cluster, "ephemeral_range", lambda: (taken + 8, taken + 100))
        ports = free_ports("127.0.0.1", 1, rng=random.Random(3))
        assert ports != [taken] and len(ports) == 1


def test_without_room_below_the_range_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "ephemeral_range", lambda: (LOWEST_FREE_PORT + 3, 60999))
    ports = free_ports("127.0.0.1", 3)
    assert len(set(ports)) == 3  # from the kernel's own range, still distinct
