"""node.toml and frontend.toml name each process's own etcd identity (CA, certificate, key, TLS
name), as absolute paths."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from deploy.configs import Layout, frontend_toml, node_toml
from deploy.topology import default_topology_path, load_topology

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def test_node_and_frontend_get_their_own_etcd_client_certificate(tmp_path: Path) -> None:
    t = load_topology(default_topology_path()).with_ports(lambda n: list(range(53000, 53000 + n)))
    layout = Layout(tmp_path)
    eps = [f"127.0.0.1:{m.client_port}" for m in t.etcd]
    node = t.nodes[3]
    node_etcd = tomllib.loads(
        node_toml(t, node, layout, eps, node.name, tmp_path / "conf", tmp_path / "pin", "m.so")
    )["etcd"]
    pki = tmp_path / "pki"
    assert node_etcd == {
        "endpoints": eps,
        "ca": str(pki / "etcd-ca.pem"),
        "cert": str(pki / f"etcd-user-bkv-node-{node.name}.pem"),
        "key": str(pki / f"etcd-user-bkv-node-{node.name}.key"),
        "server_name": "bkv-etcd",
    }
    fe_etcd = tomllib.loads(frontend_toml(t, t.frontends[1], layout, eps))["etcd"]
    assert fe_etcd == {
        "endpoints": eps,
        "ca": str(pki / "etcd-ca.pem"),
        "cert": str(pki / "etcd-user-bkv-frontend-fe-2.pem"),
        "key": str(pki / "etcd-user-bkv-frontend-fe-2.key"),
        "server_name": "bkv-etcd",
    }
    assert all(Path(fe_etcd[k]).is_absolute() for k in ("ca", "cert", "key"))
