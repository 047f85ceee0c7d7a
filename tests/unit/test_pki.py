"""The cluster PKI: chains, SANs, usages, and that no CA or certificate can stand in for another.

The node client CA signs only the vault nodes' client certificates, which witnesses accept.

etcd's part: the etcd CA signs member server certificates (name `bkv-etcd`) and user client
certificates (CN = the etcd user); the etcd peer CA signs only the members' peer certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from deploy.pki import ETCD_TLS_NAME, Pki, create_pki, load_cert

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


ETCD_USERS = ["root", "bkv-node-dc-a-node-1", "bkv-frontend-fe-1"]
NODES = ["dc-a-node-1", "dc-b-node-1"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return create_pki(
        tmp_path_factory.mktemp("pki"), ["dc-a-node-1"], ["fe-1"], now=NOW,
        etcd_members={"etcd-dc-a": ["127.0.0.1"], "etcd-dc-b": ["169.254.9.6"]},
        etcd_users=ETCD_USERS, nodes=NODES,
    )  # fmt: skip


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
    etcd = [pki.etcd_ca, pki.etcd_peer_ca, pki.etcd_member("etcd-dc-a"), pki.etcd_peer("etcd-dc-a")]
    etcd += [pki.etcd_user(u) for u in ETCD_USERS]
    every = [pki.cluster_ca, pki.frontend_ca, pki.server("fe-1"), pki.frontend_client("fe-1")]
    every += [pki.node_client_ca, *(pki.node_client(n) for n in NODES)]
    # Every key file of the directory (etcd-dc-b's and dc-a-node-1's too) is 0600.
    keys = list(pki.dir.glob("*.key"))
    assert len(keys) == len(every + etcd) + 3
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    for cert in [*every, *etcd]:
        assert stat.S_IMODE(cert.key.stat().st_mode) == 0o600
        pub = load_cert(cert.cert).public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert pub.curve.name == "secp256r1"
    assert stat.S_IMODE(pki.dir.stat().st_mode) == 0o700


def test_cas_are_distinct_and_constrained(pki: Pki) -> None:
    cas = [load_cert(p.cert) for p in pki.cas()]
    assert pki.cas() == (pki.cluster_ca, pki.frontend_ca, pki.node_client_ca, pki.etcd_ca,
                         pki.etcd_peer_ca)  # fmt: skip
    assert len({ca.subject for ca in cas}) == 5
    assert len({ca.fingerprint(hashes.SHA256()) for ca in cas}) == 5
    for ca in cas:
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


# ---- node client certificates (witness calls) ------------------------------------------------


@pytest.mark.parametrize("node", NODES)
def test_node_client_cert_is_a_client_named_by_the_node_under_the_node_client_ca(
    pki: Pki, node: str
) -> None:
    paths = pki.node_client(node)
    assert (paths.cert.name, paths.key.name) == (
        f"{node}-node-client.pem",
        f"{node}-node-client.key",
    )
    assert pki.node_client_ca.cert.name == "node-client-ca.pem"
    assert pki.node_client_ca.key.name == "node-client-ca.key"
    assert _cn(paths.cert) == node
    assert _usages(paths.cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _sans(paths.cert) == [node]  # its name only: no localhost, no IP
    assert _client_ok(pki.node_client_ca.cert, paths.cert)
    # Signed by the node client CA alone: a node (which trusts the frontend CA) refuses it as a
    # frontend, and no other CA of the cluster vouches for it.
    for other in (pki.frontend_ca, pki.cluster_ca, pki.etcd_ca, pki.etcd_peer_ca):
        assert not _client_ok(other.cert, paths.cert)
        assert not _etcd_client_ok(other.cert, paths.cert)
    # It serves as nothing: no serverAuth, whatever CA and name a verifier uses.
    for ca in (pki.node_client_ca, pki.cluster_ca):
        for name in ("localhost", "127.0.0.1", node):
            assert not _server_ok(pki, ca.cert, paths.cert, name)


def test_a_witness_accepts_no_frontend_and_no_server_certificate(pki: Pki) -> None:
    ca = pki.node_client_ca.cert
    for other in (pki.frontend_client("fe-1"), pki.server("dc-a-node-1"), pki.server("fe-1"),
                  pki.etcd_user("bkv-node-dc-a-node-1"), pki.etcd_peer("etcd-dc-a")):  # fmt: skip
        assert not _client_ok(ca, other.cert)
        assert not _etcd_client_ok(ca, other.cert)


def test_a_witness_serves_its_nodes_server_certificate(pki: Pki) -> None:
    # The witness port shows the node's ordinary server certificate: callers verify it with
    # the cluster CA, by the witness's name.
    assert _server_ok(pki, pki.cluster_ca.cert, pki.server("dc-a-node-1").cert, "dc-a-node-1")
    assert not _server_ok(
        pki, pki.node_client_ca.cert, pki.server("dc-a-node-1").cert, "dc-a-node-1"
    )


# ---- etcd ------------------------------------------------------------------------------------


def _usages(path: Path) -> list[x509.ObjectIdentifier]:
    return list(load_cert(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(path: Path) -> list[str]:
    try:
        ext = load_cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in ext.value]


def _etcd_client_ok(ca: Path, leaf: Path) -> bool:
    """What etcd (Go's verifier) checks of a client certificate without SANs: signed by `ca`
    and usable for clientAuth. (cryptography's client verifier insists on a SAN.)"""
    cert = load_cert(leaf)
    try:
        cert.verify_directly_issued_by(load_cert(ca))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in _usages(leaf) and NOW < cert.not_valid_after_utc


def _cn(path: Path) -> str:
    attrs = load_cert(path).subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(attrs[0].value)


@pytest.mark.parametrize("name", [ETCD_TLS_NAME, "localhost", "127.0.0.1"])
def test_etcd_member_server_cert_serves_the_etcd_names(pki: Pki, name: str) -> None:
    member = pki.etcd_member("etcd-dc-a").cert
    assert _server_ok(pki, pki.etcd_ca.cert, member, name)
    # ... under the etcd CA only: no other CA of the cluster vouches for it.
    for other in (pki.cluster_ca, pki.frontend_ca, pki.etcd_peer_ca):
        assert not _server_ok(pki, other.cert, member, name)


def test_etcd_member_server_cert_usages_and_sans(pki: Pki) -> None:
    assert _usages(pki.etcd_member("etcd-dc-a").cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _sans(pki.etcd_member("etcd-dc-a").cert) == [ETCD_TLS_NAME, "localhost", "127.0.0.1"]
    # A member on its own host carries that IP too (etcdctl checks the endpoint's host).
    assert _sans(pki.etcd_member("etcd-dc-b").cert) == [
        ETCD_TLS_NAME, "localhost", "127.0.0.1", "169.254.9.6",
    ]  # fmt: skip
    assert _server_ok(pki, pki.etcd_ca.cert, pki.etcd_member("etcd-dc-b").cert, "169.254.9.6")
    assert not _server_ok(pki, pki.etcd_ca.cert, pki.etcd_member("etcd-dc-a").cert, "169.254.9.6")
    # A server certificate is no client certificate: it cannot act as an etcd user.
    assert not _etcd_client_ok(pki.etcd_ca.cert, pki.etcd_member("etcd-dc-a").cert)


def test_etcd_peer_certs_are_server_and_client_under_the_peer_ca_only(pki: Pki) -> None:
    peer = pki.etcd_peer("etcd-dc-b").cert
    assert _usages(peer) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _sans(peer) == ["169.254.9.6"]
    assert _sans(pki.etcd_peer("etcd-dc-a").cert) == ["127.0.0.1"]
    assert _server_ok(pki, pki.etcd_peer_ca.cert, peer, "169.254.9.6")
    assert _client_ok(pki.etcd_peer_ca.cert, peer)
    assert _etcd_client_ok(pki.etcd_peer_ca.cert, peer)
    # The client port trusts the etcd CA, which never signed a peer certificate.
    assert not _etcd_client_ok(pki.etcd_ca.cert, peer)
    assert not _server_ok(pki, pki.etcd_ca.cert, peer, "169.254.9.6")


@pytest.mark.parametrize("user", ETCD_USERS)
def test_etcd_user_certs_are_clients_named_by_their_cn(pki: Pki, user: str) -> None:
    cert = pki.etcd_user(user).cert
    assert _cn(cert) == user  # etcd takes the CN as the user name
    assert _usages(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _sans(cert) == []
    assert _etcd_client_ok(pki.etcd_ca.cert, cert)
    # ... and the peer port, which trusts the peer CA alone, refuses every user: none can pose
    # as a member.
    assert not _etcd_client_ok(pki.etcd_peer_ca.cert, cert)
    assert not _etcd_client_ok(pki.frontend_ca.cert, cert)


@pytest.mark.parametrize("user", ETCD_USERS)
@pytest.mark.parametrize("name", [ETCD_TLS_NAME, "localhost", "127.0.0.1"])
def test_etcd_user_certs_cannot_serve_as_an_etcd_member(pki: Pki, user: str, name: str) -> None:
    assert not _server_ok(pki, pki.etcd_ca.cert, pki.etcd_user(user).cert, name)


def test_frontend_and_node_certs_are_no_etcd_identity(pki: Pki) -> None:
    for cert in (pki.frontend_client("fe-1").cert, pki.server("dc-a-node-1").cert):
        assert not _etcd_client_ok(pki.etcd_ca.cert, cert)
        assert not _etcd_client_ok(pki.etcd_peer_ca.cert, cert)
        assert not _server_ok(pki, pki.etcd_ca.cert, cert, ETCD_TLS_NAME)
