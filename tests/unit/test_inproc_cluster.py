"""The in-process cluster (tests/inproc_cluster.py): the client library through the real
frontend, relay and node code, in one process, over loopback gRPC with TLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cluster_scenarios import PASSWORD, client_for, register_recover_lockout
from inproc_cluster import InProcessCluster

from bkv.v1 import node_pb2
from client import NotRegistered

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def test_register_recover_lockout_end_to_end(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    register_recover_lockout(inproc_cluster, tmp_path, max_attempts=3)
    # Every guess was evaluated once, no more: 2 right, 1 wrong, then 3 wrong; never once locked.
    assert inproc_cluster.evaluations() == 6


def test_accounts_are_separate_through_the_frontend(
    inproc_cluster: InProcessCluster, tmp_path: Path
) -> None:
    with client_for(inproc_cluster, tmp_path / "alice") as alice:
        alice.create_account()
        alice.register(PASSWORD)
    with client_for(inproc_cluster, tmp_path / "bob") as bob:
        bob.create_account()
        with pytest.raises(NotRegistered):
            bob.recover(PASSWORD)


def test_nodes_accept_frontend_certificates_only(inproc_cluster: InProcessCluster) -> None:
    """A caller that trusts the cluster CA but has no frontend client certificate gets no
    connection to a node (mTLS), as in the multi-process cluster."""
    ca = (inproc_cluster.directory / "pki" / "cluster-ca.crt").read_bytes()
    address = inproc_cluster.nodes[0].address
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)) as channel:
        stub = channel.unary_unary(
            "/bkv.v1.VaultNode/Open",
            request_serializer=node_pb2.OpenRequest.SerializeToString,
            response_deserializer=node_pb2.OpenReply.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub(node_pb2.OpenRequest(account_id="a", envelope=b"x"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_down_is_idempotent_and_up_twice_is_refused(tmp_path: Path) -> None:
    cluster = InProcessCluster(tmp_path / "c")
    with cluster:
        assert cluster.exists() and cluster.client_config_path.is_file()
        with pytest.raises(RuntimeError):
            cluster.up()
    assert not cluster.exists()
    cluster.down()
