"""The cluster's certificates: five CAs, server, peer and client certificates.

* The **cluster CA** signs every server certificate (vault nodes and frontends); clients and
  frontends verify servers against it.
* The **frontend CA** signs only the frontends' client certificates. Vault nodes accept client
  certificates from this CA alone: that is how "only frontends may call a vault node" is enforced
  (a server certificate, or any certificate of the cluster CA, is refused by the nodes).
* The **node client CA** signs only the vault nodes' own client certificates (CN = the node,
  clientAuth only, no server SAN), which they present to the witnesses of the record log
  (docs/architecture.md). A witness accepts client certificates of this CA alone, so neither a
  frontend nor a server certificate can pose as a node; a node's witness server shows its
  ordinary server certificate (cluster CA).
* The **etcd CA** signs each etcd member's server certificate (SANs `bkv-etcd`, the one TLS name
  etcd clients check, `localhost`, 127.0.0.1 and the member's host) and the etcd client
  certificates, whose CN is the etcd user name (etcd with `--client-cert-auth` and auth on takes
  the CN as the user): `root` for operators, `bkv-node-<node>`, `bkv-frontend-<frontend>`.
* The **etcd peer CA** signs only the members' peer certificates (serverAuth + clientAuth, SANs
  of the peer host): members trust no other CA on the peer port, so no etcd client certificate
  can pose as a member.

All keys are EC P-256; private keys are written 0600. Server certificates carry the SANs
`localhost`, IP `127.0.0.1`, the process name and any extra IP the caller names (a data centre's
own host, see `deploy.topology.DcNetwork`), and the serverAuth usage only; client
certificates carry clientAuth only, so neither can stand in for the other.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLUSTER_CA = "cluster-ca"
FRONTEND_CA = "frontend-ca"
NODE_CLIENT_CA = "node-client-ca"
ETCD_CA = "etcd-ca"
ETCD_PEER_CA = "etcd-peer-ca"
# The one TLS name every etcd member's server certificate carries and every etcd client checks
# (members live on different hosts; one name lets a client verify any of them the same way).
ETCD_TLS_NAME = "bkv-etcd"


@dataclass(frozen=True)
class CertPaths:
    """A PEM certificate and its PEM private key (PKCS#8, unencrypted, mode 0600)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Where the certificates of one cluster live (`DIR/pki`)."""

    dir: Path

    @property
    def cluster_ca(self) -> CertPaths:
        return CertPaths(self.dir / f"{CLUSTER_CA}.pem", self.dir / f"{CLUSTER_CA}.key")

    @property
    def frontend_ca(self) -> CertPaths:
        return CertPaths(self.dir / f"{FRONTEND_CA}.pem", self.dir / f"{FRONTEND_CA}.key")

    def server(self, name: str) -> CertPaths:
        return CertPaths(self.dir / f"{name}.pem", self.dir / f"{name}.key")

    def frontend_client(self, name: str) -> CertPaths:
        return CertPaths(self.dir / f"{name}-client.pem", self.dir / f"{name}-client.key")

    @property
    def node_client_ca(self) -> CertPaths:
        return CertPaths(self.dir / f"{NODE_CLIENT_CA}.pem", self.dir / f"{NODE_CLIENT_CA}.key")

    def node_client(self, name: str) -> CertPaths:
        """The client certificate vault node `name` presents to the witnesses."""
        return CertPaths(self.dir / f"{name}-node-client.pem", self.dir / f"{name}-node-client.key")

    @property
    def etcd_ca(self) -> CertPaths:
        return CertPaths(self.dir / f"{ETCD_CA}.pem", self.dir / f"{ETCD_CA}.key")

    @property
    def etcd_peer_ca(self) -> CertPaths:
        return CertPaths(self.dir / f"{ETCD_PEER_CA}.pem", self.dir / f"{ETCD_PEER_CA}.key")

    def etcd_member(self, member: str) -> CertPaths:
        """The server certificate etcd member `member` shows its clients."""
        return CertPaths(
            self.dir / f"{member}.etcd-server.pem", self.dir / f"{member}.etcd-server.key"
        )

    def etcd_peer(self, member: str) -> CertPaths:
        """The certificate etcd member `member` shows (and presents) on peer connections."""
        return CertPaths(self.dir / f"{member}.etcd-peer.pem", self.dir / f"{member}.etcd-peer.key")

    def etcd_user(self, user: str) -> CertPaths:
        """The client certificate of etcd user `user` (its CN)."""
        return CertPaths(self.dir / f"etcd-user-{user}.pem", self.dir / f"etcd-user-{user}.key")

    def cas(self) -> tuple[CertPaths, ...]:
        """Every CA of the cluster."""
        return (self.cluster_ca, self.frontend_ca, self.node_client_ca, self.etcd_ca,
                self.etcd_peer_ca)  # fmt: skip


@dataclass(frozen=True)
class Issued:
    """A key and the certificate issued for it (kept in memory; `write` stores both)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, paths: CertPaths) -> None:
        paths.cert.write_bytes(self.cert_pem)
        write_private(paths.key, self.key_pem)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file created 0600 from the start (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Backup Key Vault"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(common_name: str, *, now: dt.datetime, days: int = 3650) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key, now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _issue(
    ca: Issued,
    name: str,
    usage: x509.ObjectIdentifier | Sequence[x509.ObjectIdentifier],
    sans: Iterable[x509.GeneralName],
    now: dt.datetime,
    days: int,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [usage] if isinstance(usage, x509.ObjectIdentifier) else list(usage)
    builder = (
        _builder(name, ca.cert.subject, key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    sans = list(sans)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
        critical=False,
    ).sign(ca.key, hashes.SHA256())
    return Issued(key, cert)


def issue_server(
    ca: Issued, name: str, *, now: dt.datetime, days: int = 825, ips: Sequence[str] = ()
) -> Issued:
    """A serverAuth certificate with SANs localhost, 127.0.0.1, `name` and each of `ips`."""
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.DNSName(name),
    ]
    sans += [
        x509.IPAddress(ipaddress.ip_address(ip))
        for ip in dict.fromkeys(ips)
        if ipaddress.ip_address(ip) != ipaddress.IPv4Address("127.0.0.1")
    ]
    return _issue(ca, name, ExtendedKeyUsageOID.SERVER_AUTH, sans, now, days)


def issue_client(ca: Issued, name: str, *, now: dt.datetime, days: int = 825) -> Issued:
    """A clientAuth-only certificate naming `name` (a frontend, or a vault node under the node
    client CA): CN and one DNS SAN, the name; no localhost or IP SAN."""
    sans = [x509.DNSName(name)]
    return _issue(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, sans, now, days)


def _ip_sans(ips: Iterable[str], skip: Sequence[str] = ()) -> list[x509.GeneralName]:
    seen = {ipaddress.ip_address(ip) for ip in skip}
    out: list[x509.GeneralName] = []
    for ip in ips:
        address = ipaddress.ip_address(ip)
        if address not in seen:
            seen.add(address)
            out.append(x509.IPAddress(address))
    return out


def issue_etcd_member(
    ca: Issued, member: str, *, now: dt.datetime, days: int = 825, ips: Sequence[str] = ()
) -> Issued:
    """An etcd member's client-port certificate: serverAuth only, SANs `bkv-etcd` (what our
    clients check), `localhost` and 127.0.0.1 and each of `ips` (what etcdctl checks: it
    verifies the endpoint's host)."""
    sans: list[x509.GeneralName] = [
        x509.DNSName(ETCD_TLS_NAME),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        *_ip_sans(ips, skip=["127.0.0.1"]),
    ]
    return _issue(ca, member, ExtendedKeyUsageOID.SERVER_AUTH, sans, now, days)


def issue_etcd_peer(
    ca: Issued, member: str, *, now: dt.datetime, days: int = 825, ips: Sequence[str] = ()
) -> Issued:
    """An etcd member's peer certificate: serverAuth and clientAuth (a member both serves and
    dials the peer port), SANs its peer host IPs only. etcd also checks that a dialling peer's
    address is among its certificate's IP SANs (a DNS SAN would make it look the name up when
    it is not), so `ips` must hold every address the member dials its peers from."""
    sans = _ip_sans(ips or ["127.0.0.1"])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, member, usages, sans, now, days)


