"""The cluster PKI: chains, SANs, usages, and that the two CAs cannot stand in for each other."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from deploy.pki import Pki, create_pki, load_cert

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return create_pki(tmp_path_factory.mktemp("pki"), ["dc-a-node-1"], ["fe-1"], now=NOW)


def _store(path: Path) -> Store:
    return Store([load_cert(path)])


def _server_ok(pki: Pki, ca: Path, leaf: Path, name: str) -> bool:
    try:
        verifier = (
            PolicyBuilder()
            .store(_store(ca))
            .time(NOW)
            .build_server_verifier(
                DNSName(name) if not name[0].isdigit() else IPAddress(ipaddress.ip_address(name))
            )
        )
        verifier.verify(load_cert(leaf), [])
    except VerificationError:
        return False
    return True


def _client_ok(ca: Path, leaf: Path) -> bool:
    try:
        PolicyBuilder().store(_store(ca)).time(NOW).build_client_verifier().verify(
            load_cert(leaf), []
        )
    except VerificationError:
        return False
    return True


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "dc-a-node-1"])
def test_node_server_cert_chains_to_cluster_ca_for_every_san(pki: Pki, name: str) -> None:
    assert _server_ok(pki, pki.cluster_ca.cert, pki.server("dc-a-node-1").cert, name)


def test_server_cert_does_not_match_other_names(pki: Pki) -> None:
    assert not _server_ok(pki, pki.cluster_ca.cert, pki.server("dc-a-node-1").cert, "fe-1")


def test_frontend_has_server_cert_from_cluster_ca(pki: Pki) -> None:
    assert _server_ok(pki, pki.cluster_ca.cert, pki.server("fe-1").cert, "localhost")


def test_frontend_client_cert_accepted_by_frontend_ca_only(pki: Pki) -> None:
    client = pki.frontend_client("fe-1").cert
    assert _client_ok(pki.frontend_ca.cert, client)
    assert not _client_ok(pki.cluster_ca.cert, client)


def test_server_certs_are_not_accepted_as_frontend_clients(pki: Pki) -> None:
    # A vault node trusts the frontend CA only: another node's certificate must not pass.
    assert not _client_ok(pki.frontend_ca.cert, pki.server("dc-a-node-1").cert)
    assert not _client_ok(pki.frontend_ca.cert, pki.server("fe-1").cert)


def test_frontend_client_cert_is_not_a_server_cert(pki: Pki) -> None:
    client = pki.frontend_client("fe-1").cert
    assert not _server_ok(pki, pki.frontend_ca.cert, client, "fe-1")
    assert not _server_ok(pki, pki.cluster_ca.cert, client, "fe-1")
    usages = load_cert(client).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_certificates_expire(pki: Pki) -> None:
    later = NOW + dt.timedelta(days=3000)
    verifier = PolicyBuilder().store(_store(pki.cluster_ca.cert)).time(later)
    with pytest.raises(VerificationError):
        verifier.build_server_verifier(DNSName("localhost")).verify(
            load_cert(pki.server("dc-a-node-1").cert), []
        )


def test_keys_are_p256_and_private_files_0600(pki: Pki) -> None:
    for cert in [pki.cluster_ca, pki.frontend_ca, pki.server("fe-1"), pki.frontend_client("fe-1")]:
        assert stat.S_IMODE(cert.key.stat().st_mode) == 0o600
        pub = load_cert(cert.cert).public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert pub.curve.name == "secp256r1"
    assert stat.S_IMODE(pki.dir.stat().st_mode) == 0o700


def test_cas_are_distinct_and_constrained(pki: Pki) -> None:
    cluster, frontend = load_cert(pki.cluster_ca.cert), load_cert(pki.frontend_ca.cert)
    assert cluster.subject != frontend.subject
    for ca in (cluster, frontend):
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert bc.ca and bc.path_length == 0


def test_extra_ip_sans_for_a_datacenter_host(tmp_path: Path) -> None:
    pki = create_pki(
        tmp_path, ["dc-a-node-1"], ["fe-1"], now=NOW, server_ips={"dc-a-node-1": ["169.254.9.2"]}
    )
    node, fe = pki.server("dc-a-node-1").cert, pki.server("fe-1").cert
    assert _server_ok(pki, pki.cluster_ca.cert, node, "169.254.9.2")
    assert _server_ok(pki, pki.cluster_ca.cert, node, "127.0.0.1")
    assert not _server_ok(pki, pki.cluster_ca.cert, fe, "169.254.9.2")
