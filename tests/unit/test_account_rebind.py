"""deploy.account_rebind: the operator's half of a key loss, without etcd (the real cluster's
run is in tests/integration/test_account_keys.py)."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.account_rebind import RebindError, parse_public_key, rebound_keys
from deploy.topology import default_topology_path, load_topology
from vault_common.account_binding import decode_binding, encode_binding

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

OLD, NEW, OTHER = b"o" * 32, b"n" * 32, b"x" * 32


def test_the_new_key_goes_beside_the_bound_one_which_stays_first() -> None:
    assert rebound_keys((OLD,), NEW, replace=False) == (OLD, NEW)
    assert rebound_keys((OLD, OTHER), NEW, replace=False) == (OLD, NEW)  # a second loss
    assert rebound_keys((), NEW, replace=False) == (NEW,)  # never logged in: just bound
    assert rebound_keys((NEW,), NEW, replace=False) == (NEW,)
    assert rebound_keys((OLD, NEW), NEW, replace=True) == (NEW,)


def test_bindings_round_trip_and_a_malformed_one_lets_nobody_in() -> None:
    assert decode_binding(encode_binding([OLD, NEW])) == (OLD, NEW)
    assert decode_binding(OLD) == (OLD,)
    for bad in (b"", b"x" * 31, b"x" * 33, b"x" * 96):
        assert decode_binding(bad) == ()
    with pytest.raises(ValueError):
        encode_binding([OLD, NEW, OTHER])


def test_the_public_key_is_64_hex_digits() -> None:
    assert parse_public_key(" " + NEW.hex() + "\n") == NEW
    for bad in ("", "zz" * 32, NEW.hex()[:-2], NEW.hex() + "00"):
        with pytest.raises(RebindError):
            parse_public_key(bad)


def test_the_rebind_delay_is_a_validated_topology_option() -> None:
    topology = load_topology(default_topology_path())
    assert topology.options.account_rebind_delay_s == 7 * 86_400
    for bad in (-1, 365 * 86_400 + 1):
        options = dataclasses.replace(topology.options, account_rebind_delay_s=bad)
        assert any("account_rebind_delay_s" in p for p in options.problems())