def issue_etcd_user(ca: Issued, user: str, *, now: dt.datetime, days: int = 825) -> Issued:
    """An etcd client certificate: clientAuth only, CN = the etcd user name, no SAN (it names
    no server, so it can serve as none)."""
    return _issue(ca, user, ExtendedKeyUsageOID.CLIENT_AUTH, [], now, days)


def create_pki(
    pki_dir: Path,
    servers: Iterable[str],
    frontends: Iterable[str],
    *,
    now: dt.datetime | None = None,
    server_ips: Mapping[str, Sequence[str]] | None = None,
    etcd_members: Mapping[str, Sequence[str]] | None = None,
    etcd_users: Iterable[str] = (),
    nodes: Iterable[str] = (),
) -> Pki:
    """Make the five CAs, a server certificate per name in `servers` and in `frontends` (with
    the extra IP SANs `server_ips[name]`), a frontend-CA client certificate per name in
    `frontends`, a node-client-CA client certificate per vault node in `nodes`, a server and
    a peer certificate per etcd member (`etcd_members`: member name -> its host IPs) and a
    client certificate per etcd user; write them under `pki_dir`."""
    extra = server_ips or {}
    now = now or dt.datetime.now(dt.UTC)
    pki_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    pki = Pki(pki_dir)
    cluster_ca = make_ca("BKV cluster CA", now=now)
    frontend_ca = make_ca("BKV frontend client CA", now=now)
    node_client_ca = make_ca("BKV node client CA", now=now)
    etcd_ca = make_ca("BKV etcd CA", now=now)
    etcd_peer_ca = make_ca("BKV etcd peer CA", now=now)
    cluster_ca.write(pki.cluster_ca)
    frontend_ca.write(pki.frontend_ca)
    node_client_ca.write(pki.node_client_ca)
    etcd_ca.write(pki.etcd_ca)
    etcd_peer_ca.write(pki.etcd_peer_ca)
    frontends = list(frontends)
    for name in [*servers, *frontends]:
        issue_server(cluster_ca, name, now=now, ips=extra.get(name, ())).write(pki.server(name))
    for name in frontends:
        issue_client(frontend_ca, name, now=now).write(pki.frontend_client(name))
    for name in dict.fromkeys(nodes):
        # Its own CA: a witness that trusts it accepts nodes only, never a frontend's client
        # certificate (frontend CA) nor a server certificate (cluster CA).
        issue_client(node_client_ca, name, now=now).write(pki.node_client(name))
    for member, ips in (etcd_members or {}).items():
        issue_etcd_member(etcd_ca, member, now=now, ips=ips).write(pki.etcd_member(member))
        issue_etcd_peer(etcd_peer_ca, member, now=now, ips=ips).write(pki.etcd_peer(member))
    for user in dict.fromkeys(etcd_users):
        issue_etcd_user(etcd_ca, user, now=now).write(pki.etcd_user(user))
    return pki


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
