"""The cluster's certificates: two CAs, server certificates and frontend client certificates.

* The **cluster CA** signs every server certificate (vault nodes and frontends); clients and
  frontends verify servers against it.
* The **frontend CA** signs only the frontends' client certificates. Vault nodes accept client
  certificates from this CA alone: that is how "only frontends may call a vault node" is enforced
  (a server certificate, or any certificate of the cluster CA, is refused by the nodes).

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


@dataclass(frozen=True)
class Issued:
    """A key and the certificate issued for it (kept in memory; `write` stores both)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, paths: CertPaths) -> None:
        paths.cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        write_private(
            paths.key,
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


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
    usage: x509.ObjectIdentifier,
    sans: Iterable[x509.GeneralName],
    now: dt.datetime,
    days: int,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, ca.cert.subject, key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
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
    """A clientAuth-only certificate naming the frontend `name`."""
    sans = [x509.DNSName(name)]
    return _issue(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, sans, now, days)


def create_pki(
    pki_dir: Path,
    servers: Iterable[str],
    frontends: Iterable[str],
    *,
    now: dt.datetime | None = None,
    server_ips: Mapping[str, Sequence[str]] | None = None,
) -> Pki:
    """Make both CAs, a server certificate per name in `servers` and in `frontends` (with the
    extra IP SANs `server_ips[name]`), and a frontend-CA client certificate per name in
    `frontends`; write them under `pki_dir`."""
    extra = server_ips or {}
    now = now or dt.datetime.now(dt.UTC)
    pki_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    pki = Pki(pki_dir)
    cluster_ca = make_ca("BKV cluster CA", now=now)
    frontend_ca = make_ca("BKV frontend client CA", now=now)
    cluster_ca.write(pki.cluster_ca)
    frontend_ca.write(pki.frontend_ca)
    frontends = list(frontends)
    for name in [*servers, *frontends]:
        issue_server(cluster_ca, name, now=now, ips=extra.get(name, ())).write(pki.server(name))
    for name in frontends:
        issue_client(frontend_ca, name, now=now).write(pki.frontend_client(name))
    return pki


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
